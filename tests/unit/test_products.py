"""Product maps from composites on disk: baselines and a registry model, one output shape."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
import torch
import xarray as xr

from models.registry import load_model, save_weights
from models.training.recipes import MODEL_NAMES
from models.unet import UNet
from tasks.aoi import GridSpec
from tasks.ard import CompositeRef, write_composites
from tasks.errors import InputError, PipelineError
from tasks.products import (
    ProductSummary,
    change_map,
    dynamics_map,
    footprint_map,
    make_tile_product,
    publish_tiles,
)
from tasks.settings import get_settings
from tasks.tiling import PixelWindow, Tile, single_tile, split_grid
from tests.unit.models.factories import BANDS, CONCRETE, VEGETATION, make_spec

GRID = GridSpec(
    epsg=32633, resolution=30.0, bounds=(500_000.0, 5_198_800.0, 501_200.0, 5_200_000.0)
)
BLOCK = (slice(10, 20), slice(15, 30))  # rows, cols that turn into concrete


def _write(folder: Path, layers: dict[str, np.ndarray], counts: dict[str, int]) -> CompositeRef:
    labels = list(layers)
    rows, cols = GRID.shape
    refl = np.stack([layers[k] for k in labels]).astype("float32")
    count = np.stack([np.full((rows, cols), counts[k], "int16") for k in labels])
    starts = [pd.Timestamp(f"{2000 + i}-01-01") for i in range(len(labels))]
    ds = xr.Dataset(
        {
            "reflectance": (("period", "band", "y", "x"), refl),
            "count": (("period", "y", "x"), count),
        },
        coords={
            "period": labels,
            "band": list(BANDS),
            "start": ("period", starts),
            "end": ("period", starts),
        },
    )
    return write_composites(ds, GRID, folder, {"scene_ids": ["a", "b"]})


def _surface(changed: bool) -> np.ndarray:
    rows, cols = GRID.shape
    rng = np.random.default_rng(int(changed))
    img = np.broadcast_to(np.array(VEGETATION)[:, None, None], (6, rows, cols)).copy()
    if changed:
        img[:, BLOCK[0], BLOCK[1]] = np.array(CONCRETE)[:, None, None]
    return img + rng.normal(0, 0.005, img.shape)


@pytest.fixture()
def pair(tmp_path: Path) -> CompositeRef:
    return _write(
        tmp_path / "pair",
        {"before": _surface(False), "after": _surface(True)},
        {"before": 3, "after": 5},
    )


def test_change_baseline_finds_the_new_block(pair: CompositeRef) -> None:
    ds = change_map(pair)
    assert set(ds.data_vars) == {"probability", "binary", "confidence", "count"}
    truth = np.zeros(GRID.shape, bool)
    truth[BLOCK] = True
    assert (ds["binary"].values.astype(bool) == truth).mean() > 0.99
    assert float(ds["confidence"].min()) >= 0.5
    assert int(ds["count"].max()) == 3  # the smaller of the two dates
    assert ds.attrs["method"] == "cva-otsu"


def test_footprint_baseline_flags_concrete(pair: CompositeRef) -> None:
    ds = footprint_map(pair, "after")
    built = ds["binary"].values.astype(bool)
    assert (
        built[BLOCK].mean() > 0.95
        and built[~np.pad(np.ones((10, 15), bool), ((10, 20), (15, 10)))].mean() < 0.05
    )


def test_dynamics_baseline_finds_the_year(tmp_path: Path) -> None:
    layers = {str(2000 + i): _surface(i >= 5) for i in range(10)}
    ref = _write(tmp_path / "annual", layers, dict.fromkeys(layers, 2))
    ds = dynamics_map(ref)
    years = ds["urbanization_year"].values
    assert np.nanmedian(years[BLOCK]) == 2005
    assert np.isnan(years[0, 0])  # never urbanized
    assert int(ds["count"].max()) == 10


def test_dynamics_with_the_shipped_model_records_its_year_rule(tmp_path: Path) -> None:
    layers = {str(2000 + i): _surface(i >= 5) for i in range(10)}
    ref = _write(tmp_path / "annual", layers, dict.fromkeys(layers, 2))
    _, spec = load_model(MODEL_NAMES["dynamics"])
    ds = dynamics_map(ref, model=spec.name, device="cpu")
    assert ds.attrs["year_rule"] == "window" and ds.attrs["weights_sha256"] == spec.sha256
    years = ds["urbanization_year"].values
    assert abs(np.nanmedian(years[BLOCK]) - 2005) <= 1
    assert np.isnan(years[0, 0])  # never urbanized


def test_change_with_the_shipped_model_scores_its_domain_and_adapts_when_told(
    pair: CompositeRef, caplog: pytest.LogCaptureFixture
) -> None:
    truth = np.zeros(GRID.shape, bool)
    truth[BLOCK] = True
    shipped = change_map(pair, model=MODEL_NAMES["change"], adapt="never", device="cpu")
    assert shipped.attrs["adapted"] == 0 and shipped.attrs["domain_score"] > 0
    assert shipped.attrs["domain_channel"] in {"blue", "green", "red", "nir", "swir16",
                                                "swir22", "ndvi", "ndbi", "mndwi"}  # fmt: skip
    with caplog.at_level("INFO", logger="tasks.products"):
        tuned = change_map(pair, model=MODEL_NAMES["change"], adapt="always", device="cpu")
    assert tuned.attrs["adapted"] == 1, caplog.text
    assert "adapted on" in caplog.text
    assert tuned.attrs["domain_score"] == shipped.attrs["domain_score"]
    assert (tuned["binary"].values.astype(bool) == truth).mean() > 0.97
    assert not np.array_equal(tuned["probability"].values, shipped["probability"].values)


def test_footprint_with_the_shipped_model_adapts_when_told(
    pair: CompositeRef, caplog: pytest.LogCaptureFixture
) -> None:
    truth = np.zeros(GRID.shape, bool)
    truth[BLOCK] = True
    shipped = footprint_map(pair, "after", model=MODEL_NAMES["footprint"], adapt="never")
    assert shipped.attrs["adapted"] == 0 and shipped.attrs["domain_score"] > 0
    with caplog.at_level("INFO", logger="tasks.products"):
        tuned = footprint_map(pair, "after", model=MODEL_NAMES["footprint"], adapt="always")
    assert tuned.attrs["adapted"] == 1 and "footprint: " in caplog.text, caplog.text
    assert "adapted on" in caplog.text
    assert tuned.attrs["domain_score"] == shipped.attrs["domain_score"]
    assert (tuned["binary"].values.astype(bool) == truth).mean() > 0.97
    assert not np.array_equal(tuned["probability"].values, shipped["probability"].values)


def test_products_out_of_domain_log_a_warning_and_tell_the_item(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reflectance at three times the training range: a warning naming the score and what to
    do, and the score in the published Item."""
    ref = _write(
        tmp_path / "bright",
        {"before": 3 * _surface(False), "after": 3 * _surface(True)},
        {"before": 3, "after": 5},
    )
    with caplog.at_level("WARNING", logger="tasks.products"):
        part = make_tile_product(
            "change", ref, single_tile(GRID), model=MODEL_NAMES["change"], adapt="never",
            device="cpu", cache_dir=tmp_path / "cache",
        )  # fmt: skip
    assert "far from the training data" in caplog.text and "domain score" in caplog.text
    assert part.domain is not None and part.domain.score > 0.5 and not part.domain.adapted
    again = make_tile_product(
        "change", ref, single_tile(GRID), model=MODEL_NAMES["change"], adapt="never",
        device="cpu", cache_dir=tmp_path / "cache",
    )  # fmt: skip
    assert again.domain == part.domain  # read back from the tile file's tags
    assert part.radiometry is not None and part.radiometry.applied
    assert again.radiometry == part.radiometry
    summary = publish_tiles(
        "change", [part], model=MODEL_NAMES["change"], start="2000-01-01", end="2001-12-31",
        output_url=str(tmp_path / "out"), adapt="never",
    )  # fmt: skip
    item = json.loads(Path(summary.product.item_href).read_text())
    domain = item["properties"]["eo_pipeline:domain"]
    assert domain["score"] == pytest.approx(part.domain.score) and domain["out_of_domain"]
    assert domain["adapted_tiles"] == 0 and domain["tiles"] == 1
    assert summary.domain == domain
    assert item["properties"]["eo_pipeline:parameters"]["adapt"] == "never"
    radiometry = item["properties"]["eo_pipeline:radiometric_normalization"]
    assert radiometry["normalized_tiles"] == radiometry["tiles"] == 1
    assert radiometry["bands"] == list(BANDS) and len(radiometry["gain"]) == len(BANDS)
    assert radiometry["method"].startswith("ISFA") and radiometry["stable_pixels"] > 0


