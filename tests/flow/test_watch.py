"""Event-driven reruns on a real Prefect server: ``watch`` announces new acquisitions, the
served ``monitor`` deployment's trigger starts one run per AOI, and the run publishes products.

The Prefect server is the session's `prefect_server` (a real server subprocess: its trigger and
action services run; Prefect 3.8 starts them in ephemeral servers too). Beside it run, each in
its own process as in production: ``rustac serve`` over the tiny archive, a process serving
``monitor`` with `flows.watch.monitor_trigger` (``flow.to_deployment`` + ``prefect.serve``),
and ``eo aoi watch`` for the first poll (while the serve process starts; the later polls run the
``watch`` flow in the test process, against the same server).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import psutil  # installed with dask.distributed
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

import tasks.events
from flows.watch import WatchParams, watch
from tasks.aoi_registry import AoiRegistry, registry_url
from tasks.events import acquisition_event, emit_confirmed
from tasks.processes import stop_process_group
from tasks.publish import list_products
from tasks.settings import Settings
from tasks.stac_server import StacServer, free_port, serve_stac
from tasks.synthetic import ArchiveInfo, stac_files
from tasks.watermark import Acquisition, ItemStamp

pytestmark = pytest.mark.timeout(420)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Debounce window of the test trigger (production: flows.watch.DEBOUNCE, 10 minutes).
WITHIN_S = 8.0
#: Bounds of the waits: the serve process imports torch (~10 s on 2 busy cores); a triggered
#: run waits WITHIN_S, then the runner starts a process for it and makes two baseline products.
SERVE_READY_S = 120.0
RUN_DONE_S = 240.0
WATCH_S = 120.0
DEPLOYMENT = "monitor/on-acquisition"

SERVE_SCRIPT = """
import sys
from datetime import timedelta
from prefect import serve
from flows.products import monitor
from flows.watch import monitor_trigger

# the tiny archive has Landsat 2012-2013 and Sentinel-2 2023: change 2013 -> 2023, baselines
trigger = monitor_trigger(
    within=timedelta(seconds=float(sys.argv[1])),
    params={"use_baselines": True, "change_interval_years": 10},
)
serve(monitor.to_deployment(name="on-acquisition", triggers=[trigger]))
"""

T = TypeVar("T")


def _wait_for(
    what: str, probe: Callable[[], T | None], timeout: float, why: Callable[[], str]
) -> T:
    """Poll `probe` until it returns something, or fail naming `what` and `why()`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{why()}")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL if needed; then any flow-run process the runner
    started in a session of its own (Prefect's runner may isolate them)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    stop_process_group(proc, timeout)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=timeout)


@dataclass
class Stack:
    """The processes and places of the module; `stac` is the STAC API now serving."""

    api_url: str
    archive: Path
    aoi: dict[str, Any]
    env: dict[str, str]
    out: Path
    root: Path
    stac_port: int
    serve: subprocess.Popen[bytes]
    serve_log: Path
    items: list[dict[str, Any]]
    newest_ids: set[str]
    since: datetime
    stac: StacServer | None = None
    _deployment_id: UUID | None = field(default=None, repr=False)

    @property
    def stac_url(self) -> str:
        return f"http://127.0.0.1:{self.stac_port}"

    @property
    def params(self) -> WatchParams:
        """The watch of this module, run in the test process (on the same Prefect server)."""
        return WatchParams(stac_api_url=self.stac_url, output_url=str(self.out))

    def serve_archive(self, items: list[dict[str, Any]], name: str) -> None:
        """(Re)start the STAC API on the same port over `items`."""
        if self.stac is not None:
            self.stac.stop()
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        files: list[Path] = []
        for path in stac_files(self.archive):
            if path.name.endswith(".items.ndjson"):
                collection = path.name.removesuffix(".items.ndjson")
                path = folder / path.name
                lines = [json.dumps(i) for i in items if i["collection"] == collection]
                path.write_text("\n".join(lines) + "\n")
            files.append(path)
        self.stac = serve_stac(files, port=self.stac_port)

    def watch_cli(self) -> dict[str, Any]:
        """One ``eo aoi watch`` in its own process; its JSON summary."""
        cmd = [sys.executable, "-m", "flows.cli", "aoi", "watch", "--stac-url", self.stac_url]
        done = subprocess.run(
            [*cmd, "--json"], env=self.env, cwd=REPO_ROOT, capture_output=True, timeout=WATCH_S
        )
        stderr = done.stderr.decode(errors="replace")[-3000:]
        assert done.returncode == 0, f"eo aoi watch failed ({done.returncode}):\n{stderr}"
        lines = done.stdout.decode().strip().splitlines()
        assert lines, f"eo aoi watch printed no summary:\n{stderr}"
        summary: dict[str, Any] = json.loads(lines[-1])
        return summary

    def serve_log_tail(self) -> str:
        return "serve process log:\n" + self.serve_log.read_text(errors="replace")[-4000:]

    def deployment_id(self, client: SyncPrefectClient) -> UUID:
        """The id of the served deployment, once it exists with its trigger's automation."""

        def probe() -> UUID | None:
            if self.serve.poll() is not None:
                pytest.fail(
                    f"the serve process exited ({self.serve.returncode})\n" + self.serve_log_tail()
                )
            try:
                dep = client.read_deployment_by_name(DEPLOYMENT)
            except ObjectNotFound:  # until serve has registered it
                return None
            owned = client.read_resource_related_automations(f"prefect.deployment.{dep.id}")
            return dep.id if owned else None

        if self._deployment_id is None:
            self._deployment_id = _wait_for(
                "the served monitor deployment and its automation",
                probe,
                SERVE_READY_S,
                self.serve_log_tail,
            )
        return self._deployment_id

    def runs(self, client: SyncPrefectClient) -> list[FlowRun]:
        deployment = DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id(client)]))
        return client.read_flow_runs(deployment_filter=deployment)

    def wait_for_runs(self, client: SyncPrefectClient, n: int) -> list[FlowRun]:
        """Wait until the deployment has `n` runs, all finished; return them."""

        def probe() -> list[FlowRun] | None:
            runs = self.runs(client)
            if len(runs) >= n and all(r.state is not None and r.state.is_final() for r in runs):
                return runs
            return None

        return _wait_for(
            f"{n} finished run(s) of {DEPLOYMENT}",
            probe,
            RUN_DONE_S,
            lambda: (
                f"runs: {[(r.name, r.state_name) for r in self.runs(client)]}\n"
                + self.serve_log_tail()
            ),
        )


