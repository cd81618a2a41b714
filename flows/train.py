"""The ``train`` flow: labelled data -> composites + labels -> one trained, calibrated model.

    worlds (seeds) --map--> ensure-world (archive + composites + labels, cached in EO_CACHE_DIR)
    user labels ---------> prepare-labels (labels on the model grid + composites from the
                           STAC API, `models.training.labels`; cached in EO_CACHE_DIR)
                  -> train-model (patches, early stopping on held-out areas, temperature)
                  -> <output_dir>/<name>.pt + <name>.json (sha256, metrics) + a metrics artifact

Without `labels` the model trains on the synthetic worlds `world_seeds` (`make weights` runs it
once per model kind, see ``models/weights/README.md``). With `labels` it trains on the user's
labels instead, or on both with ``add_synthetic=True``; the spec's training data then names the
label file and its sha256.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from shapely.geometry import mapping

from tasks.aoi import parse_aoi
from tasks.errors import InputError
from tasks.settings import get_settings

__all__ = [
    "LabelSource",
    "TrainParams",
    "TrainSummary",
    "ensure_world_task",
    "prepare_labels_task",
    "train",
    "world_base",
]

WorldKind = Literal["demo", "tiny", "sampled"]
Kind = Literal["change", "footprint", "dynamics"]


class LabelSource(BaseModel):
    """User labels to train on (see `models.training.labels` for what the values mean)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(
        description="Label file: a single-band raster (GeoTIFF/COG, any CRS; nodata = "
        "unlabelled) or GeoParquet polygons; a local path, http(s):// or s3:// URL.",
        min_length=1,
    )
    format: Literal["auto", "raster", "geoparquet"] = Field(
        default="auto", description="File format; auto: from the extension (.tif / .parquet)."
    )
    aoi: str | list[float] | dict[str, Any] | None = Field(
        default=None,
        description="Area the labels describe, in WGS84 (bbox 'w,s,e,n' or GeoJSON); default: "
        "the labels' extent. Polygons without a 'class' column label all of it.",
    )
    stac_api_url: str | None = Field(
        default=None, description="STAC API of the imagery; default EO_STAC_API_URL."
    )
    collections: list[str] | None = Field(
        default=None,
        description="STAC collections; default sentinel-2-l2a for footprint, Landsat + "
        "Sentinel-2 for change and dynamics.",
    )
    max_cloud_cover: float = Field(
        default=80.0, ge=0, le=100, description="Skip scenes with more cloud cover (%)."
    )
    year: int | None = Field(default=None, description="footprint: the year the labels show.")
    before: int | None = Field(default=None, description="change: the earlier year.")
    after: int | None = Field(default=None, description="change: the later year.")
    first_year: int | None = Field(default=None, description="dynamics: first year.")
    last_year: int | None = Field(default=None, description="dynamics: last year.")
    val_edge: Literal["top", "bottom", "left", "right"] | None = Field(
        default=None,
        description="Edge of the AOI held out for validation; default: picked by the labels' "
        "hash. Choose one where you have labels.",
    )
    min_labelled_pixels: int = Field(
        default=100, ge=1, description="Fewest labelled pixels in each of the train/val areas."
    )

    @field_validator("aoi", mode="before")
    @classmethod
    def _aoi(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, str) and v.strip().startswith("{"):
            try:
                v = json.loads(v)
            except json.JSONDecodeError as err:
                raise ValueError(f"aoi: not valid GeoJSON ({err.msg}).") from None
        try:
            return dict(mapping(parse_aoi(v, field="labels.aoi")))
        except InputError as err:
            raise ValueError(str(err)) from None

    def years(self) -> dict[str, int | None]:
        """The year parameters, as `models.training.labels.label_periods` takes them."""
        return {
            "year": self.year,
            "before": self.before,
            "after": self.after,
            "first_year": self.first_year,
            "last_year": self.last_year,
        }


