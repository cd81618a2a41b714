"""Tiles: split a product grid into pixel-aligned tiles with a halo, and put them back together.

Large AOIs are processed tile by tile (composites, model, product arrays), the tiles fanned out
with Prefect's ``.map()`` (on a Dask cluster with `tile_task_runner`), and the cores mosaicked
into one product on the AOI's grid::

    grid (GridSpec of the AOI) --split_grid--> [Tile, ...]
      Tile.outer_grid  core + halo, clipped to the grid: what a tile is computed on
      Tile.core_grid   the tile's share of the mosaic (the cores partition the grid)
    per tile: compute on outer_grid -> crop_core -> mosaic(...) on the grid

**Why our own split, not sentinelhub's `UtmZoneSplitter` / `UtmGridSplitter`.** Those cut a
geometry into boxes ``(N * bbox_size + offset)`` metres in the UTM zone (or MGRS grid zone) of
each part of it. The product is one `GridSpec` in the UTM zone of the AOI's centroid
(`tasks.aoi.grid_for_aoi`); an AOI over a zone boundary would come back partly in the
neighbouring zone's CRS, i.e. tiles that need resampling onto the grid. Their boxes would also
run past the grid's edges and carry no halo. A tile must be an exact pixel window of the grid,
so that the mosaic copies arrays (no resampling, no seam): that is integer arithmetic on the
grid (`split_grid`), shorter than adapting the splitter's boxes to it.

**Alignment.** Tile sides and halos are multiples of `ALIGN_PX` and every window starts at a
multiple of it (or at the grid's edge), so the 2x2 max-pooling of the U-Net / FC-Siam-diff
sees the same pooling cells in a tile as in one pass over the whole grid.

**Halo.** A tile is computed on its core plus `halo_px` on every side that has a neighbour
(clipped at the grid's edge, as a whole-grid pass is), then cropped to the core. With a halo
wider than everything that looks at neighbouring pixels (a CNN's receptive field, bilinear
resampling, co-registration shifts, cloud-mask dilation) a tile's core is the same as that part
of a whole-grid pass; see `tasks.products.HALO_PX` for what was measured.

Pixel windows are ``(row, col, height, width)`` in pixels of the parent grid, rows from the
north edge, columns from the west edge (the `GridSpec.transform` convention).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from tasks.aoi import GridSpec
from tasks.errors import InputError, PipelineError
from tasks.settings import get_settings

__all__ = [
    "ALIGN_PX",
    "PixelWindow",
    "Tile",
    "crop_core",
    "grid_windows",
    "local_dask_scheduler",
    "mosaic",
    "single_tile",
    "split_grid",
    "tile_task_runner",
    "window_in",
]

#: Tile sides and halos are multiples of this, and windows start on it: 2**4, the deepest
#: 2x2 pooling of the default `models.unet.UNet` / `models.changenet.FCSiamDiff` (depth 4; the
#: shipped weights use depth 3, i.e. 8).
ALIGN_PX = 16

#: Fraction of a pixel below which a sub-grid's offset counts as a whole number of pixels.
_PIXEL_EPS = 1e-6


@dataclass(frozen=True)
class PixelWindow:
    """Rows ``row : row + height``, columns ``col : col + width`` of a grid (pixels)."""

    row: int
    col: int
    height: int
    width: int

    @property
    def rows(self) -> slice:
        return slice(self.row, self.row + self.height)

    @property
    def cols(self) -> slice:
        return slice(self.col, self.col + self.width)

    def grid_of(self, grid: GridSpec) -> GridSpec:
        """The window as a `GridSpec` of its own, on `grid`'s pixel grid."""
        xmin, _, _, ymax = grid.bounds
        r = grid.resolution
        return GridSpec(
            epsg=grid.epsg,
            resolution=r,
            bounds=(
                xmin + self.col * r,
                ymax - (self.row + self.height) * r,
                xmin + (self.col + self.width) * r,
                ymax - self.row * r,
            ),
        )


@dataclass(frozen=True)
class Tile:
    """One tile of `grid`: its `core` (its share of the mosaic) and the `outer` window (core +
    halo, clipped to the grid) it is computed on; both in pixels of `grid`."""

    grid: GridSpec
    index: tuple[int, int]  # (tile row, tile column)
    core: PixelWindow
    outer: PixelWindow
    tile_size_px: int
    halo_px: int

    @property
    def name(self) -> str:
        """``r<row>c<col>``: readable in task run names and file names."""
        return f"r{self.index[0]:03d}c{self.index[1]:03d}"

    @property
    def core_grid(self) -> GridSpec:
        return self.core.grid_of(self.grid)

    @property
    def outer_grid(self) -> GridSpec:
        return self.outer.grid_of(self.grid)

    @property
    def crop(self) -> tuple[slice, slice]:
        """(rows, cols) of the core inside an array on `outer_grid`."""
        dy, dx = self.core.row - self.outer.row, self.core.col - self.outer.col
        return slice(dy, dy + self.core.height), slice(dx, dx + self.core.width)


