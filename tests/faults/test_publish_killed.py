"""Row 1 of the fault table: the process is killed (SIGKILL: no handler, no ``finally`` runs)
during publish, after the data files and before the STAC Item.

Required: no product visible; the rerun completes it; no orphan temp files after the rerun --
neither staging objects under the output prefix nor local working folders.

Two kill points: after the data files were uploaded to the staging area (``staged``: the local
working folder is still there) and after they were moved into the product folder (``moved``).
Each kill runs a real child process (~5-8 s: it imports the pipeline).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tasks.publish import list_products
from tests.conftest import S3_BUCKET as BUCKET
from tests.conftest import S3Server
from tests.faults.conftest import all_keys, local_files, moto_fs
from tests.unit.test_publish import publish_change

REPO_ROOT = Path(__file__).resolve().parents[2]

#: What the child replaces by a SIGKILL of itself.
KILL_AT = {
    "staged": "from tasks.storage import ObjectStore; ObjectStore.move = die",
    "moved": "import tasks.publish as publish_mod; publish_mod._write_item = die",
}


def publish_and_get_killed(out: str, kill_at: str, tmpdir: Path) -> None:
    """Run `publish_change(out)` in a child process that SIGKILLs itself at `kill_at`."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        {KILL_AT[kill_at]}
        from tests.unit.test_publish import publish_change
        publish_change({out!r})
        """
    )
    env = {**os.environ, "TMPDIR": str(tmpdir)}  # the child's local working folders go here
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=180, env=env)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


def workdirs(tmpdir: Path) -> list[str]:
    """Local working folders of publishes (``eo-publish-<pid>-*``) in `tmpdir`."""
    return sorted(p.name for p in tmpdir.glob("eo-publish-*"))


@pytest.fixture
def tmpdir_for_publish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory used by the killed child and, for the rerun, by this process."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.parametrize("kill_at", ["staged", "moved"])
def test_publish_killed_local_nothing_visible_rerun_completes_no_orphans(
    tmp_path: Path, tmpdir_for_publish: Path, kill_at: str
) -> None:
    out = tmp_path / "out"
    publish_and_get_killed(str(out), kill_at, tmpdir_for_publish)

    # no product visible
    assert list_products(str(out)) == []
    files = local_files(out)
    assert not [f for f in files if f.endswith("item.json")] and "index.ndjson" not in files
    # ... although the data files were written: the kill came after them
    where = ".tmp/" if kill_at == "staged" else "eo-change/"
    assert any(f.startswith(where) and f.endswith(".tif") for f in files), files
    # the killed process could not remove its local working folder while staging
    assert bool(workdirs(tmpdir_for_publish)) == (kill_at == "staged")

    ref = publish_change(str(out))  # the rerun completes the product
    assert not ref.skipped and [i["id"] for i in list_products(str(out))] == [ref.id]
    assert not [f for f in local_files(out) if f.startswith(".tmp/")], "staging left behind"
    assert workdirs(tmpdir_for_publish) == [], "local working folders left behind"
    assert sorted(f.rsplit("/", 1)[-1] for f in local_files(out) if ref.id in f) == [
        f"{ref.id}.parquet",
        f"{ref.id}.tif",
        "item.json",
    ]


def test_publish_killed_s3_nothing_visible_rerun_completes_no_orphans(
    s3_server: S3Server, tmpdir_for_publish: Path
) -> None:
    """The same on S3 (moto on 127.0.0.1): killed after staging the uploads."""
    prefix = f"{BUCKET}/killed"
    url = f"s3://{prefix}"
    publish_and_get_killed(url, "staged", tmpdir_for_publish)

    moto = moto_fs(s3_server)
    keys = all_keys(moto, prefix)
    assert list_products(url) == [] and not [k for k in keys if k.endswith("item.json")]
    assert [k for k in keys if k.startswith(".tmp/") and k.endswith(".tif")], keys

    ref = publish_change(url)
    assert not ref.skipped and [i["id"] for i in list_products(url)] == [ref.id]
    keys = all_keys(moto, prefix)
    assert not [k for k in keys if k.startswith(".tmp/")], keys
    assert workdirs(tmpdir_for_publish) == []
