"""Child processes the pipeline starts (STAC API, Prefect server): stopped, never orphaned.

Each is started in a process group of its own (``start_new_session=True``), registered with
`track`, and stopped with `stop_process_group`: SIGTERM to the whole group, SIGKILL after a
timeout. Whatever is still tracked at interpreter exit gets SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess

__all__ = ["stop_process_group", "track"]

_LIVE: set[subprocess.Popen[bytes]] = set()


def track(proc: subprocess.Popen[bytes]) -> None:
    """Stop `proc`'s process group at interpreter exit unless `stop_process_group` ran first."""
    _LIVE.add(proc)


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM `proc`'s process group, SIGKILL after `timeout` seconds; wait for it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    _LIVE.discard(proc)


@atexit.register
def _stop_all() -> None:
    for proc in list(_LIVE):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
