"""Factories shared by the model and inference tests: specs, composites, tiny models.

Grids use a real UTM CRS (EPSG:32633, 10 m pixels) in their attrs and coords, like the
analysis-ready stage produces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from models.spec import Task, TrainingData, WeightsSpec

BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir16", "swir22")
INDICES: tuple[str, ...] = ("ndvi", "ndbi", "mndwi")
ORIGIN = (500_000.0, 5_200_000.0)  # UTM 33N easting, northing of the upper-left corner (m)
RES = 10.0

#: Reflectance of pure surfaces in the harmonized bands (blue, green, red, nir, swir16, swir22):
#: `tasks.synthetic.spectra.band_table("landsat-8")`, rounded to 3 decimals.
VEGETATION = (0.040, 0.071, 0.036, 0.450, 0.285, 0.143)
CONCRETE = (0.133, 0.168, 0.210, 0.246, 0.368, 0.334)
SOIL = (0.088, 0.121, 0.162, 0.223, 0.297, 0.268)
WATER = (0.050, 0.044, 0.025, 0.006, 0.003, 0.002)


def make_spec(
    task: Task,
    architecture: str,
    *,
    name: str | None = None,
    bands: Sequence[str] = BANDS,
    indices: Sequence[str] = INDICES,
    **kwargs: Any,
) -> WeightsSpec:
    """A spec with plausible normalization (reflectance ~0.15 +- 0.1, indices 0 +- 0.5)."""
    return WeightsSpec(
        name=name or f"test-{task}",
        task=task,
        architecture=architecture,
        kwargs=kwargs,
        bands=tuple(bands),
        indices=tuple(indices),
        mean=(0.15,) * len(bands) + (0.0,) * len(indices),
        std=(0.1,) * len(bands) + (0.5,) * len(indices),
        classes=("negative", "positive"),
        training_data=TrainingData(source="none", notes="unit test"),
    )


def grid_coords(height: int, width: int) -> dict[str, Any]:
    """Pixel-centre UTM coordinates of a north-up grid."""
    return {
        "y": ORIGIN[1] - RES * (np.arange(height) + 0.5),
        "x": ORIGIN[0] + RES * (np.arange(width) + 0.5),
    }


def make_composite(
    height: int,
    width: int,
    *,
    bands: Sequence[str] = BANDS,
    seed: int = 0,
    data: np.ndarray | None = None,
) -> xr.DataArray:
    """Composite ``(band, y, x)`` float32 reflectance: random 0.02..0.4 unless `data` given."""
    if data is None:
        data = np.random.default_rng(seed).uniform(0.02, 0.4, (len(bands), height, width))
    return xr.DataArray(
        np.asarray(data, dtype=np.float32),
        dims=("band", "y", "x"),
        coords={"band": list(bands), **grid_coords(height, width)},
        attrs={"crs": "EPSG:32633"},
    )


def make_annual(
    years: Sequence[int],
    height: int,
    width: int,
    *,
    bands: Sequence[str] = BANDS,
    seed: int = 0,
    data: np.ndarray | None = None,
    dim: str = "period",
) -> xr.DataArray:
    """Annual composites ``(period, band, y, x)`` labelled "1985", ... like tasks.composite."""
    if data is None:
        shape = (len(years), len(bands), height, width)
        data = np.random.default_rng(seed).uniform(0.02, 0.4, shape)
    labels: list[Any] = [str(y) for y in years] if dim == "period" else list(years)
    return xr.DataArray(
        np.asarray(data, dtype=np.float32),
        dims=(dim, "band", "y", "x"),
        coords={dim: labels, "band": list(bands), **grid_coords(height, width)},
        attrs={"crs": "EPSG:32633"},
    )


class SmallConv(nn.Module):
    """Two 3x3 convolutions (receptive field 5x5, reaches 2 px): a stand-in footprint model."""

    task = "footprint"

    def __init__(self, in_channels: int, *, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 1, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class SmallSiamese(nn.Module):
    """``conv(after) - conv(before)`` with one `kernel` x `kernel` conv: a stand-in change model."""

    task = "change"

    def __init__(self, in_channels: int, *, kernel: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(in_channels, 1, kernel, padding=kernel // 2)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(after) - self.conv(before)
        return out
