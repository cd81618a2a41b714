"""Sensor band tables: which asset of a STAC Item holds which band, and how to make it reflectance.

Every catalog names and scales the same bands differently. Earth Search v1 calls Sentinel-2's red
band ``red`` and declares ``raster:bands`` scale/offset; Planetary Computer calls it ``B04`` and
declares nothing, so the processing-baseline 04.00 offset must come from ``s2:processing_baseline``;
USGS Landsat items key their assets ``SR_B2.TIF`` (OLI) or ``SR_B1.TIF`` (TM/ETM+) for the same
blue band. This module keeps one declarative `CollectionProfile` per (catalog, collection) and
resolves any Item to the pipeline's common band names:

=========  =====================  ========================================
common     Sentinel-2 (MSI)       Landsat (OLI / TM, ETM+)
=========  =====================  ========================================
blue       B02                    SR_B2 / SR_B1
green      B03                    SR_B3 / SR_B2
red        B04                    SR_B4 / SR_B3
rededge1   B05                    -
rededge2   B06                    -
rededge3   B07                    -
nir        B08                    SR_B5 / SR_B4  (the ``nir08`` asset)
nir08      B8A                    -
swir16     B11                    SR_B6 / SR_B5
swir22     B12                    SR_B7 / SR_B7
mask       scl (SCL)              qa_pixel (QA_PIXEL)
=========  =====================  ========================================

Reflectance is ``DN * scale + offset`` (unitless, nominally 0-1); masks are raw integer codes
(scale 1, offset 0, never rescaled). The catalog is identified from the Item itself (collection id,
asset keys, links), never from a global setting, so one run can mix catalogs.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urljoin, urlparse

from pyproj import CRS
from pyproj.exceptions import CRSError
from shapely.errors import GEOSException
from shapely.geometry import shape

from tasks.errors import InputError, SceneRejectedError

__all__ = [
    "CANONICAL_BANDS",
    "KNOWN_COLLECTIONS",
    "MASK_BANDS",
    "PROFILES",
    "BandSpec",
    "CollectionProfile",
    "Family",
    "ResolvedBand",
    "ResolvedItem",
    "check_item",
    "collection_family",
    "normalize_item",
    "resolve_item",
]

Family = Literal["sentinel-2", "landsat"]
BandKind = Literal["reflectance", "mask"]

# ---- constants (with their sources) ----------------------------------------------------------

#: Sentinel-2 L2A DN -> reflectance: BOA_QUANTIFICATION_VALUE = 10000 (ESA, Sentinel-2 Products
#: Specification Document S2-PDGS-TAS-DI-PSD, L2A product metadata MTD_MSIL2A.xml).
S2_SCALE = 1e-4
#: Processing baseline 04.00 (from 25 January 2022) shifts L2A DNs by BOA_ADD_OFFSET = -1000:
#: ``BOA = (DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE`` (ESA, "Copernicus Sentinel-2: Major
#: Products Upgrade Upcoming", 2021; same PSD). -1000 / 10000 = -0.1 in reflectance.
S2_BOA_OFFSET = -0.1
#: First processing baseline that carries the offset.
S2_OFFSET_BASELINE = (4, 0)
#: Landsat Collection 2 Level-2 surface reflectance: ``SR = DN * 0.0000275 - 0.2`` (USGS, Landsat
#: 8-9 C2 L2 Science Product Guide LSDS-1619, and Landsat 4-7 C2 L2 Science Product Guide
#: LSDS-1618, "Scale factors"). Both guides use the same factors for OLI and TM/ETM+.
LANDSAT_SCALE = 2.75e-05
LANDSAT_OFFSET = -0.2
#: DN 0 is NO_DATA in Sentinel-2 L2A bands and SCL (class 0 "NO_DATA") (ESA PSD) and the fill value
#: of Landsat C2 SR bands (USGS LSDS-1619). QA_PIXEL marks fill with bit 0, i.e. value 1 (same
#: guides; Earth Search and Planetary Computer declare ``raster:bands`` nodata 1 for qa_pixel).
S2_NODATA = 0
LANDSAT_SR_NODATA = 0
LANDSAT_QA_NODATA = 1


# ---- declarative tables ----------------------------------------------------------------------


@dataclass(frozen=True)
class BandSpec:
    """One band of a collection as the catalog publishes it (the table's defaults).

    `asset_keys` are the asset keys that may hold it, in order of preference. `common_names` are
    the ``eo:bands`` common names that identify it when the profile resolves by common name.
    `resolution` is the native pixel size in metres; `scale`/`offset`/`nodata` apply when the
    asset declares no ``raster:bands``.
    """

    name: str
    asset_keys: tuple[str, ...]
    resolution: float
    kind: BandKind = "reflectance"
    scale: float = 1.0
    offset: float = 0.0
    nodata: float = 0
    common_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class CollectionProfile:
    """How one catalog publishes one collection.

    `marker_keys`: asset keys typical of this catalog's layout (one must be present).
    `platforms`: platforms this table is for (empty = any). `hosts`: link hosts of the catalog,
    used to tell apart catalogs with identical layouts. `resolve_by_common_name`: find band assets
    through ``eo:bands`` common names first (USGS Landsat, whose band numbers differ per sensor),
    falling back to `asset_keys`.
    """

    catalog: str
    collection: str
    family: Family
    bands: tuple[BandSpec, ...]
    mask: BandSpec
    marker_keys: frozenset[str]
    platforms: frozenset[str] = frozenset()
    hosts: tuple[str, ...] = ()
    resolve_by_common_name: bool = False

    @property
    def band_names(self) -> tuple[str, ...]:
        """The common names of the reflectance bands, in the pipeline's canonical order."""
        return tuple(b.name for b in self.bands)


# (common name, ESA band id, native resolution m). Order = the pipeline's canonical band order.
_S2_BANDS: tuple[tuple[str, str, float], ...] = (
    ("blue", "B02", 10.0),
    ("green", "B03", 10.0),
    ("red", "B04", 10.0),
    ("rededge1", "B05", 20.0),
    ("rededge2", "B06", 20.0),
    ("rededge3", "B07", 20.0),
    ("nir", "B08", 10.0),
    ("nir08", "B8A", 20.0),
    ("swir16", "B11", 20.0),
    ("swir22", "B12", 20.0),
)
# (common name, OLI band, TM/ETM+ band, eo:bands common names). Landsat's NIR is published as the
# asset/common name ``nir08`` (0.85-0.88 µm); the pipeline calls it ``nir`` like Sentinel-2 B08.
_LANDSAT_BANDS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("blue", "SR_B2", "SR_B1", ("blue",)),
    ("green", "SR_B3", "SR_B2", ("green",)),
    ("red", "SR_B4", "SR_B3", ("red",)),
    ("nir", "SR_B5", "SR_B4", ("nir08", "nir")),
    ("swir16", "SR_B6", "SR_B5", ("swir16",)),
    ("swir22", "SR_B7", "SR_B7", ("swir22",)),
)
#: Every reflectance band name the pipeline knows, in canonical order.
CANONICAL_BANDS: tuple[str, ...] = tuple(b[0] for b in _S2_BANDS)
#: The mask band of each family.
MASK_BANDS: Mapping[Family, str] = MappingProxyType({"sentinel-2": "scl", "landsat": "qa_pixel"})


