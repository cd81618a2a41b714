"""A storm of acquisition events: 100 duplicate and near-simultaneous ``eo.acquisition.new``
events over two AOIs give one ``monitor`` run per AOI and no duplicate product.

What a misbehaving archive notifier, a watch retried after a crash, or several watch workers
polling at once look like to the server: the same events (same ids) announced many times, and
many different items of one AOI announced together, from several connections at the same
moment. The debounce of `flows.watch.monitor_trigger` (one bucket per AOI, first event fires,
the rest of the burst is absorbed) and the event-id dedupe of `tasks.events.event_id` must hold
under that, and the runs that do start must not publish a product twice.

Everything runs as in production, each in its own process: ``prefect server start`` (SQLite in
a private PREFECT_HOME), a process serving ``monitor`` with the trigger (``prefect.serve``; it
runs the triggered runs as subprocesses), ``rustac serve`` over the tiny archive. The test
process emits the events from ten threads, each on its own events connection, with
`tasks.events.emit_confirmed` (what the watch uses).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import psutil  # installed with dask.distributed
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.events import Event
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from shapely.geometry import box, shape

from flows.serve import PrefectServer, start_prefect_server
from tasks.aoi_registry import WatchedAoi
from tasks.events import acquisition_event, emit_confirmed
from tasks.processes import stop_process_group
from tasks.publish import list_products
from tasks.stac_server import StacServer, free_port
from tasks.synthetic import ArchiveInfo
from tasks.watermark import Acquisition, ItemStamp

pytestmark = pytest.mark.timeout(300)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "monitor/on-acquisition"
#: The storm: N_EVENTS events, sent by N_THREADS threads released together.
N_EVENTS = 100
N_THREADS = 10
#: Debounce window of the test trigger (production: flows.watch.DEBOUNCE, 10 minutes); the
#: runs start this long after the first event.
WITHIN_S = 5.0
#: Bounds of the waits: the serve process imports torch (~10 s on 2 busy cores) while the
#: server starts; the trigger creates the runs within seconds of the events (~6 s measured);
#: each run is a new process (~10 s import) that makes one product (~30 s in all measured).
SERVE_READY_S = 150.0
TRIGGER_S = 60.0
RUN_DONE_S = 150.0
#: One product per run (the cheapest); a duplicate run would publish a second one.
PRODUCTS = ("footprint",)

#: The serving process: waits for the API, then serves monitor with the acquisition trigger.
#: argv: the debounce window (s), the API URL.
SERVE_SCRIPT = """
import sys, time
from datetime import timedelta

import httpx
from prefect import serve

from flows.products import monitor
from flows.watch import monitor_trigger

