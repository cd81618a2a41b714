"""Flow-tier fixtures: one Prefect test server for the whole session (it costs ~10 s to start)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect API (SQLite) for flows run by the tests of this session."""
    with prefect_test_harness(server_startup_timeout=120):
        yield
