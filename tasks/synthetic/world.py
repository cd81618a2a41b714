"""The simulated surface through the years: land cover per year and reflectance per date.

A city grows from its core along the roads (parcel by parcel, stochastic, seeded); each new
parcel is a construction site (bare soil) for one year before it counts as built-up. Confounders
that are not urban change: forest clear-cuts (bare, then regrowth as grassland, then forest
again), a reservoir whose basin is cleared one year and flooded the next, and crop rotation
between years (different phenology on the same field). Land cover is constant within a year.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import IntEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import distance_transform_edt
from shapely.geometry import Point

from tasks.aoi import utm_epsg
from tasks.synthetic.config import ArchiveConfig, Platform
from tasks.synthetic.landscape import (
    TRUTH_RESOLUTION,
    Layout,
    build_layout,
    rng_for,
    smooth_noise,
)
from tasks.synthetic.spectra import (
    BASE_ENDMEMBERS,
    CROPS,
    FOREST,
    GRASS,
    RICE,
    RICE_CODE,
    Endmember,
    band_table,
    rice_flood,
)

__all__ = ["LandCover", "World", "build_world", "main_epsg"]


class LandCover(IntEnum):
    """Land cover classes of the truth rasters (uint8)."""

    NODATA = 0
    WATER = 1
    FOREST = 2
    CROPLAND = 3
    GRASSLAND = 4
    BARE = 5
    BUILTUP = 6


_ROTATION = np.array([1, 3, 1, 2])  # winter cereal, spring crop, winter cereal, maize
_ROTATION_BREAK = 0.08  # share of field-years that leave the rotation
_CLEARCUT_RATE = 0.006  # forest parcels cut per year (Central European forestry, order 0.5 %/yr)
_REGROWTH_YEARS = 6  # years a clear-cut stays grassland/shrub before counting as forest
_URBAN_FOREST_SUITABILITY = 0.15  # relative chance that forest, not open land, is built over
# Urban growth score of a parcel: -distance to built-up / reach + pull * road proximity + noise.
# Compact growth at the fringe and along arterials, with some leapfrogging (cf. cellular-automata
# growth models such as SLEUTH, Clarke et al. 1997, Environ. Plann. B 24).
_GROWTH_REACH_M = 120.0
_ROAD_PULL = 1.5
_GROWTH_NOISE = 0.45
_VILLAGES = 3  # older village cores along the roads, swallowed by the growing city


def main_epsg(config: ArchiveConfig) -> int:
    """EPSG code of the UTM zone of the AOI centre: the truth grid's CRS."""
    return utm_epsg(Point(config.center_lon, config.center_lat))


