"""The pipeline's small, flat set of exceptions.

Each subclasses the matching built-in so callers that do not know the pipeline still catch them
(`except ValueError` catches bad input, `except OSError` catches transient I/O).
"""

from __future__ import annotations

__all__ = [
    "InputError",
    "PipelineError",
    "SceneRejectedError",
    "ServiceUnavailableError",
    "TransientIOError",
]


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class InputError(PipelineError, ValueError):
    """Bad input from the caller (AOI, dates, collection, parameters).

    The message says what to change.
    """


class SceneRejectedError(PipelineError, ValueError):
    """A scene that cannot be used (corrupt, no valid pixels).

    Skip it with its reason; never retry.
    """


class TransientIOError(PipelineError, OSError):
    """A failure worth retrying: HTTP 5xx, throttling, timeouts, truncated reads."""


class ServiceUnavailableError(PipelineError, ConnectionError):
    """A service (STAC API, object store) could not be reached after bounded retries.

    The message names the endpoint and the setting that points at it.
    """
