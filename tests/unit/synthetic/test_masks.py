"""Quality layers encode exactly as the real products do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from tasks.synthetic.masks import SCL, Detection, encode_qa_pixel, encode_scl, qa_pixel_bitfields
from tests.conftest import realdata_path

QA_FILE = ("stactools-packages+landsat", "tests", "data-files", "assets3",
           "LC08_L2SP_008059_20191201_20200825_02_T1_QA_PIXEL.TIF")  # fmt: skip
CASSETTE = (
    "_derived",
    "pystac-client-cassettes",
    "test_multiple_collections__00_FeatureCollection.json",
)


def _detection(**flags: bool) -> Detection:
    fields = ("fill", "cloud", "cloud_core", "cloud_fringe", "cirrus", "shadow", "water",
              "vegetation", "dark", "unclassified")  # fmt: skip
    return Detection(**{f: np.full((1, 1), flags.get(f, False)) for f in fields})


@pytest.mark.parametrize(
    ("flags", "oli", "tm"),
    [
        ({}, 21824, 5440),  # clear land
        ({"water": True}, 21952, 5504),  # water (Landsat 4-7: clear bit unset over water)
        ({"cloud": True, "cloud_core": True}, 22280, 5896),  # high-confidence cloud
        ({"shadow": True}, 23888, 7504),  # cloud shadow
        ({"cirrus": True}, 54596, 5440),  # high-confidence cirrus (OLI only)
        ({"cloud_fringe": True}, 22080, 5696),  # medium-confidence cloud, no cloud bit
        ({"fill": True}, 1, 1),
    ],
)
def test_encode_qa_pixel_values(flags: dict[str, bool], oli: int, tm: int) -> None:
    assert int(encode_qa_pixel(_detection(**flags), oli=True)[0, 0]) == oli
    assert int(encode_qa_pixel(_detection(**flags), oli=False)[0, 0]) == tm


def test_encode_qa_pixel_values_occur_in_a_real_landsat8_product() -> None:
    with rasterio.open(realdata_path(*QA_FILE)) as src:
        real = set(np.unique(src.read(1)).tolist())
    ours = {
        int(encode_qa_pixel(_detection(**f), oli=True)[0, 0])
        for f in ({}, {"water": True}, {"cloud": True}, {"shadow": True}, {"fill": True})
    }
    assert ours <= real


def test_encode_qa_pixel_dilates_cloud_into_its_fringe_only() -> None:
    cloud = np.zeros((5, 5), bool)
    cloud[2, 2] = True
    fringe = np.zeros((5, 5), bool)
    fringe[1, 1:4] = True
    flags = {
        f: np.zeros((5, 5), bool)
        for f in ("fill", "cirrus", "shadow", "water", "vegetation", "dark", "unclassified")
    }
    qa = encode_qa_pixel(
        Detection(cloud=cloud, cloud_core=cloud, cloud_fringe=fringe, **flags), oli=True
    )
    assert int(qa[1, 2]) == 21762 + 256  # dilated, medium confidence (real value 22018)
    assert int(qa[3, 2]) == 21824  # next to cloud but no cloud signal: clear


def test_encode_scl_codes() -> None:
    assert int(encode_scl(_detection())[0, 0]) == SCL.NOT_VEGETATED == 5
    assert int(encode_scl(_detection(vegetation=True))[0, 0]) == 4
    assert int(encode_scl(_detection(water=True))[0, 0]) == 6
    assert int(encode_scl(_detection(shadow=True))[0, 0]) == 3
    assert int(encode_scl(_detection(cirrus=True))[0, 0]) == 10
    assert int(encode_scl(_detection(cloud=True))[0, 0]) == 8
    assert int(encode_scl(_detection(cloud=True, cloud_core=True))[0, 0]) == 9
    assert int(encode_scl(_detection(fill=True, cloud=True))[0, 0]) == 0


def test_qa_pixel_bitfields_equal_earth_search() -> None:
    real = json.loads(realdata_path(*CASSETTE).read_text())["features"][1]
    assert real["assets"]["qa_pixel"]["classification:bitfields"] == qa_pixel_bitfields(oli=True)
    assert all("cirrus" not in f["name"] for f in qa_pixel_bitfields(oli=False))
