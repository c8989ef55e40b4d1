"""The background writer: encodes and writes weights, then commits catalog rows in batches.

Training threads only snapshot the weights (one memcpy) and enqueue; this thread does the delta encoding,
compression, chunk writes, norms and distances (storage/encoder.py), and commits to DuckDB at most every
``commit_interval`` seconds (further apart when commits are costly: at most COMMIT_COST_SHARE of the writer's
time, at most MAX_COMMIT_INTERVAL apart). The training thread pays only for the snapshot; on a small machine the
writer's CPU still competes with training (measured in benchmarks/RESULTS.md).
Order is kept: a job commits in the same or a later transaction than every job queued before it.
Write order makes crashes safe: chunks first, catalog rows (the commit point) last.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from collections.abc import Callable

from fipgraph.errors import WriterError
from fipgraph.storage.catalog import NODE_COLUMNS, Batch, Catalog, CatalogOp, to_json
from fipgraph.storage.encoder import NodeEncoder, NodeJob, float_stats  # noqa: F401 (float_stats: benchmarks)
from fipgraph.storage.options import DEFAULT_RECENT_BYTES
from fipgraph.storage.weights import WeightArrays


@dataclass
class EvalJob:
    """Evaluations of existing nodes (EVAL_COLUMNS rows) and of ensembles (ENSEMBLE_EVAL_COLUMNS rows)."""

    rows: list[tuple]
    ensemble_rows: list[tuple] | None = None


@dataclass
class OpJob:
    """Catalog-only changes (runs, statuses, ensembles), committed in order with the nodes."""

    op: CatalogOp


# a child of the build logger, so a build's build.log says when saving holds training back
log = logging.getLogger("fipgraph.build.store")
STALL_REPORT_EVERY = 30.0  # seconds between back-pressure reports


COMMIT_COST_SHARE = 0.1  # a catalog commit (open DuckDB, insert, close: 20-40 ms of CPU measured here) may
# take at most this share of the writer's time: when saving every step, commits space out beyond commit_interval
MAX_COMMIT_INTERVAL = 2.0  # ... but never further apart than this (seconds), so readers see nodes promptly


class Writer(NodeEncoder, threading.Thread):
    def __init__(self, catalog: Catalog, weights: WeightArrays, read_decoded: Callable[[int], dict],
                 path_length_of: Callable[[int], float], on_commit: Callable[[list[NodeJob]], None],
                 known_pairs: set, *, commit_interval: float = 0.25, max_pending_bytes: int = 1 << 30,
                 recent_bytes: int = DEFAULT_RECENT_BYTES, threads: int = 1) -> None:
        threading.Thread.__init__(self, name="fipgraph-writer", daemon=True)
        NodeEncoder.__init__(self, weights, read_decoded, path_length_of, max_pending_bytes=max_pending_bytes,
                             recent_bytes=recent_bytes, threads=threads)
        self.catalog, self.on_commit = catalog, on_commit
        self.known_pairs = known_pairs
        self.commit_interval = commit_interval
        self._interval = commit_interval  # grows with the cost of a commit (see COMMIT_COST_SHARE)
        self.max_pending_bytes = max_pending_bytes
        self.error: BaseException | None = None
        self._jobs: list = []
        self._cv = threading.Condition()
        self._pending_bytes = 0
        self._stopping = False
        self._flush_waiters: list[threading.Event] = []
        self.stalled_seconds = 0.0  # total time producers waited for queue space (saving was the bottleneck)
        self._stall_window = (time.monotonic(), 0.0)  # (start, stalled seconds) since the last report

    # -- producer side -------------------------------------------------------------------------
    def put(self, job) -> None:
        """Queue a job; blocks while more than max_pending_bytes of snapshots wait (bounded memory)."""
        nbytes = getattr(job, "nbytes", 0)
        with self._cv:
            self._wait_for_room(nbytes)
            self._pending_bytes += nbytes
            self._jobs.append(job)
            self._cv.notify_all()

    def wait_for_room(self, nbytes: int) -> None:
        """Block until a snapshot of ``nbytes`` fits the queue. Called before the snapshot is taken, so
        a producer never holds a finished snapshot while it waits (one node's worth of memory less)."""
        with self._cv:
            self._wait_for_room(nbytes)

    def _wait_for_room(self, nbytes: int) -> None:
        waited = time.monotonic()
        # always admit one job, however large, so a node bigger than the bound can still be saved
        while self._pending_bytes and self._pending_bytes + nbytes > self.max_pending_bytes:
            self._check_alive()
            self._cv.wait(0.5)
        self._check_alive()
        if nbytes:
            self._note_stall(time.monotonic() - waited)

    def _note_stall(self, seconds: float) -> None:
        self.stalled_seconds += seconds
        start, stalled = self._stall_window
        stalled += seconds
        elapsed = time.monotonic() - start
        if elapsed >= STALL_REPORT_EVERY:
            if stalled > 0.01 * elapsed:
                log.warning("saving is the bottleneck: training waited %.1f s of the last %.0f s (%.0f %%) for the "
                            "store's writer; save less often, or raise max_pending_bytes if memory allows",
                            stalled, elapsed, 100 * stalled / elapsed)
            start, stalled = time.monotonic(), 0.0
        self._stall_window = (start, stalled)

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything queued so far is committed. Raises WriterError if the writer failed
        or its thread is gone, or if ``timeout`` seconds pass first (the queue is kept)."""
        done = threading.Event()
        with self._cv:
            self._check_alive()
            self._flush_waiters.append(done)
            self._cv.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done.wait(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))):
            self._check_alive()
            if deadline is not None and time.monotonic() >= deadline:
                raise WriterError(f"the store's writer did not commit the queued work within {timeout} s "
                                  f"({self._pending_bytes / 2**20:.0f} MiB of snapshots still queued); it keeps going: "
                                  "call flush() again to wait longer")
        self._check_alive()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self.join()
        if self._pool is not None:
            self._pool.shutdown()

    def _check_alive(self) -> None:
        if self.error is not None:
            raise WriterError(
                f"the store's background writer failed, so nodes queued after the failure were not saved: "
                f"{type(self.error).__name__}: {self.error}. Reopen the store to continue from the last committed node."
            ) from self.error
        if self.ident is not None and not self.is_alive() and not self._stopping:
            raise WriterError("the store's background writer thread is gone (killed without an error); nodes "
                              "queued since its last commit were not saved. Reopen the store to continue.")

    # -- consumer side -------------------------------------------------------------------------
    def run(self) -> None:
        batch: list = []
        last_commit = time.monotonic()
        while True:
            with self._cv:
                while not self._jobs and not self._stopping and not self._flush_waiters:
                    timeout = self._interval - (time.monotonic() - last_commit) if batch else None
                    if timeout is not None and timeout <= 0:
                        break
                    self._cv.wait(timeout)
                jobs, self._jobs = self._jobs, []
                waiters, self._flush_waiters = self._flush_waiters, []
                stop = self._stopping
            try:
                if self.error is None:
                    nodes = [j for j in jobs if isinstance(j, NodeJob)]
                    for start in range(0, len(nodes), 256):  # bounded stacks for the batched writes
                        self._write_weights(nodes[start:start + 256])
                    with self._cv:
                        self._pending_bytes -= sum(j.nbytes for j in nodes)
                        self._cv.notify_all()
                    batch += jobs
                    due = time.monotonic() - last_commit >= self._interval or len(batch) >= 512
                    if batch and (due or waiters or stop):
                        started = time.monotonic()
                        self._commit(batch)
                        batch, last_commit = [], time.monotonic()
                        self._interval = min(max(self.commit_interval, (last_commit - started) / COMMIT_COST_SHARE),
                                             max(self.commit_interval, MAX_COMMIT_INTERVAL))
            except BaseException as exc:  # surfaced to the producer on its next call
                log.error("the store's writer failed: %s: %s", type(exc).__name__, exc)
                with self._cv:
                    self.error = exc
                    self._pending_bytes = 0
                    self._cv.notify_all()
            for w in waiters:
                w.set()
            if stop and not self._jobs:
                return

    def _commit(self, jobs: list) -> None:
        """One transaction for everything queued since the last commit, in queue order."""
        nodes = [j for j in jobs if isinstance(j, NodeJob)]
        batch = Batch(ops=[j.op for j in jobs if isinstance(j, OpJob)])
        batch.archs = [(j.layout.arch_id, to_json(j.arch_spec)) for j in nodes if j.arch_spec is not None]
        batch.nodes = [tuple(j.node_row[c] for c in NODE_COLUMNS) for j in nodes]
        batch.edges = [(j.parent_id, j.node_id, j.distance, j.output_distance) for j in nodes if j.parent_id is not None]
        batch.edges += [(p, j.node_id, d, None) for j in nodes for p, d in zip(j.other_parents, j.other_distances)]
        batch.node_parents = [r for j in nodes for r in j.parent_rows]
        batch.evals = [e for j in nodes for e in j.evals] + [r for j in jobs if isinstance(j, EvalJob) for r in j.rows]
        batch.ensemble_evals = [r for j in jobs if isinstance(j, EvalJob) for r in (j.ensemble_rows or [])]
        batch.storage = [tuple(j.storage_row) for j in nodes]
        new_pairs = {(ds, m) for (_, ds, m, _, _) in batch.evals} - self.known_pairs
        if new_pairs:
            batch.wide_pairs = sorted(self.known_pairs | new_pairs)
        self.catalog.commit(batch)
        self.known_pairs |= new_pairs
        self.on_commit(nodes)
