"""Retry policy shared by the Prefect task wrappers: retry transient failures only."""

from __future__ import annotations

from typing import Any

from tasks.errors import TransientIOError

__all__ = ["retry_transient_only"]


def retry_transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a `TransientIOError` (HTTP 5xx, timeouts), nothing else.

    Bad input, rejected scenes and unreachable services do not get better by trying again.
    """
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, TransientIOError)
