"""Object-store helpers: one fsspec filesystem for a local path or ``s3://bucket/prefix``.

Products are written through `fsspec <https://filesystem-spec.readthedocs.io>`_ so the same
code serves a local folder and S3 (``s3fs``) or an S3-compatible store (MinIO, moto): the
endpoint comes from ``EO_S3_ENDPOINT_URL`` (`tasks.settings.Settings.s3_endpoint_url`) and is
passed as ``client_kwargs={"endpoint_url": ...}`` (the way s3fs accepts it; a ``region_name``
beside it broke bucket creation on moto).

**Retries are bounded and explicit.** s3fs wraps botocore, and each has its own retry loop
(s3fs: 5 tries of some errors; botocore's legacy mode: 5 attempts): nested, up to 25 attempts
of one request with read timeouts of 15 s each. `open_store` keeps one loop, botocore's
``standard`` retry mode with ``EO_S3_MAX_ATTEMPTS`` attempts (exponential backoff with jitter,
capped at 20 s by botocore; it retries HTTP 500/502/503/504, throttling, timeouts and dropped
connections), sets s3fs's own retries to one try, and passes ``EO_S3_CONNECT_TIMEOUT_S`` /
``EO_S3_READ_TIMEOUT_S``. What still fails after that reaches the caller as a pipeline error
naming the endpoint (`ObjectStore.endpoint`): `ServiceUnavailableError` when the endpoint cannot
be reached, `TransientIOError` for 5xx, timeouts and truncated answers (a Prefect task may retry
it later, when the store has recovered).

Keys built from user-controlled names (product ids, collection names) go through `safe_name`,
so nothing is ever written outside the output prefix (no ``..``, no leading ``/``, bounded length).

**Credentials.** S3 credentials come from botocore's chain (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, config files, instance roles) or, when
``EO_S3_SECRET_BLOCK`` names one, from a Prefect ``Secret`` block (`s3_credentials`), handed to
s3fs and, through `gdal_s3_options`, to GDAL's ``/vsis3/``. A URL with ``user:password@`` in it
is refused as an output or endpoint URL (s3fs would take the userinfo for part of the bucket
name and echo it in every message). Every message that can carry a URL or a library's error text
goes through `redact`, which masks URL userinfo, signature query parameters (pre-signed S3 and
SAS URLs) and the values of the credentials this process holds.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, cast

import fsspec
import rasterio
from fsspec import AbstractFileSystem
from rasterio.session import Session as RasterioSession

from tasks.errors import InputError, PipelineError, ServiceUnavailableError, TransientIOError
from tasks.settings import Settings, get_settings

__all__ = [
    "MAX_NAME_LENGTH",
    "ObjectStore",
    "S3Credentials",
    "S3CredentialsSession",
    "gdal_env",
    "gdal_s3_options",
    "gdal_session",
    "has_userinfo",
    "multihash_sha256",
    "open_store",
    "redact",
    "s3_credentials",
    "safe_name",
    "sha256_bytes",
]

#: Longest path component `safe_name` returns. S3 keys may be 1024 bytes and most local file
#: systems allow 255 per component; 120 leaves room for a collection, an id and a file name.
MAX_NAME_LENGTH = 120

#: Failures of one S3 request: the endpoint cannot be reached (connection refused, unknown host,
#: connect timeout), and transient ones that are not OSErrors (a connection closed before the
#: answer, a body cut short). Empty without botocore/aiohttp (local paths only).
_UNREACHABLE: tuple[type[BaseException], ...] = ()
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (http.client.IncompleteRead,)
try:
    from botocore.exceptions import ConnectionError as _BotoConnectionError
    from botocore.exceptions import HTTPClientError as _BotoHTTPClientError

    _UNREACHABLE = (_BotoConnectionError,)
    _TRANSIENT_TYPES += (_BotoHTTPClientError,)
except ImportError:  # pragma: no cover
    pass
try:  # aiohttp (under aiobotocore) reports a body cut short with its own exception
    from aiohttp import ClientPayloadError

    _TRANSIENT_TYPES += (ClientPayloadError,)
except ImportError:  # pragma: no cover
    pass

_NO_CREDENTIALS: tuple[type[BaseException], ...] = ()
try:
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    _NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError)
except ImportError:  # pragma: no cover
    pass

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 1 << 20  # bytes read at a time when hashing an object

# ---- credentials out of messages --------------------------------------------------------------
#: ``scheme://user:password@`` (RFC 3986 userinfo) anywhere in a text.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s\"'<>]*@")
#: Query parameters that are credentials in signed URLs: Azure SAS ``sig`` (Planetary Computer's
#: signed hrefs), AWS SigV4 pre-signed URLs (``X-Amz-Signature``, ``X-Amz-Credential``,
#: ``X-Amz-Security-Token``), Google's (``X-Goog-Signature``, ``X-Goog-Credential``) and generic
#: ``token`` / ``access_token`` / ``signature`` parameters.
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:sig|signature|token|access_token|x-amz-signature|x-amz-credential|"
    r"x-amz-security-token|x-goog-signature|x-goog-credential)=)[^&#\s\"'<>]*"
)
#: Environment variables whose values are credentials (botocore's names).
SECRET_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
#: Shorter values are not masked by value (a moto test key ``testing`` is not worth hiding, and
#: masking short words would garble messages); real AWS key ids have 20 characters, secrets 40.
_MIN_SECRET_LENGTH = 12
_loaded_secrets: set[str] = set()  # credentials read from Secret blocks by this process


def has_userinfo(url: str) -> bool:
    """True when `url` carries ``user[:password]@`` before its host."""
    return bool(_USERINFO.match(url.strip()))


def redact(text: object) -> str:
    """``str(text)`` with credentials masked as ``***``: URL userinfo, signature and token query
    parameters, and the values of the AWS credentials in the environment or loaded from a
    Secret block by this process. Apply it to every message that may hold a URL or a library's
    error text."""
    out = _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", str(text)))
    secrets = {os.environ.get(name, "") for name in SECRET_ENV_VARS} | _loaded_secrets
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_LENGTH:
            out = out.replace(secret, "***")
    return out


@dataclass(frozen=True)
class S3Credentials:
    """S3 credentials read from a Prefect Secret block (`s3_credentials`); never printed."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def s3fs_options(self) -> dict[str, str]:
        """Keyword arguments of ``s3fs.S3FileSystem``."""
        options = {"key": self.access_key_id, "secret": self.secret_access_key}
        if self.session_token:
            options["token"] = self.session_token
        return options

    def gdal_options(self) -> dict[str, str]:
        """GDAL configuration options of ``/vsis3/`` (for ``rasterio.Env(**options)``)."""
        options = {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        if self.session_token:
            options["AWS_SESSION_TOKEN"] = self.session_token
        return options


_BLOCK_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def s3_credentials(settings: Settings | None = None) -> S3Credentials | None:
    """The S3 credentials of the Prefect Secret block named by ``EO_S3_SECRET_BLOCK``, or None
    when that setting is unset (botocore's own chain applies: the ``AWS_*`` environment...).

    The block's value is JSON (an object, or a string holding one) with ``aws_access_key_id``,
    ``aws_secret_access_key`` and optionally ``aws_session_token``; save it with
    ``Secret(value={...}).save("eo-s3")``. It is read from the Prefect API each time (rotated
    credentials apply at the next store opened). Raises `InputError` naming the block when it is
    missing or malformed; the messages never hold its value.
    """
    settings = settings or get_settings()
    name = settings.s3_secret_block
    if not name:
        return None
    from prefect.blocks.system import Secret

    try:
        # _sync: a sync call also where an event loop runs (Prefect's async_dispatch)
        block = cast("Secret[Any]", Secret.load(name, _sync=True))  # type: ignore[call-arg]
        value: Any = block.get()
    except ValueError as err:  # Prefect: "Unable to find block document named ..."
        raise InputError(
            f"EO_S3_SECRET_BLOCK={name!r}: no Prefect Secret block of that name on the Prefect "
            f"API ({redact(err)}); create it with Secret(value={{...}}).save({name!r}) or unset "
            "EO_S3_SECRET_BLOCK."
        ) from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, dict):
        raise InputError(
            f"EO_S3_SECRET_BLOCK={name!r}: the Secret block's value is not a JSON object; store "
            f"{{{', '.join(repr(k) for k in _BLOCK_KEYS)}}} in it (the last is optional)."
        )
    missing = [k for k in _BLOCK_KEYS[:2] if not isinstance(value.get(k), str) or not value[k]]
    unknown = sorted(str(k) for k in value if k not in _BLOCK_KEYS)
    if missing or unknown:
        raise InputError(
            f"EO_S3_SECRET_BLOCK={name!r}: the Secret block lacks {missing} or has unknown keys "
            f"{unknown}; it holds exactly {list(_BLOCK_KEYS)} (the last is optional)."
        )
    token = value.get("aws_session_token")
    creds = S3Credentials(
        access_key_id=value["aws_access_key_id"],
        secret_access_key=value["aws_secret_access_key"],
        session_token=str(token) if token else None,
    )
    _loaded_secrets.update(v for v in (creds.secret_access_key, creds.session_token) if v)
    _loaded_secrets.add(creds.access_key_id)
    return creds


