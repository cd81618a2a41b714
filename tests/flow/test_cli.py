"""The `eo` command line: validation messages and a real run with its summary table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL
from typer.testing import CliRunner

from flows.cli import app
from tasks.stac_server import StacServer
from tasks.synthetic import ArchiveInfo

runner = CliRunner()


def test_eo_run_invalid_aoi_names_the_field() -> None:
    result = runner.invoke(
        app,
        [
            "run",
            "change-detection",
            "--aoi",
            "1,2,3",
            "--before",
            "2018-05-01/2018-09-30",
            "--after",
            "2023-05-01/2023-09-30",
        ],
    )
    assert result.exit_code == 2
    assert "invalid aoi" in result.output and "4 numbers" in result.output


def test_eo_evaluate_real_names_the_options_it_lacks(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate-real", "--stac-url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "--labels, --before, --after: needed (or --nanjing DIR)" in result.output
    result = runner.invoke(app, ["evaluate-real", "--nanjing", str(tmp_path)])
    assert result.exit_code == 2 and "real-data folder" in result.output
    result = runner.invoke(app, ["evaluate-real", "--north-carolina", str(tmp_path)])
    assert result.exit_code == 2 and "real-data folder" in result.output
    assert "Traceback" not in result.output


def test_eo_train_sampled_refuses_evaluation_seeds_in_one_line_per_field() -> None:
    result = runner.invoke(app, ["train", "change", "--sampled", "--seeds", "3,1000"])
    assert result.exit_code == 2
    assert "evaluation range" in result.output and "Traceback" not in result.output
    assert "pydantic" not in result.output and "validation error" not in result.output


def test_eo_evaluate_sampled_refuses_training_seeds_before_any_world() -> None:
    result = runner.invoke(app, ["evaluate", "--sampled", "--seed", "1001,5"])
    assert result.exit_code == 2 and "seed 5: the sampler's training range" in result.output
    result = runner.invoke(app, ["evaluate", "--sampled", "--tiny", "--seed", "1001"])
    assert result.exit_code == 2 and "choose one" in result.output


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--epsg", "5", "invalid epsg"), ("--adapt", "sometimes", "invalid adapt"),
     ("--collections", "sentinel-1-grd", "invalid collections")],
)  # fmt: skip
def test_eo_run_change_options_reach_the_parameters(option: str, value: str, message: str) -> None:
    result = runner.invoke(
        app,
        ["run", "change-detection", "--aoi", "11.955,51.335,11.985,51.365",
         "--before", "2018-05-01/2018-09-30", "--after", "2023-05-01/2023-09-30", option, value],
    )  # fmt: skip
    assert result.exit_code == 2 and message in result.output, result.output


def test_eo_run_reversed_dates_names_the_field() -> None:
    result = runner.invoke(
        app,
        [
            "run",
            "change-detection",
            "--aoi",
            "11.95,51.33,12.0,51.37",
            "--before",
            "2018-09-30/2018-05-01",
            "--after",
            "2023-05-01/2023-09-30",
        ],
    )
    assert result.exit_code == 2 and "before" in result.output and "swap" in result.output


def test_eo_run_footprint_publishes_and_prints_a_summary(
    prefect_server: None, tiny_archive: ArchiveInfo, tiny_stac: StacServer, tmp_path: Path
) -> None:
    """A real `eo` process against the session's Prefect test server."""
    env = {
        **os.environ,
        "EO_CACHE_DIR": str(tmp_path / "cache"),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "COLUMNS": "400",
    }
    args = [
        str(Path(sys.executable).with_name("eo")),
        "run",
        "urban-footprint",
        "--aoi",
        json.dumps(tiny_archive.aoi),
        "--year",
        "2023",
        "--model",
        "baseline",
        "--output",
        str(tmp_path / "out"),
        "--stac-url",
        tiny_stac.url,
    ]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "published" in first.stdout and "item.json" in first.stdout
    assert again.returncode == 0 and "already there" in again.stdout
    assert len(list((tmp_path / "out").rglob("item.json"))) == 1


def test_eo_turns_the_temporary_servers_usage_reports_off_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    runner.invoke(app, ["aoi", "list", "--help"])  # --help on a subcommand: the callback runs
    assert os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED") == "false"
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")  # the user's choice stays
    runner.invoke(app, ["aoi", "list", "--help"])
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"
