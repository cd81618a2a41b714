"""Row 7 of the fault table: credentials in settings or the environment.

Required: never in logs, Prefect artifacts, STAC Items (or any published object: COG and
GeoParquet metadata included) or exception messages. Distinctive secret values are set --
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` and a STAC API password in
``EO_STAC_API_URL`` (``http://user:password@host``) -- then a real product flow runs on the
Prefect test server against the tiny archive and a moto S3 server, and everything it left is
scanned: Python log records, captured console output, the run's logs and artifacts read back
from the Prefect API, its state, every published object and every cache file. Forced failures
(unreachable endpoints with credentials around) are scanned the same way, traceback included.

Also: credentials from a Prefect ``Secret`` block (``EO_S3_SECRET_BLOCK``) as the only source,
and STAC basic auth sent to the API's own host only.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import rasterio
import s3fs
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.logging.handlers import APILogWorker
from prefect.states import State

from flows.products import urban_footprint
from tasks.discover import discover
from tasks.errors import InputError, PipelineError, ServiceUnavailableError
from tasks.publish import list_products
from tasks.settings import get_settings
from tasks.stac_server import StacServer, free_port
from tasks.storage import gdal_env, gdal_s3_options, open_store, redact
from tasks.synthetic import ArchiveInfo
from tests.conftest import S3_BUCKET as BUCKET
from tests.conftest import S3Server
from tests.faults.conftest import footprint_params, moto_fs
from tests.unit.test_publish import publish_change

ACCESS_KEY = "AKIAEOLEAKCHECK12345"
SECRET_KEY = "eoLeakCheck/SecretAccessKey+0123456789abcd"
SESSION_TOKEN = "eoLeakCheckSessionToken//" + "Z" * 40
STAC_USER = "eo-stac-user"
STAC_PASSWORD = "eoLeakCheckStacPassw0rd"
BASIC = base64.b64encode(f"{STAC_USER}:{STAC_PASSWORD}".encode()).decode()
#: Every form a leaked credential could take: verbatim, URL-encoded, basic-auth encoded.
NEEDLES = {
    ACCESS_KEY,
    SECRET_KEY,
    quote(SECRET_KEY, safe=""),
    SESSION_TOKEN,
    quote(SESSION_TOKEN, safe=""),
    STAC_PASSWORD,
    BASIC,
}


def leaks(where: str, data: str | bytes) -> list[str]:
    """The credentials found in `data`, as ``"<where>: <which>"``."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "replace")
    return [f"{where}: {n[:12]}..." for n in NEEDLES if n.encode() in raw]


@pytest.fixture
def secret_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Distinctive AWS credentials in the environment (moto accepts any)."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
        "EO_STAC_MAX_RETRIES": "0",
        "EO_STAC_TIMEOUT_S": "2",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    get_settings.cache_clear()
    s3fs.S3FileSystem.clear_instance_cache()


def with_password(url: str, port: int | None = None) -> str:
    """`url` with the STAC credentials in it (and another port, if given)."""
    parts = urlsplit(url)
    host = f"{parts.hostname}:{port or parts.port}"
    return parts._replace(netloc=f"{STAC_USER}:{STAC_PASSWORD}@{host}").geturl()


def prefect_record(state: State[Any]) -> dict[str, str]:
    """Everything the Prefect API keeps of a flow run: its state, task run states, logs,
    artifacts -- read back from the API, as text per source."""
    APILogWorker.drain_all(timeout=10)  # send the logs still queued
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
        )
    return {
        "flow run": run.model_dump_json(),
        "task runs": json.dumps([t.model_dump(mode="json") for t in tasks]),
        "logs": "\n".join(log.message for log in logs),
        "artifacts": json.dumps([a.model_dump(mode="json") for a in artifacts]),
        "n_logs": str(len(logs)),
        "n_artifacts": str(len(artifacts)),
    }