def gdal_s3_options(settings: Settings | None = None) -> dict[str, str]:
    """GDAL configuration options with the S3 credentials of ``EO_S3_SECRET_BLOCK`` (empty when
    it is unset: GDAL then reads the ``AWS_*`` environment itself). rasterio refuses these keys
    in ``rasterio.Env(**options)``: hand them to GDAL with `gdal_env`."""
    creds = s3_credentials(settings)
    return {} if creds is None else creds.gdal_options()


class S3CredentialsSession(RasterioSession):
    """A rasterio session that hands fixed S3 credentials to GDAL's ``/vsis3/``.

    rasterio accepts credentials only through a session object (``rasterio.Env`` refuses
    ``AWS_SECRET_ACCESS_KEY`` as an option) and its own `AWSSession` needs boto3, which the
    pipeline does not install. Module-level, so it pickles (dask workers, stackstac's
    ``LayeredEnv(always={"session": ...})``).
    """

    def __init__(self, creds: S3Credentials) -> None:
        self._options = creds.gdal_options()

    def __repr__(self) -> str:
        return "S3CredentialsSession(<credentials>)"

    @classmethod
    def hascreds(cls, config: dict[str, Any]) -> bool:
        return "AWS_ACCESS_KEY_ID" in config and "AWS_SECRET_ACCESS_KEY" in config

    @property
    def credentials(self) -> dict[str, str]:
        return dict(self._options)

    def get_credential_options(self) -> dict[str, str]:
        return dict(self._options)


