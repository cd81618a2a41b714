"""Validation split by area: one contiguous band along a world's edge is held out.

Neighbouring pixels are strongly correlated (the same parcel, the same city block), so a
random pixel or patch split would measure memorisation, not generalisation (Roberts et al. 2017,
"Cross-validation strategies for data with temporal, spatial, hierarchical, or phylogenetic
structure", Ecography 40:913: use spatial blocks). Here each world is cut into a validation
band of `val_fraction` of its side along one edge (the edge chosen by the seed), a `buffer` of
pixels that belongs to neither, and the training rectangle. Both parts are rectangles, so
patches are cropped inside one of them and a whole validation area runs through a model at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.errors import InputError

__all__ = ["AreaSplit", "Box", "sample_windows", "split_by_area"]

#: (rows, cols) of a rectangle of the grid.
Box = tuple[slice, slice]


@dataclass(frozen=True)
class AreaSplit:
    """The training and validation rectangles of one (height, width) grid; `edge` is where the
    validation band lies (``top``, ``bottom``, ``left``, ``right``)."""

    train: Box
    val: Box
    edge: str

    def mask(self, shape: tuple[int, ...], part: str) -> np.ndarray:
        """`shape` (height, width) bool: True inside ``part`` (``"train"`` or ``"val"``)."""
        box = self.train if part == "train" else self.val
        out = np.zeros(shape[-2:], dtype=bool)
        out[box] = True
        return out


_EDGES = ("top", "bottom", "left", "right")


def split_by_area(
    height: int, width: int, *, val_fraction: float = 0.25, buffer: int = 2, seed: int = 0
) -> AreaSplit:
    """Hold out a band of `val_fraction` of the grid along the edge picked by `seed`.

    `buffer` pixels between the two parts belong to neither (a convolution's receptive field
    at the border then sees no validation input during training).
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    if buffer < 0:
        raise InputError(f"buffer must be >= 0 pixels, got {buffer}.")
    edge = _EDGES[int(np.random.default_rng(seed).integers(len(_EDGES)))]
    side = height if edge in ("top", "bottom") else width
    n_val = max(1, round(side * val_fraction))
    if n_val + buffer >= side:
        raise InputError(
            f"a {side}-pixel side cannot hold a {n_val}-pixel validation band and a "
            f"{buffer}-pixel buffer; use a larger world or a smaller val_fraction."
        )
    full = slice(0, None)
    if edge == "top":
        return AreaSplit((slice(n_val + buffer, height), full), (slice(0, n_val), full), edge)
    if edge == "bottom":
        cut = height - n_val
        return AreaSplit((slice(0, cut - buffer), full), (slice(cut, height), full), edge)
    if edge == "left":
        return AreaSplit((full, slice(n_val + buffer, width)), (full, slice(0, n_val)), edge)
    cut = width - n_val
    return AreaSplit((full, slice(0, cut - buffer)), (full, slice(cut, width)), edge)


def _bounds(s: slice, n: int) -> tuple[int, int]:
    start, stop, _ = s.indices(n)
    return start, stop


def sample_windows(
    box: Box, shape: tuple[int, int], patch: int, n: int, rng: np.random.Generator
) -> list[Box]:
    """`n` random `patch` x `patch` windows inside `box` of a grid of `shape` (height, width);
    a box smaller than the patch gives windows of the box's size."""
    (y0, y1), (x0, x1) = _bounds(box[0], shape[0]), _bounds(box[1], shape[1])
    ph, pw = min(patch, y1 - y0), min(patch, x1 - x0)
    ys = rng.integers(y0, y1 - ph + 1, size=n)
    xs = rng.integers(x0, x1 - pw + 1, size=n)
    return [
        (slice(int(y), int(y) + ph), slice(int(x), int(x) + pw))
        for y, x in zip(ys, xs, strict=True)
    ]