def _s2_table(esa_keys: bool) -> tuple[tuple[BandSpec, ...], BandSpec]:
    bands = tuple(
        BandSpec(
            name=name,
            asset_keys=(esa if esa_keys else name,),
            resolution=res,
            scale=S2_SCALE,
            offset=0.0,  # the baseline offset is added per item, see `_reflectance_offset`
            nodata=S2_NODATA,
        )
        for name, esa, res in _S2_BANDS
    )
    mask = BandSpec(
        name="scl",
        asset_keys=("SCL",) if esa_keys else ("scl",),
        resolution=20.0,
        kind="mask",
        nodata=S2_NODATA,
    )
    return bands, mask


def _landsat_table(
    *, file_keys: Literal["oli", "tm"] | None
) -> tuple[tuple[BandSpec, ...], BandSpec]:
    """Landsat bands: asset keys ``blue``… (ES, PC, USGS STAC 1.0) or ``SR_B2.TIF``… (USGS)."""
    bands = []
    for name, oli, tm, common in _LANDSAT_BANDS:
        keys = ["nir08" if name == "nir" else name]
        if file_keys is not None:
            keys.append(f"{oli if file_keys == 'oli' else tm}.TIF")
        bands.append(
            BandSpec(
                name=name,
                asset_keys=tuple(keys),
                resolution=30.0,
                scale=LANDSAT_SCALE,
                offset=LANDSAT_OFFSET,
                nodata=LANDSAT_SR_NODATA,
                common_names=common,
            )
        )
    mask = BandSpec(
        name="qa_pixel",
        asset_keys=("qa_pixel", "QA_PIXEL.TIF") if file_keys else ("qa_pixel",),
        resolution=30.0,
        kind="mask",
        nodata=LANDSAT_QA_NODATA,
    )
    return tuple(bands), mask