def gdal_session(settings: Settings | None = None) -> S3CredentialsSession | None:
    """The rasterio session of ``EO_S3_SECRET_BLOCK``'s credentials, None when it is unset."""
    creds = s3_credentials(settings)
    return None if creds is None else S3CredentialsSession(creds)


def gdal_env(settings: Settings | None = None, **options: Any) -> rasterio.Env:
    """A ``rasterio.Env`` (with GDAL `options`) whose ``/vsis3/`` access uses the S3
    credentials of ``EO_S3_SECRET_BLOCK``; a plain ``rasterio.Env(**options)`` when it is unset.

    ``with gdal_env(): rasterio.open("s3://bucket/key.tif")``.
    """
    session = gdal_session(settings)
    if session is None:
        return rasterio.Env(**options)
    return rasterio.Env(session=session, **options)


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

    def __init__(
        self,
        fs: AbstractFileSystem,
        root: str,
        *,
        protocol: str,
        endpoint: str | None = None,
        attempts: int = 1,
    ) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.protocol = protocol
        self.endpoint = endpoint
        self.attempts = attempts

    @property
    def location(self) -> str:
        """Where the objects live, for error messages: the endpoint URL or the local folder."""
        if self.is_local:
            return f"the local folder {self.root}"
        return redact(f"the object store at {self.endpoint or 'AWS S3 (EO_S3_ENDPOINT_URL unset)'}")

    def _errors(self, path: str) -> _io_errors:
        return _io_errors(path, self)

    def __repr__(self) -> str:
        return f"ObjectStore({self.url()!r})"

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    def path(self, *key: str) -> str:
        """Filesystem path of the key made of `key` parts (each must already be safe).

        The last line of defence against writing outside the root: refuses empty, ``.`` and
        ``..`` pieces (and so a leading ``/``), NUL bytes, and pieces over 255 bytes (the
        component limit of most local file systems), with `InputError`.
        """
        for part in key:
            for piece in part.split("/"):
                if piece in ("", ".", "..") or "\x00" in piece or len(piece.encode()) > 255:
                    raise InputError(
                        f"unsafe key part {part[:80]!r}: pass names through safe_name()."
                    )
        return "/".join([self.root, *key])

    def url(self, *key: str) -> str:
        """URL of a key, as readers (GDAL, pandas, STAC clients) expect it."""
        p = self.path(*key) if key else self.root
        return p if self.is_local else f"{self.protocol}://{p}"

    # ---- reading and writing whole (small) objects ----------------------------------------------
    def read_bytes(self, path: str) -> bytes:
        with self._errors(path):
            data: bytes = self.fs.cat_file(path)
        return data

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write one object. On S3 a PUT is atomic; locally use `write_atomic` for that."""
        with self._errors(path):
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
        with self._errors(path):
            self.fs.makedirs(self.fs._parent(path), exist_ok=True)
            self.fs.put_file(local_path, path)

    def move(self, src: str, dst: str) -> None:
        with self._errors(dst):
            self.fs.makedirs(self.fs._parent(dst), exist_ok=True)
            self.fs.mv(src, dst)
        self.fs.invalidate_cache(self.fs._parent(src))
        self.fs.invalidate_cache(self.fs._parent(dst))

    def exists(self, path: str) -> bool:
        self.fs.invalidate_cache(self.fs._parent(path))
        with self._errors(path):
            return bool(self.fs.exists(path))

    def size(self, path: str) -> int:
        with self._errors(path):
            return int(self.fs.size(path))

    def sha256(self, path: str) -> str:
        """Hex sha256 of the stored object, read back in 1 MiB chunks."""
        h = hashlib.sha256()
        with self._errors(path), self.fs.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def remove(self, path: str, *, recursive: bool = False) -> None:
        with self._errors(path):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=recursive)
        self.fs.invalidate_cache(self.fs._parent(path))

    def listdir(self, path: str) -> list[str]:
        """Names directly under `path` (empty when it does not exist)."""
        self.fs.invalidate_cache(path)
        with self._errors(path):
            if not self.fs.exists(path):
                return []
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))

    def glob(self, pattern: str) -> list[str]:
        self.fs.invalidate_cache()
        with self._errors(pattern):
            return sorted(self.fs.glob(pattern))

    def info(self, path: str) -> dict[str, Any]:
        """The store's metadata of one object (size, mtime or ETag/LastModified on S3)."""
        self.fs.invalidate_cache(self.fs._parent(path))
        with self._errors(path):
            return dict(self.fs.info(path))