def test_thresholds_out_of_range_are_refused(pair: CompositeRef) -> None:
    with pytest.raises(InputError, match="threshold"):
        change_map(pair, threshold=1.0)


def test_footprint_with_a_registry_model(
    pair: CompositeRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    net = UNet(9, base_width=4, depth=2)
    spec = make_spec(
        "footprint",
        "unet",
        name="footprint-test",
        **{k: v for k, v in net.config.items() if k != "in_channels"},
    )
    save_weights(net, spec, tmp_path / "weights")
    monkeypatch.setenv("EO_WEIGHTS_DIR", str(tmp_path / "weights"))
    get_settings.cache_clear()
    try:
        ds = footprint_map(pair, "after", model="footprint-test", device="cpu")
    finally:
        get_settings.cache_clear()
    p = ds["probability"].values
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert (ds["binary"].values == (p >= 0.5)).all()
    assert ds.attrs["weights_sha256"] and float(ds["confidence"].min()) >= 0.5


# ---- one product from tiles ---------------------------------------------------------------------
def _publish(ref: CompositeRef, tiles: list[Tile], root: Path) -> ProductSummary:
    parts = [
        make_tile_product("footprint", ref, t, period="after", cache_dir=root / "cache")
        for t in tiles
    ]
    return publish_tiles(
        "footprint", parts, period="after", start="2001-01-01", end="2001-12-31",
        output_url=str(root / "out"), min_pixels=2,
    )  # fmt: skip


def _cog(summary: ProductSummary) -> dict[str, np.ndarray]:
    with rasterio.open(summary.product.asset_href("data")) as src:
        return {str(d): src.read(i + 1) for i, d in enumerate(src.descriptions)}


def _polygons(summary: ProductSummary) -> list[tuple[str, int, float]]:
    gdf = gpd.read_parquet(summary.product.asset_href("vectors"))
    return sorted(
        (shapely.normalize(shapely.simplify(g, 0.0)).wkt, int(n), round(float(c), 9))
        for g, n, c in zip(gdf.geometry, gdf["n_pixels"], gdf["mean_confidence"], strict=True)
    )


def test_publish_tiles_window_by_window_equals_one_tile(
    pair: CompositeRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 x 3 tiles mosaicked and vectorized in 16 px windows (the concrete block and the
    noise patches cross both) publish the raster and polygons of one untiled pass."""
    whole = _publish(pair, [single_tile(GRID)], tmp_path / "whole")
    monkeypatch.setattr("tasks.products.WINDOW_PX", 16)
    tiles = split_grid(GRID, tile_size_px=16, halo_px=0)
    tiled = _publish(pair, tiles, tmp_path / "tiled")
    assert len(tiles) == 9 and tiled.product.id != whole.product.id  # tiling is a parameter
    a, b = _cog(whole), _cog(tiled)
    assert list(a) == list(b) == ["probability", "binary", "confidence", "count"]
    for band in a:
        np.testing.assert_array_equal(b[band], a[band], err_msg=band)
    polygons = _polygons(whole)
    assert any(n >= 150 for _, n, _ in polygons)  # the 10 x 15 px block, across 4 windows
    assert _polygons(tiled) == polygons
    assert tiled.areas == whole.areas and tiled.quicklook == whole.quicklook


def test_publish_tiles_fills_left_out_tiles_and_refuses_overlaps(
    pair: CompositeRef, tmp_path: Path
) -> None:
    tiles = split_grid(GRID, tile_size_px=16, halo_px=0)
    summary = _publish(pair, tiles[1:], tmp_path / "gap")  # the north-west tile left out
    bands = _cog(summary)
    assert (bands["count"][:16, :16] == 0).all() and (bands["probability"][:16, :16] < -1).all()
    assert (bands["count"][16:, 16:] == 5).all()
    first, second = (
        make_tile_product("footprint", pair, t, period="after", cache_dir=tmp_path / "cache")
        for t in tiles[:2]
    )
    shifted = dataclasses.replace(second.tile, core=PixelWindow(0, 8, 16, 16))
    with pytest.raises(PipelineError, match="overlaps"):
        publish_tiles(
            "footprint", [first, dataclasses.replace(second, tile=shifted)], period="after",
            start="2001-01-01", end="2001-12-31", output_url=str(tmp_path / "overlap"),
        )  # fmt: skip
    assert not (tmp_path / "overlap").exists()  # nothing published
