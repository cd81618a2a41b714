"""Training data from synthetic worlds: composites (inputs) and ground truth (labels) as arrays.

One *world* is a synthetic archive (`tasks.synthetic`) of a given seed. From it we build, once,
and cache under ``<cache_dir>/training/world-<hash>.npz``:

- ``annual`` (year, band, y, x) float32, 30 m (`coarse_grid`): annual median composites,
  NaN where a year has no clear observation;
- ``built30`` (year, y, x) float32 0..1, 30 m: built-up share of the 3x3 truth pixels;
- ``landcover30`` (year, y, x) uint8, 30 m: majority land cover of the 3x3 truth pixels;
- ``recent`` (band, y, x) float32, 10 m (`truth.grid`): Sentinel-2 composite of
  `footprint_year`;
- ``built10`` (y, x) bool, 10 m: built-up truth of `footprint_year`.

Bands are `BANDS` (the harmonized bands of `tasks.harmonize.HARMONIZED_BANDS`), reflectance
0..1, grids in the truth's UTM CRS, north up. Composites come from the production chain
(`tasks.ard.composites_for`: cloud mask, co-registration, harmonization, median), so a model
sees exactly what inference will feed it.

Each world pins its own co-registration reference (`world_state_url`): the chain keeps one
reference per grid, right for the one real Earth, but the worlds of one configuration differ
only by seed and so share their grid — world 2 would otherwise be matched against an image of
world 1, and most of its scenes rejected or misplaced.

Why these grids: change and dynamics run on 30 m because Landsat is the only sensor of the
early years; the footprint runs on 10 m Sentinel-2 (recent years only) because the truth is
10 m and a 30 m map cannot reach a high IoU on 10 m parcels (mixed edge pixels).

Labels on 30 m: a pixel is built-up in a year when at least half its nine 10 m truth pixels
are (`LABEL_SHARE`); changed between years a and b when at least half of them changed class.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.aoi import GridSpec
from tasks.ard import ArdOptions, composites_for, read_composite
from tasks.errors import InputError
from tasks.harmonize import HARMONIZED_BANDS
from tasks.refs import SceneRef
from tasks.settings import get_settings
from tasks.synthetic import (
    DEMO_CONFIG,
    ArchiveConfig,
    Truth,
    archive_items,
    config_hash,
    create_archive,
    open_truth,
)

__all__ = [
    "BANDS",
    "COARSE",
    "LABEL_SHARE",
    "WorldData",
    "block_share",
    "coarse_grid",
    "ensure_world",
    "load_world",
    "scene_refs",
    "world_config",
    "world_from_archive",
    "world_state_url",
]

log = logging.getLogger(__name__)

#: Input bands, in order (the analysis-ready chain's harmonized bands).
BANDS: tuple[str, ...] = tuple(HARMONIZED_BANDS)
#: 10 m truth pixels per 30 m pixel side.
COARSE = 3
#: Share of 10 m truth pixels that makes a 30 m label positive (majority of the footprint).
LABEL_SHARE = 0.5
#: 2: a co-registration reference per world. 3: that reference is the sharper sensor's within
#: `tasks.coregister.SHARPER_MARGIN` of the clearest scene (the version is part of the pin's
#: folder, so a cache made before picks it anew).
_CACHE_VERSION = 3


def world_config(seed: int, base: ArchiveConfig = DEMO_CONFIG, **overrides: Any) -> ArchiveConfig:
    """The archive configuration of world `seed`: `base` with its seed (and `overrides`)."""
    return ArchiveConfig.model_validate({**base.model_dump(), **overrides, "seed": seed})


def coarse_grid(truth_grid: GridSpec) -> GridSpec:
    """The 30 m grid over the truth grid's bounds (same CRS and corners)."""
    return GridSpec(truth_grid.epsg, truth_grid.resolution * COARSE, truth_grid.bounds)


def scene_refs(items: Sequence[dict[str, Any]]) -> list[SceneRef]:
    """`SceneRef` of STAC Item dicts (as `tasks.discover` makes them, without a server)."""
    return [SceneRef.from_item(item) for item in items]


def block_share(fine: np.ndarray, factor: int = COARSE) -> np.ndarray:
    """Mean of `factor` x `factor` blocks of the last two axes (float32); the fine grid is
    cropped to a whole number of blocks (the 30 m grid over the same bounds has that size)."""
    h, w = fine.shape[-2] // factor, fine.shape[-1] // factor
    crop = np.asarray(fine[..., : h * factor, : w * factor], dtype=np.float32)
    return crop.reshape(*crop.shape[:-2], h, factor, w, factor).mean(axis=(-3, -1))