def _acquired(item: dict[str, Any]) -> datetime:
    return ItemStamp.from_item(item).datetime


@pytest.fixture(scope="module")
def stack(
    prefect_server: None, tiny_archive: ArchiveInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The Prefect API, a served monitor deployment with the acquisition trigger, an AOI
    registered over the tiny archive, and the archive without its newest acquisition."""
    api_url = PREFECT_API_URL.value()
    assert api_url, "the prefect_server fixture sets PREFECT_API_URL"
    root = tmp_path_factory.mktemp("watch")
    out = root / "products"
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(root / "prefect-home"),  # no lock on anybody's SQLite/profile
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false",  # never emit into a throwaway server
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # the runner looks for due runs every second
        "EO_OUTPUT_URL": str(out),
        "EO_CACHE_DIR": str(root / "cache"),
    }
    for name in ("EO_AOI_REGISTRY_URL", "EO_STAC_API_URL"):
        env.pop(name, None)
    serve_log = root / "serve.log"
    with serve_log.open("wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-c", SERVE_SCRIPT, str(WITHIN_S)],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with its flow-run children
        )
    items = sorted(_read_items(tiny_archive.root), key=_acquired)
    newest = _acquired(items[-1])
    older = [i for i in items if _acquired(i) < newest]
    since = newest - timedelta(days=1)
    assert _acquired(older[-1]) < since, "the tiny archive's two newest dates are a day apart"
    registry = AoiRegistry(registry_url(Settings(output_url=str(out))))
    aoi = registry.add("tiny", json.dumps(tiny_archive.aoi), since=since)
    s = Stack(
        api_url=api_url,
        archive=tiny_archive.root,
        aoi=aoi.geometry,
        env=env,
        out=out,
        root=root,
        stac_port=free_port(),
        serve=serve,
        serve_log=serve_log,
        items=items,
        newest_ids={i["id"] for i in items if _acquired(i) == newest},
        since=since,
    )
    try:
        s.serve_archive(older, "v1")
        yield s
    finally:
        _stop(serve)
        if s.stac is not None:
            s.stac.stop()
        if s._deployment_id is not None:  # leave the shared test server as it was
            with get_client(sync_client=True) as client:
                client.delete_resource_owned_automations(f"prefect.deployment.{s._deployment_id}")
                client.delete_deployment(s._deployment_id)


def _read_items(root: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in stac_files(root)
        if path.name.endswith(".items.ndjson")
        for line in path.read_text().splitlines()
        if line.strip()
    ]


@pytest.mark.serial  # its burst must fit a debounce window of seconds: run alone
def test_new_acquisitions_trigger_one_monitor_run_per_burst(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the debounce window opens with watch's first event, not when the watch flow starts (its
    # flow run can take a minute on a busy SQLite server): note when the first event leaves,
    # and send it as before
    first_emit: list[float] = []

    def noting_emit(events: Any, **kw: Any) -> None:
        first_emit.append(time.monotonic())
        emit_confirmed(events, **kw)

    monkeypatch.setattr(tasks.events, "emit_confirmed", noting_emit)

    # 1. baseline: nothing acquired since the AOI's `since` -> nothing announced
    first = stack.watch_cli()
    assert (first["announced"], first["rows"][0]["found"]) == (0, 0), first

    with get_client(sync_client=True) as client:
        stack.deployment_id(client)  # the trigger is in place before anything new lands
        assert stack.runs(client) == []

        # 2. the newest acquisition (two Sentinel-2 tiles) lands -> two events; then, within
        #    the debounce window, a burst of seven more for the same AOI (five items, two of
        #    them announced twice, as a watch retried after a crash would) -> one run in all
        stack.serve_archive(stack.items, "v2")
        second = watch(stack.params).model_dump()
        row = second["rows"][0]
        assert (row["new"], row["late"], row["reprocessed"]) == (len(stack.newest_ids), 0, 0)
        assert second["announced"] == len(stack.newest_ids) == 2
        aoi = AoiRegistry(registry_url(output_url=str(stack.out))).get("tiny")
        newest = _acquired(stack.items[-1])
        burst = [
            acquisition_event(
                aoi,
                Acquisition("new", ItemStamp("sentinel-2-l2a", f"S2X_BURST_{k}", newest, "v1")),
                stac_api_url=stack.stac_url,
            )
            for k in range(5)
        ]
        emit_confirmed([*burst, *burst[:2]])
        assert len(first_emit) == 1, f"watch announced in {len(first_emit)} calls, expected 1"
        took = time.monotonic() - first_emit[0]
        assert took < WITHIN_S, f"the burst took {took:.1f} s, longer than the debounce window"

        # 3. polling again with nothing new announces nothing (while the run goes on)
        third = watch(stack.params).model_dump()
        assert third["announced"] == 0 and third["rows"][0]["found"] == 2, third
        assert third["rows"][0]["watermark"] == row["watermark"]

        # 4. the run started WITHIN_S after the first event; every event was evaluated within
        #    a second of arriving, so a second run for this burst would exist by the time the
        #    first one has finished
        runs = stack.wait_for_runs(client, 1)
        states = [(r.name, r.state_name, r.parameters) for r in runs]
        assert len(runs) == 1, f"one burst of one AOI gives one run, got {states}"
        (run,) = runs
        assert run.state is not None and run.state.is_completed(), stack.serve_log_tail()
        params = run.parameters["params"]
        assert params["year"] == 2023 and params["products"] == ["change", "footprint"]
        assert params["stac_api_url"] == stack.stac_url and json.loads(params["aoi"])
        assert params["output_url"] == str(stack.out) and params["use_baselines"] is True
        assert len(stack.runs(client)) == 1, "a second run appeared for the same burst"

    # 5. the run published a footprint and a change product made with the new scenes
    published = {
        i["properties"]["eo_pipeline:product_kind"]: i for i in list_products(str(stack.out))
    }
    assert set(published) == {"change", "footprint"}, stack.serve_log_tail()
    for kind, item in published.items():
        scenes = set(item["properties"]["eo_pipeline:scene_ids"])
        assert stack.newest_ids <= scenes, f"{kind} lacks the new scenes: {sorted(scenes)}"
    assert published["footprint"]["properties"]["start_datetime"].startswith("2023-01-01")