@dataclass(frozen=True)
class World:
    """Land cover per year on the world grid (`layout.grid`, 10 m, main UTM zone).

    `landcover` and `crop` have dims (year, row, col); `crop` is the crop code (1 winter
    cereal, 2 maize, 3 spring crop, 4 rice) where land cover is cropland, else 0. Landscapes
    beyond the demo's, None where the configuration has none: `paddy` (per field id: an
    irrigated rice paddy), `pond` (pixels of the aquaculture ponds, water from the year they
    were dug, dikes excluded), `roof` (per pixel roof material: 0 concrete, 1 clay tile,
    2 metal, 3 bitumen).
    """

    layout: Layout
    years: tuple[int, ...]
    landcover: NDArray[np.uint8]
    crop: NDArray[np.uint8]
    reservoir_year: int
    paddy: NDArray[np.bool_] | None = None
    pond: NDArray[np.bool_] | None = None
    roof: NDArray[np.uint8] | None = None

    def year_index(self, year: int) -> int:
        """Index of `year` along the first axis (clamped to the simulated range)."""
        return min(max(year - self.years[0], 0), len(self.years) - 1)

    def surface(
        self,
        platform: Platform,
        day: date,
        *,
        soil_wetness: float = 1.0,
        snow: NDArray[np.float32] | None = None,
    ) -> NDArray[np.float32]:
        """Noise-free surface reflectance on the world grid for `platform`'s bands on `day`.

        Returns dims (band, row, col), band order as `reflectance_assets(platform)`; unitless.
        `soil_wetness` scales the soil endmember (wet soil is darker), per acquisition;
        `snow` is the snow-covered share of each pixel (`snow_fraction`), None for none.
        """
        i = self.year_index(day.year)
        doy = float(day.timetuple().tm_yday)
        abundance = _abundances(self.layout, self.landcover[i], self.crop[i], doy)
        if (
            self.paddy is not None
            or self.pond is not None
            or self.roof is not None
            or (snow is not None)
        ):
            abundance = self._other_landscapes(abundance, i, doy, snow)
        # Only the endmembers in use enter the sum, so that a demo surface is computed exactly
        # as before the other landscapes existed (same terms, same rounding).
        table = band_table(platform)[: abundance.shape[0]].copy()
        table[Endmember.SOIL] *= soil_wetness
        refl = np.tensordot(table.T, abundance, axes=(1, 0))
        return np.asarray(refl * self.layout.brightness, dtype=np.float32)

    def _other_landscapes(
        self, base: NDArray[np.float32], i: int, doy: float, snow: NDArray[np.float32] | None
    ) -> NDArray[np.float32]:
        """All endmember abundances: `base` (the demo landscape's) with paddies, ponds, roof
        materials and snow cover applied."""
        a = np.zeros((len(Endmember), *base.shape[1:]), dtype=np.float32)
        a[:BASE_ENDMEMBERS] = base
        if self.paddy is not None:
            # Standing water between the plants: the flood covers the share not under canopy
            # or residue (what the demo landscape shows as soil).
            rice = self.crop[i] == RICE_CODE
            flood = rice_flood(doy, self.layout.field_delay)[self.layout.field]
            soil = a[Endmember.SOIL]
            a[Endmember.WATER] = np.where(rice, flood * soil, a[Endmember.WATER])
            a[Endmember.SOIL] = np.where(rice, (1.0 - flood) * soil, soil)
        if self.pond is not None:
            pond = self.pond & (self.landcover[i] == LandCover.WATER)
            drained = doy < _POND_DRAINED[0] or doy > _POND_DRAINED[1]
            # Fish ponds: turbid, algal water in the season; wet mud once drained for winter.
            mix = {Endmember.WATER: 0.9, Endmember.SOIL: 0.07, Endmember.GREEN_VEG: 0.03}
            if drained:
                mix = {Endmember.SOIL: 0.7, Endmember.DRY_VEG: 0.1, Endmember.WATER: 0.2}
            for member in Endmember:
                a[member] = np.where(pond, mix.get(member, 0.0), a[member])
        if self.roof is not None:
            for code, member in _ROOF_MEMBERS.items():
                here = self.roof == code
                a[member] = np.where(here, a[Endmember.ROOF_CONCRETE], 0.0)
                a[Endmember.ROOF_CONCRETE] = np.where(here, 0.0, a[Endmember.ROOF_CONCRETE])
        if snow is not None:
            a *= 1.0 - snow
            a[Endmember.SNOW] = snow
        return a

    def snow_fraction(
        self, day: date, extent: float, noise: NDArray[np.float32]
    ) -> NDArray[np.float32]:
        """Snow-covered share of each world-grid pixel on `day` for a snow cover of `extent`
        (0-1, the share of open land under snow): patches where the smooth `noise` (zero mean,
        unit std) is highest, with soft edges, full on open land, partial where roads are
        cleared and roofs shed it (built-up) and under a forest canopy, none on open water."""
        if not 0.0 < extent <= 1.0:
            raise ValueError(f"extent: {extent} is not in (0, 1].")
        threshold = float(np.quantile(noise, 1.0 - extent))
        patch = np.clip((noise - threshold) * 3.0 + 0.5, 0.0, 1.0)
        lc = self.landcover[self.year_index(day.year)]
        return (patch * _SNOW_BY_CLASS[lc]).astype(np.float32)


#: Days of year between which fish ponds hold water (drained for winter otherwise).
_POND_DRAINED = (75.0, 310.0)
#: Roof material code -> endmember (0 is concrete, the demo's roofs).
_ROOF_MEMBERS = {1: Endmember.ROOF_TILE, 2: Endmember.ROOF_METAL, 3: Endmember.ROOF_BITUMEN}
#: Snow-covered share per land cover class (indexed by `LandCover`) where snow lies: open land
#: fully, built-up partly (cleared roads, warm roofs), forest partly (canopy above the snow),
#: open water not at all.
_SNOW_BY_CLASS = np.array([0.0, 0.0, 0.35, 1.0, 1.0, 1.0, 0.6], dtype=np.float32)


