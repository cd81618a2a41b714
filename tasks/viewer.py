"""A static HTML viewer written next to the products: a Leaflet map of the quicklooks and the
vector products, readable offline (Leaflet 1.9.4 is shipped with the package, BSD-2-Clause).

There is no basemap (tiles need the network); the quicklook images are the backdrop. Open
``index.html`` in any browser, or serve the folder (``python -m http.server``).
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import InputError

__all__ = ["ViewerLayer", "write_viewer"]

_ASSETS = Path(__file__).with_name("viewer_assets")

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="viewer/leaflet.css">
<script src="viewer/leaflet.js"></script>
<style>
 html, body {{ margin: 0; height: 100%; font-family: sans-serif; }}
 #map {{ position: absolute; top: 2.2em; bottom: 0; width: 100%; background: #d9d9d9; }}
 header {{ height: 2.2em; line-height: 2.2em; padding: 0 0.8em; background: #20313b; color: #fff; }}
</style>
</head>
<body>
<header>{title}</header>
<div id="map"></div>
<script>
const layers = {layers};
const map = L.map("map", {{ zoomSnap: 0.25 }});
const control = L.control.layers(null, null, {{ collapsed: false }}).addTo(map);
let extent = null;
for (const layer of layers) {{
  const b = [[layer.bounds[1], layer.bounds[0]], [layer.bounds[3], layer.bounds[2]]];
  extent = extent ? extent.extend(b) : L.latLngBounds(b);
  if (layer.image) {{
    const img = L.imageOverlay(layer.image, b, {{ opacity: 0.9 }}).addTo(map);
    control.addOverlay(img, layer.title + " (quicklook)");
  }}
  if (layer.geojson) {{
    const vec = L.geoJSON(layer.geojson, {{
      style: {{ color: layer.color, weight: 1, fillOpacity: 0.35 }},
      onEachFeature: (f, l) => l.bindPopup(
        Object.entries(f.properties || {{}}).map(([k, v]) => `<b>${{k}}</b>: ${{v}}`).join("<br>"))
    }}).addTo(map);
    control.addOverlay(vec, layer.title);
  }}
}}
if (extent) map.fitBounds(extent); else map.setView([0, 0], 2);
L.control.scale().addTo(map);
</script>
</body>
</html>
"""


@dataclass(frozen=True)
class ViewerLayer:
    """One product on the map.

    `bounds`: (west, south, east, north) in degrees (EPSG:4326); `image_png`: a quicklook PNG
    (bytes) stretched over `bounds`; `geojson`: a FeatureCollection in EPSG:4326 (e.g.
    ``GeoDataFrame.to_crs(4326).to_json()`` parsed); `color`: CSS colour of the polygons.
    """

    title: str
    bounds: tuple[float, float, float, float]
    image_png: bytes | None = None
    geojson: dict[str, Any] | None = field(default=None, hash=False)
    color: str = "#e6261f"


def write_viewer(
    layers: Sequence[ViewerLayer], folder: Path | str, *, title: str = "eo-pipeline products"
) -> Path:
    """Write ``folder/index.html`` (+ ``folder/viewer/``: Leaflet and the quicklook PNGs).

    Returns the path of ``index.html``. Raises `InputError` for no layers or bad bounds.
    """
    if not layers:
        raise InputError("layers: nothing to show; give at least one product layer.")
    folder = Path(folder)
    assets = folder / "viewer"
    assets.mkdir(parents=True, exist_ok=True)
    for name in ("leaflet.js", "leaflet.css", "LEAFLET-LICENSE"):
        shutil.copyfile(_ASSETS / name, assets / name)
    entries = []
    for i, layer in enumerate(layers):
        west, south, east, north = layer.bounds
        if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
            raise InputError(f"layers[{i}].bounds {layer.bounds} are not lon/lat degrees.")
        image = None
        if layer.image_png is not None:
            image = f"viewer/layer-{i}.png"
            (folder / image).write_bytes(layer.image_png)
        entries.append(
            {
                "title": layer.title,
                "bounds": [west, south, east, north],
                "image": image,
                "geojson": layer.geojson,
                "color": layer.color,
            }
        )
    # `</` is escaped so no string in the data can close the <script> element
    data = json.dumps(entries).replace("</", "<\\/")
    index = folder / "index.html"
    index.write_text(_PAGE.format(title=html.escape(title), layers=data), encoding="utf-8")
    return index
