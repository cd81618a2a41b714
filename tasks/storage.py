"""Object-store helpers: one fsspec filesystem for a local path or ``s3://bucket/prefix``.

Products are written through `fsspec <https://filesystem-spec.readthedocs.io>`_ so the same
code serves a local folder and S3 (``s3fs``) or an S3-compatible store (MinIO, moto): the
endpoint comes from ``EO_S3_ENDPOINT_URL`` (`tasks.settings.Settings.s3_endpoint_url`) and is
passed as ``client_kwargs={"endpoint_url": ...}`` (the way s3fs accepts it; a ``region_name``
beside it broke bucket creation on moto).

Keys built from user-controlled names (product ids, collection names) go through `safe_name`,
so nothing is ever written outside the output prefix (no ``..``, no leading ``/``, bounded length).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from tasks.errors import InputError, ServiceUnavailableError, TransientIOError
from tasks.settings import get_settings

__all__ = [
    "MAX_NAME_LENGTH",
    "ObjectStore",
    "multihash_sha256",
    "open_store",
    "safe_name",
    "sha256_bytes",
]

#: Longest path component `safe_name` returns. S3 keys may be 1024 bytes and most local file
#: systems allow 255 per component; 120 leaves room for a collection, an id and a file name.
MAX_NAME_LENGTH = 120

try:  # s3fs talks to S3 through botocore; without it only local paths are used
    from botocore.exceptions import ConnectionError as _BotoConnectionError
except ImportError:  # pragma: no cover
    _BotoConnectionError = None

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 1 << 20  # bytes read at a time when hashing an object


def safe_name(name: str, *, max_length: int = MAX_NAME_LENGTH) -> str:
    """`name` as one safe path component: ASCII letters, digits, ``.``, ``_``, ``-`` only.

    Unicode is folded to ASCII where it has an equivalent (NFKD), every other run of characters
    becomes ``-``, leading dots/dashes are dropped (no ``..``, no hidden files) and names over
    `max_length` are cut and suffixed with a hash of the whole name so they stay unique.
    A name with nothing left (``"../"``, ``"東京"``) becomes ``"x-<hash>"``.
    """
    if max_length < 20:
        raise InputError(f"max_length: {max_length} is too short; use at least 20.")
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("-", ascii_name).strip(".-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)  # no ".." anywhere, even inside a component
    if not cleaned:
        return f"x-{digest}"
    if len(cleaned) > max_length:
        cleaned = f"{cleaned[: max_length - len(digest) - 1].rstrip('.-')}-{digest}"
    return cleaned


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def multihash_sha256(hex_digest: str) -> str:
    """The STAC ``file:checksum`` form of a sha256: a multihash, ``1220`` + the hex digest.

    ``0x12`` is sha2-256 in the multicodec table and ``0x20`` the digest length (32 bytes);
    see https://github.com/multiformats/multicodec/blob/master/table.csv.
    """
    if not re.fullmatch(r"[0-9a-f]{64}", hex_digest):
        raise InputError(f"not a hex sha256 digest: {hex_digest!r}")
    return "1220" + hex_digest


class ObjectStore:
    """A filesystem and a root (the output prefix); every key is relative to the root.

    ``store.path("a", "b.json")`` is the filesystem path of key ``a/b.json``; ``store.url(...)``
    the URL a reader can open (``s3://bucket/prefix/a/b.json`` or an absolute local path).
    """

    def __init__(self, fs: AbstractFileSystem, root: str, *, protocol: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.protocol = protocol

    def __repr__(self) -> str:
        return f"ObjectStore({self.url()!r})"

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    def path(self, *key: str) -> str:
        """Filesystem path of the key made of `key` parts (each must already be safe)."""
        for part in key:
            for piece in part.split("/"):
                if piece in ("", ".", ".."):
                    raise InputError(f"unsafe key part {part!r}: pass names through safe_name().")
        return "/".join([self.root, *key])

    def url(self, *key: str) -> str:
        """URL of a key, as readers (GDAL, pandas, STAC clients) expect it."""
        p = self.path(*key) if key else self.root
        return p if self.is_local else f"{self.protocol}://{p}"

    # ---- reading and writing whole (small) objects ----------------------------------------------
    def read_bytes(self, path: str) -> bytes:
        with _io_errors(path):
            data: bytes = self.fs.cat_file(path)
        return data

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write one object. On S3 a PUT is atomic; locally use `write_atomic` for that."""
        with _io_errors(path):
            self.fs.makedirs(self.fs._parent(path), exist_ok=True)
            self.fs.pipe_file(path, data)

    def write_atomic(self, path: str, data: bytes, *, tmp_dir: str) -> None:
        """Write `data` to `tmp_dir` then move it to `path`: readers never see a partial object.

        Locally the move is a rename (atomic on one file system); on S3 it is a server-side copy,
        and an S3 PUT/COPY is atomic: a reader gets the old object or the new one.
        """
        tmp = f"{tmp_dir}/{path.rsplit('/', 1)[-1]}"
        self.write_bytes(tmp, data)
        self.move(tmp, path)

    def put_file(self, local_path: str, path: str) -> None:
        with _io_errors(path):
            self.fs.makedirs(self.fs._parent(path), exist_ok=True)
            self.fs.put_file(local_path, path)

    def move(self, src: str, dst: str) -> None:
        with _io_errors(dst):
            self.fs.makedirs(self.fs._parent(dst), exist_ok=True)
            self.fs.mv(src, dst)
        self.fs.invalidate_cache(self.fs._parent(src))
        self.fs.invalidate_cache(self.fs._parent(dst))

    def exists(self, path: str) -> bool:
        self.fs.invalidate_cache(self.fs._parent(path))
        with _io_errors(path):
            return bool(self.fs.exists(path))

    def size(self, path: str) -> int:
        with _io_errors(path):
            return int(self.fs.size(path))

    def sha256(self, path: str) -> str:
        """Hex sha256 of the stored object, read back in 1 MiB chunks."""
        h = hashlib.sha256()
        with _io_errors(path), self.fs.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def remove(self, path: str, *, recursive: bool = False) -> None:
        with _io_errors(path):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=recursive)
        self.fs.invalidate_cache(self.fs._parent(path))

    def listdir(self, path: str) -> list[str]:
        """Names directly under `path` (empty when it does not exist)."""
        self.fs.invalidate_cache(path)
        with _io_errors(path):
            if not self.fs.exists(path):
                return []
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))

    def glob(self, pattern: str) -> list[str]:
        self.fs.invalidate_cache()
        with _io_errors(pattern):
            return sorted(self.fs.glob(pattern))

    def info(self, path: str) -> dict[str, Any]:
        """The store's metadata of one object (size, mtime or ETag/LastModified on S3)."""
        self.fs.invalidate_cache(self.fs._parent(path))
        with _io_errors(path):
            return dict(self.fs.info(path))


