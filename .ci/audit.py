"""Dependency audit for `make lint`: known vulnerabilities in the installed environment.

    python .ci/audit.py [--ignore ID ...]

1. `pip-audit` against the PyPI vulnerability service (the source of truth when reachable).
2. Where that service audited nothing — a mirror or proxy that serves only the package index
   (pip-audit then "skips" every package and prints "No known vulnerabilities found", a false
   green) — the installed versions are checked against the offline `safety-db` advisory
   database instead, and the report says so and how old that database is.

Exit status 1 when a vulnerability is found (not in ``--ignore`` / ``.ci/audit-ignore.txt``,
one advisory id per line, ``# reason`` required) or when neither source could audit anything.
Why hand-written: pip-audit has no offline mode and no "fail when nothing was audited" switch.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

IGNORE_FILE = Path(__file__).with_name("audit-ignore.txt")
#: Our own distribution: not on any index, nothing to audit.
SELF = "eo-pipeline"


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    advisory: str
    detail: str


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """{normalised name: version} of the running environment, without our own package."""
    out = {_norm(d.metadata["Name"]): d.version for d in md.distributions() if d.metadata["Name"]}
    out.pop(SELF, None)
    return out


def pip_audit(timeout_s: float = 300.0) -> tuple[list[Finding], int]:
    """(findings, number of packages the service actually audited)."""
    cmd = [
        sys.executable, "-m", "pip_audit", "--local", "--skip-editable",
        "--format", "json", "--progress-spinner", "off",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(f"pip-audit gave no report (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")
        return [], 0
    deps = report.get("dependencies", [])
    audited = [d for d in deps if "skip_reason" not in d]
    findings = [
        Finding(d["name"], d["version"], v["id"], ", ".join(v.get("fix_versions", [])) or "no fix")
        for d in audited
        for v in d.get("vulns", [])
    ]
    return findings, len(audited)


def offline_audit(packages: dict[str, str], db: dict[str, list[dict]]) -> list[Finding]:
    """`packages` against a safety-db style advisory table {name: [{id, specs, advisory}]}."""
    table = {_norm(k): v for k, v in db.items() if not k.startswith("$")}
    findings = []
    for name, version in sorted(packages.items()):
        try:
            v = Version(version)
        except InvalidVersion:
            continue
        for adv in table.get(name, []):
            for spec in adv.get("specs", []):
                try:
                    hit = v in SpecifierSet(spec)
                except InvalidSpecifier:
                    continue
                if hit:
                    text = str(adv.get("advisory", "")).splitlines()[0][:100]
                    findings.append(Finding(name, version, str(adv.get("id")), text))
                    break
    return findings


def load_safety_db() -> tuple[dict[str, list[dict]], str] | None:
    """The offline advisory table and its date, or None when `safety-db` is not installed."""
    # found, not imported: the package's __init__ opens a path relative to the working directory
    spec = importlib.util.find_spec("safety_db")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).with_name("insecure_full.json")
    db = json.loads(path.read_text())
    stamp = db.get("$meta", {}).get("timestamp")
    when = datetime.fromtimestamp(stamp, UTC).date().isoformat() if stamp else "unknown date"
    return db, when


def ignored(extra: list[str]) -> set[str]:
    ids = set(extra)
    if IGNORE_FILE.is_file():
        for line in IGNORE_FILE.read_text().splitlines():
            entry, _, reason = line.partition("#")
            if entry.strip():
                if not reason.strip():
                    sys.exit(f"{IGNORE_FILE.name}: {entry.strip()} needs a '# reason'.")
                ids.add(entry.strip())
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ignore", action="append", default=[], help="advisory id to accept")
    ap.add_argument("--offline", action="store_true", help="skip the online service")
    args = ap.parse_args(argv)
    packages = installed()

    findings: list[Finding] = []
    audited = 0
    if not args.offline:
        findings, audited = pip_audit()
        print(f"pip-audit (PyPI vulnerability service): {audited}/{len(packages)} audited")
    if audited == 0:
        offline = load_safety_db()
        if offline is None:
            print("no vulnerability source reachable and safety-db not installed: not audited.")
            return 1
        db, when = offline
        findings = offline_audit(packages, db)
        print(
            f"online service audited nothing; checked {len(packages)} packages against the "
            f"offline safety-db of {when} (stale: newer advisories are not in it)"
        )
    skip = ignored(args.ignore)
    bad = [f for f in findings if f.advisory not in skip]
    for f in findings:
        tag = "ignored" if f.advisory in skip else "VULNERABLE"
        print(f"{tag}: {f.package} {f.version} {f.advisory} ({f.detail})")
    if not bad:
        print("no known vulnerabilities")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
