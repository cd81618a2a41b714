"""Row 3 of the fault table: the STAC API fails, stalls, answers garbage, pages forever, or
serves malformed items. A real ``rustac serve`` sits behind a `FaultProxy`.

Required: bounded retries then a clear error naming the URL, within a bounded wall time; a
malformed item is skipped with its id in the log and the rest is returned.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from tasks.discover import discover
from tasks.errors import InputError, ServiceUnavailableError, TransientIOError
from tests.faults.conftest import STAC_ITEMS, fast_stac_settings
from tests.faults.proxy import Fault, FaultProxy

#: A bbox (EPSG:4326) inside the footprint of every item of `stac_upstream`.
AOI = (11.945, 45.498, 11.947, 45.499)
DATES = ("2024-04-01", "2024-12-31")
SEARCH = r"^POST /search"


def run_discover(proxy: FaultProxy, **settings: Any) -> list[str]:
    scenes = discover(
        AOI,
        *DATES,
        ["sentinel-2-l2a"],
        stac_url=proxy.url,
        page_size=2,
        settings=fast_stac_settings(**settings),
    )
    return [s.id for s in scenes]


def searches(proxy: FaultProxy) -> int:
    return sum(1 for r in proxy.requests if r.startswith("POST /search"))


def test_discover_through_proxy_finds_every_item(stac_proxy: FaultProxy) -> None:
    """The baseline the faults below depart from: three pages of two items."""
    assert run_discover(stac_proxy) == [f"S2A_F{i}" for i in range(STAC_ITEMS)]
    assert searches(stac_proxy) == STAC_ITEMS // 2


@pytest.mark.parametrize("status", [500, 502, 503])
def test_discover_persistent_5xx_bounded_retries_then_names_url(
    stac_proxy: FaultProxy, status: int
) -> None:
    fault = stac_proxy.add(Fault("status", match=SEARCH, status=status, body=b'{"code":"x"}'))
    t0 = time.monotonic()
    with pytest.raises(TransientIOError) as err:
        run_discover(stac_proxy, stac_max_retries=2)
    elapsed = time.monotonic() - t0
    assert fault.hits == 3, "2 retries = 3 attempts, then stop"
    message = str(err.value)
    assert stac_proxy.url in message and f"HTTP {status}" in message
    assert "EO_STAC_MAX_RETRIES" in message
    assert elapsed < 5  # urllib3 backoff 0.5 s x 2^n: 0 + 1 s


def test_discover_stalled_server_times_out_bounded(stac_proxy: FaultProxy) -> None:
    fault = stac_proxy.add(Fault("stall", match=SEARCH, stall_s=30))
    t0 = time.monotonic()
    with pytest.raises(TransientIOError, match="did not answer") as err:
        run_discover(stac_proxy, stac_max_retries=1, stac_timeout_s=0.5)
    elapsed = time.monotonic() - t0
    assert fault.hits == 2, "1 retry = 2 attempts of 0.5 s, then stop"
    assert stac_proxy.url in str(err.value) and "EO_STAC_TIMEOUT_S" in str(err.value)
    assert elapsed < 4, f"{elapsed:.1f} s: the timeout and the retries must bound the wait"


def test_discover_unreachable_after_start_names_url(stac_proxy: FaultProxy) -> None:
    """The server drops every connection: unreachable, not a timeout."""
    fault = stac_proxy.add(Fault("drop", match=SEARCH))
    with pytest.raises(ServiceUnavailableError, match="cannot be reached while searching") as err:
        run_discover(stac_proxy)
    assert stac_proxy.url in str(err.value) and "EO_STAC_API_URL" in str(err.value)
    assert fault.hits == 2, "1 retry = 2 attempts"


@pytest.mark.parametrize(("match", "doing"), [(r"^GET /$", "opening"), (SEARCH, "searching")])
def test_discover_malformed_json_is_a_clear_failure(
    stac_proxy: FaultProxy, match: str, doing: str
) -> None:
    stac_proxy.add(Fault("rewrite", match=match, rewrite=lambda body: body[: len(body) // 2]))
    with pytest.raises(ServiceUnavailableError, match="invalid JSON") as err:
        run_discover(stac_proxy)
    assert stac_proxy.url in str(err.value) and doing in str(err.value)


#: After this many pages the faulty server stops linking on, so that a regression (no loop or
#: limit check) fails the test's assertions instead of hanging it.
GIVE_UP_PAGES = 30


def _rewrite_next(make_next: Callable[[dict[str, Any], int], dict[str, Any]]) -> Fault:
    """A fault that replaces the ``next`` link of every search page by ``make_next(link, n)``."""
    count = {"n": 0}

    def rewrite(body: bytes) -> bytes:
        page = json.loads(body)
        count["n"] += 1
        links = [lk for lk in page.get("links", []) if lk.get("rel") != "next"]
        template = {"rel": "next", "type": "application/geo+json", "method": "POST"}
        if count["n"] < GIVE_UP_PAGES:
            links.append(make_next(template, count["n"]))
        page["links"] = links
        return json.dumps(page).encode()

    return Fault("rewrite", match=SEARCH, rewrite=rewrite)


def test_discover_next_link_loop_is_refused(stac_proxy: FaultProxy) -> None:
    url = stac_proxy.url
    # every page says the next one is the second page: page 2 links to itself
    stac_proxy.add(
        _rewrite_next(
            lambda link, n: {
                **link,
                "href": f"{url}/search",
                "body": {"limit": 2, "skip": 2, "collections": ["sentinel-2-l2a"]},
            }
        )
    )
    with pytest.raises(ServiceUnavailableError, match="pages in a loop") as err:
        run_discover(stac_proxy)
    assert url in str(err.value)
    assert searches(stac_proxy) == 2, "the repeated link must not be requested again"


def test_discover_endless_paging_stops_at_the_item_limit(stac_proxy: FaultProxy) -> None:
    url = stac_proxy.url
    # distinct links forever (skip cycles over the same items, a token makes each link new)
    stac_proxy.add(
        _rewrite_next(
            lambda link, n: {
                **link,
                "href": f"{url}/search?token=page-{n}",
                "body": {"limit": 2, "skip": 2 * (n % 3), "collections": ["sentinel-2-l2a"]},
            }
        )
    )
    t0 = time.monotonic()
    with pytest.raises(InputError, match="EO_STAC_MAX_ITEMS=10") as err:
        run_discover(stac_proxy, stac_max_items=10)
    assert url in str(err.value) and "narrow" in str(err.value)
    assert searches(stac_proxy) == 6, "10 items at 2 a page: refused on the 6th page"
    assert time.monotonic() - t0 < 5


#: Ways a catalog breaks an item, and the word of the logged reason that names the field.
BREAKAGES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "S2A_F0": (lambda item: item.pop("assets"), "no assets"),
    "S2A_F1": (lambda item: item.update(geometry=None), "no geometry"),
    "S2A_F2": (lambda item: item["properties"].update(datetime=None), "datetime"),
    "S2A_F3": (lambda item: item["properties"].update({"proj:code": "EPSG:nope"}), "proj:code"),
    "S2A_F4": (
        lambda item: item["assets"]["red"].update({"proj:transform": [10, 0]}),
        "proj:transform",
    ),
}


def test_discover_skips_malformed_items_and_logs_their_ids(
    stac_proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    def rewrite(body: bytes) -> bytes:
        page = json.loads(body)
        for item in page["features"]:
            if item["id"] in BREAKAGES:
                BREAKAGES[item["id"]][0](item)
        return json.dumps(page).encode()

    stac_proxy.add(Fault("rewrite", match=SEARCH, rewrite=rewrite))
    with caplog.at_level(logging.WARNING, logger="tasks.discover"):
        found = run_discover(stac_proxy)
    assert found == ["S2A_F5"], "the intact item is returned, the broken ones are not"
    skipped = {r.getMessage() for r in caplog.records if "malformed STAC item" in r.getMessage()}
    assert len(skipped) == len(BREAKAGES)
    for item_id, (_, reason) in BREAKAGES.items():
        assert any(item_id in m and reason in m for m in skipped), (item_id, reason, skipped)
