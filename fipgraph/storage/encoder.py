"""Encoding and writing nodes' weights: residual to the lineage, statistics, checksum, chunk files.

The store's background writer (storage/writer.py) does this for every node before it commits the catalog
rows; a Ray worker on shared storage does it for its own nodes (storage/prewrite.py) and sends the writer
only the rows. One class, so both write the same bytes: ``NodeEncoder.write_weights(jobs)`` encodes each
node against its parent's (and grandparent's) decoded rows, kept in memory for the last few nodes, and
fills in its storage row (checksum, bytes), norms and distance.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fipgraph.storage import codec
from fipgraph.storage.buffers import BufferPool
from fipgraph.storage.chunks import submit_chunks
from fipgraph.storage.layout import Layout
from fipgraph.storage.options import DEFAULT_RECENT_BYTES
from fipgraph.storage.reader import checksum
from fipgraph.storage.weights import WeightArrays


@dataclass
class NodeJob:
    node_id: int
    parent_id: int | None
    grandparent_id: int | None  # used by the "pred" encoding
    layout: Layout
    rows: dict[str, np.ndarray]
    row: int
    encoding: str
    chain_depth: int
    same_arch_as_parent: bool
    node_row: dict[str, Any]  # nodes columns known at append time
    evals: list[tuple]
    output_distance: float | None
    arch_spec: dict | None  # set when this arch is new to the catalog
    nbytes: int = 0
    tolerance: float | None = None  # encoding="bounded": max error / RMS step per tensor
    parent_rows: list[tuple] = field(default_factory=list)  # NODE_PARENT_COLUMNS rows of a node with several parents
    other_parents: list[int] = field(default_factory=list)  # its parents after the first, of its architecture
    other_distances: list = field(default_factory=list)  # Euclidean distance to each of them (set when written)
    written: Any = None  # a PrewrittenNode: encoded and written elsewhere (storage/prewrite.py), rows only


RECENT_MAX_NODES = 4

STREAM_BYTES = 64 << 20  # lossless nodes above this are encoded and written a few chunks at a time
CHUNKS_PER_WRITE = 2  # chunks zarr compresses concurrently per call (two cores here)

IMMEDIATE_BYTES = 1 << 18  # nodes this large are written as soon as they are encoded (one chunk file per
# row: batching them saves nothing), so their residual lives in one reused buffer, not one per queued node

STATS_BLOCK = 1 << 16  # float64 elements per block: 512 KiB buffers stay in L2; whole-tensor float64
# temporaries cost 15-20 ms per 1M-param node in page faults and memory traffic, blocks 4 ms (measured)


_scratch = threading.local()  # per-thread float64 blocks of float_stats


def float_stats(layout: Layout, rows: dict[str, np.ndarray], parent: dict[str, np.ndarray] | None) -> tuple[float, float, float | None]:
    """(L2 norm, fraction of exact zeros, Euclidean distance to parent) over floating-point params,
    accumulated in float64, in one blocked pass over reused buffers."""
    xs = layout.float_tensors(rows)
    ps = layout.float_tensors(parent) if parent is not None else [None] * len(xs)
    n = sum(x.numel() for x in xs)
    if getattr(_scratch, "x64", None) is None:  # reused: fresh 512 KiB buffers fault in pages every node
        _scratch.x64, _scratch.d64 = torch.empty(STATS_BLOCK, dtype=torch.float64), torch.empty(STATS_BLOCK, dtype=torch.float64)
    x64, d64 = _scratch.x64, _scratch.d64
    sq = sq_dist = 0.0
    nonzero = 0
    for x, p in zip(xs, ps):
        nonzero += int(torch.count_nonzero(x))
        for start in range(0, x.numel(), STATS_BLOCK):
            block = x[start:start + STATS_BLOCK]
            a = x64[:block.numel()]
            a.copy_(block)  # float32 -> float64 is exact, so squares and differences below are too
            sq += float(torch.dot(a, a))
            if p is not None:
                b = d64[:block.numel()]
                b.copy_(p[start:start + STATS_BLOCK])
                b.sub_(a)
                sq_dist += float(torch.dot(b, b))
    dist = math.sqrt(sq_dist) if parent is not None else None
    return math.sqrt(sq), ((n - nonzero) / n if n else 0.0), dist

class NodeEncoder:
    """Encodes and writes nodes' rows into ``weights`` (see the module docstring); keeps the decoded rows of
    recent nodes as parents. ``read_decoded(node_id)`` gives the rows of any other parent, ``path_length_of``
    the path length of a parent written before."""

    def __init__(self, weights: WeightArrays, read_decoded: Callable[[int], dict],
                 path_length_of: Callable[[int], float], *, max_pending_bytes: int = 1 << 30,
                 recent_bytes: int = DEFAULT_RECENT_BYTES, threads: int = 1) -> None:
        if not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
            raise ValueError(f"writer_threads must be an integer >= 1, got {threads!r}")
        # threads > 1: large lossless rows are encoded and written on a pool of that many threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="fipgraph-encode") if threads > 1 else None
        self.weights, self.read_decoded, self.path_length_of = weights, read_decoded, path_length_of
        self.recent_bytes = recent_bytes
        self._recent_size = 0
        self._recent: OrderedDict[int, dict] = OrderedDict()  # decoded rows of the last few nodes (parents)
        self._path_length: dict[int, float] = {}
        self._unwritten: dict[int, dict] = {}  # decoded rows of the batch being written
        self.buffers = BufferPool(max_pending_bytes)  # snapshot buffers, reused once nothing reads them
        self._retired: list[np.ndarray] = []  # snapshots dropped from _recent, reusable after this batch
        self._recyclable: set[int] = set()  # nodes in _recent whose rows are their own snapshot buffers
        self._residuals: dict[str, np.ndarray] = {}  # one reused residual row per stored array (large nodes)

    def _decoded(self, node_id: int | None) -> dict | None:
        if node_id is None:
            return None
        rows = self._recent.get(node_id)
        if rows is None:
            rows = self._unwritten.get(node_id)
        return rows if rows is not None else self.read_decoded(node_id)

    def _write_weights(self, jobs: list[NodeJob]) -> None:
        """Encode each node (in order: a node may be the next one's parent), then write the rows of
        each array in contiguous runs, one zarr call per run: tiny networks append ~10x faster.

        With ``threads`` > 1, large lossless rows (own chunk files) are encoded, measured, checksummed and
        written on a pool: their decoded rows are their snapshots, so the next node needs none of their
        results. Path lengths (a running sum along the lineage) are added up afterwards, in order."""
        encoded, pooled = [], []
        self._unwritten = {}
        for job in jobs:
            if job.written is not None:  # encoded and written by a Ray worker (storage/prewrite.py)
                self._adopt(job)
                continue
            parent = self._decoded(job.parent_id) if job.same_arch_as_parent else None
            grandparent = self._decoded(job.grandparent_id) if codec.uses_grandparent(job.encoding) else None
            streamed = job.encoding in codec.LOSSLESS and job.nbytes > STREAM_BYTES
            immediate = not streamed and job.nbytes >= IMMEDIATE_BYTES and job.encoding in codec.LOSSLESS
            if immediate and self._pool is not None and not job.other_parents:  # a merge reads other parents: here
                self._create_arrays(job)  # here, so no two pool threads race to create an array
                # the rows are taken before the pool sees the job: its thread drops job.rows when written
                self._unwritten[job.node_id] = rows = job.rows
                self._keep_recent(job.node_id, rows, recyclable=True)
                pooled.append(self._pool.submit(self._encode_and_write, job, parent, grandparent))
                continue
            if streamed:  # decoded == the snapshot; the residual is made and written a few chunks at a time
                enc = codec.Encoded({}, job.rows, 0.0)
            else:
                enc = codec.encode(job.layout, job.rows, parent, grandparent, job.encoding, job.tolerance,
                                   out=self._residuals if immediate else None)
            self._unwritten[job.node_id] = enc.decoded
            # a large row's chunks are encoded and written on the chunk threads while this thread computes
            # its statistics and checksum (SmolLM2: 1.4 s -> 1.0 s per node, measured in RESULTS.md, issue 14)
            written = self._start_streamed(job, parent, grandparent) if streamed else None
            self._measure(job, enc, parent)
            self._keep_recent(job.node_id, enc.decoded, recyclable=job.encoding in codec.LOSSLESS)
            if streamed:
                job.storage_row[7] = written()
            elif immediate:
                self._write_runs([(job, enc)])
            else:
                encoded.append((job, enc))
            job.rows = None  # free the snapshot
        self._write_runs(encoded)
        wait(pooled)  # every pooled task ends before any buffer is handed back, even when one failed
        for future in pooled:
            future.result()
        for job in jobs:
            self._add_path_length(job)
        self._unwritten = {}
        # only now can nothing read the retired snapshots (a later node of this batch may have used one
        # as its parent, a keyframe's snapshot is its own stored row): the next appends may refill them
        self.buffers.give(self._retired)
        self._retired = []

    def write_weights(self, jobs: list[NodeJob]) -> None:
        """Encode and write these nodes' rows, in order; fills in each job's storage row, norms and distance."""
        self._write_weights(jobs)

    @staticmethod
    def _adopt(job: NodeJob) -> None:
        """A node whose rows another process encoded and wrote: its measurements, under its id here."""
        w = job.written
        job.storage_row = [job.node_id, *w.storage_row[1:]]
        job.distance = w.distance
        job.node_row.update(l2_norm=w.l2_norm, sparsity=w.sparsity)

    def _measure(self, job: NodeJob, enc: codec.Encoded, parent: dict | None) -> None:
        """Norm, sparsity, distance to the parent and checksum of a node (its storage row, bytes still 0)."""
        l2, sparsity, dist = float_stats(job.layout, enc.decoded, parent)
        job.other_distances = [float_stats(job.layout, enc.decoded, self._decoded(p))[2] for p in job.other_parents]
        job.node_row.update(l2_norm=l2, sparsity=sparsity)
        job.distance = dist
        job.storage_row = [job.node_id, job.layout.arch_id, job.row, job.encoding, job.chain_depth,
                           checksum(job.layout, enc.decoded), enc.max_abs_error, 0,
                           job.tolerance if job.encoding in ("bnd", "bndp") else None, enc.max_error_ratio]

    def _encode_and_write(self, job: NodeJob, parent: dict | None, grandparent: dict | None) -> None:
        """One large lossless node, on a pool thread (numpy, zstd and file writes release the GIL)."""
        if getattr(_scratch, "residuals", None) is None:
            _scratch.residuals = {}  # one reused residual row per array, per thread
        enc = codec.encode(job.layout, job.rows, parent, grandparent, job.encoding, job.tolerance,
                           out=_scratch.residuals)
        self._measure(job, enc, parent)
        self._write_runs([(job, enc)])
        job.rows = None

    def _create_arrays(self, job: NodeJob) -> None:
        for name, (dtype, n_words) in codec.array_names(job.layout, job.encoding).items():
            if n_words:
                self.weights.row_chunks(job.layout.arch_id, name, dtype, n_words)

    def _add_path_length(self, job: NodeJob) -> None:
        parent_len = 0.0
        if job.parent_id is not None:
            parent_len = self._path_length.get(job.parent_id)
            if parent_len is None:
                parent_len = self.path_length_of(job.parent_id)
        self._path_length[job.node_id] = parent_len + (job.distance or 0.0)
        job.node_row["path_length"] = self._path_length[job.node_id]

    def _start_streamed(self, job: NodeJob, parent: dict | None, grandparent: dict | None) -> Callable[[], int]:
        """Start encoding and writing a large lossless row chunk by chunk (the residual of a whole SmolLM2
        row would be another 538 MB): each chunk's residual, compression and file write is one task on the
        chunk threads, so the residual runs on both cores too. Returns the wait for the bytes its chunk
        files take (it must be called before the snapshot or its parents are handed back for reuse)."""
        arch_id = job.layout.arch_id
        names = [g.dtype for g in job.layout.groups if g.n_words]
        before = self.weights.chunk_bytes(arch_id, names, job.row, shared_only=True)
        sizes: list = []
        for g in job.layout.groups:
            if not g.n_words:
                continue
            words = job.rows[g.dtype]
            p = parent[g.dtype] if job.encoding != "key" else None
            gp = grandparent[g.dtype] if job.encoding == "pred" else None
            direct = self.weights.row_chunks(arch_id, g.dtype, words.dtype, g.n_words)
            step = self.weights.chunk_words(arch_id, g.dtype, g.n_words) * (1 if direct else CHUNKS_PER_WRITE)

            def write(lo: int, g=g, words=words, p=p, gp=gp, direct=direct, step=step) -> int | None:
                hi = min(lo + step, g.n_words)
                part = codec.encode_words(words[lo:hi], None if p is None else p[lo:hi],
                                          None if gp is None else gp[lo:hi], job.encoding)
                if direct is not None:
                    return direct.write(job.row, lo, part)
                return self.weights.write_slice(arch_id, g.dtype, job.row, lo, part, g.n_words)

            starts = range(0, g.n_words, step)
            sizes += submit_chunks(write, starts) if direct is not None else [write(lo) for lo in starts]

        def wait() -> int:
            done = [s.result() if isinstance(s, Future) else s for s in sizes]
            if self.weights.durable:
                for name in names:
                    self.weights.sync_rows(arch_id, name, job.row, job.row)
            if None in done:  # rows sharing chunks: only the files' growth tells
                return max(0, self.weights.chunk_bytes(arch_id, names, job.row) - before)
            return sum(done)

        return wait

    def _keep_recent(self, node_id: int, decoded: dict, recyclable: bool) -> None:
        """Remember a node's decoded rows as a likely parent. The last two always stay (the next node of
        a chain is encoded against its parent and grandparent), only the last one for rows whose two do
        not fit in recent_bytes (encoded against the parent alone); older ones only within recent_bytes.
        For lossless rows these are the snapshot arrays themselves, so keeping them copies nothing,
        and when they leave they are retired for reuse (``recyclable``)."""
        self._recent[node_id] = decoded
        if recyclable:
            self._recyclable.add(node_id)
        nbytes = sum(a.nbytes for a in decoded.values())
        self._recent_size += nbytes
        chain_needs = 2 if 2 * nbytes <= self.recent_bytes else 1  # rows this large are encoded against the parent alone
        while len(self._recent) > chain_needs and (self._recent_size > self.recent_bytes or len(self._recent) > RECENT_MAX_NODES):
            old_id, old = self._recent.popitem(last=False)
            self._recent_size -= sum(a.nbytes for a in old.values())
            if old_id in self._recyclable:
                self._recyclable.discard(old_id)
                self._retired += old.values()

    def _write_runs(self, encoded: list) -> None:
        by_array: dict[tuple[str, str], list] = {}
        for job, enc in encoded:
            for name, data in enc.arrays.items():
                by_array.setdefault((job.layout.arch_id, name), []).append((job.row, data, job))
        for (arch_id, name), items in by_array.items():
            items.sort(key=lambda item: item[0])
            runs, run = [], [items[0]]
            for item in items[1:]:
                if item[0] == run[-1][0] + 1:
                    run.append(item)
                else:
                    runs.append(run)
                    run = [item]
            runs.append(run)
            for run in runs:
                direct = self.weights.is_direct(arch_id, name)
                if direct:  # each row its own chunk file: write them one by one, sizes known exactly
                    for row, data, job in run:
                        job.storage_row[7] += self.weights.write_rows(arch_id, name, row, data[None])
                    continue
                before = self.weights.chunk_bytes(arch_id, [name], run[0][0], run[-1][0])
                # one row: a view, not a copy (np.stack of a 540 MB SmolLM2 row costs 540 MB and ~0.2 s)
                data = run[0][1][None] if len(run) == 1 else np.stack([data for _, data, _ in run])
                written = self.weights.write_rows(arch_id, name, run[0][0], data)
                del data
                # growth of the chunk files, shared evenly: exact when rows have chunks of their own
                if written is None:
                    written = max(0, self.weights.chunk_bytes(arch_id, [name], run[0][0], run[-1][0]) - before)
                for _, _, job in run:
                    job.storage_row[7] += written // len(run)
