"""Evaluation on a world never used in training: learned models next to their baselines.

The models run through the production inference engine (`tasks.infer`, weights from the
registry with their sha256 checked), the baselines through `models.baselines`, both on the same
composites. Scores (all on the whole world, which no training run has seen):

- change: the model vs `change_vector_analysis` (Otsu threshold), both as the change products
  make them (`tasks.products.compare_composites`: the after composite radiometrically
  normalised onto the before one; the model adapted where the flow would adapt it): F1,
  precision, recall, ECE, and how many pairs were adapted;
- footprint: the model as the footprint product makes it (`tasks.products.model_footprint`:
  adapted where the flow would adapt; P >= 0.5) vs `builtup_rule` (NDBI rule): IoU, F1,
  precision, recall, ECE, whether it was adapted;
- dynamics: `predict_dynamics` urbanization year vs `breakpoint_year`: share within ±1 year,
  mean absolute error, share of never-built pixels given a year, ECE;
- change and footprint: the domain score of their inputs (`tasks.adapt.domain_score`; change:
  the larger of the pairs'), the number that decides run-time adaptation in the flows.

Change is scored over `EVAL_PAIRS` pooled; the year of urbanization over the pixels that
became built-up after the first year (true year = first year with a majority of built-up truth).
ECE (15 bins, Guo et al. 2017) is given for the calibrated DL probabilities; the baselines give
no probability (their entries are NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from models.baselines import breakpoint_year, builtup_rule
from models.calibration import expected_calibration_error
from models.registry import load_model
from models.training.data import BANDS, WorldData
from models.training.metrics import binary_scores, year_agreement
from models.training.realdata import RealScene
from models.training.recipes import MODEL_NAMES, first_built_year
from tasks.adapt import AdaptMode
from tasks.infer import (
    predict_dynamics,
    resolve_device,
)
from tasks.products import compare_composites, model_footprint

__all__ = ["BARS", "EVAL_PAIRS", "Evaluation", "evaluate_real_footprint", "evaluate_world"]

#: (before, after) year pairs scored for change (fixed before any evaluation was run).
EVAL_PAIRS: tuple[tuple[int, int], ...] = ((1991, 2025), (2009, 2025))

#: Targets on unseen worlds (the project's acceptance bars).
BARS: dict[tuple[str, str], float] = {
    ("change", "f1"): 0.85,
    ("footprint", "iou"): 0.85,
    ("dynamics", "within_1"): 0.85,
}


@dataclass
class Evaluation:
    """Rows ``(product, metric, dl, baseline)`` and the model names/sha256 evaluated, on a
    synthetic world (`seed`) or a real labelled case (`name`)."""

    seed: int | None = None
    name: str = ""
    rows: list[tuple[str, str, float, float]] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)

    def value(self, product: str, metric: str, which: str = "dl") -> float:
        for p, m, dl, base in self.rows:
            if (p, m) == (product, metric):
                return dl if which == "dl" else base
        raise KeyError((product, metric))

    def markdown(self) -> str:
        lines = [
            "| product | metric | DL | baseline | bar |",
            "|---|---|---|---|---|",
        ]
        for p, m, dl, base in self.rows:
            bar = BARS.get((p, m))
            lines.append(
                f"| {p} | {m} | {dl:.3f} | {base:.3f} | {'' if bar is None else f'>= {bar}'} |"
            )
        return "\n".join(lines)


def _da(refl: np.ndarray, lead: dict[str, Sequence[int]] | None = None) -> xr.DataArray:
    dims = (*(lead or {}), "band", "y", "x")
    coords: dict[str, object] = {"band": list(BANDS), **(lead or {})}
    return xr.DataArray(refl, dims=dims, coords=coords)


def evaluate_world(
    world: WorldData,
    *,
    weights_dir: Path | str | None = None,
    names: dict[str, str] | None = None,
    pairs: Sequence[tuple[int, int]] = EVAL_PAIRS,
    device: str | None = "cpu",
) -> Evaluation:
    """Score the three models (registry names `names`, default `MODEL_NAMES`; `weights_dir`
    wins over the shipped folder) and their baselines on `world`."""
    names = {**MODEL_NAMES, **(names or {})}
    dev = resolve_device(device)
    ev = Evaluation(seed=world.seed, name=f"world {world.seed}")

    # change ----------------------------------------------------------------------------
    _, spec = load_model(names["change"], device=dev, extra_dir=weights_dir)
    ev.models["change"] = f"{spec.name} ({spec.sha256})"
    probs, preds_b, labels = [], [], []
    scores: list[float] = []  # domain score of each pair (tasks.adapt)
    adapted = 0
    for a, b in pairs:
        before = _da(world.annual[world.year_index(a)])
        after = _da(world.annual[world.year_index(b)])
        # as the change products make it: normalised, and adapted where the flow would
        ds = compare_composites(
            before, after, model=spec.name, device=device, weights_dir=weights_dir
        )
        base = compare_composites(before, after)
        valid = ds["valid"].values & base["valid"].values
        probs.append(ds["probability"].values[valid])
        preds_b.append(base["probability"].values[valid] >= 0.5)
        labels.append(world.change_label(a, b)[valid])
        scores.append(float(ds.attrs["domain_score"]))
        adapted += int(ds.attrs["adapted"])
    p, y, pb = np.concatenate(probs), np.concatenate(labels), np.concatenate(preds_b)
    dl, bl = binary_scores(p >= 0.5, y), binary_scores(pb, y)
    for m in ("f1", "precision", "recall"):
        ev.rows.append(("change", m, dl[m], bl[m]))
    ev.rows.append(("change", "ece", expected_calibration_error(p, y), float("nan")))
    ev.rows.append(("change", "domain_score", max(scores), float("nan")))
    ev.rows.append(("change", "adapted_pairs", float(adapted), float("nan")))

    # footprint ---------------------------------------------------------------------------
    # as the footprint product makes it: adapted where the flow would adapt
    comp = _da(world.recent)
    ds = model_footprint(comp, model=names["footprint"], device=device, weights_dir=weights_dir)
    ev.models["footprint"] = f"{ds.attrs['method']} ({ds.attrs['weights_sha256']})"
    base = builtup_rule(comp)
    valid = ds["valid"].values & base["valid"].values
    p, y = ds["probability"].values[valid], world.built10[valid]
    dl, bl = binary_scores(p >= 0.5, y), binary_scores(base["built"].values[valid], y)
    for m in ("iou", "f1", "precision", "recall"):
        ev.rows.append(("footprint", m, dl[m], bl[m]))
    ev.rows.append(("footprint", "ece", expected_calibration_error(p, y), float("nan")))
    ev.rows.append(("footprint", "domain_score", ds.attrs["domain_score"], float("nan")))
    ev.rows.append(("footprint", "adapted", float(ds.attrs["adapted"]), float("nan")))

    # dynamics ----------------------------------------------------------------------------
    net, spec = load_model(names["dynamics"], device=dev, extra_dir=weights_dir)
    ev.models["dynamics"] = f"{spec.name} ({spec.sha256})"
    annual = _da(world.annual, {"year": list(world.years)})
    ds = predict_dynamics(net, spec, annual, device=dev)
    base = breakpoint_year(annual)
    built = world.built_label()
    true_year = first_built_year(built, world.years)
    urbanizing = built[-1] & ~built[0]
    dl_year = ds["urbanization_year"].values[urbanizing]
    bl_year = base["year"].values[urbanizing]
    dl_a = year_agreement(dl_year, true_year[urbanizing])
    bl_a = year_agreement(bl_year, true_year[urbanizing])
    ev.rows.append(("dynamics", "within_1", dl_a["within"], bl_a["within"]))
    ev.rows.append(("dynamics", "year_mae", dl_a["mae"], bl_a["mae"]))
    # false alarms: pixels never built that get a year
    never = ~built[-1]
    ev.rows.append(
        (
            "dynamics",
            "false_year_share",
            float(np.isfinite(ds["urbanization_year"].values[never]).mean()),
            float(np.isfinite(base["year"].values[never]).mean()),
        )
    )
    prob = ds["probability"].values
    ok = np.isfinite(prob)
    ev.rows.append(
        ("dynamics", "ece", expected_calibration_error(prob[ok], built[ok]), float("nan"))
    )
    return ev


#: The footprint model's pixel size (m): a coarser real image is resampled to it first, as
#: the product grid of a footprint run would be.
FOOTPRINT_RESOLUTION = 10.0


def evaluate_real_footprint(
    scene: RealScene,
    *,
    weights_dir: Path | str | None = None,
    name: str | None = None,
    adapt: AdaptMode = "auto",
    device: str | None = "cpu",
) -> Evaluation:
    """The footprint model next to the NDBI rule on a real labelled scene (`scene.labels`:
    1 built-up, 0 not, -1 unlabelled), as the footprint product makes it
    (`tasks.products.model_footprint`: adapted where the flow would adapt): IoU, F1,
    precision, recall over the labelled pixels, the model's ECE, domain score and whether
    it was adapted.

    The model sees the scene bilinearly resampled to its 10 m (`FOOTPRINT_RESOLUTION`) and is
    scored at the labels' pixels (nearest 10 m pixel); the rule runs on the scene as it is.
    """
    comp = scene.composite
    x0, y0, x1, y1 = scene.grid.bounds
    r = FOOTPRINT_RESOLUTION
    fine = comp.interp(
        x=np.arange(x0 + r / 2, x1, r), y=np.arange(y1 - r / 2, y0, -r), method="linear"
    ).astype("float32")
    ds = model_footprint(
        fine,
        model=name or MODEL_NAMES["footprint"],
        adapt=adapt,
        device=device,
        weights_dir=weights_dir,
    )
    ev = Evaluation(
        name=scene.name,
        models={"footprint": f"{ds.attrs['method']} ({ds.attrs['weights_sha256']})"},
    )
    back = ds[["probability", "valid"]].sel(x=comp.x, y=comp.y, method="nearest")
    base = builtup_rule(comp)
    m = (scene.labels >= 0) & back["valid"].values & base["valid"].values
    p, y = back["probability"].values[m], scene.labels[m] == 1
    dl, bl = binary_scores(p >= 0.5, y), binary_scores(base["built"].values[m], y)
    for metric in ("iou", "f1", "precision", "recall"):
        ev.rows.append(("footprint", metric, dl[metric], bl[metric]))
    nan = float("nan")
    ev.rows.append(("footprint", "ece", expected_calibration_error(p, y), nan))
    ev.rows.append(("footprint", "domain_score", float(ds.attrs["domain_score"]), nan))
    ev.rows.append(("footprint", "adapted", float(ds.attrs["adapted"]), nan))
    ev.rows.append(("footprint", "labelled", float(m.sum()), float(m.sum())))
    return ev