class _io_errors:
    """Translate a store's failures into the pipeline's exceptions.

    - connection refused / unknown endpoint (botocore ``ConnectionError``) ->
      `ServiceUnavailableError` naming ``EO_S3_ENDPOINT_URL`` (retrying does not help);
    - other ``OSError`` (timeouts, 5xx, truncated reads) -> `TransientIOError` (retried);
    - missing objects and denied access pass through unchanged.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None:
            return None
        if _BotoConnectionError is not None and isinstance(exc, _BotoConnectionError):
            raise ServiceUnavailableError(
                f"object store unreachable for {self.path}: {exc}; check EO_OUTPUT_URL and "
                "EO_S3_ENDPOINT_URL (and that the S3 endpoint is running)."
            ) from exc
        if not isinstance(exc, OSError) or isinstance(
            exc, FileNotFoundError | PermissionError | IsADirectoryError | TransientIOError
        ):
            return None
        raise TransientIOError(f"object store I/O failed on {self.path}: {exc}") from exc


def open_store(url: str | None = None, *, endpoint_url: str | None = None) -> ObjectStore:
    """The `ObjectStore` of `url` (default ``EO_OUTPUT_URL``): a local path or ``s3://...``.

    For S3 the endpoint is `endpoint_url`, else ``EO_S3_ENDPOINT_URL``, else AWS; credentials
    come from the usual AWS environment variables / config files (botocore's chain).
    """
    settings = get_settings()
    url = url or settings.output_url
    if not url or not url.strip():
        raise InputError(
            "output_url is empty; set EO_OUTPUT_URL to a folder or s3://bucket/prefix."
        )
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        endpoint = endpoint_url or settings.s3_endpoint_url
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        bucket_and_prefix = url.split("://", 1)[1].strip("/")
        if not bucket_and_prefix:
            raise InputError(f"output_url {url!r} names no bucket; use s3://bucket/prefix.")
    elif protocol == "file":
        options["auto_mkdir"] = True
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as err:
        raise InputError(
            f"output_url {url!r}: unsupported storage ({err}); use a local path or s3://bucket/prefix."
        ) from err
    if protocol == "file":
        fs.makedirs(root, exist_ok=True)
    return ObjectStore(fs, root, protocol="file" if protocol == "file" else protocol)