def _block_mode(fine: np.ndarray, factor: int = COARSE) -> np.ndarray:
    """Most frequent class of each block (uint8; ties: the smallest code)."""
    h, w = fine.shape[-2] // factor, fine.shape[-1] // factor
    crop = fine[..., : h * factor, : w * factor]
    blocks = crop.reshape(*crop.shape[:-2], h, factor, w, factor)
    blocks = np.moveaxis(blocks, -3, -2).reshape(*crop.shape[:-2], h, w, factor * factor)
    n_classes = int(fine.max()) + 1
    counts = np.stack([(blocks == c).sum(axis=-1) for c in range(n_classes)], axis=-1)
    return np.argmax(counts, axis=-1).astype(np.uint8)


@dataclass(frozen=True)
class WorldData:
    """Inputs and labels of one world; see the module docstring for dims and grids."""

    seed: int
    years: tuple[int, ...]
    annual: np.ndarray
    built30: np.ndarray
    landcover30: np.ndarray
    footprint_year: int
    recent: np.ndarray
    built10: np.ndarray
    #: (y, x) bool on 30 m / on 10 m: pixels whose labels are known; None = every pixel (the
    #: synthetic truth is complete). User labels (`models.training.labels`) leave gaps.
    labelled30: np.ndarray | None = None
    labelled10: np.ndarray | None = None

    def label_mask30(self) -> np.ndarray:
        """(y, x) bool on 30 m: True where the change / built-up labels are known."""
        if self.labelled30 is None:
            return np.ones(self.annual.shape[-2:], dtype=bool)
        return self.labelled30

    def label_mask10(self) -> np.ndarray:
        """(y, x) bool on 10 m: True where the footprint label (`built10`) is known."""
        if self.labelled10 is None:
            return np.ones(self.built10.shape, dtype=bool)
        return self.labelled10

    def year_index(self, year: int) -> int:
        if year not in self.years:
            raise InputError(f"year {year} is not in this world's years {self.years}.")
        return self.years.index(year)

    def change_label(self, year_a: int, year_b: int) -> np.ndarray:
        """(y, x) bool on 30 m: the majority land cover differs between the two years."""
        a, b = self.year_index(year_a), self.year_index(year_b)
        return np.asarray(self.landcover30[a] != self.landcover30[b])

    def built_label(self) -> np.ndarray:
        """(year, y, x) bool on 30 m: built-up (share >= `LABEL_SHARE`), made non-decreasing
        in time (urbanization is treated as irreversible, as `models.dynamics` does)."""
        built = self.built30 >= LABEL_SHARE
        return np.maximum.accumulate(built, axis=0)


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def world_state_url(config: ArchiveConfig, cache_dir: Path) -> str:
    """Where world `config` pins its co-registration reference: a folder of its own (module
    docstring), ``<cache_dir>/state/worlds/world-<seed>-<config hash>-v<cache version>``."""
    name = f"world-{config.seed}-{config_hash(config)}-v{_CACHE_VERSION}"
    folder = cache_dir / "state" / "worlds" / name
    return str(folder.resolve())


def world_from_archive(
    root: Path,
    *,
    footprint_year: int | None = None,
    cache_dir: Path | None = None,
    options: ArdOptions | None = None,
) -> WorldData:
    """Build (or read from the cache) the `WorldData` of the synthetic archive at `root`.

    `footprint_year`: the year of the 10 m footprint composite (default: the last year with a
    clear Sentinel-2 composite). Composites are cached by `tasks.ard.composites_for` under
    `cache_dir`, the arrays in ``<cache_dir>/training``.
    """
    cache_dir = Path(cache_dir or get_settings().cache_dir)
    options = options or ArdOptions()
    truth = open_truth(root)
    config = truth.config
    if footprint_year is None:
        if config.sentinel2_years is None:
            raise InputError("the world has no Sentinel-2 years; give footprint_year.")
        # the last Sentinel-2 year with a clear composite (a world of one cloudy scene a
        # year may have none in its last year)
        first, last = config.sentinel2_years
        candidates = list(range(last, first - 1, -1))
    else:
        candidates = [footprint_year]
    key = hashlib.sha256(
        json.dumps(
            [_CACHE_VERSION, config_hash(config), footprint_year, repr(options)], default=str
        ).encode()
    ).hexdigest()[:16]
    out_dir = cache_dir / "training"
    path = out_dir / f"world-{config.seed}-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return WorldData(
                seed=config.seed,
                years=tuple(int(y) for y in z["years"]),
                annual=z["annual"],
                built30=z["built30"],
                landcover30=z["landcover30"],
                # caches written before the year was stored used the first candidate
                footprint_year=int(z["footprint_year"]) if "footprint_year" in z else candidates[0],
                recent=z["recent"],
                built10=z["built10"],
            )
    data = _build(root, truth, candidates, cache_dir, options)
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_savez(
        path,
        {
            "years": np.asarray(data.years),
            "annual": data.annual,
            "built30": data.built30,
            "landcover30": data.landcover30,
            "recent": data.recent,
            "built10": data.built10,
            "footprint_year": np.asarray(data.footprint_year),
        },
    )
    return data