class TrainParams(BaseModel):
    """What to train, on which worlds or labels, where to write it."""

    kind: Kind = Field(
        description="Model to train: change (FC-Siam-diff), footprint (U-Net), dynamics (GRU)."
    )
    world_seeds: list[int] = Field(
        default=[1, 2, 3], min_length=1, description="Seeds of the synthetic training worlds."
    )
    world: WorldKind = Field(
        default="demo",
        description="World configuration: demo (4 km, 1985-2026), tiny (1.5 km, tests) or "
        "sampled (each seed its own configuration: tasks.synthetic.sampler; seeds below 1000).",
    )
    labels: LabelSource | None = Field(
        default=None,
        description="Train on these user labels instead of the synthetic worlds.",
    )
    add_synthetic: bool = Field(
        default=False,
        description="With labels: train on the synthetic worlds world_seeds as well.",
    )
    epochs: int | None = Field(default=None, ge=1, description="Max epochs (default: recipe).")
    steps: int | None = Field(default=None, ge=1, description="Batches per epoch (default).")
    patch: int | None = Field(
        default=None, ge=8, description="Patch side in pixels (dynamics: pixels per batch)."
    )
    change_pairs: list[tuple[int, int]] | None = Field(
        default=None,
        description="(before, after) years for change; default: the recipe's (with labels: "
        "the labels' before/after, plus these).",
    )
    seed: int = Field(default=0, description="Seed of initialisation and sampling.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Torch device.")
    output_dir: str | None = Field(
        default=None, description="Folder for <name>.pt/.json; default EO_CACHE_DIR/weights."
    )
    name: str | None = Field(
        default=None,
        description="Weights name; default per kind (with labels: '<kind name>-<label file>').",
    )

    @model_validator(mode="after")
    def _labels_fit_kind(self) -> TrainParams:
        if self.labels is not None:
            from models.training.labels import label_periods

            try:
                label_periods(self.kind, **self.labels.years())
            except InputError as err:
                raise ValueError(f"labels.{err}") from None
        return self

    @model_validator(mode="after")
    def _sampled_seeds_for_training(self) -> TrainParams:
        from tasks.synthetic.sampler import EVAL_SEED_MIN

        if self.world == "sampled" and (bad := [s for s in self.world_seeds if s >= EVAL_SEED_MIN]):
            raise ValueError(
                f"world_seeds: {bad} are the sampler's evaluation range; train on seeds below "
                f"{EVAL_SEED_MIN}."
            )
        return self

    @property
    def synthetic_seeds(self) -> list[int]:
        """The synthetic worlds this run trains on (none with labels, unless added)."""
        return self.world_seeds if self.labels is None or self.add_synthetic else []


class TrainSummary(BaseModel):
    """The saved weights: name, files, sha256, metrics, seconds, what they were trained on."""

    name: str
    weights: str
    sha256: str
    temperature: float
    metrics: dict[str, float]
    epochs_run: int
    seconds: float
    initial_val_loss: float = Field(description="Validation loss before training.")
    training_data: str = Field(description="Synthetic world seeds and/or the label file.")


def world_base(world: WorldKind, seed: int | None = None) -> Any:
    """The `ArchiveConfig` a world seed is applied to: the demo's, the tiny one, or (for
    ``sampled``) the one `tasks.synthetic.sampler.sample_config` draws for `seed`."""
    from tasks.synthetic import DEMO_CONFIG, tiny_config
    from tasks.synthetic.sampler import sample_config

    if world == "sampled":
        if seed is None:
            raise InputError("world: a sampled world needs its seed.")
        return sample_config(seed)
    return tiny_config() if world == "tiny" else DEMO_CONFIG


@task(name="ensure-world", cache_policy=NO_CACHE, tags=["cpu"])
def ensure_world_task(seed: int, world: WorldKind = "demo") -> str:
    """Archive, composites and labels of world `seed` (each cached on disk); returns the
    archive root (a reference: the arrays stay on disk)."""
    from models.training.data import ensure_world, world_from_archive

    workers = 1 if world == "tiny" else None
    root = ensure_world(seed, base=world_base(world, seed), workers=workers)
    world_from_archive(root)  # builds and caches composites + labels
    get_run_logger().info("world %d ready at %s", seed, root)
    return str(root)


@task(name="prepare-labels", cache_policy=NO_CACHE, tags=["cpu", "io"])
def prepare_labels_task(source: LabelSource, kind: Kind) -> str:
    """User labels on the model grid + composites from the STAC API (`label_world`), saved
    under EO_CACHE_DIR/training; returns the file (a reference: the arrays stay on disk)."""
    from models.training.labels import label_world, save_labelled_world
    from models.training.recipes import default_settings

    lw = label_world(
        source.path,
        kind,
        aoi=source.aoi,
        stac_url=source.stac_api_url,
        collections=source.collections,
        max_cloud_cover=source.max_cloud_cover,
        format=source.format,
        val_edge=source.val_edge,
        val_fraction=default_settings(kind).val_fraction,
        min_pixels=source.min_labelled_pixels,
        year=source.year,
        before=source.before,
        after=source.after,
        first_year=source.first_year,
        last_year=source.last_year,
    )
    get_run_logger().info("%s (sha256 %s)", lw.describe(), lw.labels.sha256)
    return str(save_labelled_world(lw))


