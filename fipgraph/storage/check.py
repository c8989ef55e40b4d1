"""Verify a store: every committed node decodes to its stored checksum; find orphaned chunks.

Orphans are chunk files no committed node points to: the weights of a node whose writer died
before its catalog commit, or leftover temp files of an interrupted chunk write. They are
harmless (the row is reused by the next append) but take space; ``repair`` deletes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from fipgraph.storage import codec
from fipgraph.storage.store import Store
from fipgraph.storage.writer import checksum


@dataclass
class CheckReport:
    n_nodes: int = 0
    bad_nodes: list[tuple[int, str]] = field(default_factory=list)  # (node_id, why)
    orphans: list[Path] = field(default_factory=list)
    removed: int = 0

    @property
    def ok(self) -> bool:
        return not self.bad_nodes and len(self.orphans) == self.removed

    def summary(self) -> str:
        lines = [f"{self.n_nodes} nodes checked, {len(self.bad_nodes)} bad, {len(self.orphans)} orphaned chunk files"
                 + (f" ({self.removed} removed)" if self.removed else "")]
        lines += [f"  node {n}: {why}" for n, why in self.bad_nodes[:20]]
        lines += [f"  orphan: {p}" for p in self.orphans[:20]]
        if len(self.orphans) > 20:
            lines.append(f"  ... and {len(self.orphans) - 20} more")
        return "\n".join(lines)


def check_store(path: str | Path, *, repair: bool = False, progress: bool = True) -> CheckReport:
    """Check every node's weights against its checksum; with repair=True delete orphaned chunks
    (chunk files holding no committed row; an uncommitted row inside a shared chunk is simply
    overwritten by the next append).

    Repair takes the writer lock, so it never races a running build (whose in-flight chunks
    would otherwise look orphaned).
    """
    report = CheckReport()
    with Store(path, "a" if repair else "r") as store:
        rows = store.sql("SELECT node_id, arch_id, row, encoding, checksum FROM storage ORDER BY node_id")
        report.n_nodes = len(rows)
        expected: set[Path] = set()
        for node_id, arch_id, row, encoding, digest in tqdm(rows.itertuples(index=False), total=len(rows),
                                                            desc="checking nodes", disable=not progress, unit="node"):
            layout = store.layout(arch_id)
            for name, (_, n_words) in codec.array_names(layout, encoding).items():
                if n_words:
                    expected.add(store.weights.chunk_dir(arch_id, name, int(row)))
            try:  # ascending ids: parents decode first, so the store's cache makes this one read per node
                actual = checksum(layout, store._decode(int(node_id)))
            except Exception as exc:  # a damaged chunk can fail to decompress: report, keep going
                report.bad_nodes.append((int(node_id), f"unreadable: {exc}"))
                continue
            if actual != digest:
                report.bad_nodes.append((int(node_id), f"checksum {actual} != stored {digest}"))
        root = store.weights.path
        for f in store.weights.chunk_files():
            rel = f.relative_to(root)
            # chunk files are c/<row>/<digits>; anything else there (an interrupted write's temp file) is an orphan
            if rel.name == "zarr.json" or (rel.parent in expected and rel.name.isdigit()):
                continue
            report.orphans.append(f)
        if repair:
            for f in report.orphans:
                f.unlink(missing_ok=True)
                report.removed += 1
    return report
