"""Exceptions of the model layer.

Each subclasses the project's `PipelineError` and the matching built-in, so callers that do not
know the pipeline still catch them (`except ValueError`, `except LookupError`).
"""

from __future__ import annotations

from tasks.errors import InputError, PipelineError

__all__ = ["BandMismatchError", "WeightsIntegrityError", "WeightsNotFoundError"]


class WeightsNotFoundError(PipelineError, LookupError):
    """No weights of that name in the shipped folder nor in the extra folder given.

    The message lists the names that are available and the folders searched.
    """


class WeightsIntegrityError(PipelineError, ValueError):
    """A weights file does not match its spec: sha256, state-dict keys/shapes, or a corrupt spec.

    Never retried: the file on disk is wrong. Re-copy or re-train the weights.
    """


class BandMismatchError(InputError):
    """The input bands are not the bands the model was trained on, in that order.

    The message names the expected and the given bands and how to select them.
    """
