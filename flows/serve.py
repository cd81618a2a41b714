"""``eo serve``: serve the deployments of ``deployments/prefect.yaml`` from one local process.

``deployments/prefect.yaml`` is the single source of truth for what runs when: `prefect deploy`
registers its deployments with a server for workers to run, and this module serves the same
deployments (names, entrypoints, schedules, default parameters, event triggers) with
`prefect.serve`, without a work pool or a worker: the runs execute as subprocesses of the
serving process. Work pools and job variables of the file do not apply here.

The embedded default needs two services, and `serve_project` starts whatever is missing:

- a Prefect server: schedules and event triggers need the server's scheduler and trigger
  services, which Prefect's ephemeral API does not run. Without ``PREFECT_API_URL``, a
  ``prefect server start`` on 127.0.0.1 (SQLite in ``PREFECT_HOME``, the UI on the same port)
  runs for as long as ``eo serve`` does;
- a STAC API: without ``EO_STAC_API_URL``, the demo archive (``EO_CACHE_DIR/archive-demo``,
  created on first use, ~1 min) is served by ``rustac serve`` on 127.0.0.1, as for ``eo demo``;
  the default AOI of every deployment lies inside it.

Both are stopped when ``eo serve`` ends (Ctrl-C); Prefect pauses the served schedules then.

    eo serve                          # everything local; UI at http://127.0.0.1:4200
    eo serve --name 'monitor/*'       # a subset (shell-style patterns on flow/deployment)
    eo serve --dry-run                # list what would be served, validate defaults, exit
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml
from pydantic import TypeAdapter, ValidationError

from tasks.errors import InputError, ServiceUnavailableError
from tasks.processes import stop_process_group, track
from tasks.settings import get_settings
from tasks.stac_server import _die_with_parent, free_port

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events import DeploymentTriggerTypes

__all__ = [
    "DEFAULT_PREFECT_FILE",
    "DeploymentSpec",
    "PrefectServer",
    "build_deployments",
    "load_flow",
    "load_specs",
    "select_specs",
    "serve_project",
    "start_prefect_server",
]

log = logging.getLogger(__name__)

#: The project file, beside the packages (the container image copies deployments/ too).
DEFAULT_PREFECT_FILE = Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml"

#: ``prefect server start``'s default port: the UI address the Prefect docs use.
DEFAULT_SERVER_PORT = 4200


# ---- the project file ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment of the project file, as written there (nothing resolved yet).

    `entrypoint` is ``path/to/file.py:function``, relative to the repository root; `schedules`
    and `triggers` are the file's mappings (Prefect's prefect.yaml schema); `work_pool` is only
    used by ``prefect deploy`` (served deployments need none).
    """

    name: str
    entrypoint: str
    description: str | None = None
    tags: tuple[str, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)
    schedules: tuple[Mapping[str, Any], ...] = ()
    triggers: tuple[Mapping[str, Any], ...] = ()
    work_pool: str | None = None
    paused: bool | None = None
    concurrency_limit: int | Mapping[str, Any] | None = None

    @property
    def module(self) -> str:
        """The entrypoint's module as an import path, e.g. ``flows.products``."""
        path, _, _ = self.entrypoint.partition(":")
        return path.removesuffix(".py").replace("/", ".")

    @property
    def function(self) -> str:
        """The entrypoint's flow function name, e.g. ``monitor``."""
        return self.entrypoint.partition(":")[2]


