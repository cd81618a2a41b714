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
| snow                        | winter chance (lat - 38) / 20 (clipped 0-1) x U(0.4, 1)         |
| irrigated paddies           | with odds 0.3: 15-50 % of the arable fields                     |
| aquaculture ponds           | with odds 0.3: 3-15 % of the arable land dug from 1990 on       |
| roof materials              | Dirichlet(2, 1, 1, 1) shares of concrete, tile, metal, bitumen  |

Seeds below `EVAL_SEED_MIN` are the training range, seeds from it on are for evaluation only
(`flows.evaluate.check_unseen` refuses the others): a configuration scored is never one a
training run drew. The landscape draws come after the others, so a seed keeps the place,
sky and radiometry it had before they existed. What the renderer cannot express yet, and so
is not drawn: across-track view-angle effects within a scene, terrain (elevation, slopes,
their shading and snow lines), other climates' vegetation and crop calendars.
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
_SNOW_FROM_LAT = 38.0  # snow chance grows from 0 here to its full draw 20 degrees north
_LANDSCAPE_ODDS = 0.3  # chance of a paddy landscape, and of an aquaculture one
_ROOF_ALPHA = (2.0, 1.0, 1.0, 1.0)  # Dirichlet of roof shares: concrete, tile, metal, bitumen


def sample_config(seed: int) -> ArchiveConfig:
    """The archive configuration of sampled world `seed` (module docstring)."""
    if seed < 0:
        raise InputError(f"seed: {seed} is negative; give a seed >= 0.")
    rng = np.random.default_rng([seed, 0x5A3B1E])  # a stream of its own, not the world's
    offset = rng.uniform(-10.0, 10.0, 2)
    fields = ArchiveConfig.model_validate(
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
    ).model_dump()
    # Drawn after the others, so those keep the values they had before landscapes existed.
    snow_line = np.clip((fields["center_lat"] - _SNOW_FROM_LAT) / 20.0, 0.0, 1.0)
    fields["snow"] = round(float(snow_line * rng.uniform(0.4, 1.0)), 4)
    paddies = rng.random() < _LANDSCAPE_ODDS
    fields["paddy_share"] = round(float(rng.uniform(0.15, 0.5)), 4) if paddies else 0.0
    ponds = rng.random() < _LANDSCAPE_ODDS
    fields["aquaculture_share"] = round(float(rng.uniform(0.03, 0.15)), 4) if ponds else 0.0
    fields["roof_materials"] = tuple(round(float(v), 3) for v in rng.dirichlet(_ROOF_ALPHA))
    return ArchiveConfig.model_validate(fields)
