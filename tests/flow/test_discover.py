"""Discovery against a real STAC API (`rustac serve` on 127.0.0.1) over real Earth Search and
Planetary Computer responses from ../shared/realdata."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tasks.discover import discover, parse_time_range
from tasks.errors import InputError, ServiceUnavailableError
from tasks.settings import Settings
from tasks.stac_server import StacServer, free_port, serve_stac
from tests.conftest import realdata_path

CASSETTES = ("_derived", "pystac-client-cassettes")
# Earth Search v1: a Sentinel-2 (13TDE) and a Landsat-8 (033/032) scene over Colorado, 2023-10-08.
ES_RESPONSE = "test_multiple_collections__00_FeatureCollection.json"
# Planetary Computer: 33 Sentinel-2 scenes over Kamchatka, 2019-01-01 .. 2019-01-0x.
PC_RESPONSE = "TestItemSearch.test_datetime_results__00_FeatureCollection.json"
COLORADO = (-105.3, 40.0, -105.2, 40.1)  # inside both Earth Search footprints
KAMCHATKA = (168.5, 55.5, 171.5, 57.5)  # ~40 000 km², 10 of the 33 footprints
FAST = Settings(stac_max_retries=3, stac_timeout_s=5)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StacServer]:
    es = json.loads(realdata_path(*CASSETTES, ES_RESPONSE).read_text())
    pc = json.loads(realdata_path(*CASSETTES, PC_RESPONSE).read_text())
    folder = tmp_path_factory.mktemp("stac")
    path = folder / "items.json"
    path.write_text(
        json.dumps({"type": "FeatureCollection", "features": es["features"] + pc["features"]})
    )
    with serve_stac([path]) as server:
        yield server


def test_serve_stac_answers_and_stops_without_orphans(tmp_path: Path) -> None:
    es = json.loads(realdata_path(*CASSETTES, ES_RESPONSE).read_text())
    (tmp_path / "items.json").write_text(json.dumps(es))
    server = serve_stac([tmp_path / "items.json"])
    ids = {c["id"] for c in httpx.get(f"{server.url}/collections").json()["collections"]}
    assert ids == {"sentinel-2-l2a", "landsat-c2-l2"}
    server.stop()
    assert server.process.poll() is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/collections", timeout=2)


def test_serve_stac_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        serve_stac([tmp_path / "nope.json"])


def test_discover_finds_both_collections_sorted(served: StacServer) -> None:
    scenes = discover(
        COLORADO,
        "2023-10-01",
        "2023-10-31",
        ["sentinel-2-l2a", "landsat-c2-l2"],
        stac_url=served.url,
        settings=FAST,
    )
    assert [s.collection for s in scenes] == [
        "landsat-c2-l2",
        "sentinel-2-l2a",
    ]  # 17:37 before 18:02
    assert scenes[0].platform == "landsat-8" and scenes[1].platform == "sentinel-2a"
    assert scenes[0].datetime < scenes[1].datetime
    assert scenes[1].item["assets"]["red"]["href"].endswith("B04.tif")


def test_discover_filters_cloud_cover_client_side(served: StacServer) -> None:
    # rustac does not conform to the query extension: the filter runs client-side
    all_scenes = discover(
        KAMCHATKA,
        "2019-01-01",
        "2019-01-31",
        ["sentinel-2-l2a"],
        stac_url=served.url,
        settings=FAST,
    )
    clear = discover(
        KAMCHATKA,
        "2019-01-01",
        "2019-01-31",
        ["sentinel-2-l2a"],
        stac_url=served.url,
        max_cloud_cover=50,
        settings=FAST,
    )
    assert 0 < len(clear) < len(all_scenes)
    assert all(s.cloud_cover is not None and s.cloud_cover <= 50 for s in clear)


def test_discover_follows_paging(served: StacServer) -> None:
    one_page = discover(
        KAMCHATKA,
        "2019-01-01",
        "2019-01-31",
        ["sentinel-2-l2a"],
        stac_url=served.url,
        settings=FAST,
    )
    paged = discover(
        KAMCHATKA,
        "2019-01-01",
        "2019-01-31",
        ["sentinel-2-l2a"],
        stac_url=served.url,
        page_size=4,
        settings=FAST,
    )
    assert len(one_page) == 10  # three pages of 4
    assert [s.id for s in paged] == [s.id for s in one_page]


def test_discover_time_range_excludes_other_dates(served: StacServer) -> None:
    assert (
        discover(
            COLORADO,
            "2023-10-09",
            "2023-12-31",
            ["landsat-c2-l2"],
            stac_url=served.url,
            settings=FAST,
        )
        == []
    )


def test_discover_unknown_collection_names_the_known_ones(served: StacServer) -> None:
    with pytest.raises(InputError, match="collections") as err:
        discover(COLORADO, "2023-10-01", "2023-10-31", ["sentinel-3-olci"], stac_url=served.url)
    assert "sentinel-2-l2a" in str(err.value)


def test_discover_collection_not_served_names_what_is(served: StacServer) -> None:
    with pytest.raises(InputError, match="not served") as err:
        discover(
            COLORADO,
            "2023-10-01",
            "2023-10-31",
            ["sentinel-s2-l2a-cogs"],
            stac_url=served.url,
            settings=FAST,
        )
    assert "landsat-c2-l2" in str(err.value)


@pytest.mark.parametrize(
    ("aoi", "start", "end", "needle"),
    [
        ((1, 2, 3), "2023-01-01", "2023-02-01", "aoi"),
        (COLORADO, "2023-02-01", "2023-01-01", "before start"),
        (COLORADO, "01/02/2023", "2023-03-01", "start"),
    ],
)
def test_discover_bad_input_names_what_to_change(
    served: StacServer, aoi: object, start: str, end: str, needle: str
) -> None:
    with pytest.raises(InputError, match=needle):
        discover(aoi, start, end, ["landsat-c2-l2"], stac_url=served.url)  # type: ignore[arg-type]


def test_discover_unreachable_url_names_the_endpoint() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceUnavailableError) as err:
        discover(
            COLORADO,
            "2023-10-01",
            "2023-10-31",
            ["landsat-c2-l2"],
            stac_url=url,
            settings=Settings(stac_max_retries=1, stac_timeout_s=2),
        )
    assert url in str(err.value) and "EO_STAC_API_URL" in str(err.value)


def test_parse_time_range_date_end_is_inclusive() -> None:
    t0, t1 = parse_time_range("2020-01-01", "2020-01-31")
    assert (t0.hour, t1.hour, t1.minute) == (0, 23, 59)
    assert t0.tzinfo is not None


class _FlakyProxy(BaseHTTPRequestHandler):
    """Forwards to the real STAC API but answers 503 to the first `failures` requests."""

    upstream = ""
    failures = 0
    seen = 0
    lock = threading.Lock()

    def _handle(self) -> None:
        with self.lock:
            type(self).seen += 1
            fail = type(self).seen <= type(self).failures
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if fail:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        r = httpx.request(
            self.command,
            self.upstream + self.path,
            content=body,
            headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
        )
        # rewrite the upstream's absolute links so paging comes back through the proxy
        port = self.server.server_address[1]
        data = r.content.replace(self.upstream.encode(), f"http://127.0.0.1:{port}".encode())
        self.send_response(r.status_code)
        self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _handle

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


def test_discover_retries_transient_5xx(served: StacServer) -> None:
    handler = type("Flaky", (_FlakyProxy,), {"upstream": served.url, "failures": 2, "seen": 0})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{proxy.server_address[1]}"
        scenes = discover(
            COLORADO,
            "2023-10-01",
            "2023-10-31",
            ["landsat-c2-l2"],
            stac_url=url,
            settings=Settings(stac_max_retries=3, stac_timeout_s=5),
        )
        assert [s.platform for s in scenes] == ["landsat-8"]
        assert handler.seen > 2  # the two 503s were retried
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_serve_stac_reports_why_the_server_failed(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text("{ this is not json")
    with pytest.raises(ServiceUnavailableError, match="exited with code"):
        serve_stac([bad], startup_timeout=20)