@task(name="train-model", cache_policy=NO_CACHE, tags=["cpu", "training"])
def train_task(
    roots: list[str], params: TrainParams, label_files: list[str] | None = None
) -> TrainSummary:
    """Train and save one model on the worlds at `roots` and the label worlds `label_files`."""
    from models.training.data import world_from_archive
    from models.training.labels import load_labelled_world, record_label_source
    from models.training.recipes import MODEL_NAMES, default_settings, train_model
    from tasks.storage import safe_name

    labelled = [load_labelled_world(p) for p in label_files or []]
    overrides: dict[str, Any] = {"seed": params.seed, "device": params.device}
    for key in ("epochs", "steps", "patch"):
        if getattr(params, key) is not None:
            overrides[key] = getattr(params, key)
    pairs = [tuple(p) for p in params.change_pairs or []]
    if params.kind == "change" and labelled:
        pairs = [tuple(int(y) for y in lw.periods) for lw in labelled] + pairs
    if pairs:
        overrides["change_pairs"] = tuple(dict.fromkeys(pairs))
    settings = default_settings(params.kind, **overrides)
    worlds = [world_from_archive(Path(r)) for r in roots] + [lw.world for lw in labelled]
    if params.kind == "dynamics" and len({w.years for w in worlds}) > 1:
        raise InputError(
            "labels.first_year/last_year: the dynamics labels cover "
            f"{labelled[0].world.years[0]}-{labelled[0].world.years[-1]} but the synthetic worlds "
            f"{worlds[0].years[0]}-{worlds[0].years[-1]}; match them or drop add_synthetic."
        )
    name = params.name
    if name is None and labelled:
        stem = safe_name(Path(labelled[0].labels.name).stem.lower(), max_length=40)
        name = f"{MODEL_NAMES[params.kind]}-{stem}".lower()
    out_dir = Path(params.output_dir or get_settings().cache_dir / "weights")
    outcome = train_model(
        worlds, settings, out_dir=out_dir, name=name, logger=get_run_logger(), world=params.world
    )
    spec = outcome.spec
    seeds = [int(s) for s in params.synthetic_seeds]
    if labelled:
        spec = record_label_source(
            out_dir / f"{spec.name}.json", labelled[0], synthetic_seeds=seeds
        )
        data = f"labels {spec.training_data.labels} (sha256 {spec.training_data.labels_sha256})"
        data += f" + synthetic worlds {seeds}" if seeds else ""
    else:
        data = f"synthetic {params.world} worlds {seeds}"
    return TrainSummary(
        name=spec.name,
        weights=str(outcome.weights_path),
        sha256=str(spec.sha256),
        temperature=spec.temperature,
        metrics=dict(spec.metrics),
        epochs_run=len(outcome.fit.history),
        seconds=outcome.seconds,
        initial_val_loss=outcome.fit.initial_val_loss,
        training_data=data,
    )


@flow(name="train", log_prints=True)
def train(params: TrainParams) -> TrainSummary:
    """Worlds and/or user labels -> one trained, calibrated model with its spec (see the
    module docstring)."""
    seeds = params.synthetic_seeds
    roots = ensure_world_task.map(seeds, world=params.world).result() if seeds else []
    label_files = [prepare_labels_task(params.labels, params.kind)] if params.labels else []
    summary = train_task(list(roots), params, label_files)
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in summary.metrics.items())
    create_markdown_artifact(
        key=f"train-{params.kind}",
        markdown=f"## {summary.name}\n\nsha256 `{summary.sha256}`, temperature "
        f"{summary.temperature:.3f}, {summary.epochs_run} epochs, {summary.seconds:.0f} s, "
        f"trained on {summary.training_data}\n\n| metric (validation area) | value |\n"
        f"|---|---|\n{rows}\n",
        description=f"Training of {summary.name}",
    )
    print(f"{summary.name}: {summary.weights} sha256 {summary.sha256}")
    return summary
