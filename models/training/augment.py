"""Geometric augmentation: the eight symmetries of the square (flips and 90° rotations).

Overhead imagery has no preferred orientation at this scale (north-up is a convention), so the
dihedral group D4 is the standard label-preserving augmentation for segmentation of remote
sensing images (e.g. Buslaev et al. 2020, "Albumentations", Information 11:125, which offers
it as ``D4``). Spectral values are left untouched: the composites are already harmonized and
their noise is what inference sees.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dihedral", "random_dihedral"]


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """Symmetry `k` (0..7) of the last two axes (y, x): ``k % 4`` quarter turns, then a
    left-right flip when ``k >= 4``. Returns a contiguous copy."""
    out = np.rot90(a, k % 4, axes=(-2, -1))
    if k >= 4:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


def random_dihedral(
    arrays: tuple[np.ndarray, ...], rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    """The same random symmetry applied to every array (inputs and labels stay aligned)."""
    k = int(rng.integers(8))
    return tuple(dihedral(a, k) for a in arrays)