_ES_HOSTS = ("earth-search.aws.element84.com", "sentinel-cogs.s3")
_PC_HOSTS = ("planetarycomputer.microsoft.com",)
_USGS_HOSTS = ("landsatlook.usgs.gov",)
_OLI_PLATFORMS = frozenset({"landsat-8", "landsat-9"})
_TM_PLATFORMS = frozenset({"landsat-4", "landsat-5", "landsat-7"})

#: Every supported (catalog, collection) layout. For a collection, earlier entries win ties.
PROFILES: tuple[CollectionProfile, ...] = (
    CollectionProfile(
        "earth-search-v1",
        "sentinel-2-l2a",
        "sentinel-2",
        *_s2_table(esa_keys=False),
        marker_keys=frozenset({"red", "blue", "scl"}),
        hosts=_ES_HOSTS,
    ),
    CollectionProfile(
        "planetary-computer",
        "sentinel-2-l2a",
        "sentinel-2",
        *_s2_table(esa_keys=True),
        marker_keys=frozenset({"B04", "B02", "SCL"}),
        hosts=_PC_HOSTS,
    ),
    CollectionProfile(
        "earth-search-v1",
        "sentinel-2-c1-l2a",
        "sentinel-2",
        *_s2_table(esa_keys=False),
        marker_keys=frozenset({"red", "blue", "scl"}),
        hosts=_ES_HOSTS,
    ),
    CollectionProfile(
        "earth-search-v0",
        "sentinel-s2-l2a-cogs",
        "sentinel-2",
        *_s2_table(esa_keys=True),
        marker_keys=frozenset({"B04", "B02", "SCL"}),
        hosts=_ES_HOSTS,
    ),
    CollectionProfile(
        "earth-search-v1",
        "landsat-c2-l2",
        "landsat",
        *_landsat_table(file_keys=None),
        marker_keys=frozenset({"red", "blue", "qa_pixel"}),
        hosts=_ES_HOSTS,
    ),
    CollectionProfile(
        "planetary-computer",
        "landsat-c2-l2",
        "landsat",
        *_landsat_table(file_keys=None),
        marker_keys=frozenset({"red", "blue", "qa_pixel"}),
        hosts=_PC_HOSTS,
    ),
    CollectionProfile(
        "usgs",
        "landsat-c2l2-sr",
        "landsat",
        *_landsat_table(file_keys="oli"),
        marker_keys=frozenset({"red", "blue", "qa_pixel", "SR_B2.TIF", "QA_PIXEL.TIF"}),
        platforms=_OLI_PLATFORMS,
        hosts=_USGS_HOSTS,
        resolve_by_common_name=True,
    ),
    CollectionProfile(
        "usgs",
        "landsat-c2l2-sr",
        "landsat",
        *_landsat_table(file_keys="tm"),
        marker_keys=frozenset({"red", "blue", "qa_pixel", "SR_B1.TIF", "QA_PIXEL.TIF"}),
        platforms=_TM_PLATFORMS,
        hosts=_USGS_HOSTS,
        resolve_by_common_name=True,
    ),
)

#: Supported collection ids -> sensor family.
KNOWN_COLLECTIONS: Mapping[str, Family] = MappingProxyType(
    {p.collection: p.family for p in PROFILES}
)


