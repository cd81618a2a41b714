"""The ``evaluate`` flow: the three models and their baselines on a world never trained on.

seed -> ensure-world (archive + composites + labels, cached) -> evaluate-models
     -> a table artifact: DL vs baseline (change F1/precision/recall, footprint IoU/F1,
        share of urbanized pixels whose year is within ±1, ECE)

labels (real) + STAC API -> change-detection (model, then baseline) -> scores on the labels
(`evaluate_real_change`; `eo evaluate-real`)
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
    "RealChangeResult",
    "bar_summary",
    "check_unseen",
    "evaluate",
    "evaluate_real_change",
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
    if world == "sampled":
        from tasks.synthetic.sampler import EVAL_SEED_MIN

        if bad := sorted(s for s in seeds if s < EVAL_SEED_MIN):
            raise InputError(
                f"seed {', '.join(map(str, bad))}: the sampler's training range (below "
                f"{EVAL_SEED_MIN}); evaluate sampled worlds of seed {EVAL_SEED_MIN} or more."
            )
        return
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
    world: WorldKind = Field(
        default="demo",
        description="World configuration: demo, tiny, or sampled (drawn per seed over what "
        "varies between archives; seeds >= 1000).",
    )
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
    return EvaluateResult(seed=params.seed, rows=ev.rows, models=ev.models, markdown=ev.markdown())


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


# ---- real labelled data -------------------------------------------------------------------------
class RealChangeResult(BaseModel):
    """DL next to its baseline on a real labelled change pair, both through the
    change-detection flow: scores over the labelled pixels, and what the model's Item says of
    its inputs (domain score, adaptation)."""

    name: str
    labelled: int
    dl: dict[str, float]
    baseline: dict[str, float]
    domain: dict[str, object]
    items: dict[str, str]  # model name (or 'baseline') -> its product's STAC Item


def _score_against_labels(product_tif: str, labels_path: Path) -> tuple[dict[str, float], int]:
    """Scores of a change product's ``binary`` band against a label raster (1 changed,
    0 unchanged, anything else unlabelled; any CRS and grid: nearest-neighbour onto the
    product's)."""
    import numpy as np
    import rasterio
    from rasterio.warp import Resampling, reproject

    from models.training.metrics import binary_scores

    with rasterio.open(product_tif) as src:
        names = list(src.descriptions)
        binary = src.read(names.index("binary") + 1)
        shape, transform, crs = src.shape, src.transform, src.crs
    with rasterio.open(labels_path) as lab:
        if lab.crs is None:
            raise InputError(f"labels: {labels_path} has no CRS; georeference it.")
        src_labels = lab.read(1).astype(np.int16)
        src_labels[~np.isin(src_labels, (0, 1))] = -1
        labels = np.full(shape, -1, dtype=np.int16)
        reproject(
            src_labels,
            labels,
            src_transform=lab.transform,
            src_crs=lab.crs,
            src_nodata=-1,
            dst_transform=transform,
            dst_crs=crs,
            dst_nodata=-1,
            resampling=Resampling.nearest,
        )
    m = (labels >= 0) & (binary != -9999) & np.isfinite(binary)
    if m.sum() < 10 or len(np.unique(labels[m])) < 2:
        raise InputError(
            f"labels: {int(m.sum())} labelled pixels fall inside the product; give labels of "
            "both classes (1 changed, 0 unchanged) over the AOI."
        )
    return binary_scores(binary[m] > 0.5, labels[m] == 1), int(m.sum())


def evaluate_real_change(
    labels: Path,
    *,
    stac_api_url: str,
    before: tuple[str, str],
    after: tuple[str, str],
    collections: Sequence[str] = ("landsat-c2-l2",),
    aoi: str | None = None,
    output_url: str,
    name: str | None = None,
) -> RealChangeResult:
    """Run the change-detection flow twice over real scenes (the default model with default
    parameters, then the CVA baseline) and score both on a label raster (`labels`: 1 changed,
    0 unchanged, other values unlabelled). `aoi`: default the label raster's extent, shrunk by
    half a pixel. Products go to `output_url`."""
    import json as _json

    import rasterio
    from shapely.geometry import box, mapping

    from flows.params import ChangeDetectionParams, DateRange
    from flows.products import change_detection
    from tasks.aoi import reproject_geometry

    if aoi is None:
        with rasterio.open(labels) as lab:
            if lab.crs is None:
                raise InputError(f"labels: {labels} has no CRS; georeference it.")
            half = abs(lab.transform.a) / 2
            inner = box(*lab.bounds).buffer(-half, join_style="mitre")
            aoi = _json.dumps(mapping(reproject_geometry(inner, lab.crs.to_epsg(), 4326)))
    runs = {}
    for model in ("change-fcsiamdiff-30m", "baseline"):
        summary = change_detection(
            ChangeDetectionParams(
                aoi=aoi,
                before=DateRange.model_validate({"start": before[0], "end": before[1]}),
                after=DateRange.model_validate({"start": after[0], "end": after[1]}),
                collections=list(collections),
                model=model,
                stac_api_url=stac_api_url,
                output_url=output_url,
            )
        )
        scores, n = _score_against_labels(summary.product.asset_href("data"), labels)
        runs[model] = (scores, n, summary.domain, summary.product.item_href)
    dl, n, domain, _ = runs["change-fcsiamdiff-30m"]
    return RealChangeResult(
        name=name or labels.stem,
        labelled=n,
        dl=dl,
        baseline=runs["baseline"][0],
        domain=dict(domain),
        items={k: v[3] for k, v in runs.items()},
    )
