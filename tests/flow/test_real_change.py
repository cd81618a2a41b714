"""A real labelled Landsat pair through the whole change-detection flow with default
parameters: Items served by the project's own STAC API (`rustac serve`), discovery, masking,
co-registration, harmonization, composites, the model (out of domain: adapted at run time),
publishing; scored on the real labels next to the CVA baseline of the same flow.

Data: the Nanjing Landsat 5 TM pair (ChenHongruixuan/ChangeDetectionRepository, MIT licence;
USGS imagery, public domain; labels of Wu et al. 2014 / Du et al. 2019), written as
``landsat-c2-l2`` Items by `models.training.realdata` (approximate surface reflectance).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import rasterio

from flows.evaluate import evaluate_real_change
from models.training.realdata import (
    NANJING_DIR,
    RealPair,
    nanjing_pair,
    write_labels,
    write_landsat_items,
)
from tasks.stac_server import StacServer, serve_stac
from tests.conftest import REALDATA_DIR, realdata_path

#: Measured through this flow (README): adapted DL 0.806, CVA baseline 0.752. The seed rule of
#: the adaptation was chosen on this pair (tasks.adapt): a regression floor, not an estimate.
REAL_F1_FLOOR = 0.77


@pytest.fixture(scope="module")
def nanjing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RealPair, StacServer]]:
    realdata_path(*NANJING_DIR.parts)
    pair = nanjing_pair(REALDATA_DIR)
    files = write_landsat_items(pair, tmp_path_factory.mktemp("nanjing"))
    with serve_stac(files) as api:
        yield pair, api


def test_real_pair_through_the_flow_dl_beats_its_baseline(
    prefect_server: None,
    nanjing: tuple[RealPair, StacServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pair, api = nanjing
    monkeypatch.setenv("EO_CACHE_DIR", str(tmp_path / "cache"))
    from tasks.settings import get_settings

    get_settings.cache_clear()
    try:
        result = evaluate_real_change(
            write_labels(pair, tmp_path / "labels.tif"),
            stac_api_url=api.url,
            before=("2000-04-01", "2000-10-31"),
            after=("2002-04-01", "2002-10-31"),
            output_url=str(tmp_path / "out"),
        )
    finally:
        get_settings.cache_clear()
    dl, cva = result.dl, result.baseline
    assert result.labelled == int((pair.labels >= 0).sum())  # every labelled pixel scored
    assert dl["f1"] >= REAL_F1_FLOOR and dl["f1"] > cva["f1"], (dl, cva)
    assert result.domain["out_of_domain"] and result.domain["adapted_tiles"] == 1
    item = json.loads(Path(result.items["change-fcsiamdiff-30m"]).read_text())
    assert item["properties"]["eo_pipeline:domain"] == result.domain
    base_item = json.loads(Path(result.items["baseline"]).read_text())
    assert "eo_pipeline:domain" not in base_item["properties"]  # a baseline has no training data
    assert sorted(item["properties"]["eo_pipeline:scene_ids"]) == sorted(pair.scene_ids)
    # the product grid is the scenes' own: no resampling, labels line up pixel for pixel
    with rasterio.open(
        Path(result.items["change-fcsiamdiff-30m"]).parent / f"{item['id']}.tif"
    ) as src:
        assert (src.transform.c, src.transform.f) == (pair.grid.bounds[0], pair.grid.bounds[3])
        assert src.shape == pair.labels.shape
        count = src.read(list(src.descriptions).index("count") + 1)
    assert int(count.max()) == 1  # one scene per period
