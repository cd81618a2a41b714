"""Row 2 of the fault table: S3 unreachable, or answering 500/503, or stalling, during publish.

A real moto S3 server on 127.0.0.1 behind a `FaultProxy`; the pipeline talks to the proxy with
s3fs exactly as to AWS. Required: bounded retries with backoff, then a clear failure naming the
endpoint; nothing partial visible; transient errors that recover do not fail the publish.
"""

from __future__ import annotations

import time

import pytest

from tasks.errors import ServiceUnavailableError, TransientIOError
from tasks.publish import list_products
from tasks.settings import get_settings
from tasks.stac_server import free_port
from tests.conftest import S3_BUCKET as BUCKET
from tests.conftest import S3Server
from tests.faults.conftest import S3_ATTEMPTS, all_keys, moto_fs
from tests.faults.proxy import Fault, FaultProxy
from tests.unit.test_publish import publish_change

PREFIX = f"{BUCKET}/runs"
URL = f"s3://{PREFIX}"


def s3_error(code: str) -> bytes:
    """An S3 error document (what AWS sends with a 5xx), so botocore parses the error code."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>injected {code}</Message><RequestId>fault</RequestId></Error>"
    ).encode()


@pytest.mark.parametrize(
    ("match", "status", "code"),
    [
        ("", 500, "InternalError"),  # the whole store fails: the first request (a HEAD)
        ("^PUT ", 503, "SlowDown"),  # uploads throttled: s3fs would add its own retry loop
    ],
)
def test_publish_s3_outage_bounded_retries_then_names_endpoint(
    s3_server: S3Server, s3_proxy: FaultProxy, match: str, status: int, code: str
) -> None:
    fault = s3_proxy.add(
        Fault(
            "status",
            match=match,
            status=status,
            body=s3_error(code),
            content_type="application/xml",
        )
    )
    t0 = time.monotonic()
    with pytest.raises(TransientIOError) as err:
        publish_change(URL)
    elapsed = time.monotonic() - t0
    message = str(err.value)
    assert s3_proxy.url in message, "the failure names the endpoint"
    assert f"after {S3_ATTEMPTS} attempt(s)" in message and "EO_S3_MAX_ATTEMPTS" in message
    # one request tried S3_ATTEMPTS times, then no more (no nested s3fs retry loop)
    assert fault.hits == S3_ATTEMPTS, s3_proxy.requests
    # the bound is the attempt count; the clock only guards against a hang (slow shared CI)
    assert elapsed < 20, f"{elapsed:.1f} s"
    s3_proxy.clear()
    assert all_keys(moto_fs(s3_server), PREFIX) == [], "nothing may be left behind"
    assert list_products(URL) == []


def test_publish_s3_stalled_endpoint_times_out_bounded(
    s3_server: S3Server, s3_proxy: FaultProxy
) -> None:
    fault = s3_proxy.add(Fault("stall", stall_s=30))
    t0 = time.monotonic()
    with pytest.raises(TransientIOError, match="ReadTimeout") as err:
        publish_change(URL)
    elapsed = time.monotonic() - t0
    assert s3_proxy.url in str(err.value) and "EO_S3_READ_TIMEOUT_S" in str(err.value)
    assert fault.hits == S3_ATTEMPTS
    # 3 attempts x 1 s read timeout + backoff (botocore: at most 0.05 x 2^n s for timeouts);
    # the default settings would wait 5 x 30 s
    assert elapsed < 3 * 1.0 + 10, f"{elapsed:.1f} s"
    s3_proxy.clear()
    assert all_keys(moto_fs(s3_server), PREFIX) == []


def test_publish_s3_unreachable_endpoint_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "EO_S3_ENDPOINT_URL": endpoint,
        "EO_S3_MAX_ATTEMPTS": "2",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        t0 = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as err:
            publish_change(URL)
        elapsed = time.monotonic() - t0
    finally:
        get_settings.cache_clear()
    message = str(err.value)
    assert endpoint in message and "cannot be reached (2 attempt(s))" in message
    assert "EO_S3_ENDPOINT_URL" in message
    assert elapsed < 15, f"{elapsed:.1f} s"


def test_publish_s3_failing_item_write_rolls_back_everything(
    s3_server: S3Server, s3_proxy: FaultProxy
) -> None:
    """The commit (the Item PUT) fails after the data files were moved into place: the failed
    publish removes them and its staging; the rerun completes the product."""
    fault = s3_proxy.add(
        Fault(
            "status",
            match=r"^PUT /.*item\.json",
            status=503,
            body=s3_error("SlowDown"),
            content_type="application/xml",
        )
    )
    with pytest.raises(TransientIOError, match=r"item\.json"):
        publish_change(URL)
    assert fault.hits == S3_ATTEMPTS
    moto = moto_fs(s3_server)
    assert any(r.startswith("PUT") and ".tif" in r for r in s3_proxy.requests), (
        "the fault must come after the data files"
    )
    assert all_keys(moto, PREFIX) == [], "no data file, no staging, no Item left behind"
    assert list_products(URL) == []

    s3_proxy.clear()
    ref = publish_change(URL)
    assert not ref.skipped and [i["id"] for i in list_products(URL)] == [ref.id]
    keys = all_keys(moto, PREFIX)
    assert not [k for k in keys if k.startswith(".tmp")], keys
    assert sorted(k.rsplit("/", 1)[-1] for k in keys if ref.id in k) == [
        f"{ref.id}.parquet",
        f"{ref.id}.tif",
        "item.json",
    ]


def test_publish_s3_transient_503s_recover(s3_server: S3Server, s3_proxy: FaultProxy) -> None:
    """Two 503 SlowDown answers (throttling), then the store recovers: the publish succeeds."""
    fault = s3_proxy.add(
        Fault(
            "status", status=503, body=s3_error("SlowDown"), content_type="application/xml", times=2
        )
    )
    ref = publish_change(URL)
    assert fault.hits == 2, "the 503s were seen and retried"
    assert not ref.skipped and [i["id"] for i in list_products(URL)] == [ref.id]
    assert not [k for k in all_keys(moto_fs(s3_server), PREFIX) if k.startswith(".tmp")]
