"""The ``train`` flow: synthetic worlds -> composites + labels -> one trained, calibrated model.

    worlds (seeds) --map--> ensure-world (archive + composites + labels, cached in EO_CACHE_DIR)
                  -> train-model (patches, early stopping on held-out areas, temperature)
                  -> <output_dir>/<name>.pt + <name>.json (sha256, metrics) + a metrics artifact

`make weights` runs it once per model kind (see ``models/weights/README.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.settings import get_settings

__all__ = ["TrainParams", "TrainSummary", "ensure_world_task", "train", "world_base"]

WorldKind = Literal["demo", "tiny"]


class TrainParams(BaseModel):
    """What to train, on which worlds, where to write it."""

    kind: Literal["change", "footprint", "dynamics"] = Field(
        description="Model to train: change (FC-Siam-diff), footprint (U-Net), dynamics (GRU)."
    )
    world_seeds: list[int] = Field(
        default=[1, 2, 3], min_length=1, description="Seeds of the synthetic training worlds."
    )
    world: WorldKind = Field(
        default="demo",
        description="World configuration: demo (4 km, 1985-2026) or tiny (1.5 km, tests).",
    )
    epochs: int | None = Field(default=None, ge=1, description="Max epochs (default: recipe).")
    steps: int | None = Field(default=None, ge=1, description="Batches per epoch (default).")
    patch: int | None = Field(
        default=None, ge=8, description="Patch side in pixels (dynamics: pixels per batch)."
    )
    change_pairs: list[tuple[int, int]] | None = Field(
        default=None, description="(before, after) years for change; default: the recipe's."
    )
    seed: int = Field(default=0, description="Seed of initialisation and sampling.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Torch device.")
    output_dir: str | None = Field(
        default=None, description="Folder for <name>.pt/.json; default EO_CACHE_DIR/weights."
    )
    name: str | None = Field(default=None, description="Weights name; default per kind.")


class TrainSummary(BaseModel):
    """The saved weights: name, files, sha256, metrics, seconds."""

    name: str
    weights: str
    sha256: str
    temperature: float
    metrics: dict[str, float]
    epochs_run: int
    seconds: float


def world_base(world: WorldKind) -> Any:
    """The `ArchiveConfig` a world seed is applied to."""
    from tasks.synthetic import DEMO_CONFIG, tiny_config

    return tiny_config() if world == "tiny" else DEMO_CONFIG


@task(name="ensure-world", cache_policy=NO_CACHE, tags=["cpu"])
def ensure_world_task(seed: int, world: WorldKind = "demo") -> str:
    """Archive, composites and labels of world `seed` (each cached on disk); returns the
    archive root (a reference: the arrays stay on disk)."""
    from models.training.data import ensure_world, world_from_archive

    workers = 1 if world == "tiny" else None
    root = ensure_world(seed, base=world_base(world), workers=workers)
    world_from_archive(root)  # builds and caches composites + labels
    get_run_logger().info("world %d ready at %s", seed, root)
    return str(root)


@task(name="train-model", cache_policy=NO_CACHE, tags=["cpu", "training"])
def train_task(roots: list[str], params: TrainParams) -> TrainSummary:
    """Train and save one model on the worlds at `roots`."""
    from models.training.data import world_from_archive
    from models.training.recipes import default_settings, train_model

    overrides: dict[str, Any] = {"seed": params.seed, "device": params.device}
    for key in ("epochs", "steps", "patch"):
        if getattr(params, key) is not None:
            overrides[key] = getattr(params, key)
    if params.change_pairs is not None:
        overrides["change_pairs"] = tuple(tuple(p) for p in params.change_pairs)
    settings = default_settings(params.kind, **overrides)
    worlds = [world_from_archive(Path(r)) for r in roots]
    out_dir = Path(params.output_dir or get_settings().cache_dir / "weights")
    outcome = train_model(
        worlds, settings, out_dir=out_dir, name=params.name, logger=get_run_logger()
    )
    spec = outcome.spec
    return TrainSummary(
        name=spec.name,
        weights=str(outcome.weights_path),
        sha256=str(spec.sha256),
        temperature=spec.temperature,
        metrics=dict(spec.metrics),
        epochs_run=len(outcome.fit.history),
        seconds=outcome.seconds,
    )


@flow(name="train", log_prints=True)
def train(params: TrainParams) -> TrainSummary:
    """Worlds -> one trained, calibrated model with its spec (see the module docstring)."""
    roots = ensure_world_task.map(params.world_seeds, world=params.world).result()
    summary = train_task(list(roots), params)
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in summary.metrics.items())
    create_markdown_artifact(
        key=f"train-{params.kind}",
        markdown=f"## {summary.name}\n\nsha256 `{summary.sha256}`, temperature "
        f"{summary.temperature:.3f}, {summary.epochs_run} epochs, {summary.seconds:.0f} s, "
        f"worlds {params.world_seeds}\n\n| metric (validation area) | value |\n|---|---|\n{rows}\n",
        description=f"Training of {summary.name}",
    )
    print(f"{summary.name}: {summary.weights} sha256 {summary.sha256}")
    return summary
