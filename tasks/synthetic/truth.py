"""Ground truth of a synthetic archive: written beside it, read back through `Truth`.

The pipeline never reads these files; tests and model training do. Layout under ``ROOT/truth``:

* ``landcover.tif``: uint8 `LandCover` codes, one band per year (band description = year), on
  the AOI's 10 m grid in the main UTM zone (`Truth.grid`).
* ``builtup.tif``: uint8 0/1 built-up per year, same grid and bands.
* ``change.tif``: uint8 0/1 land-cover change between consecutive years (band i: year i to i+1).
* ``clouds/<item id>.tif``: uint8 `TruthClass` codes (0 clear, 1 cloud, 2 thin cirrus,
  3 shadow, 255 no data) on the item's finest product grid.
* ``scenes.json``: per item id: platform, datetime, EPSG, misregistration, cloud fractions.

Misregistration sign convention: image content that is at true map position (x, y) appears at
(x + dx_m, y + dy_m) in the item's CRS; in native pixels dcol = dx_m / res and drow = -dy_m / res
(rows grow southward).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray

from tasks.aoi import GridSpec
from tasks.errors import InputError
from tasks.synthetic.acquisitions import Acquisition, plan_archive
from tasks.synthetic.clouds import TruthClass
from tasks.synthetic.config import ArchiveConfig
from tasks.synthetic.landscape import TRUTH_RESOLUTION, aoi_bounds
from tasks.synthetic.render import RenderedItem, render_acquisition
from tasks.synthetic.world import LandCover, World, build_world, main_epsg

__all__ = [
    "Raster",
    "SceneTruth",
    "Shift",
    "Truth",
    "open_truth",
    "scene_record",
    "write_truth_rasters",
]


class Raster(NamedTuple):
    """An array with its georeferencing: dims (row, col), `transform` of the pixel corners,
    `crs` as ``EPSG:<code>``."""

    array: NDArray[Any]
    transform: Affine
    crs: str


@dataclass(frozen=True)
class Shift:
    """Misregistration of one scene (sign convention in the module docstring)."""

    dx_m: float
    dy_m: float
    resolution: float

    @property
    def dcol_px(self) -> float:
        return self.dx_m / self.resolution

    @property
    def drow_px(self) -> float:
        return -self.dy_m / self.resolution


@dataclass(frozen=True)
class SceneTruth:
    """What is true about one item: fractions are of its data pixels on its finest grid."""

    id: str
    collection: str
    platform: str
    datetime: datetime
    epsg: int
    shift: Shift
    cloud_fraction: float
    cirrus_fraction: float
    shadow_fraction: float
    valid_fraction: float


def scene_record(acq: Acquisition, rendered: RenderedItem) -> dict[str, Any]:
    """The JSON record of one item in ``scenes.json``."""
    mask = rendered.truth_mask
    data = mask != TruthClass.NODATA
    n = max(int(data.sum()), 1)
    finest = rendered.spec.grids[0].resolution
    native = 30.0 if acq.track.family == "landsat" else 10.0
    return {
        "collection": rendered.spec.collection,
        "platform": acq.platform,
        "datetime": acq.datetime.isoformat(),
        "epsg": rendered.spec.epsg,
        "shift": {
            "dx_m": acq.shift_m[0],
            "dy_m": acq.shift_m[1],
            "resolution": native,
            "dcol_px": acq.shift_m[0] / native,
            "drow_px": -acq.shift_m[1] / native,
        },
        "cloud_fraction": float((mask == TruthClass.CLOUD).sum()) / n,
        "cirrus_fraction": float((mask == TruthClass.CIRRUS).sum()) / n,
        "shadow_fraction": float((mask == TruthClass.SHADOW).sum()) / n,
        "valid_fraction": float(data.mean()),
        "mask_resolution": finest,
        "acquisition": acq.key,
    }


def _write_stack(path: Path, stack: NDArray[np.uint8], grid: GridSpec, names: list[str]) -> None:
    profile = grid.geotiff_profile(
        stack.shape[0], "uint8", compress="deflate", tiled=True, blockxsize=128, blockysize=128
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(stack)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)


def aoi_grid(config: ArchiveConfig) -> GridSpec:
    """The AOI's 10 m truth grid in the main UTM zone."""
    epsg = main_epsg(config)
    return GridSpec(epsg, TRUTH_RESOLUTION, aoi_bounds(config, epsg))