def _abundances(
    layout: Layout, lc: NDArray[np.uint8], crop: NDArray[np.uint8], doy: float
) -> NDArray[np.float32]:
    """Endmember abundances (len(Endmember), rows, cols) of each pixel on day of year `doy`.

    Abundances need not sum to one: the remainder is shade (forest canopy) and reads as dark.
    """
    grass_green = float(GRASS.green(doy))
    forest_green = float(FOREST.green(doy))
    per_class = np.zeros((len(LandCover), BASE_ENDMEMBERS), dtype=np.float32)
    per_class[LandCover.WATER, Endmember.WATER] = 1.0
    per_class[LandCover.FOREST, Endmember.GREEN_VEG] = 0.85 * forest_green
    per_class[LandCover.FOREST, Endmember.DRY_VEG] = 0.5 * (1.0 - forest_green)
    per_class[LandCover.GRASSLAND, Endmember.GREEN_VEG] = grass_green
    per_class[LandCover.GRASSLAND, Endmember.DRY_VEG] = 1.0 - grass_green
    per_class[LandCover.BARE, Endmember.SOIL] = 1.0
    a = np.moveaxis(per_class[lc], -1, 0).copy()

    # Crops: green and residue cover per (crop, field), gathered per pixel.
    n_fields = layout.n_fields
    green = np.zeros((RICE_CODE + 1, n_fields), dtype=np.float32)
    residue = np.zeros_like(green)
    for code, phenology in CROPS.items():
        green[code] = phenology.green(doy, layout.field_delay)
        residue[code] = phenology.residue(doy, layout.field_delay)
    if (crop == RICE_CODE).any():
        green[RICE_CODE] = RICE.green(doy, layout.field_delay)
        residue[RICE_CODE] = RICE.residue(doy, layout.field_delay)
    cropland = crop > 0
    crop_green = green[crop, layout.field]
    crop_residue = residue[crop, layout.field]
    a[Endmember.GREEN_VEG] = np.where(cropland, crop_green, a[Endmember.GREEN_VEG])
    a[Endmember.DRY_VEG] = np.where(cropland, crop_residue, a[Endmember.DRY_VEG])
    a[Endmember.SOIL] = np.where(
        cropland, np.clip(1.0 - crop_green - crop_residue, 0.0, 1.0), a[Endmember.SOIL]
    )

    # Built-up: roofs/concrete and asphalt with a share of urban green; roads mostly asphalt.
    built = lc == LandCover.BUILTUP
    green_share = np.where(layout.road, 0.15, layout.urban_green)
    sealed = 1.0 - green_share
    roof_share = np.where(layout.road, 0.0, 0.7 * sealed)
    asphalt_share = np.where(layout.road, 0.85, 0.3 * sealed)
    a[Endmember.GREEN_VEG] = np.where(built, green_share * grass_green, a[Endmember.GREEN_VEG])
    a[Endmember.DRY_VEG] = np.where(built, green_share * (1.0 - grass_green), a[Endmember.DRY_VEG])
    a[Endmember.ROOF_CONCRETE] = np.where(built, roof_share, 0.0)
    a[Endmember.ASPHALT] = np.where(built, asphalt_share, 0.0)
    return a


def _parcel_mean(parcel: NDArray[np.int32], values: NDArray[Any], n: int) -> NDArray[np.float64]:
    total = np.bincount(parcel.ravel(), weights=values.ravel().astype(np.float64), minlength=n)
    count = np.bincount(parcel.ravel(), minlength=n)
    return total / np.maximum(count, 1)