def collection_family(collection_id: str) -> Family:
    """``"sentinel-2"`` or ``"landsat"`` for a supported collection id.

    Raises `InputError` naming the supported collections for any other id (Sentinel-2 L1C and
    Sentinel-1 are not surface reflectance and are refused on purpose).
    """
    try:
        return KNOWN_COLLECTIONS[collection_id]
    except KeyError:
        raise InputError(
            f"collection {collection_id!r} is not supported; use one of "
            f"{sorted(KNOWN_COLLECTIONS)} (Sentinel-2 L2A or Landsat Collection 2 Level-2 "
            "surface reflectance)."
        ) from None


# ---- resolved items --------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedBand:
    """One band of one Item: where it is and how to read it.

    Reflectance = ``DN * scale + offset`` where ``DN != nodata``. For masks scale is 1, offset 0.
    `resolution` is the native pixel size in metres; `epsg` the asset's CRS (None if undeclared).
    """

    name: str
    asset_key: str
    href: str
    kind: BandKind
    scale: float
    offset: float
    nodata: float
    resolution: float
    epsg: int | None


@dataclass(frozen=True)
class ResolvedItem:
    """An Item resolved against its collection profile.

    `bands` maps common names to reflectance bands found in the item (table order); `missing`
    names table bands whose asset the item lacks. `platform` is normalised (``sentinel-2a``,
    ``landsat-8``); `processing_baseline` is Sentinel-2's ``NN.NN`` string or None.
    """

    id: str
    collection: str
    catalog: str
    family: Family
    platform: str
    epsg: int | None
    processing_baseline: str | None
    bands: Mapping[str, ResolvedBand] = field(hash=False)
    mask: ResolvedBand | None
    missing: tuple[str, ...] = ()

    def all_bands(self) -> tuple[ResolvedBand, ...]:
        """Reflectance bands then the mask band (when present)."""
        return (*self.bands.values(), *((self.mask,) if self.mask else ()))


def resolve_item(item: Mapping[str, Any]) -> ResolvedItem:
    """Resolve a STAC Item (plain dict) to common band names, hrefs, scale, offset and nodata.

    Relative asset hrefs are resolved against the item's ``self`` link when it has one.

    Scale/offset/nodata come from the asset's ``raster:bands`` when declared, from the table
    otherwise; for Sentinel-2 without a declared offset, -0.1 is applied from processing baseline
    04.00 (see `S2_BOA_OFFSET`). Raises `InputError` for an unsupported collection or a layout
    that matches no known catalog.
    """
    profile = _profile_for(item)
    props = item.get("properties") or {}
    assets: Mapping[str, Any] = item.get("assets") or {}
    self_href = _self_href(item)
    item_epsg = _epsg_of(props)
    baseline = _baseline(props) if profile.family == "sentinel-2" else None
    found: dict[str, ResolvedBand] = {}
    missing: list[str] = []
    mask: ResolvedBand | None = None
    for spec in (*profile.bands, profile.mask):
        key = _find_asset(item, spec, profile)
        if key is None:
            if spec.kind == "reflectance":
                missing.append(spec.name)
            continue
        band = _resolve_band(spec, key, assets[key], props, item_epsg, baseline)
        if self_href and _is_relative(band.href):
            band = replace(band, href=urljoin(self_href, band.href))
        if spec.kind == "mask":
            mask = band
        else:
            found[spec.name] = band
    return ResolvedItem(
        id=str(item.get("id", "")),
        collection=profile.collection,
        catalog=profile.catalog,
        family=profile.family,
        platform=_platform(item),
        epsg=item_epsg,
        processing_baseline=baseline,
        bands=MappingProxyType(found),
        mask=mask,
        missing=tuple(missing),
    )


