"""Nodes encoded and written where they are made: a chain writer for a process that is not the store's writer.

A Ray worker whose store is on shared storage (a bucket, or a folder every worker mounts) walks a run and
writes its own nodes' rows into the store's weights: delta coding, compression, statistics and checksum by
the same ``NodeEncoder`` the store's writer uses, so the bytes are the ones the writer would have written.
It sends the writer only a ``PrewrittenNode`` per node (its row, encoding, checksum, norms: ~0.5 KB), which
the writer commits in order with everything else (``Store.append_written``), and the name of the optimizer state
it saved beside the store (``PendingState``) where the shipped build sent the state itself. The catalog commit is still
what makes a node exist: a worker that dies after writing chunks leaves unreferenced chunk files, which
``fipgraph check`` reports and ``--repair`` removes.

Rows are reserved from the writer (``Store.reserve_rows``) in blocks aligned to the arrays' chunks, so no
two workers ever write the same chunk file. A node is written here only when it continues a plain lossless
chain (one parent of the same architecture, or none); anything else (a merge, an architecture change,
non-finite weights, a lossy store) returns None from ``prepare`` and is shipped to the writer as before.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fipgraph.errors import FipgraphError, NonFiniteWeightsError, StoreNotFoundError
from fipgraph.storage import codec
from fipgraph.storage.encoder import NodeEncoder, NodeJob
from fipgraph.storage.inputs import check_finite, model_spec_of, state_dict_of
from fipgraph.storage.layout import Layout
from fipgraph.storage.remote import RemotePath
from fipgraph.storage.sidecar import StoreFiles
from fipgraph.storage.weights import WeightArrays, _rows_per_chunk

ROWS_PER_RESERVATION = 64  # rows reserved per call to the writer (rounded up to whole chunks)
PLAIN_META = {"parent", "run", "op", "step", "metrics", "tags", "output_distance"}  # what a written node may carry


@dataclass(frozen=True)
class PrewrittenNode:
    """What the writer needs to commit a node whose rows are already written (a ``storage`` row and norms)."""

    arch_id: str
    row: int
    encoding: str
    chain_depth: int
    storage_row: tuple  # STORAGE columns as written (the node id, first, is replaced by the writer's)
    l2_norm: float
    sparsity: float
    distance: float | None  # Euclidean distance to the parent (edges.distance)
    arch_spec: dict | None = None  # with a writer's first node of an architecture (new to the store)


@dataclass(frozen=True)
class PendingState:
    """An optimizer state a worker saved beside the store (``StoreFiles.save_pending_state``) instead of
    sending it: the writer keeps this name with the node it belongs to and reads the file if a retry needs it."""

    name: str


class ChainWriter:
    """Encodes and writes the rows of one worker's nodes into the store at ``root`` (see the module docstring).

    ``settings``: ``Store.write_settings()`` of the store's writer. ``reserve(arch_id, count, align)`` reserves
    rows from it, ``chain_of(node)`` gives (architecture, chain depth, parent) of a node written elsewhere and
    ``fetch(node)`` its weights (a state dict), for the first node of a chain that continues from one."""

    def __init__(self, root: Path | RemotePath, settings: Mapping, *, reserve: Callable[[str, int, int], int],
                 chain_of: Callable[[int], tuple], fetch: Callable[[int], Mapping]) -> None:
        if not (root / "fipgraph.json").exists():
            raise StoreNotFoundError(f"this worker does not see the store at {root} (no fipgraph.json there): mount "
                                     "it at the same path on every worker, or build without shared storage "
                                     "(--no-shared-store) so that workers send their weights to the writer")
        self.root, self.settings = root, dict(settings)
        self._reserve, self._chain_of, self._fetch = reserve, chain_of, fetch
        self.weights = WeightArrays(root / "weights.zarr", read_only=False, durable=bool(settings["durable"]),
                                    compressor=settings["compressor"])
        self.files = StoreFiles(root, durable=bool(settings["durable"]))
        self.encoder = NodeEncoder(self.weights, self._read_rows, lambda node: 0.0,
                                   recent_bytes=int(settings["recent_bytes"]))
        self._chains: dict[int, tuple[str, int, int | None]] = {}  # node -> (arch, depth, parent), own nodes
        self._rows: dict[str, tuple[int, int]] = {}  # arch -> (next reserved row, end of the reservation)
        self._specs_sent: set[str] = set()
        self.written = 0

    def prepare(self, node: int, weights: Any, meta: Mapping) -> NodeJob | None:
        """Snapshot ``weights`` as node ``node`` (an id of the caller's, e.g. a pending one) for ``write``, or
        None when the node is not a plain lossless chain step (the caller then ships it to the writer)."""
        if not set(meta) <= PLAIN_META or self.settings["encoding"] != "lossless":
            return None
        state = state_dict_of(weights)
        layout = Layout.of(state)
        if not _finite(state):
            return None  # the writer raises NonFiniteWeightsError, in order, as for any node
        parent = meta.get("parent")
        depth, grandparent = 0, None
        if parent is not None:
            arch_id, parent_depth, _ = self._chain(parent)
            if arch_id != layout.arch_id:
                return None  # an architecture change: the writer checks and records it
            depth = parent_depth + 1 if parent_depth + 1 < self.settings["keyframe_every"] else 0
        row_bytes = sum(g.n_words * np.dtype(g.word).itemsize for g in layout.groups)
        encoding = codec.row_encoding("lossless", depth, 2 * row_bytes <= self.encoder.recent_bytes)
        if codec.uses_grandparent(encoding):
            grandparent = self._chain(parent)[2]
        rows = layout.pack(state, take=self.encoder.buffers.take)
        spec = None
        if layout.arch_id not in self._specs_sent:
            spec = {"params": layout.to_spec(), "model": model_spec_of(weights)}
            if layout.ties:
                spec["ties"] = layout.ties_spec()
            self._specs_sent.add(layout.arch_id)
        self._chains[node] = (layout.arch_id, depth, parent)
        return NodeJob(node, parent, grandparent, layout, rows, self._take_row(layout), encoding, depth,
                       parent is not None, {}, [], None, spec, nbytes=row_bytes)

    def write(self, jobs: list[NodeJob]) -> list[PrewrittenNode]:
        """Encode and write the prepared nodes' rows (in order: each may be the next one's parent)."""
        if not jobs:
            return []
        self.encoder.write_weights(jobs)  # durable: fsynced there, before the writer may commit them
        self.written += len(jobs)
        return [PrewrittenNode(j.layout.arch_id, j.row, j.encoding, j.chain_depth, tuple(j.storage_row),
                               j.node_row["l2_norm"], j.node_row["sparsity"], j.distance, j.arch_spec) for j in jobs]

    def save_state(self, state: Mapping) -> PendingState:
        """Write an optimizer state beside the store; the writer gets only its name."""
        name = uuid.uuid4().hex
        self.files.save_pending_state(name, state)
        return PendingState(name)

    def close(self) -> None:
        self.weights.close()

    def _chain(self, node: int) -> tuple[str, int, int | None]:
        if node not in self._chains:
            self._chains[node] = tuple(self._chain_of(node))
        return self._chains[node]

    def _read_rows(self, node: int) -> dict[str, np.ndarray]:
        """The decoded rows of a parent this writer did not write (the start of a chain: once per run)."""
        state = self._fetch(node)
        return Layout.of(state).pack(state)

    def _take_row(self, layout: Layout) -> int:
        """The next reserved row of the architecture, reserving another block (whole chunks) when used up."""
        row, end = self._rows.get(layout.arch_id, (0, 0))
        if row >= end:
            align = max(self._rows_per_chunk(layout.arch_id, name, dtype, n)
                        for name, (dtype, n) in codec.array_names(layout, "key").items())
            count = -(-ROWS_PER_RESERVATION // align) * align
            row = self._reserve(layout.arch_id, count, align)
            if not isinstance(row, int) or row % align:
                raise FipgraphError(f"the writer reserved rows from {row!r}, not a multiple of {align}")
            end = row + count
        self._rows[layout.arch_id] = (row + 1, end)
        return row

    def _rows_per_chunk(self, arch_id: str, name: str, dtype: Any, n_words: int) -> int:
        if self.weights.has_array(arch_id, name):
            return self.weights.meta(arch_id, name).rows_per_chunk
        return _rows_per_chunk(n_words * np.dtype(dtype).itemsize) if n_words else 1


def _finite(state: Mapping) -> bool:
    try:
        check_finite(state)
    except NonFiniteWeightsError:
        return False
    return True

