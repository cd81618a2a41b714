"""The train and evaluate flows under the session Prefect server, on a tiny world."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.evaluate import EvaluateParams, evaluate
from flows.train import TrainParams, train
from models.registry import file_sha256, load_spec
from tasks.errors import InputError
from tasks.settings import get_settings

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

TINY_SEED = 5  # a tiny world of its own (not the shared tiny archive's seed)


@pytest.fixture()
def cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("eo-cache")
    monkeypatch.setenv("EO_CACHE_DIR", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def test_train_flow_writes_weights_then_evaluate_flow_scores_them(
    prefect_server: None, cache_dir: Path
) -> None:
    out = cache_dir / "weights"
    summary = train(
        TrainParams(
            kind="dynamics",
            world_seeds=[TINY_SEED],
            world="tiny",
            epochs=2,
            steps=2,
            patch=128,
            device="cpu",
            output_dir=str(out),
        )
    )
    spec = load_spec(out / f"{summary.name}.json")
    assert spec.sha256 == summary.sha256 == file_sha256(Path(summary.weights))
    assert spec.training_data.world_seeds == (TINY_SEED,)
    assert spec.training_data.world == "tiny"
    assert summary.epochs_run >= 1 and "val_year_within_1" in summary.metrics
    assert (cache_dir / "worlds").is_dir() and (cache_dir / "training").is_dir()

    for kind in ("change", "footprint"):
        train(
            TrainParams(
                kind=kind,
                world_seeds=[TINY_SEED],
                world="tiny",
                epochs=1,
                steps=1,
                patch=16,
                change_pairs=[(2012, 2023)],
                device="cpu",
                output_dir=str(out),
            )
        )
    result = evaluate(
        EvaluateParams(
            # the training world again: this checks the flow's wiring, not generalisation
            # (that is tests/unit/training/test_shipped.py), and saves building a world
            seed=TINY_SEED,
            world="tiny",
            weights_dir=str(out),
            change_pairs=[(2012, 2023)],
        )
    )
    products = {(p, m) for p, m, _, _ in result.rows}
    assert {("change", "f1"), ("footprint", "iou"), ("dynamics", "within_1")} <= products
    assert set(result.models) == {"change", "footprint", "dynamics"}
    assert str(spec.sha256) in result.models["dynamics"]


def test_evaluate_flow_refuses_a_training_seed(prefect_server: None) -> None:
    with pytest.raises(InputError, match="training world"):
        evaluate(EvaluateParams(seed=1))


def test_eo_evaluate_on_several_worlds_ends_with_the_bars_on_every_world(
    prefect_server: None, cache_dir: Path
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    args = ["evaluate", "--tiny", "--change-pairs", "2012-2023,2013-2023"]
    bad = runner.invoke(app, [*args, "--seed", "5,x"])
    assert bad.exit_code == 2 and "comma-separated integers" in bad.output
    # a training world among demo seeds: refused before the first world is built
    seen = runner.invoke(app, ["evaluate", "--seed", "101,2"], terminal_width=200)
    assert seen.exit_code == 2 and "seed 2: a training world" in seen.output, seen.output
    assert "world 101" not in seen.output
    # the same tiny world twice (built once): the wiring, not generalisation
    done = runner.invoke(app, [*args, "--seed", f"{TINY_SEED},{TINY_SEED}"], terminal_width=200)
    assert done.exit_code == 0, done.output
    assert done.output.count(f"world {TINY_SEED}: DL vs baseline") == 2
    summary = done.output.split("bars on every world")[1]
    header = next(line for line in summary.splitlines() if "bar" in line and "mean" in line)
    assert header.split().count(str(TINY_SEED)) == 2, summary
    for name in ("change", "footprint", "dynamics"):
        assert name in summary