def write_truth_rasters(folder: Path, world: World) -> None:
    """Write land cover, built-up and change stacks of `world` (cropped to the AOI)."""
    folder.mkdir(parents=True, exist_ok=True)
    window = world.layout.aoi_window
    landcover = world.landcover[:, window[0], window[1]]
    rows, cols = landcover.shape[1:]
    xmin, _, _, ymax = world.layout.grid.bounds
    r = world.layout.grid.resolution
    x0, y1 = xmin + window[1].start * r, ymax - window[0].start * r
    grid = GridSpec(world.layout.grid.epsg, r, (x0, y1 - rows * r, x0 + cols * r, y1))
    years = [str(y) for y in world.years]
    _write_stack(folder / "landcover.tif", landcover, grid, years)
    _write_stack(
        folder / "builtup.tif", (landcover == LandCover.BUILTUP).astype(np.uint8), grid, years
    )
    change = (landcover[1:] != landcover[:-1]).astype(np.uint8)
    _write_stack(
        folder / "change.tif",
        change,
        grid,
        [f"{a}-{b}" for a, b in itertools.pairwise(years)],
    )


class Truth:
    """Read access to the ground truth of the archive at `root` (see the module docstring).

    `noise_free` recomputes a scene deterministically from the configuration's seed.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "archive.json"
        if not meta_path.is_file():
            raise InputError(
                f"{self.root} holds no synthetic archive (archive.json is missing); "
                "create one with create_archive."
            )
        meta = json.loads(meta_path.read_text())
        self.config = ArchiveConfig.model_validate(meta["config"])
        self.grid = aoi_grid(self.config)
        self.years: tuple[int, ...] = tuple(self.config.years)
        records = json.loads((self.root / "truth" / "scenes.json").read_text())
        self.scenes: dict[str, SceneTruth] = {key: _scene(key, rec) for key, rec in records.items()}
        self._acquisition_of = {key: rec["acquisition"] for key, rec in records.items()}

    def _band(self, name: str, year: int) -> NDArray[np.uint8]:
        if year not in self.years:
            raise InputError(
                f"year {year} is not simulated; choose one of {self.years[0]}..{self.years[-1]}."
            )
        with rasterio.open(self.root / "truth" / name) as src:
            return src.read(self.years.index(year) + 1)

    def landcover(self, year: int) -> NDArray[np.uint8]:
        """`LandCover` codes of `year` on `grid` (dims (row, col))."""
        return self._band("landcover.tif", year)

    def builtup(self, year: int) -> NDArray[np.bool_]:
        """Built-up mask of `year` on `grid`."""
        return self._band("builtup.tif", year).astype(bool)

    def change(self, year_a: int, year_b: int) -> NDArray[np.bool_]:
        """True where the land cover of `year_b` differs from that of `year_a`."""
        return np.asarray(self.landcover(year_a) != self.landcover(year_b))

    def shift(self, scene_id: str) -> Shift:
        """Misregistration of item `scene_id`."""
        return self._scene(scene_id).shift

    def cloud_mask(self, scene_id: str) -> Raster:
        """Truth cloud mask of item `scene_id` (`TruthClass` codes) on its finest grid."""
        self._scene(scene_id)
        with rasterio.open(self.root / "truth" / "clouds" / f"{scene_id}.tif") as src:
            return Raster(src.read(1), src.transform, f"EPSG:{src.crs.to_epsg()}")

    def noise_free(self, scene_id: str, band: str, *, shifted: bool = True) -> Raster:
        """Reflectance of `band` of item `scene_id` exactly as rendered (misregistration,
        clouds, phenology, no data as NaN) before sensor noise and DN quantisation, on the
        item's grid. `shifted=False` renders it without misregistration."""
        self._scene(scene_id)
        acquisition = next(a for a in self._plan if a.key == self._acquisition_of[scene_id])
        rendered = render_acquisition(self.config, self._world, acquisition, shifted=shifted)
        item = next(r for r in rendered if r.spec.id == scene_id)
        try:
            array, grid = item.band(band)
        except KeyError as err:
            raise InputError(
                f"{scene_id} has no band {band!r}; use one of its reflectance assets."
            ) from err
        return Raster(array, grid.transform, grid.crs)

    def _scene(self, scene_id: str) -> SceneTruth:
        try:
            return self.scenes[scene_id]
        except KeyError:
            raise InputError(
                f"unknown scene id {scene_id!r}; see Truth.scenes for the ids."
            ) from None

    @cached_property
    def _world(self) -> World:
        return build_world(self.config)

    @cached_property
    def _plan(self) -> list[Acquisition]:
        return plan_archive(self.config)


def _scene(scene_id: str, rec: dict[str, Any]) -> SceneTruth:
    s = rec["shift"]
    return SceneTruth(
        id=scene_id,
        collection=rec["collection"],
        platform=rec["platform"],
        datetime=datetime.fromisoformat(rec["datetime"]),
        epsg=rec["epsg"],
        shift=Shift(s["dx_m"], s["dy_m"], s["resolution"]),
        cloud_fraction=rec["cloud_fraction"],
        cirrus_fraction=rec["cirrus_fraction"],
        shadow_fraction=rec["shadow_fraction"],
        valid_fraction=rec["valid_fraction"],
    )


def open_truth(root: Path) -> Truth:
    """The ground truth of the synthetic archive at `root`."""
    return Truth(Path(root))
