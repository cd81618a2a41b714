"""Incremental products: a new acquisition recomputes only the period it falls in, and the result
equals a full recompute on the same inputs.

The tiny archive is published without its newest acquisition (both MGRS tiles of 2023-08-07),
then the acquisition "arrives". Equality is bitwise: every period is computed by the same code
from the same scenes against the same pinned co-registration reference, so nothing may differ,
not even in the last bit (a tolerance would hide a period computed from other inputs).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

import tasks.ard as ard
from flows.params import MonitorParams
from flows.products import monitor
from tasks.aoi import GridSpec
from tasks.ard import CompositeRef, composites_for, read_composite
from tasks.products import ProductSummary
from tasks.refs import SceneRef
from tasks.settings import get_settings
from tasks.stac_server import serve_stac
from tasks.synthetic import ArchiveInfo, Truth, stac_files

pytestmark = pytest.mark.filterwarnings(
    # stackstac 0.5.1 multiplies an Affine with `*`, deprecated by affine 3.1 (not our code)
    "ignore:Use `@` matmul:PendingDeprecationWarning"
)

PERIODS = {"before": ("2012-01-01", "2013-12-31"), "after": ("2023-01-01", "2023-12-31")}


@dataclass
class Loads:
    """Scene ids of every `tasks.ard.load` call: what was read from the archive."""

    calls: list[list[str]]

    @property
    def ids(self) -> set[str]:
        return {i for call in self.calls for i in call}


@contextmanager
def spy_loads() -> Iterator[Loads]:
    """Record every load of pixels by `tasks.ard` (reference pinning and period composites)."""
    loads = Loads([])
    original: Callable[..., Any] = ard.load

    def recording(scenes: list[SceneRef], *args: Any, **kwargs: Any) -> Any:
        loads.calls.append([s.id for s in scenes])
        return original(scenes, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(ard, "load", recording)
    try:
        yield loads
    finally:
        mp.undo()


def _split(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the items of every acquisition but the newest, the newest acquisition's items)."""
    newest = max(i["properties"]["datetime"] for i in items)
    new = [i for i in items if i["properties"]["datetime"] == newest]
    return [i for i in items if i["properties"]["datetime"] != newest], new


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _files(ref: CompositeRef) -> dict[str, tuple[int, int]]:
    return {p: _stat(ref.tif(p)) for p in ref.periods}


# ---- composites --------------------------------------------------------------------------------
@dataclass
class Runs:
    grid: GridSpec
    state: str
    old: CompositeRef
    new: CompositeRef
    loads: Loads
    files_before: dict[str, tuple[int, int]]
    files_after: dict[str, tuple[int, int]]
    state_before: dict[str, bytes]
    new_ids: set[str]


