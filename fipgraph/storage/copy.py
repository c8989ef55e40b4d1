"""Copy a whole store between a folder and object storage (``fipgraph store push|pull``), bit for bit.

Both ends are held for the copy: the source under its writer lock (or lease), so no build changes it
meanwhile, and the destination too. A local source's catalog is checkpointed first, so its one file holds
every commit (a store on object storage holds a published, checkpointed snapshot already). The marker
(fipgraph.json) is copied last: an interrupted copy leaves a destination that is no store yet, and the
next copy simply writes over it.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fipgraph.errors import FipgraphError, StoreNotFoundError
from fipgraph.storage.published import CATALOG, acquire_writer
from fipgraph.storage.remote import RemotePath, atomic_write, resolve

MARKER = "fipgraph.json"
SKIP = {"writer.lock", "writer.lease", CATALOG + ".wal"}  # guards of the source, a log folded in by the checkpoint


@dataclass
class CopyReport:
    files: int = 0
    bytes: int = 0


def location(path, storage_options: dict | None = None) -> Path | RemotePath:
    return resolve(path, storage_options)


def _files(root: Path | RemotePath) -> dict[PurePosixPath, Path | RemotePath]:
    found = root.rglob("*")
    return {PurePosixPath(*f.relative_to(root).parts): f for f in found if f.is_file()}


def _checkpoint(root: Path) -> None:
    import duckdb

    con = duckdb.connect(str(root / CATALOG))
    try:
        con.execute("CHECKPOINT")
    finally:
        con.close()


def copy_store(source, dest, *, storage_options: dict | None = None, lease_ttl: float | None = None) -> CopyReport:
    """Copy the store at ``source`` to ``dest`` (each a folder or a URL); refuses a destination that holds
    a store already, or other files. ``storage_options`` apply to whichever end is a URL."""
    src, dst = location(source, storage_options), location(dest, storage_options)
    if not (src / MARKER).is_file():
        raise StoreNotFoundError(f"no store at {src} (no {MARKER}); pass the folder or URL of an existing store")
    if (dst / MARKER).exists():
        raise FipgraphError(f"{dst} holds a store already; copy into a new folder or prefix (or remove it first)")
    report = CopyReport()
    with ExitStack() as stack:
        stack.callback(acquire_writer(src, lease_ttl).release)
        stack.callback(acquire_writer(dst, lease_ttl).release)
        if isinstance(src, Path):
            _checkpoint(src)
        files = {rel: f for rel, f in _files(src).items() if rel.name not in SKIP or len(rel.parts) > 1}
        stray = [str(rel) for rel in _files(dst) if rel.parts[0] not in {p.parts[0] for p in files} | SKIP]
        if stray:
            raise FipgraphError(f"{dst} is not empty (found {stray[:5]}); copy into an empty folder or prefix")
        for rel in sorted(files, key=lambda r: (r.name == MARKER, r.name == CATALOG, str(r))):  # marker last
            data = files[rel].read_bytes()
            target = dst / str(rel)
            if isinstance(target, Path):
                target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, data)
            report.files += 1
            report.bytes += len(data)
    return report