def _cuts(n: int, size: int) -> list[int]:
    """Tile edges along an axis of `n` pixels: every `size` pixels, the remainder joined to the
    last tile when it is under half a tile (so no tile is narrower than ``size / 2`` unless the
    whole axis is: a 3 px sliver would starve a CNN of context and pooling levels)."""
    count = max(1, math.floor(n / size + 0.5))
    return [i * size for i in range(count)] + [n]


def _check_multiple(name: str, value: int, align_px: int, minimum: int) -> None:
    if value < minimum or value % align_px:
        raise InputError(
            f"{name}: {value} px must be a multiple of {align_px} (>= {minimum}) so that tiles "
            f"start on the models' pooling grid; e.g. {max(minimum, value // align_px * align_px)}."
        )


def split_grid(
    grid: GridSpec,
    *,
    tile_size_px: int,
    halo_px: int = 0,
    align_px: int = ALIGN_PX,
    aoi: BaseGeometry | None = None,
) -> list[Tile]:
    """Row-major tiles of about `tile_size_px` a side covering `grid`, each with `halo_px`.

    Cores start every `tile_size_px` pixels from the grid's north-west corner; the last tile of
    a row/column takes the remainder (its side is between half and one and a half tiles). The
    cores partition the grid: no gap, no overlap. A grid no larger than about one tile gives one
    tile, the whole grid, without halo: the same work as an untiled run.

    `aoi`: the area of interest in the grid's CRS; tiles whose core does not overlap it are
    left out (an irregular AOI needs no work over the empty corners of its bounding box).
    Raises `InputError` when the sizes are not multiples of `align_px`.
    """
    _check_multiple("tile_size_px", tile_size_px, align_px, align_px)
    _check_multiple("halo_px", halo_px, align_px, 0)
    rows, cols = grid.shape
    row_cuts, col_cuts = _cuts(rows, tile_size_px), _cuts(cols, tile_size_px)
    tiles = []
    for i, (r0, r1) in enumerate(itertools.pairwise(row_cuts)):
        for j, (c0, c1) in enumerate(itertools.pairwise(col_cuts)):
            core = PixelWindow(r0, c0, r1 - r0, c1 - c0)
            o_r0, o_c0 = max(0, r0 - halo_px), max(0, c0 - halo_px)
            o_r1, o_c1 = min(rows, r1 + halo_px), min(cols, c1 + halo_px)
            outer = PixelWindow(o_r0, o_c0, o_r1 - o_r0, o_c1 - o_c0)
            tile = Tile(grid, (i, j), core, outer, tile_size_px, halo_px)
            if aoi is None or box(*tile.core_grid.bounds).intersection(aoi).area > 0:
                tiles.append(tile)
    if not tiles:
        raise InputError(
            f"aoi: no tile of the grid {grid.bounds} (EPSG:{grid.epsg}) overlaps the AOI; "
            "give the AOI in the grid's CRS."
        )
    return tiles


def grid_windows(grid: GridSpec, size_px: int) -> Iterator[PixelWindow]:
    """Row-major windows of `size_px` a side partitioning `grid` (the last row and column take
    the remainder): the order in which rasters larger than memory are written and read."""
    if size_px < 1:
        raise InputError(f"size_px: {size_px} must be >= 1 pixel.")
    rows, cols = grid.shape
    for r in range(0, rows, size_px):
        for c in range(0, cols, size_px):
            yield PixelWindow(r, c, min(size_px, rows - r), min(size_px, cols - c))


def single_tile(grid: GridSpec) -> Tile:
    """The whole of `grid` as one tile (no halo): the untiled case."""
    rows, cols = grid.shape
    whole = PixelWindow(0, 0, rows, cols)
    return Tile(grid, (0, 0), whole, whole, max(rows, cols), 0)


def window_in(grid: GridSpec, sub: GridSpec) -> PixelWindow:
    """The pixel window of `sub` inside `grid`.

    Raises `InputError` when `sub` is not on `grid`'s pixel grid (another CRS or resolution, an
    offset that is not a whole number of pixels) or reaches outside it.
    """
    if sub.epsg != grid.epsg or not math.isclose(sub.resolution, grid.resolution):
        raise InputError(
            f"grid EPSG:{sub.epsg} at {sub.resolution} m is not on EPSG:{grid.epsg} at "
            f"{grid.resolution} m; tiles must share the product grid's CRS and resolution."
        )
    r = grid.resolution
    col_f = (sub.bounds[0] - grid.bounds[0]) / r
    row_f = (grid.bounds[3] - sub.bounds[3]) / r
    col, row = round(col_f), round(row_f)
    if abs(col_f - col) > _PIXEL_EPS or abs(row_f - row) > _PIXEL_EPS:
        raise InputError(
            f"grid bounds {sub.bounds} are offset by ({row_f:.4f}, {col_f:.4f}) pixels from "
            f"{grid.bounds}: not a whole number of pixels; snap them to the product grid."
        )
    height, width = sub.shape
    rows, cols = grid.shape
    if row < 0 or col < 0 or row + height > rows or col + width > cols:
        raise InputError(f"grid bounds {sub.bounds} reach outside {grid.bounds}.")
    return PixelWindow(row, col, height, width)


