"""The dependency audit (`.ci/audit.py`, run by `make lint`) flags what it should."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

AUDIT = Path(__file__).resolve().parents[2] / ".ci" / "audit.py"


@pytest.fixture(scope="module")
def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("eo_audit", AUDIT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["eo_audit"] = module
    spec.loader.exec_module(module)
    return module


def test_offline_table_flags_versions_inside_the_advisory_range(audit: ModuleType) -> None:
    db = {
        "$meta": {"timestamp": 0},
        "Some_Pkg": [{"id": "pyup.io-1", "specs": ["<2.0", ">=3.0,<3.1"], "advisory": "bad\nmore"}],
    }
    hits = audit.offline_audit({"some-pkg": "1.9", "other": "1.0"}, db)
    assert [(h.package, h.advisory, h.detail) for h in hits] == [("some-pkg", "pyup.io-1", "bad")]
    assert audit.offline_audit({"some-pkg": "3.0.5"}, db)[0].version == "3.0.5"
    assert audit.offline_audit({"some-pkg": "2.5"}, db) == []
    assert audit.offline_audit({"some-pkg": "3.1"}, db) == []


def test_real_offline_database_knows_an_old_requests_cve(audit: ModuleType) -> None:
    loaded = audit.load_safety_db()
    if loaded is None:
        pytest.skip("safety-db is not installed")
    db, when = loaded
    assert when[:4].isdigit()
    # requests < 2.20.0 sent credentials on https->http redirects (CVE-2018-18074)
    assert audit.offline_audit({"requests": "2.19.0"}, db)
    assert not audit.offline_audit({"requests": "2.32.3"}, db)


def test_ignore_file_entries_need_a_reason(
    audit: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ignore = tmp_path / "audit-ignore.txt"
    monkeypatch.setattr(audit, "IGNORE_FILE", ignore)
    ignore.write_text("GHSA-1  # not reachable: we never parse untrusted YAML\n\n")
    assert audit.ignored(["X"]) == {"GHSA-1", "X"}
    ignore.write_text("GHSA-2\n")
    with pytest.raises(SystemExit, match="GHSA-2 needs a '# reason'"):
        audit.ignored([])
