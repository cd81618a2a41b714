"""Registry: architecture names -> classes, and weights names -> spec + checkpoint file.

Weights are data. A weights folder holds pairs ``<name>.json`` (a `WeightsSpec`) +
``<name>.pt`` (a ``state_dict``). Two folders are searched, in this order:

1. an optional extra folder given by the caller (user-trained weights; it wins on a name clash);
2. the folder shipped with the package, ``models/weights/``.

`load_model` checks the sha256 of the file against the spec before reading it, and loads with
``torch.load(..., weights_only=True)`` (no pickled code runs). `check_inputs` refuses input bands
that are not exactly the spec's, in order. `save_weights` is the one writer: the training code
calls it, so every checkpoint gets its spec and checksum.

This module never imports training code (``models.training``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

import torch
from pydantic import ValidationError
from torch import nn

from models.changenet import FCSiamDiff
from models.dynamics import PixelGRU
from models.errors import BandMismatchError, WeightsIntegrityError, WeightsNotFoundError
from models.spec import WeightsSpec, software_version
from models.unet import UNet
from tasks.errors import InputError
from tasks.settings import get_settings

__all__ = [
    "ARCHITECTURES",
    "SHIPPED_DIR",
    "available",
    "build_model",
    "check_inputs",
    "file_sha256",
    "load_model",
    "load_spec",
    "resolve",
    "save_weights",
]

#: Architecture name (``WeightsSpec.architecture``) -> `nn.Module` class.
ARCHITECTURES: MappingProxyType[str, type[nn.Module]] = MappingProxyType(
    {"fc_siam_diff": FCSiamDiff, "unet": UNet, "pixel_gru": PixelGRU}
)

#: Weights shipped with the package.
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _dirs(extra_dir: Path | str | None) -> list[Path]:
    """Folders searched, first match first: `extra_dir` (or EO_WEIGHTS_DIR), then shipped."""
    if extra_dir is None:
        extra_dir = get_settings().weights_dir
    return ([Path(extra_dir)] if extra_dir is not None else []) + [SHIPPED_DIR]


def load_spec(path: Path) -> WeightsSpec:
    """Read and validate a spec JSON; `WeightsIntegrityError` when it is unreadable or invalid."""
    try:
        return WeightsSpec.model_validate_json(Path(path).read_bytes())
    except ValidationError as err:
        raise WeightsIntegrityError(
            f"weights spec {path} is invalid: {err}. Re-create it with save_weights."
        ) from err


def available(*, extra_dir: Path | str | None = None) -> list[str]:
    """Names of every weights spec in the extra folder and the shipped folder (sorted, unique)."""
    names = {p.stem for d in _dirs(extra_dir) if d.is_dir() for p in d.glob("*.json")}
    return sorted(names)


def resolve(name: str, *, extra_dir: Path | str | None = None) -> tuple[WeightsSpec, Path]:
    """``(spec, weights file path)`` of weights `name`; see the module docstring for the order.

    Raises `WeightsNotFoundError` (a `LookupError`) naming the folders searched and the names
    available, and `WeightsIntegrityError` when the spec is invalid, names another model, or
    its weights file is missing.
    """
    for d in _dirs(extra_dir):
        spec_path = d / f"{name}.json"
        if not spec_path.is_file():
            continue
        spec = load_spec(spec_path)
        if spec.name != name:
            raise WeightsIntegrityError(
                f"{spec_path} holds the spec of {spec.name!r}, not {name!r}; rename the file "
                "or fix its 'name'."
            )
        if spec.weights_file is None or spec.sha256 is None:
            raise WeightsIntegrityError(
                f"{spec_path} has no weights_file/sha256: it was not written by save_weights."
            )
        weights = d / spec.weights_file
        if not weights.is_file():
            raise WeightsIntegrityError(
                f"weights file {weights} named by {spec_path} is missing; copy it beside the spec."
            )
        return spec, weights
    searched = ", ".join(str(d) for d in _dirs(extra_dir))
    raise WeightsNotFoundError(
        f"no weights named {name!r} in {searched}; available: {available(extra_dir=extra_dir)}. "
        "Train them (models.training) or pass the folder that holds them as extra_dir."
    )


def build_model(spec: WeightsSpec) -> nn.Module:
    """A randomly initialised module of the spec's architecture and kwargs (no weights read)."""
    try:
        cls = ARCHITECTURES[spec.architecture]
    except KeyError:
        raise WeightsIntegrityError(
            f"spec {spec.name!r} names architecture {spec.architecture!r}; known: "
            f"{sorted(ARCHITECTURES)}."
        ) from None
    task = getattr(cls, "task", None)
    if task != spec.task:
        raise WeightsIntegrityError(
            f"spec {spec.name!r} is for task {spec.task!r} but {spec.architecture!r} "
            f"serves {task!r}."
        )
    kwargs = dict(spec.kwargs)
    in_channels = kwargs.pop("in_channels", len(spec.input_channels))
    try:
        return cls(in_channels, **kwargs)
    except TypeError as err:
        raise WeightsIntegrityError(
            f"spec {spec.name!r}: kwargs {spec.kwargs} do not fit {cls.__name__}: {err}"
        ) from err


