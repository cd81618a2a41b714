"""The shipped weights on worlds they were never trained on (training seeds: 1-8).

The fast test uses the session's tiny archive (another seed and a smaller, shorter world:
change 2012/2013 -> 2023 at 30 m, footprint 2023 at 10 m); the slow one builds a full
demo-sized world (about 5 minutes on 2 cores) and checks every bar of the model card.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from models.registry import SHIPPED_DIR, load_model
from models.training.data import WorldData, load_world
from models.training.evaluate import BARS, evaluate_world
from models.training.recipes import MODEL_NAMES
from tests.unit.training.conftest import TINY_PAIRS

pytestmark = [
    pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning"),
    pytest.mark.skipif(
        not all((SHIPPED_DIR / f"{n}.json").is_file() for n in MODEL_NAMES.values()),
        reason="shipped weights not trained yet (make weights)",
    ),
]

#: A world seed no shipped model was trained on.
UNSEEN_SEED = 11


def test_shipped_weights_load_with_their_training_provenance() -> None:
    for kind, name in MODEL_NAMES.items():
        model, spec = load_model(name)
        assert spec.task == kind and spec.training_data.source == "synthetic"
        assert spec.training_data.world_seeds and UNSEEN_SEED not in spec.training_data.world_seeds
        assert (SHIPPED_DIR / str(spec.weights_file)).stat().st_size < 2 * 2**20
        assert sum(p.numel() for p in model.parameters()) > 0


def test_shipped_weights_beat_baselines_on_the_unseen_tiny_world(tiny_world: WorldData) -> None:
    assert tiny_world.seed not in load_model(MODEL_NAMES["change"])[1].training_data.world_seeds
    ev = evaluate_world(tiny_world, pairs=TINY_PAIRS)
    assert ev.value("change", "f1") > ev.value("change", "f1", "baseline")
    assert ev.value("footprint", "iou") > ev.value("footprint", "iou", "baseline")
    assert ev.value("footprint", "iou") >= 0.7
    assert ev.value("footprint", "ece") < 0.1


@pytest.mark.slow
def test_shipped_weights_reach_the_bars_on_an_unseen_demo_world(tmp_path: Path) -> None:
    world = load_world(UNSEEN_SEED, cache_dir=tmp_path, workers=2)
    ev = evaluate_world(world)
    for (product, metric), bar in BARS.items():
        assert ev.value(product, metric) >= bar, ev.markdown()
        assert ev.value(product, metric) > ev.value(product, metric, "baseline"), ev.markdown()
