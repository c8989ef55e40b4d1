"""A Ray worker's store: the run engine's store calls, sent to the ``StoreWriter`` actor without waiting.

``RemoteStore.append`` does not wait for the writer. It hands the run engine a *pending* node id
(``PendingNode``, a negative int) at once, so the walk goes on while the node travels; nodes are sent
in batches (``batch_nodes`` per actor call, or sooner when the oldest has waited ``max_delay`` s),
at most ``max_in_flight`` batches are unanswered at a time (back-pressure: the next send waits for
the oldest answer). A pending id can be used anywhere a node id can (a parent, an SQL parameter, the
node of an optimizer state): the writer replaces it with the real id, which it knows because one
caller's actor calls run in the order they were sent. A node is committed when the writer has
appended it; the worker learns the real ids with each batch's answer.

On shared storage (``shared=True``: a bucket, or a folder every worker mounts) the worker encodes and writes
its nodes' rows into the store itself (``fipgraph.storage.prewrite.ChainWriter``, rows reserved from the
writer) just before a batch is sent, and the batch carries only each node's catalog rows and checksum, and the
name of the optimizer state the worker saved beside the store (optim/pending/).

Optimizer state crosses only where a resume needs it: with the last node of each batch (the writer
keeps it beside that node), so a worker killed between batches is retried from the last node the
writer holds, with that node's optimizer state (bit-exact resume). Every other call (run status,
evals, SQL, reads) sends the open batch first and then waits for its answer, as before.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from fipgraph.errors import ConfigError
from fipgraph.scale.shard import PendingNode, from_wire, to_wire
from fipgraph.storage.prewrite import ChainWriter
from fipgraph.storage.remote import as_location, resolve
from fipgraph.storage.sql import NodeAt

BATCH_NODES = 4  # nodes per actor call: one call's fixed cost (scheduling, a task spec) shared by several nodes
MAX_IN_FLIGHT = 2  # unanswered batches per worker before append waits: bounds memory and a kill's lost work
MAX_DELAY = 2.0  # s a node may wait in an open batch (sparse saves still reach `fipgraph sql` soon)


class _RemoteFiles:
    """``store.files`` of a RemoteStore: the optimizer state of a run, kept by the writer."""

    def __init__(self, remote: "RemoteStore") -> None:
        self.remote = remote

    def load_optimizer_state(self, run_id: int) -> dict | None:
        return self.remote._call("files.load_optimizer_state", run_id)

    def save_optimizer_state(self, run_id: int, node: int, state: Mapping) -> None:
        self.remote._call("files.save_optimizer_state", run_id, node, dict(state))

    def drop_optimizer_state(self, run_id: int) -> None:
        self.remote._call("files.drop_optimizer_state", run_id)


class RemoteStore:
    """What a worker's run engine sees as its store (see the module docstring): it satisfies
    ``fipgraph.storage.protocol.EngineStore``, each method a call on the writer's Store."""

    def __init__(self, actor: Any, root: str | Path, sender: str | None = None, *, shared: bool = False,
                 batch_nodes: int = BATCH_NODES, max_in_flight: int = MAX_IN_FLIGHT, max_delay: float = MAX_DELAY,
                 measure_bytes: bool = False) -> None:
        """``measure_bytes``: count the bytes Ray serializes for the nodes' calls (``sent_bytes``, and
        ``state_bytes`` for the optimizer states with them; one more serialization per batch, for benchmarks)."""
        if batch_nodes < 1 or max_in_flight < 1:
            raise ConfigError(f"batch_nodes ({batch_nodes}) and max_in_flight ({max_in_flight}) must be at least 1")
        if not isinstance(shared, bool):
            raise ConfigError(f"shared={shared!r}: True when this worker sees the store at {root} (then it writes "
                              "its own nodes' rows there), False to send them to the writer")
        self.actor, self.root, self.shared = actor, as_location(root), shared
        self.chain: ChainWriter | None = None  # on shared storage: writes this worker's rows (made at the first append)
        self.shipped = 0  # nodes whose weights went to the writer (the others' rows were written here)
        self.sent_bytes = 0 if measure_bytes else None  # bytes of append_many's nodes, as Ray serializes them
        self.state_bytes = 0  # ... and of the optimizer states that go with them (measured with sent_bytes)
        self.sender = sender or f"anonymous:{uuid.uuid4().hex}"  # the writer's name for this worker's pending ids
        self.files = _RemoteFiles(self)
        # checkpoint_of(step): the run's optimizer state if the model is still the network saved at `step`, else None
        self.checkpoint_of: Callable[[int | None], dict | None] | None = None
        self.batch_nodes, self.max_in_flight, self.max_delay = batch_nodes, max_in_flight, max_delay
        self._open: list[dict] = []  # nodes not yet sent
        self._opened_at = 0.0
        self._in_flight: deque[tuple[Any, list[PendingNode]]] = deque()
        self._real: dict[int, int] = {}  # pending id -> the writer's node id, once answered
        self._next_pending = -1
        self.waited = 0.0  # s this worker spent blocked on the writer (back-pressure and answers)

    # -- nodes ------------------------------------------------------------------------------------
    def append(self, weights: Any, **meta: Any) -> PendingNode:
        """Queue a node for the writer and return its pending id at once (see the module docstring)."""
        pending = PendingNode(self._next_pending)
        self._next_pending -= 1
        job = self._chain_writer().prepare(pending, weights, meta) if self.shared else None  # a snapshot
        if job is not None:
            node = {"pending": pending, "job": job, "meta": meta}
        else:
            arrays, spec = to_wire(weights)
            # copies: the model's own memory (a CPU module's numpy views) changes with the next step
            arrays = {k: v.clone() if isinstance(v, torch.Tensor) else np.array(v) for k, v in arrays.items()}
            node = {"pending": pending, "arrays": arrays, "spec": spec, "meta": meta}
            self.shipped += 1
        if not self._open:
            self._opened_at = time.monotonic()
        self._open.append(node)
        if len(self._open) >= self.batch_nodes or time.monotonic() - self._opened_at >= self.max_delay:
            self._send()
        return pending

    def _send(self) -> None:
        """Send the open batch with the optimizer state of its last node (when the model is still that node)."""
        if not self._open:
            return
        while len(self._in_flight) >= self.max_in_flight:  # back-pressure: the writer is behind
            self._settle_oldest()
        last_step = self._open[-1]["meta"].get("step")
        checkpoint = self.checkpoint_of(last_step) if self.checkpoint_of is not None else None
        if checkpoint is not None and self.chain is not None:  # beside the store: the call carries its name
            checkpoint = self.chain.save_state(checkpoint)
        batch, self._open = self._open, []
        jobs = [node.pop("job") for node in batch if "job" in node]
        if jobs:  # rows first, then the catalog rows that make the nodes exist
            written = iter(self.chain.write(jobs))
            for node in batch:
                if "arrays" not in node:
                    node["written"] = next(written)
        if self.sent_bytes is not None:
            import ray

            context = ray._private.worker.global_worker.get_serialization_context()
            self.sent_bytes += context.serialize((self.sender, batch)).total_bytes
            self.state_bytes += context.serialize(checkpoint).total_bytes
        ref = self.actor.append_many.remote(self.sender, batch, checkpoint)  # serialised now: later steps change nothing
        self._in_flight.append((ref, [node["pending"] for node in batch]))

    def _settle_oldest(self) -> None:
        import ray

        ref, pending = self._in_flight.popleft()
        t0 = time.perf_counter()
        try:
            real = ray.get(ref)  # the writer's error (e.g. NonFiniteWeightsError) surfaces here
        except Exception:
            # what this worker sent after the failed node descends from it (as in a local build, where the
            # failing append raises before later nodes exist): dropped, not waited for
            self._in_flight.clear()
            self._open = []
            raise
        finally:
            self.waited += time.perf_counter() - t0
        self._real.update(zip(pending, real))

    def settle(self) -> None:
        """Send the open batch and wait until the writer has appended every node of this worker."""
        self._send()
        while self._in_flight:
            self._settle_oldest()

    def resolve(self, node: int | None) -> int | None:
        """The writer's id of a node this store returned (settles first when it is still pending)."""
        if not isinstance(node, PendingNode):
            return node
        if node not in self._real:
            self.settle()
        return self._real[node]

    def _chain_writer(self) -> ChainWriter:
        if self.chain is None:
            self.chain = ChainWriter(resolve(self.root), self._call("write_settings"), reserve=self._reserve,
                                     chain_of=lambda node: self._call("chain_of", node), fetch=self.state_dict)
        return self.chain

    def _reserve(self, arch_id: str, count: int, align: int) -> int:
        import ray

        t0 = time.perf_counter()
        try:
            return ray.get(self.actor.reserve_rows.remote(arch_id, count, align))
        finally:
            self.waited += time.perf_counter() - t0

    def detach(self) -> None:
        """Close this worker's connection to the shared store (after ``settle``; the writer's store stays open)."""
        if self.chain is not None:
            self.chain.close()

    # -- every other call -------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One call on the writer after this worker's earlier nodes (sent first; the writer keeps the order)."""
        import ray

        self._send()
        ref = self.actor.call.remote(self.sender, method, *args, **kwargs)
        self.settle()  # an earlier node's error is the one to report
        t0 = time.perf_counter()
        try:
            return ray.get(ref)
        finally:
            self.waited += time.perf_counter() - t0

    # -- runs -----------------------------------------------------------------------------------
    def find_run(self, name: str) -> dict | None:
        return self._call("find_run", name)

    def run_by_id(self, run_id: int) -> dict | None:
        return self._call("run_by_id", run_id)

    def start_run(self, name: str, op: str | None = None, config: Mapping | None = None) -> int:
        return self._call("start_run", name, op, config)

    def set_run_status(self, run_id: int, status: str) -> None:
        self._call("set_run_status", run_id, status)

    def finish_run(self, run_id: int, status: str = "finished", error: str | None = None) -> None:
        self._call("finish_run", run_id, status, error)

    def last_node(self, run_id: int) -> NodeAt | None:
        return self._call("last_node", run_id)

    def first_tagged(self, run_id: int, tag: str) -> NodeAt | None:
        return self._call("first_tagged", run_id, tag)

    # -- evaluations, reads ------------------------------------------------------------------------
    def add_evals(self, node_id: int, metrics: Mapping) -> None:
        self._call("add_evals", node_id, metrics)

    def add_evals_many(self, metrics_by_node: Mapping[int, Mapping]) -> None:
        self._call("add_evals_many", metrics_by_node)

    def has_evals(self, node_id: int) -> bool:
        return self._call("has_evals", node_id)

    def flush(self) -> None:
        self._call("flush")

    def node(self, node_id: int) -> dict:
        return self._call("node", node_id)

    def node_tags(self, node_id: int) -> dict:
        return self._call("node_tags", node_id)

    def arch_spec(self, node_id: int) -> dict:
        return self._call("arch_spec", node_id)

    def sql(self, query: str, params: list | None = None):
        """Read-only SQL on the writer's catalog (not used by the engine: tests and diagnostics)."""
        return self._call("sql", query, params)

    def state_dict(self, node_id: int) -> dict[str, torch.Tensor]:
        arrays, _ = self._call("state_dict", node_id)
        return dict(from_wire(arrays, None))

    def load_into(self, model: torch.nn.Module, node_id: int) -> torch.nn.Module:
        model.load_state_dict(self.state_dict(node_id))
        return model
