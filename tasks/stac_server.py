"""A real STAC API on 127.0.0.1: ``rustac serve`` over a folder of Collections and Items.

The pipeline talks to it with pystac-client exactly as to Earth Search. The server keeps
everything in memory (rustac's in-process backend): start it, use it, stop it.

    with serve_stac(stac_files(root)) as server:
        scenes = discover(aoi, "2020-01-01", "2021-01-01", ["landsat-c2-l2"], stac_url=server.url)

No orphan processes: the server runs in its own process group, is stopped on context exit and at
interpreter exit, and on Linux the kernel sends it SIGTERM if the process that started it dies.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tasks.errors import InputError, ServiceUnavailableError
from tasks.processes import stop_process_group, track

__all__ = ["StacServer", "free_port", "serve_stac"]

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _rustac_executable() -> str:
    # The console script sits next to the interpreter in a venv; fall back to PATH.
    beside = Path(sys.executable).with_name("rustac")
    if beside.exists():
        return str(beside)
    found = shutil.which("rustac")
    if found is None:
        raise ServiceUnavailableError(
            "the `rustac` command was not found; install the project (`make install`) "
            "or `pip install rustac`."
        )
    return found


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class StacServer:
    """A running ``rustac serve``; `url` is the STAC API root (no trailing slash)."""

    url: str
    process: subprocess.Popen[bytes]
    files: tuple[Path, ...] = field(default=())
    # the server's stderr goes to a file, not a pipe: a pipe nobody reads fills up and blocks it
    log: Any = field(default=None, repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after `timeout` seconds)."""
        stop_process_group(self.process, timeout)
        if self.log is not None:
            self.log.close()

    def stderr_tail(self, n: int = 2000) -> str:
        """The last `n` characters the server wrote to stderr."""
        if self.log is None or self.log.closed:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace").strip()[-n:]

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def __enter__(self) -> StacServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_stac(
    files: Sequence[Path | str],
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    startup_timeout: float = 60.0,
) -> StacServer:
    """Start ``rustac serve FILES`` on `host`:`port` (default: a free port); wait until it answers.

    `files` are Collection JSON files and Item / ItemCollection JSON or ndjson files.
    Raises `InputError` if a file is missing and `ServiceUnavailableError` if the server does not
    come up within `startup_timeout` seconds (its stderr is quoted in the message).
    """
    paths = tuple(Path(f) for f in files)
    if not paths:
        raise InputError("files: give at least one Collection or Item file to serve.")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputError(f"files: not found: {', '.join(missing)}")
    port = port or free_port(host)
    addr = f"{host}:{port}"
    cmd = [_rustac_executable(), "serve", "--addr", addr, *[str(p) for p in paths]]
    log.info("starting STAC API: rustac serve on %s over %d file(s)", addr, len(paths))
    log_file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; closed in stop()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        preexec_fn=_die_with_parent,
    )
    track(proc)
    server = StacServer(url=f"http://{addr}", process=proc, files=paths, log=log_file)
    try:
        _wait_ready(server, startup_timeout)
    except BaseException:
        server.stop()
        raise
    log.info("STAC API ready at %s", server.url)
    return server


def _wait_ready(server: StacServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if not server.running:
            raise ServiceUnavailableError(
                f"rustac serve exited with code {server.process.returncode} before answering: "
                f"{server.stderr_tail()}"
            )
        try:
            r = httpx.get(f"{server.url}/collections", timeout=2.0)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise ServiceUnavailableError(
        f"the STAC API at {server.url} did not answer within {timeout:.0f} s; "
        "large archives take longer to load: raise startup_timeout."
    )