def _state_files(state: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(state).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(
    tiny_items: list[dict[str, Any]], tiny_truth: Truth, tmp_path_factory: pytest.TempPathFactory
) -> Runs:
    """Composites without the newest acquisition, then with it (same cache, same state)."""
    older, new = _split(tiny_items)
    grid = GridSpec(tiny_truth.grid.epsg, 30.0, tiny_truth.grid.bounds)
    base = tmp_path_factory.mktemp("incremental")
    cache, state = base / "cache", str(base / "state")
    old = composites_for(
        [SceneRef.from_item(i) for i in older], grid, PERIODS, cache_dir=cache, state_url=state
    )
    files_before, state_before = _files(old), _state_files(state)
    with spy_loads() as loads:
        ref = composites_for(
            [SceneRef.from_item(i) for i in tiny_items],
            grid,
            PERIODS,
            cache_dir=cache,
            state_url=state,
        )
    return Runs(
        grid,
        state,
        old,
        ref,
        loads,
        files_before,
        _files(ref),
        state_before,
        {i["id"] for i in new},
    )


def test_new_acquisition_recomputes_only_its_period(runs: Runs, tiny_items: list[dict]) -> None:
    after_ids = {i["id"] for i in tiny_items if i["properties"]["datetime"].startswith("2023")}
    # read: the 'after' period's scenes, the new acquisition among them; no 'before' scene
    assert runs.loads.calls and runs.new_ids <= runs.loads.ids <= after_ids
    # the 'before' composite is the very same file, untouched; 'after' is a new one
    assert runs.new.tif("before") == runs.old.tif("before")
    assert runs.files_after["before"] == runs.files_before["before"]
    assert runs.new.tif("after") != runs.old.tif("after")
    # the new acquisition is an input now, and the pinned reference did not move
    assert runs.new_ids <= set(runs.new.scene_ids) and not runs.new_ids & set(runs.old.scene_ids)
    assert _state_files(runs.state) == runs.state_before
    assert runs.new.provenance["reference"] == runs.old.provenance["reference"]
    assert set(runs.new.period_provenance("after")["scene_ids"]) >= runs.new_ids


def test_incremental_equals_full_recompute(
    runs: Runs, tiny_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    scenes = [SceneRef.from_item(i) for i in tiny_items]
    with spy_loads() as loads:
        full = composites_for(
            scenes, runs.grid, PERIODS, cache_dir=tmp_path / "empty", state_url=runs.state
        )
    assert {i for call in loads.calls for i in call} == {s.id for s in scenes}  # really recomputed
    assert Path(full.path).parents[1] != Path(runs.new.path).parents[1]
    for period in PERIODS:
        refl, count = read_composite(runs.new, period)
        refl_full, count_full = read_composite(full, period)
        np.testing.assert_array_equal(refl.values, refl_full.values)  # NaN == NaN, bit for bit
        np.testing.assert_array_equal(count.values, count_full.values)
        # real composites, not two empty arrays (the 2012-13 Landsat: SLC-off gaps, clouds)
        assert (count.values > 0).mean() > 0.25
        inc, rec = runs.new.period_provenance(period), full.period_provenance(period)
        for key in ("scene_ids", "kept", "mask", "coregistration", "key"):
            assert inc[key] == rec[key], (period, key)
    assert full.scene_ids == runs.new.scene_ids and full.periods == runs.new.periods


def test_rerun_of_the_same_inputs_is_a_no_op(runs: Runs, tiny_items: list[dict[str, Any]]) -> None:
    manifest = Path(runs.new.path) / "composites.json"
    seen = _stat(manifest)
    with spy_loads() as loads:
        again = composites_for(
            [SceneRef.from_item(i) for i in tiny_items],
            runs.grid,
            PERIODS,
            cache_dir=Path(runs.new.path).parents[1],
            state_url=runs.state,
        )
    assert again == runs.new and not loads.calls
    assert _files(again) == runs.files_after and _stat(manifest) == seen


def test_annual_series_recomputes_only_the_new_year(
    runs: Runs, tiny_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    older, _ = _split(tiny_items)
    cache = tmp_path / "cache"
    old = composites_for(
        [SceneRef.from_item(i) for i in older],
        runs.grid,
        "year",
        cache_dir=cache,
        state_url=runs.state,
    )
    seen = _files(old)
    with spy_loads() as loads:
        new = composites_for(
            [SceneRef.from_item(i) for i in tiny_items],
            runs.grid,
            "year",
            cache_dir=cache,
            state_url=runs.state,
        )
    assert new.periods == old.periods == tuple(str(y) for y in range(2012, 2024))
    changed = {p for p in new.periods if _stat(new.tif(p)) != seen[p]}
    assert changed == {"2023"}  # eleven of twelve annual composites reused
    assert all(i.startswith("S2") for i in loads.ids)  # no Landsat year read again


def test_a_tile_inside_a_pinned_grid_shares_its_reference(
    runs: Runs, tiny_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    xmin, _, _, ymax = runs.grid.bounds
    res = runs.grid.resolution
    tile = GridSpec(runs.grid.epsg, res, (xmin + 10 * res, ymax - 40 * res, xmin + 40 * res, ymax))
    shutil.copytree(runs.state, tmp_path / "state")  # leave the module's state as it was
    pinned = ard.find_reference(tile, state_url=str(tmp_path / "state"))
    parent = runs.new.provenance["reference"]
    assert pinned is not None and pinned.scene_id == parent["scene_id"]
    assert pinned.sha256 == parent["sha256"] and pinned.window == (0, 40, 10, 40)


# ---- the monitor flow ----------------------------------------------------------------------------
@contextmanager
def _stac_over(root: Path, items: list[dict[str, Any]], folder: Path) -> Iterator[str]:
    """A STAC API serving only `items` of the archive at `root`; yields its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for path in stac_files(root):
        if path.name.endswith(".items.ndjson"):
            collection = path.name.removesuffix(".items.ndjson")
            path = folder / path.name
            path.write_text(
                "".join(json.dumps(i) + "\n" for i in items if i["collection"] == collection)
            )
        files.append(path)
    with serve_stac(files) as server:
        yield server.url


def _monitor(aoi: str, stac: str, out: Path, cache: Path) -> list[ProductSummary]:
    """The monitor flow for 2023 (change against 2013, footprint) with its composites cached in
    `cache`. The baselines: the models would add CPU time, not coverage (a product is a
    deterministic function of its composites)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EO_CACHE_DIR", str(cache))
        get_settings.cache_clear()
        try:
            return monitor(
                MonitorParams(
                    aoi=aoi,
                    year=2023,
                    change_interval_years=10,
                    products=["change", "footprint"],
                    use_baselines=True,
                    stac_api_url=stac,
                    output_url=str(out),
                )
            )
        finally:
            get_settings.cache_clear()  # before the environment is restored


def _data(summary: ProductSummary) -> np.ndarray:
    with rasterio.open(summary.product.asset_href("data")) as src:
        return src.read()


def test_monitor_with_a_new_acquisition_updates_only_what_it_touches(
    prefect_server: None,
    tiny_archive: ArchiveInfo,
    tiny_items: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    older, new = _split(tiny_items)
    aoi, cache = json.dumps(tiny_archive.aoi), tmp_path / "cache"
    with _stac_over(tiny_archive.root, older, tmp_path / "stac-old") as stac:
        published = _monitor(aoi, stac, tmp_path / "out", cache)
    with _stac_over(tiny_archive.root, tiny_items, tmp_path / "stac-all") as stac:
        with spy_loads() as loads:
            updated = _monitor(aoi, stac, tmp_path / "out", cache)
        # a full recompute: an empty composite cache, the same pinned references (the state)
        shutil.copytree(cache / "state", tmp_path / "fresh" / "state")
        with spy_loads() as full_loads:
            full = _monitor(aoi, stac, tmp_path / "out-full", tmp_path / "fresh")

    # only 2023 was read again: the 2013 'before' season was reused
    assert {i["id"] for i in new} <= loads.ids
    assert all(i.split("_")[2].startswith("2023") for i in loads.ids if "_L2SP_" not in i)
    assert not [i for i in loads.ids if "_L2SP_" in i]  # no Landsat (2012-2013) scene read
    assert any("_L2SP_" in i for i in full_loads.ids)  # ... which a recompute does read
    for old, inc, rec in zip(published, updated, full, strict=True):
        assert inc.kind == old.kind == rec.kind
        # a new product since the last published state; the old one stays published
        assert inc.product.id != old.product.id and not inc.product.skipped
        assert Path(old.product.item_href).is_file()
        # ... equal to a full recompute, bit for bit, under the same id
        assert rec.product.id == inc.product.id
        np.testing.assert_array_equal(_data(inc), _data(rec))