def _build(
    root: Path, truth: Truth, footprint_years: Sequence[int], cache_dir: Path, options: ArdOptions
) -> WorldData:
    scenes = scene_refs(archive_items(root))
    grid30 = coarse_grid(truth.grid)
    state = world_state_url(truth.config, cache_dir)
    log.info("world %d: annual composites of %d scenes", truth.config.seed, len(scenes))
    ref = composites_for(
        scenes, grid30, "year", options=options, cache_dir=cache_dir, state_url=state
    )
    years = tuple(y for y in truth.years if str(y) in ref.periods)
    annual = np.full((len(years), len(BANDS), *grid30.shape), np.nan, dtype=np.float32)
    for i, y in enumerate(years):
        refl, _ = read_composite(ref, str(y))
        annual[i] = refl.sel(band=list(BANDS)).values
    landcover = np.stack([truth.landcover(y) for y in years])
    built30 = block_share(landcover == 6)  # LandCover.BUILTUP
    landcover30 = _block_mode(landcover)

    recent = None
    for footprint_year in footprint_years:
        recent = _recent_composite(truth, scenes, footprint_year, cache_dir, options, state)
        if recent is not None:
            break
    if recent is None:
        raise InputError(
            f"the world has no clear Sentinel-2 composite in {sorted(footprint_years)}; "
            "choose a Sentinel-2 year with clear scenes."
        )
    return WorldData(
        seed=truth.config.seed,
        years=years,
        annual=annual,
        built30=built30,
        landcover30=landcover30,
        footprint_year=footprint_year,
        recent=recent,
        built10=truth.builtup(footprint_year),
    )


def _recent_composite(
    truth: Truth,
    scenes: Sequence[SceneRef],
    year: int,
    cache_dir: Path,
    options: ArdOptions,
    state: str,
) -> np.ndarray | None:
    """The 10 m Sentinel-2 composite ``(band, y, x)`` of `year`, or None where every scene of
    the year is too cloudy (or there is none)."""
    s2 = [s for s in scenes if s.sensor == "sentinel-2" and s.datetime.year == year]
    if not s2:
        return None
    period: dict[str, Any] = {str(year): (f"{year}-01-01", f"{year}-12-31")}
    log.info("world %d: %d m composite of %d Sentinel-2 scenes", truth.config.seed, 10, len(s2))
    try:
        ref10 = composites_for(
            s2, truth.grid, period, options=options, cache_dir=cache_dir, state_url=state
        )
    except InputError as err:
        log.warning("world %d: no %d footprint composite (%s)", truth.config.seed, year, err)
        return None
    refl10, _ = read_composite(ref10, str(year))
    return np.asarray(refl10.sel(band=list(BANDS)).values, dtype=np.float32)


def ensure_world(
    seed: int,
    *,
    base: ArchiveConfig = DEMO_CONFIG,
    cache_dir: Path | None = None,
    workers: int | None = None,
) -> Path:
    """Create (or reuse) the archive of world `seed` (`base` with that seed) under
    ``<cache_dir>/worlds/world-<seed>-<config hash>`` and return its root. `workers`:
    processes that render it (see `tasks.synthetic.create_archive`)."""
    cache_dir = Path(cache_dir or get_settings().cache_dir)
    config = world_config(seed, base)
    root = cache_dir / "worlds" / f"world-{seed}-{config_hash(config)}"
    create_archive(root, config, workers=workers)
    return root


def load_world(
    seed: int,
    *,
    base: ArchiveConfig = DEMO_CONFIG,
    cache_dir: Path | None = None,
    workers: int | None = None,
) -> WorldData:
    """`ensure_world` then `world_from_archive` (both cached under `cache_dir`)."""
    root = ensure_world(seed, base=base, cache_dir=cache_dir, workers=workers)
    return world_from_archive(root, cache_dir=cache_dir)