class _io_errors:
    """Translate a store's failures (after botocore's bounded retries) into pipeline exceptions.

    - connection refused / unknown endpoint / connect timeout (botocore ``ConnectionError``) ->
      `ServiceUnavailableError` naming the endpoint and ``EO_S3_ENDPOINT_URL``;
    - other ``OSError`` (5xx, read timeouts) and dropped connections or bodies cut short ->
      `TransientIOError` naming the endpoint and the attempts made (a later task retry may help);
    - missing objects and denied access pass through unchanged.
    """

    def __init__(self, path: str, store: ObjectStore) -> None:
        self.path = path
        self.store = store

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None:
            return None
        store = self.store
        tries = f"{store.attempts} attempt(s)"
        if isinstance(exc, _NO_CREDENTIALS):
            raise InputError(
                f"{store.location}: no S3 credentials for {self.path} ({redact(exc)}); set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or "
                "EO_S3_SECRET_BLOCK to the name of a Prefect Secret block holding them."
            ) from exc
        if isinstance(exc, _UNREACHABLE):
            raise ServiceUnavailableError(
                f"{store.location} cannot be reached ({tries}) for {self.path}: {redact(exc)}; "
                "check EO_S3_ENDPOINT_URL and EO_OUTPUT_URL, and that the endpoint is running."
            ) from exc
        if isinstance(exc, PipelineError):
            return None
        if isinstance(exc, _TRANSIENT_TYPES) or (
            isinstance(exc, OSError)
            and not isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError)
        ):
            hint = (
                "check free space and permissions of the output folder."
                if store.is_local
                else "the store may be overloaded or down: run again later, or raise "
                "EO_S3_MAX_ATTEMPTS / EO_S3_READ_TIMEOUT_S."
            )
            raise TransientIOError(
                f"{store.location} failed on {self.path} after {tries}: "
                f"{type(exc).__name__}: {redact(exc)}; {hint}"
            ) from exc
        return None


