"""Verify a store: every committed node decodes to its stored checksum; find orphaned chunks.

A damaged node (a chunk missing, truncated or changed) is reported with why; the nodes delta-coded
against it (its descendants within the same keyframe interval) cannot be read either and are
reported as its dependents. Nothing damaged is ever deleted: a damaged node's chunks stay where
they are, so a backup of the files named can be copied back in.

Orphans are chunk files no committed node points to: the weights of a node whose writer died
before its catalog commit, or leftover temp files of an interrupted chunk write. They are
harmless (the row is reused by the next append) but take space; ``repair`` deletes them, and only
them: a file is deleted only if no committed node's row lives in its chunk folder, or if its name
is not a chunk name at all.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
from tqdm.auto import tqdm

from fipgraph.errors import CorruptNodeError, StoreNotFoundError
from fipgraph.storage import codec
from fipgraph.storage.catalog import attach_read_only
from fipgraph.storage.layout import Layout
from fipgraph.storage.remote import RemotePath, resolve
from fipgraph.storage.published import acquire_writer, fetch_snapshot
from fipgraph.storage.reader import NodeInfo, RowReader
from fipgraph.storage.weights import WeightArrays

# The check reads the catalog and the chunk files with the storage layer's own reader, not through
# a Store: it needs neither torch, pandas nor NetworkX, so `fipgraph check` answers in a fraction
# of the time a Store takes to import (RESULTS.md, issue 13).


@dataclass
class CheckReport:
    n_nodes: int = 0
    bad_nodes: list[tuple[int, str]] = field(default_factory=list)  # (node_id, why): its own chunks are damaged
    dependents: dict[int, list[int]] = field(default_factory=dict)  # damaged node -> nodes decoded from it
    orphans: list[Path] = field(default_factory=list)
    removed: int = 0

    @property
    def ok(self) -> bool:
        return not self.bad_nodes and len(self.orphans) == self.removed

    @property
    def unreadable(self) -> list[int]:
        """Every node whose weights cannot be read: the damaged ones and their dependents."""
        return sorted({n for n, _ in self.bad_nodes} | {d for ds in self.dependents.values() for d in ds})

    def summary(self) -> str:
        n_dep = sum(len(d) for d in self.dependents.values())
        lines = [f"{self.n_nodes} nodes checked, {len(self.bad_nodes)} damaged, {n_dep} more unreadable because they "
                 f"are delta-coded against a damaged node, {len(self.orphans)} orphaned chunk files"
                 + (f" ({self.removed} removed)" if self.removed else "")]
        for n, why in self.bad_nodes[:20]:
            deps = self.dependents.get(n, [])
            lines.append(f"  node {n}: {why}")
            if deps:
                shown = ", ".join(map(str, deps[:20])) + (f" ... ({len(deps)} in all)" if len(deps) > 20 else "")
                lines.append(f"    nodes depending on it: {shown}")
        if len(self.bad_nodes) > 20:
            lines.append(f"  ... and {len(self.bad_nodes) - 20} more damaged nodes")
        if self.bad_nodes:
            lines.append("  damaged nodes are kept as they are (never deleted); restore their chunk files from a "
                         "backup, or re-create the nodes")
        lines += [f"  orphan: {p}" for p in self.orphans[:20]]
        if len(self.orphans) > 20:
            lines.append(f"  ... and {len(self.orphans) - 20} more")
        return "\n".join(lines)


def _catalog_rows(root: Path | RemotePath) -> tuple[dict[int, NodeInfo], dict[str, Layout]]:
    """Every committed node's storage row and every architecture, read from a snapshot of the catalog
    (on object storage: the latest published one)."""
    import tempfile

    con = duckdb.connect(":memory:")
    tmp = tempfile.TemporaryDirectory(prefix="fipgraph-check-")  # the downloaded snapshot (object storage)
    try:
        attach_read_only(con, fetch_snapshot(root, Path(tmp.name)) if isinstance(root, RemotePath) else root / "metrics.duckdb")
        rows = con.execute(
            "SELECT s.node_id, n.parent_id, s.arch_id, s.row, s.encoding, s.chain_depth, n.path_length, s.checksum "
            "FROM src.storage s JOIN src.nodes n USING (node_id) ORDER BY s.node_id").fetchall()
        archs = con.execute("SELECT arch_id, spec FROM src.archs").fetchall()
    finally:
        con.close()
        tmp.cleanup()
    layouts = {arch_id: Layout.from_arch_spec(spec) for arch_id, spec in archs}
    return {int(r[0]): NodeInfo(*r[1:]) for r in rows}, layouts


def check_store(path: str | Path, *, repair: bool = False, progress: bool = True,
                storage_options: dict | None = None) -> CheckReport:
    """Check every node's weights against its checksum; with repair=True delete orphaned chunks
    (chunk files holding no committed row; an uncommitted row inside a shared chunk is simply
    overwritten by the next append).

    Repair takes the writer lock, so it never races a running build (whose in-flight chunks
    would otherwise look orphaned); on object storage it takes the writer's lease.
    """
    root = resolve(path, storage_options)
    if not (root / "fipgraph.json").is_file():
        raise StoreNotFoundError(f"no store at {root} (no fipgraph.json: not a fipgraph store); pass the folder of "
                                 "an existing store")
    report = CheckReport()
    with ExitStack() as stack:
        if repair:
            stack.callback(acquire_writer(root).release)
        index, layouts = _catalog_rows(root)
        weights = WeightArrays(root / "weights.zarr", read_only=True)
        reader = RowReader(weights, layouts.__getitem__, index.__getitem__, root)
        report.n_nodes = len(index)
        expected: set[Path] = set()
        for node_id, info in tqdm(index.items(), total=len(index), desc="checking nodes", disable=not progress,
                                  unit="node"):
            for name, (_, n_words) in codec.array_names(layouts[info.arch_id], info.encoding).items():
                if n_words:
                    expected.add(weights.chunk_dir(info.arch_id, name, int(info.row)))
            try:  # ascending ids: parents decode first, so the reader's cache makes this one read per node
                reader.decode(node_id)  # verifies every row of the chain against its checksum
            except CorruptNodeError as exc:
                if exc.damaged_node == node_id:
                    files = ", ".join(exc.files[:3]) + (" ..." if len(exc.files) > 3 else "")
                    report.bad_nodes.append((node_id, f"{exc.reason} (files: {files})"))
                else:
                    report.dependents.setdefault(exc.damaged_node, []).append(node_id)
        report.orphans = _orphans(weights, expected)
        if repair:
            for f in report.orphans:
                f.unlink(missing_ok=True)
                report.removed += 1
    return report


def _orphans(weights: WeightArrays, expected: set[Path]) -> list[Path]:
    root = weights.path
    orphans = []
    for f in weights.chunk_files():
        rel = f.relative_to(root)
        # chunk files are c/<row>/<digits>; anything else there (an interrupted write's temp file) is an orphan
        if rel.name == "zarr.json" or (rel.parent in expected and rel.name.isdigit()):
            continue
        orphans.append(f)
    return orphans