def normalize_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `item` ready for stackstac: assets renamed to common band names.

    The copy keeps only the resolved band assets and the mask asset (``scl`` / ``qa_pixel``);
    other assets (thumbnails, metadata, multi-band previews) are dropped. Each kept asset gets a
    single ``raster:bands`` entry with the resolved scale, offset (baseline offset included) and
    nodata, ``proj:epsg`` (stackstac 0.5 reads only ``proj:epsg``, not ``proj:code``) and a
    ``type`` when it had none; USGS STAC 0.7 ``eo:bands`` indices are replaced by the band
    objects they point to; relative hrefs are made absolute (see `resolve_item`). Item properties
    get ``proj:epsg`` and a normalised ``platform``.
    """
    resolved = resolve_item(item)
    out: dict[str, Any] = {k: copy.deepcopy(v) for k, v in item.items() if k != "assets"}
    props = out.setdefault("properties", {})
    if resolved.epsg is not None:
        props["proj:epsg"] = resolved.epsg
    if resolved.platform:
        props["platform"] = resolved.platform
    if "collection" not in out:
        out["collection"] = resolved.collection
    src_assets: Mapping[str, Any] = item.get("assets") or {}
    new_assets: dict[str, Any] = {}
    for band in resolved.all_bands():
        asset = copy.deepcopy(dict(src_assets[band.asset_key]))
        asset["href"] = band.href
        raster = (asset.get("raster:bands") or [{}])[0]
        asset["raster:bands"] = [
            {**raster, "scale": band.scale, "offset": band.offset, "nodata": band.nodata}
        ]
        if band.epsg is not None:
            asset["proj:epsg"] = band.epsg
        asset.setdefault("type", "image/tiff; application=geotiff")
        eo = asset.get("eo:bands")
        if isinstance(eo, list) and eo and isinstance(eo[0], int):
            item_eo = props.get("eo:bands") or []
            asset["eo:bands"] = [item_eo[i] for i in eo if 0 <= i < len(item_eo)]
        new_assets[band.name] = asset
    out["assets"] = new_assets
    return out


def check_item(item: Mapping[str, Any]) -> ResolvedItem:
    """Resolve `item` after checking that it is usable; raise `SceneRejectedError` otherwise.

    Catalogs do publish broken Items (a missing footprint, no assets, a null datetime, a
    projection code that is no code). One such item must not stop a search or a load: callers
    skip it and log the reason, which names the field. Checked:

    - ``id``: a non-empty string; ``geometry``: a non-empty GeoJSON geometry;
    - ``properties.datetime`` (or ``start_datetime``): an ISO 8601 datetime;
    - the projection fields, where present (item and assets): ``proj:epsg`` an integer EPSG code
      and ``proj:code`` ``"EPSG:<n>"`` that pyproj knows, ``proj:shape`` two positive integers,
      ``proj:transform`` 6 or 9 numbers;
    - ``assets``: the collection profile resolves (`resolve_item`) and every band of its table
      and the mask band have an asset with an ``href``.
    """
    item_id = item.get("id") if isinstance(item, Mapping) else None
    if not isinstance(item_id, str) or not item_id.strip():
        raise SceneRejectedError(f"STAC item without an id ({str(item)[:80]}...)")

    def reject(reason: str) -> SceneRejectedError:
        return SceneRejectedError(f"STAC item {item_id!r}: {reason}")

    geometry = item.get("geometry")
    if not isinstance(geometry, Mapping):
        raise reject("no geometry (footprint); the catalog item is incomplete.")
    try:
        if shape(geometry).is_empty:
            raise reject("empty geometry (footprint).")
    except (GEOSException, ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
        raise reject(f"geometry is not valid GeoJSON ({err}).") from err
    props = item.get("properties")
    if not isinstance(props, Mapping):
        raise reject("no properties.")
    when = props.get("datetime") or props.get("start_datetime")
    try:
        datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    except ValueError:
        raise reject(f"properties.datetime {when!r} is not an ISO 8601 datetime.") from None
    assets = item.get("assets")
    if not isinstance(assets, Mapping) or not assets:
        raise reject("no assets.")
    for where, obj in [("properties", props), *((f"assets.{k}", a) for k, a in assets.items())]:
        if isinstance(obj, Mapping):
            problem = _proj_problem(obj)
            if problem:
                raise reject(f"{where}.{problem}")
    try:
        resolved = resolve_item(item)
    except (InputError, KeyError, TypeError, ValueError) as err:
        raise reject(str(err)) from err
    lacking = [*resolved.missing, *(() if resolved.mask else (MASK_BANDS[resolved.family],))]
    if lacking:
        raise reject(f"assets: no asset for {lacking} ({resolved.catalog} {resolved.collection}).")
    empty = [b.asset_key for b in resolved.all_bands() if not b.href]
    if empty:
        raise reject(f"assets {empty} have no href.")
    return resolved


def _proj_problem(obj: Mapping[str, Any]) -> str | None:
    """What is wrong with the projection fields of an item's properties or an asset, or None."""
    epsg = obj.get("proj:epsg")
    if epsg is not None:
        if isinstance(epsg, bool) or not isinstance(epsg, int | float) or epsg != int(epsg):
            return f"proj:epsg {epsg!r} is not an integer EPSG code."
        if not _known_epsg(int(epsg)):
            return f"proj:epsg {epsg!r} is not a known EPSG code."
    code = obj.get("proj:code")
    if code is not None:
        m = re.fullmatch(r"\s*EPSG:(\d+)\s*", str(code), flags=re.IGNORECASE)
        if m is None:
            return f"proj:code {code!r} is not an EPSG code (EPSG:<n>)."
        if not _known_epsg(int(m.group(1))):
            return f"proj:code {code!r} is not a known EPSG code."
    shp = obj.get("proj:shape")
    if shp is not None and not (
        isinstance(shp, list | tuple)
        and len(shp) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shp)
    ):
        return f"proj:shape {shp!r} is not two positive integers (rows, columns)."
    tr = obj.get("proj:transform")
    if tr is not None and not (
        isinstance(tr, list | tuple)
        and len(tr) in (6, 9)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in tr)
    ):
        return f"proj:transform {tr!r} is not 6 or 9 numbers (an affine transform)."
    return None


