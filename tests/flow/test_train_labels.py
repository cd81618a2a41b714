"""The train flow on user labels (a COG, GeoParquet polygons) under the session Prefect server:
the loss falls, and the weights' spec names the label file and its sha256."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.train import LabelSource, TrainParams, TrainSummary, train
from models.registry import file_sha256, load_model, load_spec
from tasks.settings import get_settings
from tasks.stac_server import StacServer
from tasks.synthetic import Truth
from tests.unit.training.labelfiles import vectorize, write_cog

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")


@pytest.fixture()
def cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("eo-cache")
    monkeypatch.setenv("EO_CACHE_DIR", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def test_train_flow_on_raster_labels_lowers_the_loss_and_names_the_labels(
    prefect_server: None,
    cache_dir: Path,
    tiny_truth: Truth,
    tiny_stac: StacServer,
    tmp_path: Path,
) -> None:
    labels = write_cog(
        tmp_path / "built.tif", tiny_truth.builtup(2023).astype(np.uint8), tiny_truth.grid
    )
    out = tmp_path / "weights"
    summary = train(
        TrainParams(
            kind="footprint",
            labels=LabelSource(
                path=str(labels), stac_api_url=tiny_stac.url, year=2023, val_edge="left"
            ),
            epochs=2,
            steps=4,
            patch=32,
            device="cpu",
            output_dir=str(out),
        )
    )
    assert summary.metrics["best_val_loss"] < 0.95 * summary.initial_val_loss
    assert summary.name == "footprint-unet-s2-10m-built"
    spec = load_spec(out / f"{summary.name}.json")
    data = spec.training_data
    assert (data.source, data.labels, data.world_seeds) == ("labels", str(labels), ())
    assert data.labels_sha256 == file_sha256(labels) and data.years == (2023,)
    assert "footprint labels built.tif (raster)" in data.notes
    # the spec was rewritten after training: the weights still pass the registry's checks
    _, loaded = load_model(summary.name, extra_dir=out)
    assert loaded.sha256 == file_sha256(Path(summary.weights)) == summary.sha256
    assert not (cache_dir / "worlds").exists()  # no synthetic world was built


def test_train_flow_on_geoparquet_change_polygons(
    prefect_server: None,
    cache_dir: Path,
    tiny_truth: Truth,
    tiny_stac: StacServer,
    tmp_path: Path,
) -> None:
    changed = tiny_truth.change(2012, 2023).astype(np.uint8)
    labels = tmp_path / "change.parquet"
    vectorize(changed, tiny_truth.grid, crs="EPSG:4326").to_parquet(labels)
    out = tmp_path / "weights"
    summary = train(
        TrainParams(
            kind="change",
            labels=LabelSource(
                path=str(labels),
                aoi=tiny_truth.grid.to_geojson(),
                stac_api_url=tiny_stac.url,
                before=2012,
                after=2023,
                # the tiny archive's 2012 has two cloudy SLC-off scenes: 40 % observed
                min_labelled_pixels=50,
            ),
            name="change-mine",
            epochs=3,
            steps=4,
            patch=16,
            device="cpu",
            output_dir=str(out),
        )
    )
    assert summary.metrics["best_val_loss"] < summary.initial_val_loss
    spec = load_spec(out / "change-mine.json")
    assert spec.training_data.labels_sha256 == file_sha256(labels)
    assert spec.training_data.years == (2012, 2023)
    assert "sha256" in summary.training_data and str(labels) in summary.training_data


runner = CliRunner()


def test_eo_train_labels_options_reach_the_flow(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[TrainParams] = []

    def fake_train(params: TrainParams) -> TrainSummary:
        seen.append(params)
        return TrainSummary(
            name="x",
            weights="x.pt",
            sha256="0" * 64,
            temperature=1.0,
            metrics={},
            epochs_run=1,
            seconds=0.0,
            initial_val_loss=1.0,
            training_data="labels x",
        )

    monkeypatch.setattr("flows.train.train", fake_train)
    args = ["train", "dynamics", "--labels", "s3://bucket/dyn.parquet", "--label-years"]
    result = runner.invoke(
        app, [*args, "1990-2020", "--aoi", "11.95,51.33,12.0,51.37", "--val-edge", "top"]
    )
    assert result.exit_code == 0, result.output
    source = seen[0].labels
    assert source is not None and (source.first_year, source.last_year) == (1990, 2020)
    assert source.val_edge == "top" and source.path == "s3://bucket/dyn.parquet"
    assert seen[0].synthetic_seeds == []  # labels replace the synthetic worlds
    assert "trained on labels x" in result.output


def test_eo_train_labels_with_wrong_years_names_the_parameter() -> None:
    result = runner.invoke(
        app, ["train", "change", "--labels", "change.parquet", "--label-years", "2012"]
    )
    assert result.exit_code == 2
    assert "labels.after (2012) must be later than before (2012)" in result.output