def load_model(
    name: str,
    *,
    device: str | torch.device = "cpu",
    extra_dir: Path | str | None = None,
) -> tuple[nn.Module, WeightsSpec]:
    """Resolve `name`, verify the file's sha256, build the module and load the weights.

    Returns ``(module in eval mode on device, spec)``. Raises `WeightsIntegrityError` when the
    checksum differs from the spec (the file was changed or truncated) or when the state dict
    does not fit the architecture.
    """
    spec, path = resolve(name, extra_dir=extra_dir)
    actual = file_sha256(path)
    if actual != spec.sha256:
        raise WeightsIntegrityError(
            f"sha256 of {path} is {actual} but its spec says {spec.sha256}: the weights file was "
            "modified or truncated. Restore the file that was saved with this spec, or re-train."
        )
    model = build_model(spec)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        # torch raises RuntimeError for missing/unexpected keys and shape mismatches,
        # and for an archive it cannot unpickle with weights_only=True.
        raise WeightsIntegrityError(
            f"weights {path} do not fit {spec.architecture}({spec.kwargs}): {err}"
        ) from err
    return model.eval().to(device), spec


def check_inputs(spec: WeightsSpec, bands: Sequence[str]) -> None:
    """Refuse input `bands` that are not exactly ``spec.bands`` in order (`BandMismatchError`).

    The message names the expected and given bands, what is missing or extra, and how to fix
    it (select them in order: ``da.sel(band=[...])``).
    """
    given = tuple(str(b) for b in bands)
    if given == spec.bands:
        return
    missing = [b for b in spec.bands if b not in given]
    extra = [b for b in given if b not in spec.bands]
    parts = [
        f"model {spec.name!r} expects bands {list(spec.bands)} in this order, got {list(given)}"
    ]
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {extra}")
    if not missing and not extra:
        parts.append("same bands in another order")
    fix = (
        f"select them with .sel(band={list(spec.bands)})"
        if not missing
        else ("load and composite the missing bands")
    )
    raise BandMismatchError("; ".join(parts) + f". To fix: {fix}.")


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file in the same folder, then rename (no half-written file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600: weights are data others read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: nn.Module, spec: WeightsSpec, directory: Path | str) -> WeightsSpec:
    """Write ``<name>.pt`` (the state dict) and ``<name>.json`` (the spec with its sha256).

    `spec` describes `model` without a checksum yet; its ``architecture`` must be the model's
    class and its ``kwargs`` the model's constructor arguments (``model.config``), else
    `InputError`. Both files are written atomically (temporary file + rename), the weights
    first, so a reader never sees a spec whose file is missing. Returns the completed spec
    (``sha256``, ``weights_file``, current ``software_version``).
    """
    cls = ARCHITECTURES.get(spec.architecture)
    if cls is None or type(model) is not cls:
        raise InputError(
            f"spec architecture {spec.architecture!r} does not match the model's class "
            f"{type(model).__name__}; known architectures: {sorted(ARCHITECTURES)}."
        )
    config = getattr(model, "config", None)
    if config is not None:
        expected = {**config}
        given = {"in_channels": len(spec.input_channels), **spec.kwargs}
        if expected != given:
            raise InputError(
                f"spec kwargs {given} differ from the model's constructor arguments {expected}; "
                "use kwargs=model.config."
            )
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{spec.name}.pt"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_write(weights, lambda f: torch.save(state, f))
    done = spec.model_copy(
        update={
            "weights_file": weights.name,
            "sha256": file_sha256(weights),
            "software_version": software_version(),
        }
    )
    done = WeightsSpec.model_validate(done.model_dump())  # re-validate the updated fields
    text = json.dumps(done.model_dump(mode="json"), indent=2) + "\n"
    _atomic_write(out_dir / f"{spec.name}.json", lambda f: f.write(text.encode()))
    return done
