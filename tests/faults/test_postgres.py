"""Concurrent flows on a Prefect server backed by PostgreSQL: the documented path at scale.

SQLite, the embedded default, locks under concurrent flow runs (``database is locked``, then 503s
from the API); deployments/README.md and infra/ give the server PostgreSQL instead through
``PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://...``. This test takes that path
for real: it starts a private cluster of the host's PostgreSQL (Debian's ``postgresql`` package;
skipped when it is not installed), runs ``prefect server start`` on it, and makes several
processes run flows of many tasks at the same time against the server. Every run must complete,
every task run must be recorded, the server must not have reported a locked database or a 503,
and the rows must be in PostgreSQL (so the server did not quietly fall back to SQLite).

The cluster is throwaway: trust authentication on 127.0.0.1 only, ``fsync=off`` (a test
database; never in production). ``initdb`` refuses to run as root: under root the cluster
belongs to the ``postgres`` user the Debian package creates (or ``nobody``) and its processes
run as that user.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flows.serve import PrefectServer, start_prefect_server
from tasks.stac_server import _die_with_parent, free_port

pytestmark = pytest.mark.timeout(300)

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Where Debian / Ubuntu install the server binaries (``postgresql-<version>`` packages); the
#: client wrappers on PATH (postgresql-common) do not include ``initdb`` or ``postgres``.
DEBIAN_PG_GLOB = "/usr/lib/postgresql/*/bin"
#: The cluster's superuser and the Prefect database (names only: trust authentication).
PG_USER = "eo"
PG_DATABASE = "prefect"
#: Users that may own the cluster when the tests run as root, in order of preference.
CLUSTER_OWNERS = ("postgres", "nobody")

#: The load: PROCESSES client processes run FLOWS_PER_PROCESS flows each at the same time, each
#: flow TASKS tasks through its thread pool. NOTES: 10 flows x 200 tasks locks SQLite.
PROCESSES = 2
FLOWS_PER_PROCESS = 4
TASKS = 50
#: What the server or a client reports when the database cannot keep up: SQLite's lock, the
#: API's 503 (uvicorn's access log and httpx's error both say "503 Service Unavailable"),
#: SQLAlchemy's pool running dry, PostgreSQL's connection limit.
DB_TROUBLE = re.compile(
    r"database is locked|503 Service Unavailable|QueuePool limit|too many clients"
)

#: One client process: FLOWS_PER_PROCESS flows in threads, released together by a barrier.
#: Prints one JSON line: {"results": [...], "errors": [...]}.
LOAD_SCRIPT = """
import json, sys, threading
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

@task(cache_policy=NO_CACHE)
def square(x: int) -> int:
    return x * x

@flow(name="pg-load")
def load(tasks: int) -> int:
    return sum(f.result() for f in square.map(range(tasks)))

n_flows, n_tasks = int(sys.argv[1]), int(sys.argv[2])
barrier = threading.Barrier(n_flows)
results, errors = [], []

def one() -> None:
    barrier.wait()
    try:
        results.append(load(n_tasks))
    except BaseException as err:  # reported to the test, which fails on it
        errors.append(f"{type(err).__name__}: {err}")

