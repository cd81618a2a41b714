"""Row 11 of the fault table: a model file whose sha256 does not match its spec.

Required: refused with a clear error (naming the file and both hashes), no product. The shipped
footprint spec is copied with a weights file that has one byte changed into ``EO_WEIGHTS_DIR``
(searched before the shipped folder). Two lines of defence, each tested:

- the flow's parameters (`flows.params`): the run is refused before any STAC request;
- `models.registry.load_model`, for a file changed after the parameters were validated: the run
  fails before anything is published.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.exceptions import ParameterTypeError
from pydantic import ValidationError

from flows.params import UrbanFootprintParams
from flows.products import urban_footprint
from models.errors import WeightsIntegrityError
from models.registry import SHIPPED_DIR
from tasks.publish import list_products
from tasks.settings import get_settings
from tasks.stac_server import StacServer
from tasks.synthetic import ArchiveInfo
from tests.faults.proxy import FaultProxy

MODEL = "footprint-unet-s2-10m"


@dataclass(frozen=True)
class Weights:
    path: Path  # the weights file in EO_WEIGHTS_DIR
    expected: str  # sha256 in its spec

    def tamper(self) -> str:
        """Change one byte in the middle of the file; returns its new sha256."""
        data = bytearray(self.path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        self.path.write_bytes(bytes(data))
        return hashlib.sha256(data).hexdigest()


@pytest.fixture
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Weights]:
    """The shipped footprint spec and weights, copied to a fresh ``EO_WEIGHTS_DIR``."""
    folder = tmp_path / "weights"
    folder.mkdir()
    spec = json.loads((SHIPPED_DIR / f"{MODEL}.json").read_text())
    shutil.copy(SHIPPED_DIR / f"{MODEL}.json", folder)
    shutil.copy(SHIPPED_DIR / spec["weights_file"], folder)
    monkeypatch.setenv("EO_WEIGHTS_DIR", str(folder))
    get_settings.cache_clear()
    yield Weights(folder / spec["weights_file"], spec["sha256"])
    get_settings.cache_clear()


def assert_names_file_and_hashes(message: str, weights: Weights, actual: str) -> None:
    assert str(weights.path) in message, message
    assert weights.expected in message and actual in message, message
    assert actual != weights.expected


def test_tampered_weights_refused_by_the_parameters(
    weights: Weights, tiny_archive: ArchiveInfo
) -> None:
    aoi = json.dumps(tiny_archive.aoi)
    assert UrbanFootprintParams(aoi=aoi, year=2023, model=MODEL).model == MODEL  # untouched: ok
    actual = weights.tamper()
    with pytest.raises(ValidationError) as err:
        UrbanFootprintParams(aoi=aoi, year=2023, model=MODEL)
    assert "model" in str(err.value) and "modified or truncated" in str(err.value)
    assert_names_file_and_hashes(str(err.value), weights, actual)


def test_tampered_weights_refuse_the_flow_before_any_work(
    prefect_server: None,
    weights: Weights,
    tiny_archive: ArchiveInfo,
    tiny_stac_proxy: FaultProxy,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    actual = weights.tamper()
    out = tmp_path / "out"
    with pytest.raises(ParameterTypeError) as err:
        urban_footprint(  # type: ignore[call-overload]  # a dict, as Prefect sends it
            params={
                "aoi": json.dumps(tiny_archive.aoi),
                "year": 2023,
                "model": MODEL,
                "stac_api_url": tiny_stac_proxy.url,
                "output_url": str(out),
            }
        )
    assert_names_file_and_hashes(str(err.value), weights, actual)
    assert tiny_stac_proxy.requests == [], "refused before any STAC request"
    assert not out.exists() and not cache_dir.exists(), "nothing written"


def test_weights_tampered_after_validation_fail_the_run_with_no_product(
    prefect_server: None,
    weights: Weights,
    tiny_archive: ArchiveInfo,
    tiny_stac: StacServer,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    """The file changes between validation and use (a queued run, a shared volume): the model
    loader's own check refuses it, and nothing is published."""
    out = tmp_path / "out"
    params = UrbanFootprintParams(
        aoi=json.dumps(tiny_archive.aoi),
        year=2023,
        model=MODEL,
        stac_api_url=tiny_stac.url,
        output_url=str(out),
    )
    actual = weights.tamper()
    state = urban_footprint(params, return_state=True)
    assert state.is_failed()
    err = state.result(raise_on_failure=False)
    assert isinstance(err, WeightsIntegrityError), repr(err)
    assert_names_file_and_hashes(str(err), weights, actual)
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []
    assert not out.exists() or list_products(str(out)) == []
