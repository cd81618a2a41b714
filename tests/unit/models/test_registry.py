"""Weights spec + registry: save/load round trip, checksum and band checks, lookup order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from models.changenet import FCSiamDiff
from models.errors import BandMismatchError, WeightsIntegrityError, WeightsNotFoundError
from models.registry import (
    SHIPPED_DIR,
    available,
    build_model,
    check_inputs,
    load_model,
    resolve,
    save_weights,
)
from models.spec import WeightsSpec, software_version
from models.unet import UNet
from tasks.errors import InputError
from tests.unit.models.factories import BANDS, make_spec


def _saved_unet(directory: Path, name: str = "footprint-test") -> tuple[UNet, WeightsSpec]:
    torch.manual_seed(0)
    model = UNet(9, base_width=4, depth=2)
    spec = make_spec("footprint", "unet", name=name, **model.config)
    return model, save_weights(model, spec, directory)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model, spec = _saved_unet(tmp_path)
    assert spec.sha256 is not None and spec.weights_file == "footprint-test.pt"
    assert spec.software_version == software_version()
    on_disk = WeightsSpec.model_validate_json((tmp_path / "footprint-test.json").read_text())
    assert on_disk == spec
    loaded, loaded_spec = load_model("footprint-test", extra_dir=tmp_path)
    assert loaded_spec == spec and not loaded.training
    x = torch.randn(1, 9, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_load_refuses_a_modified_weights_file(tmp_path: Path) -> None:
    _, spec = _saved_unet(tmp_path)
    path = tmp_path / str(spec.weights_file)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="sha256") as info:
        load_model("footprint-test", extra_dir=tmp_path)
    assert isinstance(info.value, ValueError)
    assert str(spec.sha256) in str(info.value)


def test_load_refuses_weights_of_another_architecture(tmp_path: Path) -> None:
    _, spec = _saved_unet(tmp_path)
    # a spec whose checksum is right but whose kwargs do not fit the state dict
    wrong = spec.model_copy(update={"kwargs": {**spec.kwargs, "base_width": 8}})
    (tmp_path / "footprint-test.json").write_text(wrong.model_dump_json())
    with pytest.raises(WeightsIntegrityError, match="do not fit"):
        load_model("footprint-test", extra_dir=tmp_path)


def test_check_inputs_refuses_wrong_order_and_missing_bands() -> None:
    spec = make_spec("footprint", "unet")
    check_inputs(spec, list(BANDS))
    swapped = ["blue", "green", "nir", "red", "swir16", "swir22"]
    with pytest.raises(BandMismatchError, match="another order") as info:
        check_inputs(spec, swapped)
    assert str(list(BANDS)) in str(info.value) and str(swapped) in str(info.value)
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)
    with pytest.raises(BandMismatchError, match=r"missing \['swir22'\]"):
        check_inputs(spec, list(BANDS[:-1]))
    with pytest.raises(BandMismatchError, match=r"unexpected \['nir08'\]"):
        check_inputs(spec, [*BANDS, "nir08"])


def test_resolve_prefers_the_extra_dir_and_lists_names(tmp_path: Path) -> None:
    _saved_unet(tmp_path, name="mine")
    spec, path = resolve("mine", extra_dir=tmp_path)
    assert path == tmp_path / "mine.pt" and spec.name == "mine"
    assert "mine" in available(extra_dir=tmp_path)
    with pytest.raises(WeightsNotFoundError, match="'mine'") as info:
        resolve("nope", extra_dir=tmp_path)
    assert isinstance(info.value, LookupError)
    assert str(SHIPPED_DIR) in str(info.value)


def test_resolve_refuses_a_spec_without_its_file_or_with_another_name(tmp_path: Path) -> None:
    _, spec = _saved_unet(tmp_path)
    (tmp_path / "other.json").write_text(spec.model_dump_json())
    with pytest.raises(WeightsIntegrityError, match="not 'other'"):
        resolve("other", extra_dir=tmp_path)
    (tmp_path / "footprint-test.pt").unlink()
    with pytest.raises(WeightsIntegrityError, match="missing"):
        resolve("footprint-test", extra_dir=tmp_path)
    (tmp_path / "broken.json").write_text(json.dumps({"name": "broken"}))
    with pytest.raises(WeightsIntegrityError, match="invalid"):
        resolve("broken", extra_dir=tmp_path)


def test_save_refuses_a_spec_that_does_not_describe_the_model(tmp_path: Path) -> None:
    model = UNet(9, base_width=4, depth=2)
    with pytest.raises(InputError, match="constructor arguments"):
        save_weights(model, make_spec("footprint", "unet", base_width=8), tmp_path)
    with pytest.raises(InputError, match="does not match"):
        save_weights(model, make_spec("change", "fc_siam_diff", **model.config), tmp_path)
    assert not list(tmp_path.iterdir())


def test_spec_validates_normalization_and_channels() -> None:
    spec = make_spec("change", "fc_siam_diff", in_channels=9)
    assert spec.input_channels == (*BANDS, "ndvi", "ndbi", "mndwi")
    with pytest.raises(ValidationError, match="one value per input channel"):
        WeightsSpec.model_validate({**spec.model_dump(), "mean": (0.1,)})
    with pytest.raises(ValidationError, match="in_channels=4"):
        make_spec("change", "fc_siam_diff", in_channels=4)
    with pytest.raises(ValidationError, match="unknown spectral indices"):
        make_spec("change", "fc_siam_diff", indices=("evi",))
    with pytest.raises(ValidationError, match="std"):
        WeightsSpec.model_validate({**spec.model_dump(), "std": (0.0,) * 9})
    with pytest.raises(ValidationError):
        spec.name = "changed"  # frozen


def test_build_model_checks_architecture_and_task() -> None:
    assert isinstance(build_model(make_spec("change", "fc_siam_diff", base_width=4)), FCSiamDiff)
    with pytest.raises(WeightsIntegrityError, match="known"):
        build_model(make_spec("change", "resnet"))
    with pytest.raises(WeightsIntegrityError, match="serves 'footprint'"):
        build_model(make_spec("change", "unet"))


def test_shipped_folder_has_a_model_card_template() -> None:
    card = SHIPPED_DIR / "README.md"
    assert card.is_file() and "sha256" in card.read_text()
