"""Start-up helpers of the docker-compose stack (infra/docker-compose.yml), run in our image.

    python infra/bootstrap.py create-bucket
        Create the bucket of EO_OUTPUT_URL on EO_S3_ENDPOINT_URL if it is missing (idempotent).
    python infra/bootstrap.py serve-stac ROOT --addr http://stac:7822 --bind 0.0.0.0:7822
        Serve the synthetic archive at ROOT as a STAC API (replaces this process with ``rustac``).
    python infra/bootstrap.py http-ok URL
        Exit 0 when URL answers 200: the healthcheck of the services started from our image.

The stack needs these because ``eo stac serve`` binds 127.0.0.1 only (right for a laptop, not
for a container that other containers call) and because the bucket must exist before the first
product is published. Settings come from the environment exactly as in the pipeline
(`tasks.settings.Settings`), so the stack is checked with the same values the flows use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = ["bucket_of", "ensure_bucket", "http_ok", "main", "stac_serve_command"]


def bucket_of(output_url: str) -> str:
    """The bucket name of an ``s3://bucket/prefix`` URL.

    Raises `tasks.errors.InputError` for a URL that is not on S3 or names no bucket.
    """
    from tasks.errors import InputError

    scheme, sep, rest = output_url.partition("://")
    if not sep or scheme not in ("s3", "s3a"):
        raise InputError(
            f"EO_OUTPUT_URL={output_url!r} is not an s3:// URL; the stack publishes to the "
            "S3-compatible store: set EO_OUTPUT_URL=s3://bucket/prefix."
        )
    bucket = rest.strip("/").split("/", 1)[0]
    if not bucket:
        raise InputError(f"EO_OUTPUT_URL={output_url!r} names no bucket; use s3://bucket/prefix.")
    return bucket


def ensure_bucket(
    output_url: str | None = None,
    *,
    endpoint_url: str | None = None,
    wait_s: float = 60.0,
) -> bool:
    """Create the bucket of `output_url` (default ``EO_OUTPUT_URL``) unless it exists.

    The store is opened with `tasks.storage.open_store`, so the endpoint (`endpoint_url`, else
    ``EO_S3_ENDPOINT_URL``) and the credentials (``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``, botocore's chain) are resolved as in the pipeline. While the
    endpoint refuses connections (the store is still starting) it retries for `wait_s` seconds,
    then raises `tasks.errors.ServiceUnavailableError`. Returns True when it created the
    bucket, False when the bucket was already there.
    """
    from botocore.exceptions import ConnectionError as BotoConnectionError

    from tasks.errors import ServiceUnavailableError
    from tasks.settings import get_settings
    from tasks.storage import open_store

    url = output_url or get_settings().output_url
    bucket = bucket_of(url)
    store = open_store(url, endpoint_url=endpoint_url)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            # HeadBucket, not fs.exists(): s3fs's exists() answers False on any error, which
            # would turn an unreachable endpoint into a failed CreateBucket.
            store.fs.call_s3("head_bucket", Bucket=bucket)
            return False
        except FileNotFoundError:
            break
        except BotoConnectionError as err:
            if time.monotonic() >= deadline:
                endpoint = endpoint_url or get_settings().s3_endpoint_url or "AWS S3"
                raise ServiceUnavailableError(
                    f"object store unreachable at {endpoint} ({err}); check EO_S3_ENDPOINT_URL "
                    "and that the store is running."
                ) from err
            time.sleep(1.0)
    try:
        store.fs.mkdir(bucket)
    except FileExistsError:  # created by someone else in the meantime
        return False
    store.fs.invalidate_cache()
    return True


def stac_serve_command(root: Path | str, *, addr: str, bind: str) -> list[str]:
    """The ``rustac serve`` command line serving the synthetic archive at `root`.

    `addr` is the public root URL the API writes into its links (``next`` pages, ``self``):
    the name other containers reach it by, e.g. ``http://stac:7822``. `bind` is the socket
    address it listens on, e.g. ``0.0.0.0:7822``. (With ``--addr`` alone rustac would write its
    bind address into every link, and pystac-client would follow ``next`` links to 0.0.0.0.)
    """
    from tasks.errors import ServiceUnavailableError
    from tasks.synthetic import stac_files

    exe = shutil.which("rustac") or str(Path(sys.executable).with_name("rustac"))
    if not Path(exe).exists():
        raise ServiceUnavailableError("the `rustac` command was not found; `pip install rustac`.")
    return [exe, "serve", "--addr", addr, "--bind", bind, *map(str, stac_files(Path(root)))]


def http_ok(url: str, *, timeout: float = 5.0) -> bool:
    """True when a GET of `url` answers 200 within `timeout` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="bootstrap.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bucket = sub.add_parser("create-bucket", help="create the bucket of EO_OUTPUT_URL")
    bucket.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the store")
    stac = sub.add_parser("serve-stac", help="serve a synthetic archive with rustac")
    stac.add_argument("root", type=Path, help="archive folder made by `eo archive create`")
    stac.add_argument("--addr", required=True, help="public root URL, e.g. http://stac:7822")
    stac.add_argument("--bind", required=True, help="listen address, e.g. 0.0.0.0:7822")
    health = sub.add_parser("http-ok", help="exit 0 when URL answers 200")
    health.add_argument("url")
    health.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)

    if args.command == "http-ok":
        return 0 if http_ok(args.url, timeout=args.timeout) else 1

    from tasks.errors import PipelineError

    try:
        if args.command == "create-bucket":
            from tasks.settings import get_settings

            url = get_settings().output_url
            created = ensure_bucket(url, wait_s=args.wait)
            print(f"bucket {bucket_of(url)!r} {'created' if created else 'already exists'}")
            return 0
        cmd = stac_serve_command(args.root, addr=args.addr, bind=args.bind)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"serving {args.root} at {args.addr} (listening on {args.bind})", flush=True)
    os.execv(cmd[0], cmd)  # rustac becomes this process: signals reach it directly


if __name__ == "__main__":
    sys.exit(main())
