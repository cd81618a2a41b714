"""Training of the shipped models on synthetic worlds (never imported on the inference path).

- `models.training.data`: worlds -> composites (inputs) + ground truth (labels), cached;
- `models.training.labels`: user labels (raster COG / GeoParquet polygons) -> the same arrays;
- `models.training.split`: validation split by area;
- `models.training.augment`, `models.training.losses`, `models.training.metrics`;
- `models.training.loop`: the generic training loop (early stopping, device, bf16);
- `models.training.recipes`: the three models' data, loss, calibration and spec;
- `models.training.evaluate`: DL vs classical baselines on an unseen world.
"""

from models.training.data import WorldData, load_world, world_config, world_from_archive
from models.training.loop import Batch, FitConfig, FitResult, fit
from models.training.recipes import (
    MODEL_NAMES,
    Kind,
    TrainOutcome,
    TrainSettings,
    default_settings,
    train_model,
)

__all__ = [
    "MODEL_NAMES",
    "Batch",
    "FitConfig",
    "FitResult",
    "Kind",
    "TrainOutcome",
    "TrainSettings",
    "WorldData",
    "default_settings",
    "fit",
    "load_world",
    "train_model",
    "world_config",
    "world_from_archive",
]
