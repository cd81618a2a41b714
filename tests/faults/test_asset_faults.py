"""Row 4 of the fault table: an asset that is missing (a deleted file, HTTP 404), truncated, or
not a TIFF. Required: that scene is skipped with the reason (logged, and a `RejectedScene`
record); the run goes on with the rest.

The pre-flight is `tasks.load.check_scenes`; the scenes it keeps then load and compute.
"""

from __future__ import annotations

import copy
import logging
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.errors import SceneRejectedError, TransientIOError
from tasks.load import RejectedScene, check_scenes, load
from tasks.refs import SceneRef
from tests.conftest import S3_BUCKET as BUCKET
from tests.conftest import S3Server
from tests.faults.conftest import moto_fs
from tests.faults.proxy import Fault, FaultProxy
from tests.unit.test_load import GRID, T0, make_s2_scene

#: rio-cogeo's known-bad fixtures (a PNG named .jpg, among others), beside the repository.
COGEO_FIXTURES = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "realdata"
    / "cogeotiff+rio-cogeo"
    / "tests"
    / "fixtures"
    / "validate"
)
BANDS = ["red", "nir"]


def scene(root: Path, name: str, seed: int = 1) -> SceneRef:
    """A small Sentinel-2 scene (320 m, COGs on disk) covering `GRID`, acquired `seed` days
    after `T0` (distinct acquisitions: `load` would merge scenes of one instant)."""
    xmin, _, _, ymax = GRID.bounds
    when = T0 + timedelta(days=seed)
    ref, _ = make_s2_scene(
        root, f"S2A_{name}", when, epsg=32632, origin=(xmin, ymax), size_m=(320, 320), seed=seed
    )
    return ref


def truncate(path: Path, fraction: float = 0.7) -> None:
    """Cut a file as an interrupted download or upload does (the header survives)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def href(ref: SceneRef, band: str) -> Path:
    return Path(ref.item["assets"][band]["href"])


def reasons(rejected: list[RejectedScene]) -> dict[str, str]:
    return {r.id: r.reason for r in rejected}


def test_check_scenes_skips_missing_truncated_and_non_tiff_assets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = scene(tmp_path, "good", seed=1)
    missing = scene(tmp_path, "missing", seed=2)
    href(missing, "nir").unlink()
    truncated = scene(tmp_path, "truncated", seed=3)
    truncate(href(truncated, "red"))
    not_tiff = scene(tmp_path, "not_tiff", seed=4)
    href(not_tiff, "red").write_text("<html>403 Forbidden</html>")  # what a proxy may store
    also_good = scene(tmp_path, "also_good", seed=5)

    with caplog.at_level(logging.WARNING, logger="tasks.load"):
        kept, rejected = check_scenes([good, missing, truncated, not_tiff, also_good], bands=BANDS)
    assert [s.id for s in kept] == ["S2A_good", "S2A_also_good"]
    why = reasons(rejected)
    assert set(why) == {"S2A_missing", "S2A_truncated", "S2A_not_tiff"}
    assert str(href(missing, "nir")) in why["S2A_missing"] and "No such file" in why["S2A_missing"]
    assert str(href(truncated, "red")) in why["S2A_truncated"]
    assert "TIFFReadEncodedTile" in why["S2A_truncated"] or "Read" in why["S2A_truncated"]
    assert str(href(not_tiff, "red")) in why["S2A_not_tiff"]
    for scene_id in why:  # logged with the scene id and its reason
        assert any(
            scene_id in r.getMessage() and "rejected" in r.getMessage() for r in caplog.records
        )

    # the run completes with the rest: the kept scenes load and compute
    stack = load(kept, GRID, bands=BANDS).compute()
    assert list(stack["id"].values) == ["S2A_good", "S2A_also_good"]
    assert np.isfinite(stack.sel(band="red").values).any()


def test_check_scenes_truncated_asset_would_fail_the_whole_load(tmp_path: Path) -> None:
    """Why the pre-flight exists: without it one truncated file fails the computation."""
    truncated = scene(tmp_path, "truncated")
    truncate(href(truncated, "red"))
    with pytest.raises(SceneRejectedError, match="cannot read"):
        load([truncated], GRID, bands=BANDS).compute()
    assert check_scenes([truncated], bands=BANDS)[0] == []


def test_check_scenes_only_checks_the_bands_asked_for(tmp_path: Path) -> None:
    broken_swir = scene(tmp_path, "broken_swir")
    truncate(href(broken_swir, "swir16"))
    assert [s.id for s in check_scenes([broken_swir], bands=BANDS, with_mask=False)[0]] == [
        "S2A_broken_swir"
    ]
    kept, rejected = check_scenes([broken_swir])  # default: every band and the mask
    assert kept == [] and "B11.tif" in rejected[0].reason


def test_check_scenes_malformed_item_is_rejected_with_reason(tmp_path: Path) -> None:
    bad = scene(tmp_path, "no_geometry")
    bad.item["geometry"] = None
    kept, rejected = check_scenes([bad, scene(tmp_path, "fine", seed=2)], bands=BANDS)
    assert [s.id for s in kept] == ["S2A_fine"]
    assert rejected == [RejectedScene("S2A_no_geometry", "sentinel-2-l2a", rejected[0].reason)]
    assert "no geometry" in rejected[0].reason


def test_check_scenes_known_bad_files_from_rio_cogeo(tmp_path: Path) -> None:
    """rio-cogeo's own known-bad fixture: ``nontiff.jpg`` (GDAL reads it, as PNG)."""
    nontiff = COGEO_FIXTURES / "nontiff.jpg"
    if not nontiff.is_file():
        pytest.skip("../shared/realdata/cogeotiff+rio-cogeo is absent")
    ref = scene(tmp_path, "jpeg")
    ref.item["assets"]["red"]["href"] = str(nontiff.resolve())
    kept, rejected = check_scenes([ref, scene(tmp_path, "fine", seed=2)], bands=BANDS)
    assert [s.id for s in kept] == ["S2A_fine"]
    assert "not a GeoTIFF" in rejected[0].reason and "nontiff.jpg" in rejected[0].reason