threads = [threading.Thread(target=one) for _ in range(n_flows)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"results": results, "errors": errors}))
"""


def _pg_bindir() -> Path:
    """The directory of PostgreSQL's ``initdb`` and ``postgres``: PATH first, then Debian's
    versioned directories, newest version first; skips the test when there is none."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        bindir = Path(initdb).resolve().parent
        if (bindir / "postgres").is_file():
            return bindir
    candidates = sorted(
        (Path(p) for p in glob.glob(DEBIAN_PG_GLOB) if Path(p, "initdb").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in candidates:
        if (bindir / "postgres").is_file():
            return bindir
    pytest.skip(
        "PostgreSQL server binaries (initdb, postgres) not found on PATH or in "
        f"{DEBIAN_PG_GLOB}; install Debian's `postgresql` package to run this test."
    )


def _cluster_owner() -> pwd.struct_passwd | None:
    """The user the cluster runs as: None (this user) unless running as root, when initdb
    refuses to run; skips the test when no unprivileged user exists."""
    if os.geteuid() != 0:
        return None
    for name in CLUSTER_OWNERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.skip(
        f"running as root and none of the users {CLUSTER_OWNERS} exists: initdb refuses to run "
        "as root; run the tests as another user or create the `postgres` user."
    )


@dataclass
class PgCluster:
    """A running private PostgreSQL cluster on 127.0.0.1."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the Prefect database, as the server's setting takes it."""
        return f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{self.port}/{PG_DATABASE}"

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def query(self, sql: str, database: str = PG_DATABASE) -> list[Any]:
        """Run `sql` (asyncpg, the server's own driver); returns the rows."""
        import asyncpg

        async def main() -> list[Any]:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=self.port, user=PG_USER, database=database, timeout=10
            )
            try:
                return list(await conn.fetch(sql))
            finally:
                await conn.close()

        return asyncio.run(main())

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown (SIGINT to the postmaster), SIGKILL to its process group if needed."""
        proc = self.process
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)


def _as_owner(owner: pwd.struct_passwd | None) -> dict[str, Any]:
    """Popen keyword arguments that run a command as `owner` (nothing when None)."""
    if owner is None:
        return {}
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


def _start_cluster(bindir: Path, root: Path, owner: pwd.struct_passwd | None) -> PgCluster:
    """initdb a cluster in `root` and start its postmaster on a free port of 127.0.0.1."""
    data = root / "data"
    sockets = root / "sockets"
    sockets.mkdir()
    if owner is not None:
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    init = subprocess.run(
        [
            str(bindir / "initdb"),
            "--pgdata",
            str(data),
            "--username",
            PG_USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",  # a throwaway test cluster
        ],
        env=env,
        cwd=root,
        capture_output=True,
        timeout=120,
        check=False,
        **_as_owner(owner),
    )
    if init.returncode != 0:
        pytest.fail(f"initdb failed ({init.returncode}):\n{init.stdout!r}\n{init.stderr!r}")
    port = free_port()
    log = root / "postgres.log"
    with log.open("wb") as out:
        if owner is not None:
            os.chown(log, owner.pw_uid, owner.pw_gid)
        # the postmaster in the foreground, in its own process group, SIGTERMed (smart
        # shutdown) by the kernel if this process dies
        proc = subprocess.Popen(
            [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"port={port}",
                "-c",
                f"unix_socket_directories={sockets}",
                "-c",
                "max_connections=200",
                # durability off: a test database (never in production)
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            env=env,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            **_as_owner(owner),
        )
    import asyncpg

    cluster = PgCluster(port=port, process=proc, log=log)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"postgres exited ({proc.returncode}):\n{cluster.log_tail()}")
        try:
            cluster.query(f"CREATE DATABASE {PG_DATABASE}", database="postgres")
            return cluster
        except (OSError, asyncpg.CannotConnectNowError):  # not listening yet, starting up
            pass
        if time.monotonic() > deadline:
            cluster.stop()
            pytest.fail(f"postgres did not accept connections in 60 s:\n{cluster.log_tail()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster with an empty database `PG_DATABASE`, removed after."""
    bindir = _pg_bindir()
    owner = _cluster_owner()
    # not pytest's tmp_path: its parents are private to this user, and the cluster's owner
    # must be able to reach its directory
    root = Path(tempfile.mkdtemp(prefix="eo-pg-"))
    try:
        cluster = _start_cluster(bindir, root, owner)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_server(
    postgres: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrefectServer]:
    """``prefect server start`` with its database in `postgres`."""
    home = tmp_path_factory.mktemp("prefect-pg-home")
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres.url,
        "PREFECT_UI_ENABLED": "false",
    }
    with start_prefect_server(env=env) as server:
        yield server


def test_concurrent_flows_complete_on_postgresql(
    postgres: PgCluster, pg_server: PrefectServer, tmp_path: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_API_URL": pg_server.api_url,
        "PREFECT_HOME": str(tmp_path / "client-home"),
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false",  # never a fallback server of its own
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD_SCRIPT, str(FLOWS_PER_PROCESS), str(TASKS)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for _ in range(PROCESSES)
    ]
    outputs: list[tuple[int, str, str]] = []
    try:
        for proc in clients:
            stdout, stderr = proc.communicate(timeout=240)
            outputs.append((proc.returncode, stdout.decode(), stderr.decode(errors="replace")))
    finally:
        for proc in clients:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    expected = sum(x * x for x in range(TASKS))
    for code, out, err in outputs:
        assert code == 0, f"a client process failed ({code}):\n{err[-4000:]}"
        report = json.loads(out.strip().splitlines()[-1])
        assert report["errors"] == [], report["errors"]
        assert report["results"] == [expected] * FLOWS_PER_PROCESS
        trouble = DB_TROUBLE.findall(err)
        assert not trouble, f"a client saw {sorted(set(trouble))}:\n{err[-4000:]}"

    # the server recorded every run and task run (task runs arrive as events, written by the
    # server's task-run recorder shortly after the flow returns), in PostgreSQL
    n_flows = PROCESSES * FLOWS_PER_PROCESS
    deadline = time.monotonic() + 60
    while True:
        rows = postgres.query(
            "SELECT fr.id, fr.state_type, count(tr.id) AS tasks, "
            "count(tr.id) FILTER (WHERE tr.state_type = 'COMPLETED') AS done "
            "FROM flow_run fr JOIN flow f ON f.id = fr.flow_id "
            "LEFT JOIN task_run tr ON tr.flow_run_id = fr.id "
            "WHERE f.name = 'pg-load' GROUP BY fr.id, fr.state_type"
        )
        complete = len(rows) == n_flows and all(r["done"] == TASKS for r in rows)
        if complete or time.monotonic() > deadline:
            break
        time.sleep(1)
    summary = [(r["state_type"], r["tasks"], r["done"]) for r in rows]
    assert len(rows) == n_flows, f"{len(rows)} flow runs in PostgreSQL, not {n_flows}"
    assert all(r["state_type"] == "COMPLETED" for r in rows), summary
    assert all(r["tasks"] == r["done"] == TASKS for r in rows), summary

    server_log = pg_server.log_tail(10**8)
    trouble = DB_TROUBLE.findall(server_log)
    assert not trouble, f"the server reported {sorted(set(trouble))}:\n{server_log[-4000:]}"
    assert pg_server.running, f"the server died:\n{server_log[-4000:]}"