def scan_everything(
    record: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    *folders: Path,
) -> list[str]:
    captured = capsys.readouterr()
    found = [hit for where, text in record.items() for hit in leaks(f"prefect {where}", text)]
    found += leaks("log records", "\n".join(r.getMessage() for r in caplog.records))
    found += leaks("console", captured.out + captured.err)
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file():
                found += leaks(str(p), p.read_bytes())
    return found


# ---- a product flow with credentials all around --------------------------------------------------
def test_flow_with_credentials_in_environment_leaks_them_nowhere(
    prefect_server: None,
    tiny_archive: ArchiveInfo,
    tiny_stac: StacServer,
    s3_server: S3Server,
    secret_env: None,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EO_STAC_API_URL", with_password(tiny_stac.url))
    get_settings.cache_clear()
    caplog.set_level(logging.INFO)
    url = f"s3://{BUCKET}/leak"
    state = urban_footprint(
        params=footprint_params(json.dumps(tiny_archive.aoi), output_url=url), return_state=True
    )
    assert state.is_completed(), state.message
    record = prefect_record(state)
    assert int(record["n_logs"]) > 0 and int(record["n_artifacts"]) >= 3, "nothing was scanned"

    moto = moto_fs(s3_server)
    moto.invalidate_cache()
    objects = moto.find(BUCKET)
    assert any(k.endswith(".tif") for k in objects) and any(k.endswith(".parquet") for k in objects)
    found = scan_everything(record, caplog, capsys, cache_dir)
    for key in objects:
        found += leaks(key, moto.cat_file(key))
    assert found == []
    assert list_products(url), "the product was published with the credentials in use"


def test_failing_flow_with_credentials_in_the_stac_url_leaks_them_nowhere(
    prefect_server: None,
    tiny_archive: ArchiveInfo,
    secret_env: None,
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The STAC API cannot be reached: the error, the traceback Prefect logs and the run's
    state name the endpoint, not the password."""
    unreachable = with_password(f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setenv("EO_STAC_API_URL", unreachable)
    get_settings.cache_clear()
    caplog.set_level(logging.INFO)
    state = urban_footprint(
        params=footprint_params(json.dumps(tiny_archive.aoi), output_url=str(tmp_path / "out")),
        return_state=True,
    )
    assert state.is_failed()
    err = state.result(raise_on_failure=False)
    assert isinstance(err, ServiceUnavailableError), err
    message = str(err)
    assert (
        "cannot be reached" in message
        and f"http://***@127.0.0.1:{urlsplit(unreachable).port}" in message
    )
    record = prefect_record(state)
    assert "Traceback" in record["logs"] or "ServiceUnavailableError" in record["logs"]
    found = scan_everything(record, caplog, capsys, cache_dir, tmp_path)
    found += leaks("exception", "".join(traceback.format_exception(err)))
    assert found == []


def test_forced_exceptions_carry_no_credentials(
    s3_server: S3Server, secret_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[BaseException] = []
    # an output URL and an S3 endpoint with credentials in them are refused, masked
    for url, endpoint in [
        (f"s3://{ACCESS_KEY}:{quote(SECRET_KEY, safe='')}@{BUCKET}/x", None),
        (f"s3://{BUCKET}/x", f"http://{ACCESS_KEY}:{quote(SECRET_KEY, safe='')}@127.0.0.1:1"),
    ]:
        with pytest.raises(InputError, match=r"carries credentials") as err:
            open_store(url, endpoint_url=endpoint)
        assert "***@" in str(err.value)
        failures.append(err.value)
    # an S3 endpoint that cannot be reached, the secrets in the environment
    monkeypatch.setenv("EO_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("EO_S3_MAX_ATTEMPTS", "1")
    get_settings.cache_clear()
    with pytest.raises(ServiceUnavailableError) as unreachable:
        publish_change(f"s3://{BUCKET}/x")
    failures.append(unreachable.value)
    # a STAC API that cannot be reached, the password in its URL
    with pytest.raises(ServiceUnavailableError) as stac:
        discover(
            "11.955,51.335,11.985,51.365",
            "2023-01-01",
            "2023-12-31",
            ["sentinel-2-l2a"],
            stac_url=with_password(f"http://127.0.0.1:{free_port()}"),
        )
    failures.append(stac.value)
    for failure in failures:
        assert leaks("exception", "".join(traceback.format_exception(failure))) == []
    get_settings.cache_clear()


def test_redact_masks_userinfo_signatures_and_secret_values(secret_env: None) -> None:
    text = redact(
        f"GET https://u:{STAC_PASSWORD}@h/x?a=1&sig=abc%2Fdef&X-Amz-Signature=0f0f "
        f"and {SECRET_KEY} and {SESSION_TOKEN}"
    )
    assert text == "GET https://***@h/x?a=1&sig=***&X-Amz-Signature=*** and *** and ***"


# ---- STAC basic auth: to the API's own host only -------------------------------------------------
class _Recorder(BaseHTTPRequestHandler):
    """A tiny STAC API: landing page, one collection, a search whose page links to `next_url`."""

    seen: list[tuple[str, str | None]]
    base: str
    next_url: str | None

    def _json(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((f"{self.command} {self.path}", self.headers.get("Authorization")))
        if self.path.startswith("/search"):
            # pystac-client stops at a page without features: the first page has one (an item
            # without assets, which discovery skips) and links to the next
            links: list[dict[str, Any]] = [
                {"rel": "next", "href": self.next_url, "method": "POST", "body": {}}
            ]
            item = {"type": "Feature", "id": "no-assets", "collection": "sentinel-2-l2a"}
            self._json(
                {
                    "type": "FeatureCollection",
                    "features": [item] if self.next_url else [],
                    "links": links if self.next_url else [],
                }
            )
        elif self.path.startswith("/collections"):
            self._json({"collections": [_collection()], "links": []})
        else:
            self._json(
                {
                    "type": "Catalog",
                    "id": "recorder",
                    "description": "records requests",
                    "stac_version": "1.0.0",
                    "conformsTo": [
                        "https://api.stacspec.org/v1.0.0/core",
                        "https://api.stacspec.org/v1.0.0/item-search",
                        "https://api.stacspec.org/v1.0.0/collections",
                    ],
                    "links": [
                        {"rel": "self", "href": f"{self.base}/"},
                        {"rel": "root", "href": f"{self.base}/"},
                        {
                            "rel": "search",
                            "href": f"{self.base}/search",
                            "type": "application/geo+json",
                            "method": "POST",
                        },
                        {"rel": "data", "href": f"{self.base}/collections"},
                    ],
                }
            )

    do_GET = do_POST = _handle

    def log_message(self, format: str, *args: object) -> None:
        pass


def _collection() -> dict[str, Any]:
    return {
        "type": "Collection",
        "id": "sentinel-2-l2a",
        "stac_version": "1.0.0",
        "description": "-",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [[None, None]]},
        },
        "links": [],
    }


def _serve(next_url: str | None) -> tuple[ThreadingHTTPServer, list[tuple[str, str | None]]]:
    seen: list[tuple[str, str | None]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    server.RequestHandlerClass = type(
        "_R", (_Recorder,), {"seen": seen, "base": base, "next_url": next_url}
    )
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return server, seen


def test_stac_basic_auth_goes_to_the_api_host_only(caplog: pytest.LogCaptureFixture) -> None:
    """The password of ``EO_STAC_API_URL`` authenticates every request to the API (paging
    included) and none to another host that a ``next`` link points at; DEBUG logs of
    pystac-client (which print request headers) do not show it either."""
    other, other_seen = _serve(next_url=None)
    other_url = f"http://127.0.0.1:{other.server_address[1]}/search"
    api, api_seen = _serve(next_url=other_url)
    try:
        caplog.set_level(logging.DEBUG, logger="pystac_client")
        scenes = discover(
            "11.955,51.335,11.985,51.365",
            "2023-01-01",
            "2023-12-31",
            ["sentinel-2-l2a"],
            stac_url=with_password(f"http://127.0.0.1:{api.server_address[1]}/"),
        )
    finally:
        for server in (api, other):
            server.shutdown()
            server.server_close()
    assert scenes == []
    assert api_seen and all(auth == f"Basic {BASIC}" for _, auth in api_seen), api_seen
    assert [r for r, _ in api_seen if r.startswith("POST /search")], "the search reached the API"
    assert other_seen and all(auth is None for _, auth in other_seen), other_seen
    assert leaks("debug log", "\n".join(r.getMessage() for r in caplog.records)) == []


# ---- credentials from a Prefect Secret block, and nowhere else -----------------------------------
BLOCK = "eo-s3-fault-suite"


@pytest.fixture
def no_aws_environment(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """No AWS credentials anywhere botocore looks: environment, config files, instance role."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("EO_S3_MAX_ATTEMPTS", "1")
    monkeypatch.delenv("EO_S3_SECRET_BLOCK", raising=False)
    get_settings.cache_clear()
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    get_settings.cache_clear()
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_credentials_from_a_prefect_secret_block_only(
    prefect_server: None,
    s3_server: S3Server,
    no_aws_environment: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"s3://{BUCKET}/from-block"
    # without the block there are no credentials at all: a clear error, nothing published
    with pytest.raises(InputError, match=r"no S3 credentials.*EO_S3_SECRET_BLOCK"):
        publish_change(url)

    Secret(
        value={  # type: ignore[arg-type]  # a JSON value: Secret[dict] in Prefect 3
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "aws_session_token": SESSION_TOKEN,
        }
    ).save(BLOCK, overwrite=True)
    monkeypatch.setenv("EO_S3_SECRET_BLOCK", BLOCK)
    get_settings.cache_clear()
    caplog.set_level(logging.INFO)
    ref = publish_change(url)
    assert not ref.skipped and [i["id"] for i in list_products(url)] == [ref.id]
    store = open_store(url)
    assert (store.fs.key, store.fs.secret, store.fs.token) == (
        ACCESS_KEY,
        SECRET_KEY,
        SESSION_TOKEN,
    )
    assert "secret" not in repr(store).lower() and SECRET_KEY not in repr(store)
    assert leaks("log records", "\n".join(r.getMessage() for r in caplog.records)) == []

    # GDAL's /vsis3/ (how scenes on S3 are read) gets them through gdal_env, and only so
    assert gdal_s3_options()["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY
    tif = f"/vsis3/{BUCKET}/from-block/eo-change/{ref.id}/{ref.id}.tif"
    with pytest.raises(rasterio.errors.RasterioIOError, match="AWS_SECRET_ACCESS_KEY"):
        rasterio.open(tif)
    with gdal_env(), rasterio.open(tif) as src:
        assert src.count >= 3 and src.descriptions[-1] == "count"


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({"aws_access_key_id": ACCESS_KEY}, "lacks ['aws_secret_access_key']"),
        ("not json", "not a JSON object"),
        (
            {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY, "x": SECRET_KEY},
            "unknown keys ['x']",
        ),
    ],
    ids=["incomplete", "not-json", "unknown-key"],
)
def test_malformed_secret_block_is_refused_without_echoing_it(
    prefect_server: None,
    monkeypatch: pytest.MonkeyPatch,
    value: Any,
    needle: str,
) -> None:
    Secret(value=value).save(f"{BLOCK}-bad", overwrite=True)
    monkeypatch.setenv("EO_S3_SECRET_BLOCK", f"{BLOCK}-bad")
    get_settings.cache_clear()
    try:
        with pytest.raises(PipelineError, match=r"EO_S3_SECRET_BLOCK") as err:
            open_store(f"s3://{BUCKET}/x")
    finally:
        get_settings.cache_clear()
    assert needle in str(err.value) and leaks("error", str(err.value)) == []
    monkeypatch.setenv("EO_S3_SECRET_BLOCK", "no-such-block")
    get_settings.cache_clear()
    with pytest.raises(InputError, match="no Prefect Secret block of that name"):
        open_store(f"s3://{BUCKET}/x")
    get_settings.cache_clear()