def load_specs(path: Path | str = DEFAULT_PREFECT_FILE) -> list[DeploymentSpec]:
    """Read the deployments of a Prefect project file (YAML anchors and merge keys resolved).

    Raises `InputError` naming the file and the deployment when an entry lacks a name or an
    ``path/file.py:function`` entrypoint, or a field has the wrong type.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise InputError(f"prefect file {path} not found; pass --prefect-file.") from err
    except yaml.YAMLError as err:
        raise InputError(f"prefect file {path} is not valid YAML: {err}") from err
    entries = (doc or {}).get("deployments") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"prefect file {path}: no `deployments:` list.")
    specs: list[DeploymentSpec] = []
    for i, entry in enumerate(entries):
        where = f"{path}: deployments[{i}]"
        if not isinstance(entry, dict) or not entry.get("name"):
            raise InputError(f"{where}: every deployment needs a `name`.")
        entrypoint = entry.get("entrypoint")
        if not isinstance(entrypoint, str) or not entrypoint.partition(":")[2]:
            raise InputError(
                f"{where} ({entry['name']}): entrypoint must be 'path/to/file.py:flow_function', "
                f"got {entrypoint!r}."
            )
        pool = entry.get("work_pool") or {}
        try:
            specs.append(
                DeploymentSpec(
                    name=str(entry["name"]),
                    entrypoint=entrypoint,
                    description=entry.get("description"),
                    tags=tuple(entry.get("tags") or ()),
                    parameters=dict(entry.get("parameters") or {}),
                    schedules=tuple(entry.get("schedules") or ()),
                    triggers=tuple(entry.get("triggers") or ()),
                    work_pool=pool.get("name") if isinstance(pool, dict) else None,
                    paused=entry.get("paused"),
                    concurrency_limit=entry.get("concurrency_limit"),
                )
            )
        except (TypeError, ValueError, AttributeError) as err:
            raise InputError(f"{where} ({entry['name']}): {err}") from err
    return specs


def load_flow(spec: DeploymentSpec) -> Flow[Any, Any]:
    """Import the flow of `spec` by module path (the flows are an installed package).

    A worker loads the same object from the file path relative to the repository root; the
    tests check that both resolve. Raises `InputError` when the module or function is missing
    or is not a Prefect flow.
    """
    import importlib

    from prefect import Flow

    try:
        module = importlib.import_module(spec.module)
    except ImportError as err:
        raise InputError(
            f"deployment {spec.name!r}: cannot import {spec.module} (entrypoint "
            f"{spec.entrypoint}): {err}"
        ) from err
    obj = getattr(module, spec.function, None)
    if not isinstance(obj, Flow):
        raise InputError(
            f"deployment {spec.name!r}: {spec.entrypoint} is not a Prefect flow; fix the "
            "entrypoint in the prefect file."
        )
    return obj


def select_specs(
    specs: Sequence[DeploymentSpec], flows: Sequence[Flow[Any, Any]], patterns: Sequence[str]
) -> list[int]:
    """Indices of the deployments whose ``flow-name/deployment-name`` matches any pattern
    (shell-style: ``monitor/*``, ``*/yearly``); all of them when `patterns` is empty."""
    if not patterns:
        return list(range(len(specs)))
    full = [f"{f.name}/{s.name}" for s, f in zip(specs, flows, strict=True)]
    chosen = [i for i, n in enumerate(full) if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not chosen:
        raise InputError(f"--name {list(patterns)} matches none of {full}.")
    return chosen


def _schedule(config: Mapping[str, Any], where: str) -> DeploymentScheduleCreate:
    # The conversion `prefect deploy` applies to a prefect.yaml schedule entry (cron / interval /
    # rrule, timezone, active, parameters, slug): reused rather than re-written so that served
    # and deployed schedules cannot differ. It is private in Prefect 3.8.8 (pinned in
    # constraints.txt); tests/flow/test_deployments.py fails if it moves.
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.client.schemas.actions import DeploymentScheduleCreate

    try:
        return DeploymentScheduleCreate(**_schedule_config_to_deployment_schedule(dict(config)))
    except (ValueError, TypeError) as err:  # pydantic's ValidationError is a ValueError
        raise InputError(f"{where}: invalid schedule {dict(config)}: {err}") from err


def _trigger(config: Mapping[str, Any], where: str) -> DeploymentTriggerTypes:
    from prefect.events import DeploymentTriggerTypes

    try:
        trigger: DeploymentTriggerTypes = TypeAdapter(DeploymentTriggerTypes).validate_python(
            dict(config)
        )
    except ValidationError as err:
        raise InputError(f"{where}: invalid trigger: {err}") from err
    return trigger


def _reject_templates(spec: DeploymentSpec, where: str) -> None:
    # `prefect deploy` fills "{{ $ENV_VAR }}" / "{{ prefect.variables.x }}" at deploy time; served
    # deployments would carry the text itself. (Trigger parameters are templates on purpose:
    # the server renders them from each event.)
    fields = {"parameters": spec.parameters, "schedules": spec.schedules, "tags": spec.tags}
    for name, value in fields.items():
        if "{{" in json.dumps(value, default=str):
            raise InputError(
                f"{where}: {name} holds a deploy-time template ({{{{ ... }}}}); eo serve does not "
                "resolve them: write the value, or deploy with `prefect deploy`."
            )


def build_deployments(
    specs: Sequence[DeploymentSpec], *, names: Sequence[str] = ()
) -> list[RunnerDeployment]:
    """The `RunnerDeployment`s that `prefect.serve` serves, one per spec (or per spec matching
    `names`, see `select_specs`).

    Each deployment's default parameters are validated against its flow's parameter model
    first (Prefect's own `Flow.validate_parameters`), so a bad default fails here, naming the
    deployment, not at the first scheduled run. Entry points become module paths
    (``flows.products.monitor``), importable from any working directory.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments.runner import EntrypointType, RunnerDeployment
    from prefect.exceptions import ParameterTypeError

    flows = [load_flow(s) for s in specs]
    out: list[RunnerDeployment] = []
    for i in select_specs(specs, flows, names):
        spec, flow = specs[i], flows[i]
        where = f"deployment {flow.name}/{spec.name}"
        _reject_templates(spec, where)
        limit = spec.concurrency_limit
        try:
            flow.validate_parameters(dict(spec.parameters))
        except ParameterTypeError as err:
            raise InputError(f"{where}: default parameters do not validate: {err}") from err
        options: dict[str, Any] = {
            "name": spec.name,
            "description": spec.description,
            "tags": list(spec.tags),
            "parameters": dict(spec.parameters),
            "schedules": [_schedule(s, where) for s in spec.schedules],
            "triggers": [_trigger(t, where) for t in spec.triggers],
            "paused": spec.paused,
            "concurrency_limit": (
                ConcurrencyLimitConfig(**limit) if isinstance(limit, Mapping) else limit
            ),
            "entrypoint_type": EntrypointType.MODULE_PATH,
            "_sync": True,  # the object itself, also when called from a running event loop
        }
        deployment = flow.to_deployment(**options)
        if not isinstance(deployment, RunnerDeployment):  # pragma: no cover - Prefect's contract
            raise TypeError(f"{where}: Flow.to_deployment returned {type(deployment)}")
        out.append(deployment)
    return out


# ---- a local Prefect server --------------------------------------------------------------------


@dataclass
class PrefectServer:
    """A running ``prefect server start``; `api_url` ends in ``/api``; the UI is at `url`."""

    url: str
    process: subprocess.Popen[bytes]
    log: Any = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        """The last `n` characters the server wrote (stdout and stderr)."""
        if self.log is None or self.log.closed:
            return ""
        self.log.seek(0)
        return str(self.log.read().decode(errors="replace").strip()[-n:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group, SIGKILL after `timeout` seconds."""
        stop_process_group(self.process, timeout)
        if self.log is not None:
            self.log.close()

    def __enter__(self) -> PrefectServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_prefect_server(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 180.0,
) -> PrefectServer:
    """Start ``prefect server start`` on `host`:`port` (default: a free port); wait until its
    health check answers.

    The server's environment is this process's, plus `env` (e.g. ``PREFECT_HOME`` for a private
    SQLite database, scheduler settings), with anonymous analytics off
    (``PREFECT_SERVER_ANALYTICS_ENABLED=false``) and no ``PREFECT_API_URL`` inherited. The first
    start on a new database runs its migrations (10-40 s on 2 busy cores). Raises
    `ServiceUnavailableError`, quoting the server's output, if it exits or does not answer
    within `startup_timeout` seconds.
    """
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    child_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    child_env.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})})
    prefect_cli = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect_cli) if prefect_cli.exists() else "prefect"]
    cmd += ["server", "start", "--host", host, "--port", str(port)]
    log_file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; closed in stop()
    log.info("starting Prefect server on %s", url)
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=child_env,
        # its own process group (stop() ends the server and its service processes), sent
        # SIGTERM by the kernel if this process dies: the same guard as the STAC API's
        preexec_fn=_die_with_parent,
    )
    track(proc)
    server = PrefectServer(url=url, process=proc, log=log_file)
    try:
        _wait_healthy(server, startup_timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_healthy(server: PrefectServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.running:
            raise ServiceUnavailableError(
                f"prefect server start exited with code {server.process.returncode}: "
                f"{server.log_tail()}"
            )
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise ServiceUnavailableError(
        f"the Prefect server at {server.url} did not answer within {timeout:.0f} s: "
        f"{server.log_tail()}"
    )


# ---- serving -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for this process and the flow runs it spawns; restore after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


def serve_project(
    prefect_file: Path | str = DEFAULT_PREFECT_FILE,
    *,
    names: Sequence[str] = (),
    server_port: int = DEFAULT_SERVER_PORT,
    limit: int | None = None,
    announce: Any = print,
) -> None:
    """Serve the project's deployments until interrupted, starting what the embedded default
    lacks (module docstring): a Prefect server when ``PREFECT_API_URL`` is unset, the demo
    archive's STAC API when ``EO_STAC_API_URL`` is unset. `limit` caps concurrent flow runs;
    `announce` receives one line per service started.
    """
    import prefect
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.demo import ensure_archive
    from tasks.stac_server import serve_stac
    from tasks.synthetic import stac_files

    deployments = build_deployments(load_specs(prefect_file), names=names)
    settings = get_settings()
    with contextlib.ExitStack() as stack:
        api_url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
        if not api_url:
            server = stack.enter_context(start_prefect_server(port=server_port))
            api_url = server.api_url
            announce(f"Prefect server (SQLite) at {server.url}: the UI; stopped with eo serve")
        env = {"PREFECT_API_URL": api_url}
        if settings.stac_api_url is None:
            root = settings.cache_dir / "archive-demo"
            announce(f"demo archive {root} (created on first use, ~1 min)")
            archive = ensure_archive.fn(str(root))
            stac = stack.enter_context(serve_stac(stac_files(Path(archive["root"]))))
            env["EO_STAC_API_URL"] = stac.url
            announce(f"STAC API over the demo archive at {stac.url}")
        stack.enter_context(_environment(**env))
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api_url}))
        prefect.serve(*deployments, limit=limit)