def open_store(url: str | None = None, *, endpoint_url: str | None = None) -> ObjectStore:
    """The `ObjectStore` of `url` (default ``EO_OUTPUT_URL``): a local path or ``s3://...``.

    For S3 the endpoint is `endpoint_url`, else ``EO_S3_ENDPOINT_URL``, else AWS; credentials
    come from the Prefect Secret block named by ``EO_S3_SECRET_BLOCK`` when set
    (`s3_credentials`), else from botocore's chain (``AWS_*`` environment, config files, roles).
    A URL or endpoint with ``user:password@`` in it is refused (`InputError`).
    """
    settings = get_settings()
    url = url or settings.output_url
    if not url or not url.strip():
        raise InputError(
            "output_url is empty; set EO_OUTPUT_URL to a folder or s3://bucket/prefix."
        )
    if has_userinfo(url):
        raise InputError(
            f"output_url {redact(url)!r} carries credentials (user:password@); remove them and "
            "supply S3 credentials as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or through "
            "EO_S3_SECRET_BLOCK."
        )
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    options: dict[str, Any] = {}
    endpoint: str | None = None
    attempts = 1
    if protocol in ("s3", "s3a"):
        endpoint = endpoint_url or settings.s3_endpoint_url
        if endpoint and has_userinfo(endpoint):
            raise InputError(
                f"EO_S3_ENDPOINT_URL {redact(endpoint)!r} carries credentials "
                "(user:password@); give the bare endpoint and supply the credentials as "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or through EO_S3_SECRET_BLOCK."
            )
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        creds = s3_credentials(settings)
        if creds is not None:
            options.update(creds.s3fs_options())
        attempts = settings.s3_max_attempts
        options["config_kwargs"] = {
            "connect_timeout": settings.s3_connect_timeout_s,
            "read_timeout": settings.s3_read_timeout_s,
            # botocore's standard mode: retries 5xx, throttling, timeouts, dropped connections
            # with exponential backoff and jitter (capped at 20 s); `total_max_attempts`
            # counts the first attempt and wins over AWS_MAX_ATTEMPTS
            "retries": {"total_max_attempts": attempts, "mode": "standard"},
        }
        bucket_and_prefix = url.split("://", 1)[1].strip("/")
        if not bucket_and_prefix:
            raise InputError(f"output_url {url!r} names no bucket; use s3://bucket/prefix.")
    elif protocol == "file":
        options["auto_mkdir"] = True
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as err:
        raise InputError(
            f"output_url {redact(url)!r}: unsupported storage ({redact(err)}); use a local path "
            "or s3://bucket/prefix."
        ) from err
    if protocol == "file":
        fs.makedirs(root, exist_ok=True)
    elif protocol in ("s3", "s3a"):
        # one retry loop, botocore's (above): s3fs's own would multiply the attempts
        fs.retries = 1
    return ObjectStore(
        fs,
        root,
        protocol="file" if protocol == "file" else protocol,
        endpoint=endpoint,
        attempts=attempts,
    )
