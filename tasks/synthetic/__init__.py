"""The synthetic archive: the pipeline's embedded default source of scenes.

A simulated area whose surface evolves from 1984 to the present (a city growing along roads,
crops with seasonal phenology and rotation, forest clear-cuts, a reservoir filling), observed
by simulated Landsat 5/7/8/9 Collection 2 Level-2 and Sentinel-2A/B Level-2A acquisitions on
their real schedules, with real band responses, clouds, shadows and their quality layers
(QA_PIXEL, SCL), sub-pixel misregistration, Landsat 7 SLC-off gaps, partial swaths, scenes in the
neighbouring UTM zone and the Sentinel-2 processing-baseline 04.00 offset. Written as COGs with
STAC Items in the conventions of Earth Search v1; served by ``rustac serve`` (see `stac_files`).

Layout of an archive at ``ROOT``::

    ROOT/archive.json                               configuration, its hash, counts, AOI
    ROOT/stac/<collection>.json                     STAC Collection
    ROOT/stac/<collection>.items.ndjson             its Items, one JSON per line
    ROOT/data/<collection>/<item id>/<asset>.tif    COGs (asset hrefs are absolute paths)
    ROOT/truth/...                                  ground truth (see tasks.synthetic.truth)

Collections: ``sentinel-2-l2a`` (blue, green, red, nir at 10 m; rededge1-3, nir08, swir16,
swir22, scl at 20 m) and ``landsat-c2-l2`` (blue, green, red, nir08, swir16, swir22, qa_pixel at
30 m). The pipeline reads only ``stac/`` and ``data/``; ``truth/`` is for tests and training.

Conventions, as the real products: Landsat DN = (rho + 0.2) / 2.75e-5, nodata 0, QA_PIXEL fill
= 1, grid corners at 15 (mod 30) m; Sentinel-2 DN = rho * 10000 (+1000 from processing baseline
04.00, 2022-01-25, declared as raster:bands offset -0.1), nodata 0, MGRS tile grids. Scenes of
the neighbouring UTM zone keep that zone's CRS. Misregistration: content at true map position
(x, y) appears at (x + dx_m, y + dy_m) in the item's CRS (see `Truth.shift`).

Example::

    from tasks.synthetic import DEMO_CONFIG, create_archive, open_truth, stac_files
    info = create_archive(Path(".eo-cache/synthetic"), DEMO_CONFIG)
    files = stac_files(info.root)          # rustac serve *files --addr 127.0.0.1:PORT
    truth = open_truth(info.root)
    truth.builtup(2020)                    # bool array on truth.grid
"""

from tasks.synthetic.clouds import TruthClass
from tasks.synthetic.config import DEMO_CONFIG, ArchiveConfig, config_hash, tiny_config
from tasks.synthetic.truth import Raster, SceneTruth, Shift, Truth, open_truth
from tasks.synthetic.world import LandCover
from tasks.synthetic.writer import ArchiveInfo, archive_items, create_archive, stac_files

__all__ = [
    "DEMO_CONFIG",
    "ArchiveConfig",
    "ArchiveInfo",
    "LandCover",
    "Raster",
    "SceneTruth",
    "Shift",
    "Truth",
    "TruthClass",
    "archive_items",
    "config_hash",
    "create_archive",
    "open_truth",
    "stac_files",
    "tiny_config",
]
