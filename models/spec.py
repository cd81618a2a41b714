"""The weights spec: everything needed to use a checkpoint correctly, stored as JSON beside it.

A checkpoint ``<name>.pt`` (a plain ``state_dict``, loadable with ``weights_only=True``) comes
with ``<name>.json``, a `WeightsSpec`: the architecture and its constructor arguments, the input
channels in order (raw bands, then spectral indices), their normalization, the classes, the
calibration temperature, where the training labels came from, the metrics measured, the sha256
of the weights file, the software version and the creation date. `models.registry` checks the
sha256 and the input bands before any inference; products cite ``name`` + ``sha256``.
"""

from __future__ import annotations

import importlib.metadata
import math
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.features import INDEX_RANGES

__all__ = ["Task", "TrainingData", "WeightsSpec", "software_version"]

#: The three products a model can serve.
Task = Literal["change", "footprint", "dynamics"]

_SHA256 = r"^[0-9a-f]{64}$"
_NAME = r"^[a-z0-9][a-z0-9._-]{0,99}$"


def software_version() -> str:
    """Version of the installed ``eo-pipeline`` distribution ("unknown" when not installed)."""
    try:
        return importlib.metadata.version("eo-pipeline")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class TrainingData(BaseModel):
    """Where the labels came from.

    ``source="synthetic"``: the synthetic archive's ground truth (`world_seeds` name the worlds);
    ``source="labels"``: user labels (`labels` names them: a URL or file name and its version;
    `labels_sha256` pins the file's content).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["synthetic", "labels", "none"] = Field(
        description="synthetic ground truth, user labels, or none (untrained / test weights)"
    )
    world_seeds: tuple[int, ...] = Field(default=(), description="synthetic world seeds used")
    world: str = Field(
        default="demo",
        description="configuration the seeds apply to: demo, tiny, or sampled (each seed its "
        "own configuration, tasks.synthetic.sampler)",
    )
    labels: str | None = Field(default=None, description="user label set (URL or name + version)")
    labels_sha256: str | None = Field(
        default=None, pattern=_SHA256, description="sha256 of the user label file"
    )
    years: tuple[int, ...] = Field(default=(), description="calendar years the labels cover")
    notes: str = Field(default="", description="free text: sampling, splits, augmentations")


class WeightsSpec(BaseModel):
    """Frozen description of one checkpoint; see the module docstring.

    ``sha256`` and ``weights_file`` are None until `models.registry.save_weights` writes the
    file. ``mean``/``std`` normalize each input channel: ``(x - mean) / std``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    name: str = Field(pattern=_NAME, description="registry name, e.g. 'footprint-unet-s2'")
    task: Task
    architecture: str = Field(description="key of models.registry.ARCHITECTURES, e.g. 'unet'")
    kwargs: dict[str, int | float | bool | str] = Field(
        default_factory=dict, description="constructor keyword arguments of the architecture"
    )
    bands: tuple[str, ...] = Field(min_length=1, description="raw input bands, in order")
    indices: tuple[str, ...] = Field(default=(), description="spectral indices appended, in order")
    mean: tuple[float, ...] = Field(description="per input channel mean (bands, then indices)")
    std: tuple[float, ...] = Field(description="per input channel standard deviation (> 0)")
    classes: tuple[str, str] = Field(
        description="negative and positive class, e.g. ('not-built', 'built'); the model "
        "outputs one logit of the positive class"
    )
    temperature: float = Field(
        default=1.0, gt=0, description="calibration temperature: p = sigmoid(logit / T)"
    )
    training_data: TrainingData
    metrics: dict[str, float] = Field(
        default_factory=dict, description="e.g. {'f1': 0.91, 'ece': 0.02}"
    )
    weights_file: str | None = Field(default=None, description="file name beside the spec")
    sha256: str | None = Field(default=None, pattern=_SHA256)
    software_version: str = Field(default_factory=software_version)
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    description: str = ""

    @property
    def input_channels(self) -> tuple[str, ...]:
        """The model's input channels in order: raw bands, then indices."""
        return self.bands + self.indices

    @field_validator("bands", "indices")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"names must be unique, got {list(v)}")
        return v

    @field_validator("indices")
    @classmethod
    def _known_indices(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [i for i in v if i not in INDEX_RANGES]
        if unknown:
            raise ValueError(f"unknown spectral indices {unknown}; known: {sorted(INDEX_RANGES)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> WeightsSpec:
        n = len(self.input_channels)
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(
                f"mean and std need one value per input channel ({n}: {list(self.input_channels)}),"
                f" got {len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(m) for m in self.mean):
            raise ValueError("mean must be finite")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError("std must be finite and > 0")
        in_ch = self.kwargs.get("in_channels")
        if in_ch is not None and in_ch != n:
            raise ValueError(f"kwargs in_channels={in_ch} but the spec lists {n} input channels")
        if (self.sha256 is None) != (self.weights_file is None):
            raise ValueError("sha256 and weights_file are set together (by save_weights)")
        return self