@lru_cache(maxsize=256)
def _known_epsg(code: int) -> bool:
    try:
        CRS.from_epsg(code)
    except CRSError:
        return False
    return True


# ---- private helpers -------------------------------------------------------------------------


def _collection_id(item: Mapping[str, Any]) -> str:
    coll = item.get("collection") or (item.get("properties") or {}).get("collection")
    if not coll:
        raise InputError(
            f"STAC item {item.get('id', '<no id>')!r} names no collection; the pipeline needs one "
            f"of {sorted(KNOWN_COLLECTIONS)} to know how to read it."
        )
    return str(coll)


def _profile_for(item: Mapping[str, Any]) -> CollectionProfile:
    collection = _collection_id(item)
    collection_family(collection)  # InputError naming the known collections
    keys = set(item.get("assets") or {})
    candidates = [p for p in PROFILES if p.collection == collection and keys & p.marker_keys]
    if not candidates:
        layouts = {p.catalog: sorted(p.marker_keys) for p in PROFILES if p.collection == collection}
        raise InputError(
            f"STAC item {item.get('id')!r} of {collection!r} has none of the asset keys of a known "
            f"catalog ({layouts}); its assets are {sorted(keys)[:20]}."
        )
    if len(candidates) > 1:
        platform = _platform(item)
        by_platform = [p for p in candidates if not p.platforms or platform in p.platforms]
        candidates = by_platform or candidates
    if len(candidates) > 1:
        hrefs = " ".join(str(link.get("href", "")) for link in item.get("links") or [])
        by_host = [p for p in candidates if any(h in hrefs for h in p.hosts)]
        candidates = by_host or candidates
    return candidates[0]


def _find_asset(item: Mapping[str, Any], spec: BandSpec, profile: CollectionProfile) -> str | None:
    assets: Mapping[str, Any] = item.get("assets") or {}
    if profile.resolve_by_common_name and spec.common_names:
        item_eo = (item.get("properties") or {}).get("eo:bands") or []
        for key, asset in assets.items():
            eo = asset.get("eo:bands")
            if not isinstance(eo, list) or len(eo) != 1:
                continue  # multi-band previews carry several common names: never a band asset
            entry = eo[0]
            if isinstance(entry, int):  # STAC 0.7: an index into the item's eo:bands
                entry = item_eo[entry] if 0 <= entry < len(item_eo) else {}
            if isinstance(entry, Mapping) and entry.get("common_name") in spec.common_names:
                return str(key)
    return next((k for k in spec.asset_keys if k in assets), None)