def _growth_targets(
    config: ArchiveConfig, n_years: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Built-up share of the AOI per year: from `builtup_start` to `builtup_end`, in uneven
    yearly steps (booms and slumps)."""
    steps = rng.gamma(2.0, 1.0, n_years - 1)
    cumulative = np.concatenate([[0.0], np.cumsum(steps) / steps.sum()])
    return config.builtup_start + (config.builtup_end - config.builtup_start) * cumulative


def _commit_parcels(config: ArchiveConfig, layout: Layout, n_years: int) -> NDArray[np.int64]:
    """Year index at which each parcel becomes a construction site (-1: built before the first
    year; n_years: never). Built-up from the next year on."""
    rng = rng_for(config, "growth")
    n = layout.n_parcels
    window = layout.aoi_window
    aoi_count = np.bincount(layout.parcel[window].ravel(), minlength=n)
    aoi_size = aoi_count.sum()
    blocked = layout.lake | layout.reservoir | layout.quarry
    suitability = np.where(blocked, 0.0, np.where(layout.forest, _URBAN_FOREST_SUITABILITY, 1.0))
    parcel_suit = _parcel_mean(layout.parcel, suitability, n)
    road_near = _parcel_mean(layout.parcel, np.exp(-layout.road_distance / 200.0), n)
    road_share = float(layout.road[window].sum()) / aoi_size

    index = np.indices(layout.parcel.shape)
    cy = _parcel_mean(layout.parcel, index[0], n)
    cx = _parcel_mean(layout.parcel, index[1], n)
    centre_dist = np.hypot(cy - layout.center_rc[0], cx - layout.center_rc[1])

    commit = np.full(n, n_years, dtype=np.int64)
    targets = _growth_targets(config, n_years, rng)
    # The first year's built-up: the town around the centre and smaller villages on the roads
    # (ranked by distance to the nearest nucleus, villages counting 2.5x farther).
    aoi_px = layout.aoi_window[0].stop - layout.aoi_window[0].start
    ring = (centre_dist > 0.25 * aoi_px) & (centre_dist < 0.45 * aoi_px) & (road_near > 0.5)
    candidates = np.flatnonzero(ring & (parcel_suit > 0.9))
    villages = rng.choice(candidates, size=min(_VILLAGES, candidates.size), replace=False)
    nucleus_dist = centre_dist.copy()
    for v in villages:
        nucleus_dist = np.minimum(nucleus_dist, 2.5 * np.hypot(cy - cy[v], cx - cx[v]))
    core = np.argsort(nucleus_dist + rng.uniform(0, 3, n))
    covered = np.cumsum(aoi_count[core]) / aoi_size + road_share
    commit[core[: int(np.searchsorted(covered, targets[0])) + 1]] = -1

    for i in range(n_years - 1):
        built = commit[layout.parcel] < i
        need = (targets[i + 1] - road_share) * aoi_size - aoi_count[commit <= i].sum()
        if need <= 0:
            continue
        dist = distance_transform_edt(~built) * TRUTH_RESOLUTION
        near_built = _parcel_mean(layout.parcel, dist, n)
        score = (
            -near_built / _GROWTH_REACH_M
            + _ROAD_PULL * road_near
            + np.log(np.maximum(parcel_suit, 1e-6))
            + _GROWTH_NOISE * rng.gumbel(size=n)
        )
        score[(commit <= i) | (parcel_suit < 0.3)] = -np.inf
        order = np.argsort(-score)
        order = order[np.isfinite(score[order])]
        taken = int(np.searchsorted(np.cumsum(aoi_count[order]), need)) + 1
        commit[order[:taken]] = i
    return commit


def _forest_cuts(config: ArchiveConfig, layout: Layout, n_years: int) -> NDArray[np.int64]:
    """Year index of a clear-cut per parcel (n_years: never cut)."""
    rng = rng_for(config, "clearcuts")
    forest_share = _parcel_mean(layout.parcel, layout.forest, layout.n_parcels)
    cut = np.full(layout.n_parcels, n_years, dtype=np.int64)
    candidates = np.flatnonzero(forest_share > 0.7)
    for i in range(n_years):
        fresh = candidates[cut[candidates] == n_years]
        chosen = fresh[rng.random(fresh.size) < _CLEARCUT_RATE]
        cut[chosen] = i
    return cut


def _paddies(config: ArchiveConfig, layout: Layout) -> NDArray[np.bool_] | None:
    """Per field id, True for an irrigated rice paddy: `paddy_share` of the arable fields,
    in clusters (the fields where a smooth field of its own is highest), as rice lands lie
    together on the irrigated lowland."""
    if config.paddy_share <= 0:
        return None
    rng = rng_for(config, "paddies")
    score = _parcel_mean(layout.field, smooth_noise(rng, layout.grid.shape, 40.0), layout.n_fields)
    score[layout.meadow] = -np.inf
    arable = np.flatnonzero(~layout.meadow)
    chosen = arable[np.argsort(-score[arable])[: round(config.paddy_share * arable.size)]]
    paddy = np.zeros(layout.n_fields, dtype=bool)
    paddy[chosen] = True
    return paddy


def _ponds(
    config: ArchiveConfig, layout: Layout, years: tuple[int, ...], never_built: NDArray[np.bool_]
) -> tuple[NDArray[np.bool_], NDArray[np.int64]] | None:
    """Aquaculture: (pond pixels without their dikes, year index each was dug per pixel).

    Arable fields in one cluster (a smooth score of their own) are dug into ponds from 1990
    on, the cluster growing outward year by year, until `aquaculture_share` of the AOI's
    arable land is ponds. A field is dug in one year (bare, like a construction site) and is
    water from the next; 10 m dikes every 100 m split it into ponds. Land that is ever built
    on, forest, roads and the other water bodies are never dug."""
    if config.aquaculture_share <= 0:
        return None
    rng = rng_for(config, "aquaculture")
    n_fields = layout.n_fields
    score = _parcel_mean(layout.field, smooth_noise(rng, layout.grid.shape, 60.0), n_fields)
    diggable = (
        ~layout.meadow[layout.field]
        & ~layout.forest
        & ~layout.road
        & ~layout.lake
        & ~layout.reservoir
        & ~layout.quarry
        & never_built
    )
    window = layout.aoi_window
    area = np.bincount(layout.field[window][diggable[window]], minlength=n_fields)
    order = np.argsort(-score)
    order = order[area[order] > 0]
    need = config.aquaculture_share * area.sum()
    chosen = order[: int(np.searchsorted(np.cumsum(area[order]), need)) + 1]
    first = min(max(1990 - years[0], 0), len(years) - 2)
    dug = np.full(n_fields, len(years), dtype=np.int64)
    steps = np.linspace(first, len(years) - 2, chosen.size) + rng.uniform(-1.5, 1.5, chosen.size)
    dug[chosen] = np.clip(np.round(steps), first, len(years) - 2).astype(np.int64)
    rows, cols = np.indices(layout.grid.shape)
    dike = (rows % 10 == 0) | (cols % 10 == 0)
    pond = diggable & (dug[layout.field] < len(years)) & ~dike
    return pond, np.where(pond, dug[layout.field], len(years))


def _roofs(config: ArchiveConfig, layout: Layout) -> NDArray[np.uint8] | None:
    """Roof material per pixel (one draw per development parcel with the configured shares),
    None for the demo's concrete roofs everywhere."""
    if config.roof_materials == (1.0, 0.0, 0.0, 0.0):
        return None
    shares = np.asarray(config.roof_materials, dtype=np.float64)
    rng = rng_for(config, "roofs")
    material = rng.choice(len(shares), size=layout.n_parcels, p=shares / shares.sum())
    return material.astype(np.uint8)[layout.parcel]


def build_world(config: ArchiveConfig) -> World:
    """Simulate the land cover of every year of `config` (deterministic in `config.seed`)."""
    layout = build_layout(config, main_epsg(config))
    years = tuple(config.years)
    n = len(years)
    rng = rng_for(config, "fields")
    reservoir_year = int(rng.integers(min(1992, years[-1]), min(2010, years[-1]) + 1))
    commit = _commit_parcels(config, layout, n)[layout.parcel]
    cut = _forest_cuts(config, layout, n)[layout.parcel]
    rotation = _ROTATION[(np.arange(n)[:, None] + layout.rotation_phase[None, :]) % 4]
    breaks = rng.random(rotation.shape) < _ROTATION_BREAK
    rotation = np.where(breaks, rng.integers(1, 4, rotation.shape), rotation)
    water = layout.lake | layout.reservoir
    paddy = _paddies(config, layout)
    ponds = _ponds(config, layout, years, commit >= n)
    pond, dug = ponds if ponds is not None else (None, None)

    landcover = np.empty((n, *layout.grid.shape), dtype=np.uint8)
    crop = np.zeros_like(landcover)
    meadow = layout.meadow[layout.field]
    for i, year in enumerate(years):
        lc = np.where(meadow, LandCover.GRASSLAND, LandCover.CROPLAND).astype(np.uint8)
        forest_state = np.where(
            i == cut,
            LandCover.BARE,
            np.where(
                (i > cut) & (i <= cut + _REGROWTH_YEARS), LandCover.GRASSLAND, LandCover.FOREST
            ),
        )
        lc = np.where(layout.forest, forest_state, lc)
        lc[layout.quarry] = LandCover.BARE
        if year == reservoir_year - 1:
            lc[layout.reservoir] = LandCover.BARE
        lc[(i == commit) & ~water] = LandCover.BARE
        lc[((i > commit) | layout.road) & ~water] = LandCover.BUILTUP
        lc[layout.lake] = LandCover.WATER
        if year >= reservoir_year:
            lc[layout.reservoir] = LandCover.WATER
        if pond is not None and dug is not None:
            lc[pond & (i == dug)] = LandCover.BARE
            lc[pond & (i > dug)] = LandCover.WATER
        landcover[i] = lc
        crops = rotation[i] if paddy is None else np.where(paddy, RICE_CODE, rotation[i])
        crop[i] = np.where(lc == LandCover.CROPLAND, crops[layout.field], 0)
    return World(
        layout=layout,
        years=years,
        landcover=landcover,
        crop=crop,
        reservoir_year=reservoir_year,
        paddy=paddy,
        pond=pond,
        roof=_roofs(config, layout),
    )