within, api = float(sys.argv[1]), sys.argv[2]
deadline = time.monotonic() + 180
while True:  # the server starts meanwhile (this process imported torch in the meantime)
    try:
        if httpx.get(api + "/health", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    if time.monotonic() > deadline:
        sys.exit("no Prefect API at " + api)
    time.sleep(0.5)
trigger = monitor_trigger(within=timedelta(seconds=within), params={"use_baselines": True})
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
    started in a session of its own."""
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
class Storm:
    """The services of the module and where the runs publish."""

    server: PrefectServer
    serve: subprocess.Popen[bytes]
    serve_log: Path
    stac_url: str
    out: Path

    def logs(self) -> str:
        serve = self.serve_log.read_text(errors="replace")[-4000:]
        return f"serve process log:\n{serve}\nserver log:\n{self.server.log_tail(2000)}"

    @contextlib.contextmanager
    def client(self) -> Iterator[SyncPrefectClient]:
        """A client of the module's server (never this process's ephemeral one)."""
        with (
            temporary_settings(updates={PREFECT_API_URL: self.server.api_url}),
            get_client(sync_client=True) as client,
        ):
            yield client

    def deployment_id(self, client: SyncPrefectClient) -> UUID:
        """The served deployment's id, once it exists with its trigger's automation."""

        def probe() -> UUID | None:
            if self.serve.poll() is not None:
                pytest.fail(f"the serve process exited ({self.serve.returncode})\n{self.logs()}")
            try:
                dep = client.read_deployment_by_name(DEPLOYMENT)
            except ObjectNotFound:  # until serve has registered it
                return None
            owned = client.read_resource_related_automations(f"prefect.deployment.{dep.id}")
            return dep.id if owned else None

        return _wait_for(
            "the served deployment and its automation", probe, SERVE_READY_S, self.logs
        )


@pytest.fixture(scope="module")
def storm(tiny_stac: StacServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storm]:
    """A Prefect server and a process serving ``monitor`` with the acquisition trigger.

    Both start at once: the serve process imports the pipeline while the server starts."""
    root = tmp_path_factory.mktemp("event-storm")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "EO_"))},
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(root / "serve-home"),
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # the runner looks for due runs every second
        "EO_CACHE_DIR": str(root / "cache"),
        "EO_OUTPUT_URL": str(root / "unused-default-output"),  # the events name the output
    }
    serve_log = root / "serve.log"
    with serve_log.open("wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-c", SERVE_SCRIPT, str(WITHIN_S), api_url],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with its flow runs
        )
    try:
        server_env = {
            "PREFECT_HOME": str(root / "server-home"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
                f"sqlite+aiosqlite:///{root / 'server-home' / 'prefect.db'}"
            ),
            "PREFECT_UI_ENABLED": "false",
        }
        with start_prefect_server(port=port, env=server_env) as server:
            yield Storm(
                server=server,
                serve=serve,
                serve_log=serve_log,
                stac_url=tiny_stac.url,
                out=root / "products",
            )
            _stop(serve)  # before the server, so that its runs end while the API is there
    finally:
        _stop(serve)


def _aois(archive: ArchiveInfo) -> list[WatchedAoi]:
    """The west and east halves of the tiny archive: two AOIs, each its own trigger bucket."""
    west, south, east, north = archive.bbox
    mid = (west + east) / 2
    halves = {"storm-west": (west, south, mid, north), "storm-east": (mid, south, east, north)}
    return [
        WatchedAoi(id=aoi_id, geometry=box(*bounds).__geo_interface__, products=PRODUCTS)
        for aoi_id, bounds in halves.items()
    ]


def _storm_events(aois: list[WatchedAoi], items: list[dict[str, Any]], storm: Storm) -> list[Event]:
    """N_EVENTS events, shuffled: per AOI one per Sentinel-2 item of the newest year and one per
    reprocessed version of it (near-duplicates: different items, same AOI), each repeated
    (duplicates: the same event ids) until there are N_EVENTS."""
    stamps = [ItemStamp.from_item(i) for i in items if i["collection"] == "sentinel-2-l2a"]
    newest_year = max(s.datetime.year for s in stamps)
    stamps = [s for s in stamps if s.datetime.year == newest_year]
    distinct: list[Event] = []
    for aoi in aois:
        for stamp in stamps:
            reprocessed = ItemStamp(
                stamp.collection, stamp.id, stamp.datetime, f"{newest_year}-12-31T00:00:00Z"
            )
            distinct += [
                acquisition_event(aoi, acq, stac_api_url=storm.stac_url, output_url=str(storm.out))
                for acq in (
                    Acquisition("new", stamp),
                    Acquisition("reprocessed", reprocessed, previous_updated=stamp.updated),
                )
            ]
    events = [distinct[k % len(distinct)] for k in range(N_EVENTS)]
    random.Random(7).shuffle(events)
    return events


def _emit_storm(api_url: str, events: list[Event]) -> float:
    """Send `events` from N_THREADS threads released together, each on its own connection;
    returns the seconds from the release to the last confirmation. Fails on any error."""
    chunks = [events[k::N_THREADS] for k in range(N_THREADS)]
    barrier = threading.Barrier(N_THREADS + 1)
    errors: list[BaseException] = []

    def send(chunk: list[Event]) -> None:
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                barrier.wait(timeout=60)
                emit_confirmed(chunk)
        except BaseException as err:  # any failure, reported by the caller after the join
            errors.append(err)

    threads = [threading.Thread(target=send, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    barrier.wait(timeout=60)
    t0 = time.monotonic()
    for t in threads:
        t.join(timeout=120)
    elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), "an emitting thread hung"
    assert not errors, f"emitting failed: {errors!r}"
    return elapsed


def _runs(client: SyncPrefectClient, deployment_id: UUID) -> list[FlowRun]:
    deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    return client.read_flow_runs(deployment_filter=deployment)


@pytest.mark.serial  # the storm must fit a debounce window of seconds: run alone
def test_event_storm_gives_one_run_per_aoi_and_no_duplicate_product(
    storm: Storm, tiny_archive: ArchiveInfo, tiny_items: list[dict[str, Any]]
) -> None:
    aois = _aois(tiny_archive)
    events = _storm_events(aois, tiny_items, storm)
    ids = Counter(e.id for e in events)
    per_aoi = Counter(e.payload["aoi_id"] for e in {e.id: e for e in events}.values())
    assert len(events) == N_EVENTS and max(ids.values()) > 1, "the storm repeats event ids"
    assert all(n > 1 for n in per_aoi.values()), "the storm has several items per AOI"

    with storm.client() as client:
        deployment_id = storm.deployment_id(client)  # the trigger is in place first
        assert _runs(client, deployment_id) == []

        elapsed = _emit_storm(storm.server.api_url, events)
        # otherwise a second burst (and run) per AOI would be right
        assert elapsed < WITHIN_S, f"the storm took {elapsed:.1f} s, longer than the debounce"

        def created() -> list[FlowRun] | None:
            runs = _runs(client, deployment_id)
            return runs if len(runs) >= len(aois) else None

        def finished() -> list[FlowRun] | None:
            runs = _runs(client, deployment_id)
            if len(runs) > len(aois):  # too many: fail now, naming them
                return runs
            return runs if all(r.state and r.state.is_final() for r in runs) else None

        def listing() -> str:
            runs = _runs(client, deployment_id)
            return f"runs: {[(r.name, r.state_name) for r in runs]}\n{storm.logs()}"

        # the trigger creates each run (state Scheduled, WITHIN_S ahead) within seconds of
        # the events; every event has been evaluated long before the runs have finished, so
        # a second run for an AOI would exist by then
        _wait_for(f"{len(aois)} runs of {DEPLOYMENT}", created, TRIGGER_S, listing)
        runs = _wait_for(f"the runs of {DEPLOYMENT} to finish", finished, RUN_DONE_S, listing)
        by_aoi = Counter(r.parameters["params"]["aoi"] for r in runs)
        states = [(r.name, r.state_name, r.parameters["params"]["aoi"][:60]) for r in runs]
        assert by_aoi == Counter(a.geojson for a in aois), f"one run per AOI expected: {states}"
        for run in runs:
            assert run.state is not None and run.state.is_completed(), f"{states}\n{storm.logs()}"
            params = run.parameters["params"]
            assert params["products"] == list(PRODUCTS) and params["use_baselines"] is True
            assert params["output_url"] == str(storm.out)

    # no product twice: one Item per AOI and product, each id once in the listing and the index
    products = list_products(str(storm.out))
    pids = [p["id"] for p in products]
    assert len(pids) == len(set(pids)) == len(aois) * len(PRODUCTS), pids
    for aoi in aois:
        footprint = shape(aoi.geometry)
        mine = [
            p
            for p in products
            if shape(p["geometry"]).intersection(footprint).area > 0.5 * footprint.area
        ]
        kinds = Counter(p["properties"]["eo_pipeline:product_kind"] for p in mine)
        assert kinds == Counter(PRODUCTS), f"{aoi.id}: products {kinds}"
    index = [
        json.loads(line)["id"]
        for line in (storm.out / "index.ndjson").read_text().splitlines()
        if line.strip()
    ]
    assert Counter(index) == Counter(pids), (
        f"index.ndjson lists {Counter(index)}, the Items are {pids} (a missing id: concurrent "
        "publishers raced on the index, tasks/publish.py `_ensure_indexed`)"
    )
    with storm.client() as client:
        assert len(_runs(client, deployment_id)) == len(aois), "a late run appeared"
