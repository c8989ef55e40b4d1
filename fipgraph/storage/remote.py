"""Stores on object storage: URLs (s3://bucket/prefix, gs://, az://, file://, memory://) through fsspec.

A store's location is either a local ``Path`` or a ``RemotePath``: the few path operations the storage layer
uses (``/``, exists, read/write bytes, list, remove), done with the URL's fsspec filesystem, so the code that
reads and writes chunk files is the same for both. Zarr opens the same location with its own FsspecStore.

Credentials and endpoint come from ``storage_options`` or the standard environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION, which botocore reads itself). They are kept inside the
filesystem object only: never in a repr, a message or anything written to the store (``redact`` scrubs any
message that passes through here, in case a library quotes one).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any, Iterator

from fipgraph.errors import RemoteStoreError

PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
            "abfss": "adlfs"}  # the pip package that gives fsspec each scheme
SECRET_WORDS = ("secret", "token", "password", "key", "credential", "sas")
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AZURE_STORAGE_KEY",
              "AZURE_STORAGE_SAS_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS")
PROBE_CONFIG = {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}}  # an endpoint that
# does not answer fails in seconds, not after botocore's default backoff of minutes


def is_url(path: Any) -> bool:
    """True for a store location given as a URL with a scheme (``s3://...``), or a RemotePath."""
    return isinstance(path, RemotePath) or (isinstance(path, str) and "://" in path)


def as_location(path: Any) -> Any:
    """A store location for code that used to write ``Path(store_dir)``: URLs stay strings."""
    return path if is_url(path) else Path(path)


def cache_dir(url: str) -> Path:
    """This machine's working folder for the store at ``url`` (the writer's catalog copy, the build log)."""
    base = Path(os.environ.get("FIPGRAPH_CACHE", Path.home() / ".cache" / "fipgraph")) / "remote"
    return base / hashlib.sha256(str(url).rstrip("/").encode()).hexdigest()[:16]


def redact(text: str, options: dict | None = None) -> str:
    """``text`` with every credential value from ``options`` and the environment replaced by ***."""
    secrets = [os.environ.get(name, "") for name in SECRET_ENV]
    for key, value in _flat(options or {}):
        if any(w in key.lower() for w in SECRET_WORDS) and isinstance(value, str):
            secrets.append(value)
    for s in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def _flat(options: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in options.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _fs_options(protocol: str, options: dict) -> dict:
    """storage_options as the filesystem takes them: for S3 an ``endpoint_url``/``region`` at the top
    level (or AWS_ENDPOINT_URL) goes into client_kwargs, and connections time out in seconds."""
    opts = {k: v for k, v in options.items()}
    if protocol in ("s3", "s3a"):
        client = dict(opts.pop("client_kwargs", {}) or {})
        endpoint = opts.pop("endpoint_url", None) or client.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            client["endpoint_url"] = endpoint
        region = opts.pop("region", None) or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region and "region_name" not in client:
            client["region_name"] = region
        opts["client_kwargs"] = client
        opts["config_kwargs"] = {**PROBE_CONFIG, **(opts.get("config_kwargs") or {})}
        opts.setdefault("use_listings_cache", False)  # a reader must see chunks written after its last listing
    opts.setdefault("skip_instance_cache", True)
    return opts


def split_url(url: str) -> tuple[str, str]:
    """(scheme, path without the scheme) of a store URL; user:password@ in a URL is refused."""
    protocol, _, rest = str(url).partition("://")
    host = rest.split("/", 1)[0]
    if "@" in host:
        raise RemoteStoreError(f"store URL {protocol}://***@{rest.split('@', 1)[1]} carries credentials; put them in "
                               "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or storage_options instead")
    return protocol.lower(), rest.rstrip("/")


def resolve(path: Any, storage_options: dict | None = None) -> "Path | RemotePath":
    """A store location: a folder (a plain path, or a file:// URL) as a Path, any other URL as a RemotePath
    (checked: see open_location)."""
    if isinstance(path, (RemotePath, Path)):
        return path
    if not is_url(path):
        return Path(path)
    protocol, rest = split_url(path)
    if protocol in ("file", "local"):  # a folder: the local store's flock and atomic renames, not an emulation
        return Path(rest or "/")
    return open_location(path, storage_options)


def open_location(url: str, storage_options: dict | None = None, *, probe: bool = True) -> "RemotePath":
    """The RemotePath of ``url``; checks that its filesystem is installed and (``probe``) that the bucket
    answers with these credentials, so a bad URL fails before anything is written."""
    protocol, path = split_url(url)
    options = dict(storage_options or {})
    try:
        import fsspec

        fs = fsspec.filesystem(protocol, **_fs_options(protocol, options))
    except (ImportError, ValueError) as exc:
        package = PACKAGES.get(protocol)
        fix = f"pip install {package}" if package else "use s3://, gs://, az://, file:// or a local folder"
        raise RemoteStoreError(f"no filesystem for store URL {protocol}://{path} ({redact(str(exc), options)}); "
                               f"{fix}") from None
    location = RemotePath(fs, path, protocol, options)
    if probe:
        _probe(location)
    return location


def _probe(location: "RemotePath") -> None:
    """One cheap request to the bucket: missing bucket, refused credentials and a silent endpoint each
    give their own message, naming the URL and the fix."""
    fs, bucket = location.fs, location.path.split("/", 1)[0]
    try:
        if hasattr(fs, "call_s3"):
            fs.call_s3("head_bucket", Bucket=bucket)
        elif location.protocol not in ("file", "local", "memory"):
            fs.info(bucket)
    except FileNotFoundError:
        raise RemoteStoreError(f"bucket {bucket!r} of store {location} does not exist; create it first "
                               f"(e.g. `aws s3 mb s3://{bucket}`) or check the URL") from None
    except PermissionError as exc:
        raise RemoteStoreError(f"store {location}: access refused ({redact(str(exc), location.options)}); check the "
                               "credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or storage_options key/secret)"
                               ) from None
    except Exception as exc:  # connection refused, timeouts, DNS: the endpoint does not answer
        endpoint = (location.options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or "the default endpoint")
        raise RemoteStoreError(f"store {location}: {endpoint} does not answer ({type(exc).__name__}: "
                               f"{redact(str(exc), location.options)}); check AWS_ENDPOINT_URL / storage_options "
                               "endpoint_url and that the server runs") from None


class RemotePath:
    """A file or folder of a store on an fsspec filesystem, with the pathlib methods the storage layer uses.

    Object stores have no folders: ``mkdir`` does nothing, and a write of one object is atomic (a reader
    sees the old object or the new one), which is what the temp-file-and-rename does on a local disk."""

    def __init__(self, fs: Any, path: str, protocol: str, options: dict | None = None, size: int | None = None) -> None:
        # the filesystem's own spelling of the path (memory:// roots it at "/"), so listings compare equal
        self.fs, self.path, self.protocol = fs, fs._strip_protocol(path).rstrip("/"), protocol
        self._options = options or {}  # credentials: kept here, never shown
        self._size = size  # known from a listing: stat() needs no request

    @property
    def options(self) -> dict:
        return self._options

    def __truediv__(self, other: Any) -> "RemotePath":
        return RemotePath(self.fs, posixpath.join(self.path, str(other)), self.protocol, self._options)

    def __str__(self) -> str:
        return f"{self.protocol}://{self.path.lstrip('/')}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, RemotePath) and (self.protocol, self.path) == (other.protocol, other.path)

    def __hash__(self) -> int:
        return hash((self.protocol, self.path))

    def __lt__(self, other: "RemotePath") -> bool:
        return self.path < other.path

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(self.fs, posixpath.dirname(self.path), self.protocol, self._options)

    def with_suffix(self, suffix: str) -> "RemotePath":
        return RemotePath(self.fs, str(PurePosixPath(self.path).with_suffix(suffix)), self.protocol, self._options)

    def relative_to(self, other: "RemotePath") -> PurePosixPath:
        return PurePosixPath(self.path).relative_to(other.path)

    def resolve(self) -> "RemotePath":
        return self

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def is_file(self) -> bool:
        return self._size is not None or self.fs.isfile(self.path)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.path)

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> int:
        self.fs.pipe_file(self.path, bytes(data) if not isinstance(data, bytes) else data)
        return len(data)

    def write_text(self, text: str) -> int:
        return self.write_bytes(text.encode())

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: an object store has no folders."""

    def stat(self) -> SimpleNamespace:
        size = self._size if self._size is not None else self.fs.info(self.path)["size"]
        return SimpleNamespace(st_size=int(size))

    def _child(self, info: dict) -> "RemotePath":
        return RemotePath(self.fs, info["name"], self.protocol, self._options,
                          size=info.get("size") if info.get("type") == "file" else None)

    def iterdir(self) -> list["RemotePath"]:
        try:
            return [self._child(i) for i in self.fs.ls(self.path, detail=True) if i["name"].rstrip("/") != self.path]
        except FileNotFoundError:
            return []

    def glob(self, pattern: str) -> list["RemotePath"]:
        """Only ``*`` (the files of this folder) is used by the storage layer."""
        if pattern != "*":
            raise ValueError(f"RemotePath.glob supports '*' only, got {pattern!r}")
        return [p for p in self.iterdir() if p._size is not None]

    def rglob(self, pattern: str) -> list["RemotePath"]:
        """Every file below this folder (``*`` only)."""
        if pattern != "*":
            raise ValueError(f"RemotePath.rglob supports '*' only, got {pattern!r}")
        try:
            found = self.fs.find(self.path, detail=True)
        except FileNotFoundError:
            return []
        return [self._child(i) for i in found.values() if i.get("type") == "file"]

    def remove_tree(self) -> None:
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)


def atomic_write(path: Path | RemotePath, data: bytes) -> int:
    """Write ``data`` so that a reader (or a crash) sees the old file or the new one, never a part:
    a temp file renamed over the name on a disk, one PUT on an object store."""
    if isinstance(path, RemotePath):
        return path.write_bytes(data)
    import uuid

    tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")  # zarr's own temp-file name pattern
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(data)
