"""The ``evaluate`` flow: the three models and their baselines on a world never trained on.

seed -> ensure-world (archive + composites + labels, cached) -> evaluate-models
     -> a table artifact: DL vs baseline (change F1/precision/recall, footprint IoU/F1,
        share of urbanized pixels whose year is within ±1, ECE)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from flows.train import WorldKind, ensure_world_task
from tasks.errors import InputError

__all__ = [
    "BarRow",
    "EvaluateParams",
    "EvaluateResult",
    "bar_summary",
    "check_unseen",
    "evaluate",
    "training_seeds",
]


def training_seeds(weights_dir: str | None = None) -> frozenset[int]:
    """World seeds any of the evaluated weights was trained on (their specs name them)."""
    from models.registry import resolve
    from models.training.recipes import MODEL_NAMES

    return frozenset(
        seed
        for name in MODEL_NAMES.values()
        for seed in resolve(name, extra_dir=weights_dir)[0].training_data.world_seeds
    )


def check_unseen(seeds: Sequence[int], *, world: str, weights_dir: str | None) -> None:
    """Refuse demo-world `seeds` the shipped weights were trained on (a score on a training
    world says nothing about generalisation). Other weights: their training is theirs."""
    if world != "demo" or weights_dir is not None:
        return
    seen = training_seeds()
    if bad := sorted(set(seeds) & seen):
        raise InputError(
            f"seed {', '.join(map(str, bad))}: a training world of the shipped weights "
            f"({sorted(seen)}); choose another seed."
        )


class EvaluateParams(BaseModel):
    """Which world to evaluate on, and which weights."""

    seed: int = Field(description="Seed of the evaluation world (never a training seed).")
    world: WorldKind = Field(default="demo", description="World configuration: demo or tiny.")
    weights_dir: str | None = Field(
        default=None, description="Folder of weights that wins over the shipped ones."
    )
    change_pairs: list[tuple[int, int]] | None = Field(
        default=None, description="(before, after) years scored for change; default fixed."
    )
    device: str = Field(default="cpu", description="Torch device: auto, cpu or cuda.")


class EvaluateResult(BaseModel):
    """Rows (product, metric, DL, baseline) and the weights evaluated (name + sha256)."""

    seed: int
    rows: list[tuple[str, str, float, float]]
    models: dict[str, str]
    markdown: str


@task(name="evaluate-models", cache_policy=NO_CACHE, tags=["cpu"])
def evaluate_task(root: str, params: EvaluateParams) -> EvaluateResult:
    """Score the models and baselines on the world at `root`."""
    from models.training.data import world_from_archive
    from models.training.evaluate import EVAL_PAIRS, evaluate_world

    world = world_from_archive(Path(root))
    pairs = [tuple(p) for p in params.change_pairs] if params.change_pairs else EVAL_PAIRS
    ev = evaluate_world(
        world,
        weights_dir=params.weights_dir,
        pairs=pairs,  # type: ignore[arg-type]
        device=params.device,
    )
    return EvaluateResult(seed=ev.seed, rows=ev.rows, models=ev.models, markdown=ev.markdown())


@flow(name="evaluate", log_prints=True)
def evaluate(params: EvaluateParams) -> EvaluateResult:
    """Build world `seed` and score the models against their baselines on it."""
    check_unseen([params.seed], world=params.world, weights_dir=params.weights_dir)
    root = ensure_world_task(params.seed, world=params.world)
    result = evaluate_task(root, params)
    models = "\n".join(f"- {k}: {v}" for k, v in result.models.items())
    create_markdown_artifact(
        key="evaluation",
        markdown=f"## Evaluation on world {params.seed}\n\n{result.markdown}\n\n{models}\n",
        description=f"DL vs baselines on unseen world {params.seed}",
    )
    print(result.markdown)
    return result


class BarRow(NamedTuple):
    """One acceptance bar across several evaluation worlds: the DL value on each world (in
    the order of the results), their mean and worst, and whether every world reaches it and
    beats its baseline."""

    product: str
    metric: str
    bar: float
    values: tuple[float, ...]
    mean: float
    worst: float
    met_everywhere: bool


def bar_summary(results: Sequence[EvaluateResult]) -> list[BarRow]:
    """The project's bars (`models.training.evaluate.BARS`) over several worlds' results.

    One world is a small sample: the worlds differ in clouds, growth and parcel sizes, and a
    model's score moves by several points from one to the next, so a bar counts as met only
    where it is met on every world evaluated (the mean is shown for comparison).
    """
    from models.training.evaluate import BARS

    if not results:
        raise InputError("no evaluation results to summarize; give at least one seed.")
    rows = []
    for (product, metric), bar in BARS.items():
        pairs = [_row(r, product, metric) for r in results]
        values = tuple(dl for dl, _ in pairs)
        rows.append(
            BarRow(
                product,
                metric,
                bar,
                values,
                sum(values) / len(values),
                min(values),
                all(dl >= bar and dl > base for dl, base in pairs),
            )
        )
    return rows


def _row(result: EvaluateResult, product: str, metric: str) -> tuple[float, float]:
    for p, m, dl, base in result.rows:
        if (p, m) == (product, metric):
            return dl, base
    raise InputError(f"world {result.seed}'s evaluation has no {product} {metric} row.")
