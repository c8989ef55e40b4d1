"""The catalog of a store on object storage: a local working copy, published as whole-file snapshots.

DuckDB cannot write a database file on S3, so the one writer keeps ``metrics.duckdb`` on its local disk
(in ``remote.cache_dir(url)``) and, after every commit, uploads the checkpointed file as
``<store>/metrics.duckdb``: one PUT, so a reader gets the previous snapshot or the new one, never a mix.
The writer's commits already space out so that a commit (now: commit + upload) takes at most a tenth
of its time (writer.COMMIT_COST_SHARE), so publishing needs no interval of its own.

Why one DuckDB file rather than Parquet per table: the catalog is small beside the weights (about
0.5 KB per node), every table of a snapshot must be of the same instant (one object is; several
Parquet files would need a manifest read and written in order), and readers already copy the whole
catalog into memory per change (catalog.Catalog._mirror_connection). The cost: a reader fetches the
whole catalog, not only the columns it queries.

Chunks are written before the local commit, and the snapshot is uploaded after it, so a remote reader
never sees a node whose weights are not in the bucket.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fipgraph.storage.catalog import Catalog
from fipgraph.storage.remote import RemotePath

CATALOG = "metrics.duckdb"
REFRESH_SECONDS = 1.0  # a reader asks the bucket whether a newer snapshot exists at most this often


def download(remote: RemotePath, local: Path) -> bool:
    """Copy ``remote`` to ``local`` atomically; False (and ``local`` removed) when there is none."""
    try:
        data = remote.read_bytes()
    except FileNotFoundError:
        local.unlink(missing_ok=True)
        return False
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(local.name + ".download")
    tmp.write_bytes(data)
    os.replace(tmp, local)
    return True


def fetch_snapshot(root: RemotePath, folder: Path) -> Path:
    """The latest published catalog of the store at ``root``, downloaded into ``folder``."""
    local = Path(folder) / CATALOG
    if not download(root / CATALOG, local):
        raise FileNotFoundError(f"store {root} has no published catalog ({CATALOG})")
    return local


class PublishedCatalog(Catalog):
    """The writer's catalog: commits go to the local copy, then the whole file goes to the bucket."""

    def __init__(self, local: Path, root: RemotePath, lease, *, extra: tuple = (), **options) -> None:
        super().__init__(local, read_only=False, **options)
        self.remote, self.lease = root / CATALOG, lease
        self.extra = list(extra)  # (local file, remote file) pairs uploaded when they grew: the build log
        self._sizes: dict[Path, int] = {}

    def pull(self) -> bool:
        """Start from the latest published snapshot (the bucket, not this machine, is the truth)."""
        self.path.with_name(self.path.name + ".wal").unlink(missing_ok=True)
        return download(self.remote, self.path)

    def reset(self) -> None:
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            p.unlink(missing_ok=True)

    def create(self) -> None:
        super().create()
        self.publish()

    def commit(self, batch) -> None:
        super().commit(batch)
        self.publish()

    def publish(self) -> None:
        """Upload a consistent copy of the catalog (and the build log if it grew)."""
        self.lease.check()
        with self._local:
            if self.path.with_name(self.path.name + ".wal").exists():
                with self.connect() as con:
                    con.execute("CHECKPOINT")  # fold the log into the file: the upload is then complete
            data = self.path.read_bytes()
        self.remote.write_bytes(data)
        self.publish_extra()

    def publish_extra(self) -> None:
        for local, remote in self.extra:
            size = local.stat().st_size if local.exists() else 0
            if size and size != self._sizes.get(local):
                remote.write_bytes(local.read_bytes())
                self._sizes[local] = size


class SnapshotCatalog(Catalog):
    """A reader's catalog: the latest published snapshot, fetched again when the bucket holds a newer one."""

    def __init__(self, local: Path, root: RemotePath, *, refresh: float = REFRESH_SECONDS, **options) -> None:
        super().__init__(local, read_only=True, **options)
        self.remote, self.refresh = root / CATALOG, refresh
        self._tag, self._checked = None, float("-inf")

    def pull(self) -> None:
        with self._local:  # one download at a time (queries and the UI's change checks run on several threads)
            if time.monotonic() - self._checked < self.refresh:
                return
            info = self.remote.fs.info(self.remote.path)
            tag = info.get("ETag") or (info.get("size"), str(info.get("LastModified") or info.get("mtime")))
            if tag != self._tag:
                download(self.remote, self.path)
                self._tag = tag
            self._checked = time.monotonic()

    def _file_state(self) -> tuple:
        self.pull()
        return (self._tag,)


def open_catalog(root, mode: str, lease, *, lock_timeout: float, durable: bool):
    """(catalog, temp folder to remove at close or None) of the store at ``root``: the catalog file itself
    for a local store; for one on object storage, the writer's published working copy (kept in
    ``cache_dir(url)``, beside the build log, which starts from the bucket's copy) or a reader's snapshot."""
    if not isinstance(root, RemotePath):
        return Catalog(root / CATALOG, read_only=mode == "r", lock_timeout=lock_timeout, durable=durable), None
    from fipgraph.storage.remote import cache_dir
    from fipgraph.storage.sidecar import BUILD_LOG

    if mode == "a":
        work = cache_dir(str(root))
        (work / "writer").mkdir(parents=True, exist_ok=True)
        download(root / BUILD_LOG, work / BUILD_LOG)  # the log goes on where the last writer left it
        catalog = PublishedCatalog(work / "writer" / CATALOG, root, lease, extra=((work / BUILD_LOG, root / BUILD_LOG),),
                                   lock_timeout=lock_timeout)
        return catalog, None
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="fipgraph-reader-")
    return SnapshotCatalog(Path(tmp.name) / CATALOG, root, lock_timeout=lock_timeout), tmp


def acquire_writer(root, lease_ttl: float | None = None):
    """The single-writer guard: an flock on a local store, a lease object on object storage."""
    if isinstance(root, RemotePath):
        from fipgraph.storage.lease import Lease

        return Lease(root / "writer.lease", lease_ttl).acquire()
    from fipgraph.storage.lock import WriterLock

    root.mkdir(parents=True, exist_ok=True)
    return WriterLock(root / "writer.lock").acquire()