def test_check_scenes_synthetic_archive_keeps_all_but_the_damaged_scene(
    tiny_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Over the embedded synthetic archive (Landsat 5/7/8/9 and Sentinel-2 items as served):
    every intact scene passes; a copy of one scene with a truncated band is rejected."""
    scenes = [SceneRef.from_item(item) for item in tiny_items]
    victim = scenes[len(scenes) // 2]
    item = copy.deepcopy(victim.item)
    asset = next(a for a in item["assets"].values() if str(a["href"]).endswith(".tif"))
    damaged = tmp_path / Path(asset["href"]).name
    shutil.copy(asset["href"], damaged)  # the session's archive stays intact
    truncate(damaged, 0.5)
    asset["href"] = str(damaged)
    scenes[len(scenes) // 2] = SceneRef.from_item(item)

    kept, rejected = check_scenes(scenes)
    assert [r.id for r in rejected] == [victim.id]
    assert str(damaged) in rejected[0].reason
    assert [s.id for s in kept] == [s.id for s in scenes if s.id != victim.id]


# ---- over HTTP: assets served by moto's S3 server, through the fault proxy ----------------------
def test_check_scenes_http_404_rejected_but_503_is_transient(
    tmp_path: Path, s3_server: S3Server, s3_proxy: FaultProxy
) -> None:
    fs = moto_fs(s3_server)
    refs = {}
    for i, name in enumerate(["served", "gone", "throttled"]):
        ref = scene(tmp_path, name, seed=i)
        for band in (*BANDS, "scl"):
            key = f"{BUCKET}/assets/{ref.id}/{href(ref, band).name}"
            fs.put_file(str(href(ref, band)), key)
            fs.chmod(key, acl="public-read")  # anonymous GET, as on a public archive
            ref.item["assets"][band]["href"] = f"{s3_proxy.url}/{key}"
        refs[name] = ref
    fs.rm(f"{BUCKET}/assets/S2A_gone/B08.tif")

    kept, rejected = check_scenes([refs["served"], refs["gone"]], bands=BANDS)
    assert [s.id for s in kept] == ["S2A_served"]
    assert "404" in reasons(rejected)["S2A_gone"]

    s3_proxy.add(Fault("status", match="S2A_throttled/B04", status=503))
    with pytest.raises(TransientIOError, match="503") as err:
        check_scenes([refs["throttled"]], bands=BANDS)
    assert "S2A_throttled/B04.tif" in str(err.value)


def test_composites_skip_the_scene_with_a_damaged_asset_and_record_why(
    tiny_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Through the analysis-ready chain: the damaged scene is left out with its reason in the
    provenance; the composite is made from the others (the run completes)."""
    from tasks.aoi import grid_for_aoi
    from tasks.ard import composites_for, read_composite

    s2 = sorted(
        (SceneRef.from_item(i) for i in tiny_items if i["collection"] == "sentinel-2-l2a"),
        key=lambda s: s.datetime,
    )[-4:]
    victim = s2[1]
    item = copy.deepcopy(victim.item)
    asset = item["assets"]["red"]
    damaged = tmp_path / Path(asset["href"]).name
    shutil.copy(asset["href"], damaged)
    truncate(damaged, 0.5)
    asset["href"] = str(damaged)
    scenes = [*s2[:1], SceneRef.from_item(item), *s2[2:]]
    bbox = item["bbox"]
    aoi = [bbox[0] + 0.3 * (bbox[2] - bbox[0]), bbox[1] + 0.3 * (bbox[3] - bbox[1]),
           bbox[0] + 0.5 * (bbox[2] - bbox[0]), bbox[1] + 0.5 * (bbox[3] - bbox[1])]  # fmt: skip
    grid = grid_for_aoi(aoi, 30.0)
    period = {"all": (str(s2[0].datetime)[:10], str(s2[-1].datetime)[:10])}

    ref = composites_for(scenes, grid, period, cache_dir=tmp_path / "cache")
    rejected = {r["id"]: r["reason"] for r in ref.provenance["mask"]["rejected"]}
    assert str(damaged) in rejected[victim.id]
    assert victim.id not in ref.provenance["mask"]["kept"]
    refl, count = read_composite(ref, "all")
    assert int(count.max()) >= 1 and np.isfinite(refl.values).any()
    assert int(count.max()) <= len(scenes) - 1