def _resolve_band(
    spec: BandSpec,
    key: str,
    asset: Mapping[str, Any],
    props: Mapping[str, Any],
    item_epsg: int | None,
    baseline: str | None,
) -> ResolvedBand:
    raster_bands = asset.get("raster:bands")
    raster: Mapping[str, Any] = (
        raster_bands[0] if isinstance(raster_bands, list) and raster_bands else {}
    )
    if spec.kind == "mask":
        scale, offset = 1.0, 0.0  # class codes / bit fields: never rescaled
    else:
        scale = float(raster.get("scale", spec.scale))
        if "offset" in raster:
            offset = float(raster["offset"])
        else:
            offset = spec.offset + _baseline_offset(baseline, props)
    resolution = raster.get("spatial_resolution") or asset.get("gsd") or spec.resolution
    return ResolvedBand(
        name=spec.name,
        asset_key=key,
        href=str(asset.get("href", "")),
        kind=spec.kind,
        scale=scale,
        offset=offset,
        nodata=float(raster.get("nodata", spec.nodata)),
        resolution=float(resolution),
        epsg=_epsg_of(asset) or item_epsg,
    )


def _self_href(item: Mapping[str, Any]) -> str | None:
    """The item's own absolute location (``self`` link), against which relative hrefs resolve."""
    for link in item.get("links") or []:
        href = str(link.get("href", ""))
        if link.get("rel") == "self" and not _is_relative(href):
            return href
    return None


def _is_relative(href: str) -> bool:
    return not (urlparse(href).scheme or href.startswith("/"))


def _baseline_offset(baseline: str | None, props: Mapping[str, Any]) -> float:
    """The BOA offset implied by the processing baseline when the item declares no offset.

    Earth Search v0 harmonised the pixels of some baseline >= 04.00 scenes itself and flagged them
    with ``sentinel:boa_offset_applied: true`` (cirrus-geo/cirrus-earth-search#21): no offset then.
    Earth Search v1 declares the offset in ``raster:bands``, which wins over this rule; its
    metadata is known to be wrong for some 2022-2025 items (Element84/earth-search#66, #71), which
    no rule based on metadata alone can detect.
    """
    if baseline is None or props.get("sentinel:boa_offset_applied") is True:
        return 0.0
    parsed = _parse_baseline(baseline)
    return S2_BOA_OFFSET if parsed is not None and parsed >= S2_OFFSET_BASELINE else 0.0


def _baseline(props: Mapping[str, Any]) -> str | None:
    value = props.get("s2:processing_baseline") or props.get("sentinel:processing_baseline")
    return None if value is None else str(value)


def _parse_baseline(baseline: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"N?0*(\d+)\.?(\d{1,2})?", baseline.strip())
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def _epsg_of(obj: Mapping[str, Any]) -> int | None:
    """``proj:epsg`` or ``proj:code`` (``"EPSG:32633"``) of an item's properties or an asset."""
    epsg = obj.get("proj:epsg")
    if isinstance(epsg, int | float) and not isinstance(epsg, bool):
        return int(epsg)
    code = obj.get("proj:code")
    if isinstance(code, str):
        m = re.fullmatch(r"\s*EPSG:(\d+)\s*", code, flags=re.IGNORECASE)
        if m:
            return int(m.group(1))
    return None


_ID_PLATFORM = (
    (re.compile(r"^L[CETOM]0?([4-9])"), "landsat-{}"),
    (re.compile(r"^S2([A-D])_"), "sentinel-2{}"),
)


def _platform(item: Mapping[str, Any]) -> str:
    """Normalised platform: ``Sentinel-2A`` -> ``sentinel-2a``, ``LANDSAT_8`` -> ``landsat-8``.

    USGS STAC 0.7 items carry ``eo:platform`` or nothing; then the scene id prefix decides
    (``LC08_…`` -> landsat-8, ``S2B_…`` -> sentinel-2b).
    """
    props = item.get("properties") or {}
    raw = props.get("platform") or props.get("eo:platform")
    if raw:
        return str(raw).strip().lower().replace("_", "-").replace(" ", "-")
    item_id = str(item.get("id", ""))
    for pattern, template in _ID_PLATFORM:
        m = pattern.match(item_id)
        if m:
            return template.format(m.group(1).lower())
    return ""
