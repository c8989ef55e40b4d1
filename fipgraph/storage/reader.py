"""Reading nodes: decode a delta chain from its keyframe, verifying every row it decodes.

A node's row is trusted only after three checks: every chunk file it needs exists (zarr would
silently hand back the fill value for a missing chunk), the chunks decompress, and the decoded
bits hash to the xxh3-128 checksum committed with the node. A row that fails any of them raises
CorruptNodeError; since every later node of the chain is decoded from it, so do they.

Decoded rows are kept in an LRU cache bounded in bytes, so reading node after node down a chain
decodes one row per node, and a large model never holds more than ``cache_bytes`` of old rows (or
the two newest rows, if larger: the parent and grandparent a chain continues from).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import xxhash

from fipgraph.errors import CorruptNodeError
from fipgraph.storage import codec
from fipgraph.storage.layout import Layout
from fipgraph.storage.options import DEFAULT_CACHE_BYTES
from fipgraph.storage.remote import RemotePath
from fipgraph.storage.weights import WeightArrays



@dataclass(slots=True)
class NodeInfo:
    parent_id: int | None
    arch_id: str
    row: int
    encoding: str
    chain_depth: int
    path_length: float | None
    checksum: str | None = None  # None only for this writer's own nodes before their commit


def checksum(layout: Layout, rows: Mapping[str, np.ndarray]) -> str:
    """xxh3-128 of a node's decoded bits, group by group (~10x faster than blake2b; it detects
    corruption, which is all it is for)."""
    h = xxhash.xxh3_128()
    for g in layout.groups:
        h.update(np.ascontiguousarray(rows[g.dtype]).view(np.uint8))
    return h.hexdigest()


def _nbytes(rows: Mapping[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in rows.values())


class RowReader:
    """Decodes and verifies nodes' rows; thread-safe (the background writer reads parents through it)."""

    def __init__(self, weights: WeightArrays, layout_of: Callable[[str], Layout],
                 info_of: Callable[[int], NodeInfo], store_root: Path, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 verify: bool = True) -> None:
        self.weights, self.layout_of, self.info_of, self.store_root = weights, layout_of, info_of, store_root
        self.cache_bytes, self.verify = cache_bytes, verify
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.RLock()

    def decode(self, node_id: int) -> dict[str, np.ndarray]:
        """Decoded rows of a node: walk up to its keyframe (at most keyframe_every rows), then decode
        down, starting below the deepest two consecutive ancestors already cached."""
        with self._lock:
            cache = self._cache
            if node_id in cache:
                cache.move_to_end(node_id)
                return cache[node_id]
            chain = [(node_id, self.info_of(node_id))]
            while chain[-1][1].chain_depth > 0:
                parent = chain[-1][1].parent_id
                chain.append((parent, self.info_of(parent)))
            chain.reverse()  # keyframe first
            start, parent, grandparent = 0, None, None
            for i in range(len(chain) - 2, -1, -1):  # resume below the deepest cached ancestor that suffices
                if chain[i][0] not in cache:
                    continue
                before = cache.get(chain[i - 1][0]) if i > 0 else None
                if before is not None or not codec.uses_grandparent(chain[i + 1][1].encoding):
                    start, parent, grandparent = i + 1, cache[chain[i][0]], before
                    break
            for nid, info in chain[start:]:
                rows = self._decode_row(node_id, nid, info, parent, grandparent)
                grandparent, parent = parent, rows
                self._remember(nid, rows)
            return parent

    def _remember(self, node_id: int, rows: dict) -> None:
        if node_id in self._cache:
            return
        self._cache[node_id] = rows
        self._cached_bytes += _nbytes(rows)
        # the two newest rows stay even over the bound: they are the parent and grandparent the next node
        # of a chain decodes from (without them, reading a chain of large nodes in order would decode
        # from the keyframe for every node: quadratic time)
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 2:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= _nbytes(old)

    def forget(self, node_id: int) -> None:
        with self._lock:
            rows = self._cache.pop(node_id, None)
            if rows is not None:
                self._cached_bytes -= _nbytes(rows)

    def _files(self, info: NodeInfo) -> dict[str, list[Path]]:
        names = codec.array_names(self.layout_of(info.arch_id), info.encoding)
        return {name: self.weights.row_files(info.arch_id, name, info.row) for name, (_, n) in names.items() if n}

    def check_files(self, wanted: int, node_id: int, info: NodeInfo) -> None:
        """Raise CorruptNodeError if a chunk file of the node's row is missing (zarr would read zeros)."""
        files = self._files(info)
        missing = [str(f) for fs in files.values() for f in fs if not f.is_file()]
        if missing:
            raise self._corrupt(wanted, node_id, files, f"chunk file {missing[0]} is missing"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))

    def read_slice(self, wanted: int, node_id: int, info: NodeInfo, name: str, lo: int, hi: int) -> np.ndarray:
        """Words lo..hi of one stored array's row (only the chunks overlapping them are read)."""
        try:
            return self.weights.read_words(info.arch_id, name, info.row, lo, hi)
        except Exception as exc:  # truncated or scrambled compressed bytes
            raise self._corrupt(wanted, node_id, self._files(info),
                                f"its chunks do not decompress ({type(exc).__name__}: {exc})") from exc

    def corrupt_hash(self, wanted: int, node_id: int, info: NodeInfo, actual: str) -> CorruptNodeError:
        return self._corrupt(wanted, node_id, self._files(info),
                             f"its decoded weights hash to {actual}, not the {info.checksum} committed with it")

    def _decode_row(self, wanted: int, node_id: int, info: NodeInfo, parent, grandparent) -> dict[str, np.ndarray]:
        layout = self.layout_of(info.arch_id)
        names = codec.array_names(layout, info.encoding)
        # on a bucket each look is a request: rows fipgraph reads itself raise on a missing object anyway,
        # so there the files are looked for only when a read fails (to name the missing one)
        look_first = not (isinstance(self.weights.path, RemotePath)
                          and all(self.weights.meta(info.arch_id, n).direct for n, (_, k) in names.items() if k))
        if look_first:
            self.check_files(wanted, node_id, info)
        try:
            stored = self.weights.read_row(info.arch_id, info.row, names)
        except Exception as exc:  # truncated or scrambled compressed bytes
            if not look_first and isinstance(exc, FileNotFoundError):
                self.check_files(wanted, node_id, info)
            raise self._corrupt(wanted, node_id, self._files(info),
                                f"its chunks do not decompress ({type(exc).__name__}: {exc})") from exc
        rows = codec.decode_step(layout, stored, parent, grandparent, info.encoding)
        if self.verify and info.checksum is not None:
            actual = checksum(layout, rows)
            if actual != info.checksum:
                raise self.corrupt_hash(wanted, node_id, info, actual)
        return rows

    def cached(self, node_id: int) -> dict[str, np.ndarray] | None:
        with self._lock:
            return self._cache.get(node_id)

    def _corrupt(self, wanted: int, node_id: int, files: dict[str, list[Path]], why: str) -> CorruptNodeError:
        arrays = [f"{self.info_of(node_id).arch_id}/{n}" for n in files]
        paths = [str(f) for fs in files.values() for f in fs]
        shown = ", ".join(paths[:3]) + (f" (+{len(paths) - 3} more)" if len(paths) > 3 else "")
        via = "" if wanted == node_id else f"node {wanted} is delta-coded against damaged node {node_id}: "
        return CorruptNodeError(
            f"{via}node {node_id} is damaged: {why}. Array(s) {', '.join(arrays)}; file(s) {shown}. "
            f"No weights were returned. Run `fipgraph check --store {self.store_root}` to list every damaged "
            "node and the nodes that depend on it.",
            node_id=wanted, damaged_node=node_id, arrays=arrays, files=paths, reason=why)
