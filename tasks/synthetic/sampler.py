"""A distribution of synthetic worlds: archive configurations drawn over what varies between
real archives, so that a score is on a configuration no recipe was tuned on.

`sample_config(seed)` draws one `ArchiveConfig` (all draws from ``numpy.random.default_rng``
keyed on the seed; the same seed, the same configuration):

| what varies                 | draw                                                          |
|-----------------------------|---------------------------------------------------------------|
| latitude, sun geometry      | centre 35-60 °N, 5 °W-30 °E (uniform); the sun follows         |
| season of the acquisitions  | months kept: growing season 4-10, summer 5-9, spring 3-6,       |
|                             | late season 8-11 or winter to spring 1-4 (equal odds)           |
| revisit                     | at most 1 (a single acquisition per period), 2, 3 or 5          |
|                             | acquisitions per platform and year                              |
| cloud regime                | Beta(a, b) of per-scene cover: clearer (0.35, 0.6), the demo's  |
|                             | (0.45, 0.33) or cloudier (0.6, 0.3)                             |
| misregistration             | random shift std 0.1-0.6 native px; systematic Landsat offset   |
|                             | within ±10 m per axis                                           |
| urban growth                | built-up share 2-8 % in 1984, 15-40 % at the end                |
| calibration drift           | per-band gain error std 0-6 % per sensor and per date           |
| atmospheric residuals       | mean residual haze 0-0.03 at 450 nm, with its adjacency blur    |
| view/illumination           | BRDF-like sun-zenith gain 0-0.15 per 45 degrees                 |

Seeds below `EVAL_SEED_MIN` are the training range, seeds from it on are for evaluation only
(`flows.evaluate.check_unseen` refuses the others): a configuration scored is never one a
training run drew. What the renderer cannot express yet, and so is not drawn: landscapes
other than the Central-European one (paddies, aquaculture, roof materials, snow) and
across-track view-angle effects within a scene (issue 15, item 1).
"""

from __future__ import annotations

import numpy as np

from tasks.errors import InputError
from tasks.synthetic.config import DEMO_CONFIG, ArchiveConfig

__all__ = ["EVAL_SEED_MIN", "sample_config"]

#: Seeds from here on are evaluation worlds of the sampler; below, the training range.
EVAL_SEED_MIN = 1000

_MONTHS = ((4, 10), (5, 9), (3, 6), (8, 11), (1, 4))
_SCENES_PER_YEAR = (1, 2, 3, 5)
_CLOUD_BETA = ((0.35, 0.6), (0.45, 0.33), (0.6, 0.3))


def sample_config(seed: int) -> ArchiveConfig:
    """The archive configuration of sampled world `seed` (module docstring)."""
    if seed < 0:
        raise InputError(f"seed: {seed} is negative; give a seed >= 0.")
    rng = np.random.default_rng([seed, 0x5A3B1E])  # a stream of its own, not the world's
    offset = rng.uniform(-10.0, 10.0, 2)
    return ArchiveConfig.model_validate(
        {
            **DEMO_CONFIG.model_dump(),
            "seed": seed,
            "center_lat": round(float(rng.uniform(35.0, 60.0)), 4),
            "center_lon": round(float(rng.uniform(-5.0, 30.0)), 4),
            "months": _MONTHS[int(rng.integers(len(_MONTHS)))],
            "max_scenes_per_year": _SCENES_PER_YEAR[int(rng.integers(len(_SCENES_PER_YEAR)))],
            "cloud_beta": _CLOUD_BETA[int(rng.integers(len(_CLOUD_BETA)))],
            "shift_sigma_px": round(float(rng.uniform(0.1, 0.6)), 3),
            "landsat_offset_m": (round(float(offset[0]), 2), round(float(offset[1]), 2)),
            "builtup_start": round(float(rng.uniform(0.02, 0.08)), 4),
            "builtup_end": round(float(rng.uniform(0.15, 0.40)), 4),
            "calibration_drift": round(float(rng.uniform(0.0, 0.06)), 4),
            "haze": round(float(rng.uniform(0.0, 0.03)), 4),
            "illumination": round(float(rng.uniform(0.0, 0.15)), 4),
        }
    )