def crop_core(array: np.ndarray, tile: Tile) -> np.ndarray:
    """The core of `array` ``(..., y, x)`` on `tile.outer_grid`: ``(..., core rows, cols)``."""
    if array.shape[-2:] != (tile.outer.height, tile.outer.width):
        raise InputError(
            f"array of {array.shape[-2:]} px is not on tile {tile.name}'s outer window "
            f"({tile.outer.height}, {tile.outer.width})."
        )
    rows, cols = tile.crop
    return array[..., rows, cols]


def mosaic(
    parts: Iterable[tuple[Tile, Mapping[str, np.ndarray]]],
    grid: GridSpec,
    *,
    fill: Mapping[str, float] | None = None,
    default_fill: float = float("nan"),
) -> dict[str, np.ndarray]:
    """Put tile cores back on `grid`: ``{band: (y, x) float32}`` from ``(tile, {band: core})``.

    Every part must have the same bands, arrays of its core's shape, and tiles of `grid`.
    Pixels no tile covers (tiles left out by `split_grid`'s `aoi`) are `fill` of their band
    (default `default_fill`, NaN). Raises `PipelineError` when two cores overlap.
    """
    rows, cols = grid.shape
    out: dict[str, np.ndarray] = {}
    covered = np.zeros((rows, cols), dtype=bool)
    for tile, arrays in parts:
        if tile.grid != grid:
            raise PipelineError(f"tile {tile.name} belongs to {tile.grid}, not to {grid}.")
        if not out:
            fills = fill or {}
            out = {
                b: np.full((rows, cols), fills.get(b, default_fill), dtype=np.float32)
                for b in arrays
            }
        if set(arrays) != set(out):
            raise PipelineError(
                f"tile {tile.name} has bands {sorted(arrays)}, the others {sorted(out)}."
            )
        c = tile.core
        if covered[c.rows, c.cols].any():
            raise PipelineError(f"tile {tile.name} overlaps another tile's core.")
        covered[c.rows, c.cols] = True
        for band, values in arrays.items():
            if values.shape != (c.height, c.width):
                raise PipelineError(
                    f"tile {tile.name}: band {band!r} is {values.shape}, its core "
                    f"({c.height}, {c.width})."
                )
            out[band][c.rows, c.cols] = values
    if not out:
        raise PipelineError("mosaic: no tiles given.")
    return out


# ---- where the tiles run ------------------------------------------------------------------------
@contextmanager
def local_dask_scheduler() -> Iterator[None]:
    """Compute dask graphs inside the block on this process's threads.

    In a task on a Dask worker, dask's default scheduler is the cluster itself
    (``distributed.get_client()``): every ``.compute()`` of the analysis-ready stage would ship
    thousands of tiny chunk tasks through the scheduler while the calling task blocks a worker
    thread waiting for them (slow, and a deadlock once every worker thread waits). A tile is
    the unit of distribution; its chunks stay on its worker. `dask.config.set` is process-wide:
    run tile workers with one thread each (``--nthreads 1``), as `tile_task_runner` says.
    """
    with dask.config.set(scheduler="threads"):
        yield


def tile_task_runner(address: str | None = None) -> TaskRunner[Any]:
    """The task runner of the product flows (where their ``.map()`` tile tasks run).

    `address` (default ``EO_DASK_ADDRESS``): a Dask scheduler, e.g. ``tcp://10.0.0.5:8786``;
    the tasks run on its workers through prefect-dask's ``DaskTaskRunner``. The workers need
    this project installed, the same ``EO_*`` settings (and Prefect API URL), and an
    ``EO_CACHE_DIR`` the flow's process can read (a tile's product arrays come back as a file
    there: a shared volume when the workers run on other machines). One thread per worker
    (``dask worker --nthreads 1``): a tile task uses the cores itself (dask threads, torch); the
    nanny starts workers with ``OMP_NUM_THREADS=1``, so raise
    ``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__OMP_NUM_THREADS`` to the cores per worker
    for torch. Unset: Prefect's default ``ThreadPoolTaskRunner``, threads in the flow's process
    (``PREFECT_TASK_RUNNER_THREAD_POOL_MAX_WORKERS`` bounds how many tiles are in memory at once).

    Model outputs are identical between runners for the same number of torch threads; across
    thread counts they may differ in the last bit (float32 sums in another order).
    """
    address = address or get_settings().dask_address
    if not address:
        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner  # imports distributed: only when asked for

    return DaskTaskRunner(address=address)
