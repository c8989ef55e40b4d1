"""The writer end of a Ray build's one store: the actor that holds it, and what crosses to it.

Workers never open the main catalog. A run's Ray task walks with a ``RemoteStore``
(``fipgraph.scale.remote``): every call the run engine makes on its store (append, evals, run
status, SQL, reads of start nodes, optimizer state) becomes a call on the ``StoreWriter`` actor,
which the driver pins to its own machine and which alone holds the read-write store there. So no
shared filesystem is needed: what crosses the network per node is its weights as numpy arrays (Ray's
object store), its metrics and tags; the run's optimizer state crosses once per batch of nodes. The
writer assigns node ids, so they are unique and stable, and a node's parent may be any committed node
(e.g. another run's last one). On shared storage a worker writes its nodes' rows itself and sends only their
catalog rows (``PrewrittenNode``, storage/prewrite.py), into rows it reserved here (``reserve_rows``).

Nodes arrive in batches, each with the optimizer state of its last node; the writer appends the
batch and keeps that state (in memory; on disk at most once a minute and at close), so a Ray retry
of a killed worker resumes from the last node the writer holds with its optimizer state: no
committed node is lost and no (run, step) is stored twice. A retried run registers again, and from
then on the writer refuses what its old worker still had on the way (``StaleSenderError``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any, Mapping

import numpy as np
import torch

from fipgraph.device import HostWeights
from fipgraph.errors import FipgraphError, NodeNotFoundError
from fipgraph.storage.prewrite import PendingState
from fipgraph.storage.remote import as_location

log = logging.getLogger("fipgraph.build")


def to_wire(weights: Any) -> tuple[dict[str, Any], dict | None]:
    """A module or state dict as {name: numpy array} (zero-copy in Ray's object store) and its spec.
    dtypes numpy lacks (bfloat16) travel as tensors."""
    from fipgraph.storage.inputs import model_spec_of

    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    arrays = {}
    for name, t in state.items():
        t = t.detach().to("cpu")
        arrays[name] = t if t.dtype == torch.bfloat16 else t.numpy()
    return arrays, model_spec_of(weights)


def from_wire(arrays: Mapping[str, Any], spec: dict | None) -> HostWeights:
    # copy: arrays from Ray's object store are read-only views of shared memory
    host = HostWeights({k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    host.fipgraph_spec = spec
    return host


class PendingNode(int):
    """A node id a worker's RemoteStore handed out before the writer answered (negative, unique per worker);
    the writer replaces it by the real id wherever the worker passes it back."""

    def __repr__(self) -> str:
        return f"PendingNode({int(self)})"


class StaleSenderError(FipgraphError):
    """A call from a run's earlier worker that arrived after the run's retry had registered."""


class StoreWriter:
    """The Ray actor that holds the build's one read-write store (one call at a time, in each caller's order)."""

    def __init__(self, store_dir: str | None = None, durable: bool = False) -> None:
        """Opens the store at ``store_dir``; without it the actor only imports what the store needs (seconds
        of a fresh process), so the driver can start it while it still checks the config, and ``open`` later."""
        import fipgraph.path.build  # noqa: F401 - the build log's setup, and the store and torch with it
        import fipgraph.storage.store  # noqa: F401

        self.store: Any = None
        self.senders: dict[str, dict] = {}  # run name -> the worker that walks it (pid, host, sender)
        self.run_of: dict[str, str] = {}  # sender -> its run's name
        self.pending: dict[str, dict[int, int]] = {}  # sender -> {pending id: node id}
        self.latest: dict[int, tuple[int, dict]] = {}  # run id -> (node, optimizer state of that node)
        self.written: dict[int, float] = {}  # run id -> when its state was last written to disk
        self.merge_seconds, self.merged, self.closed = 0.0, 0, False
        self.cpu_at_first: float | None = None  # process CPU time when the first node arrived
        if store_dir is not None:
            self.open(store_dir, durable)

    def open(self, store_dir: str, durable: bool) -> None:
        """Open the build's store for writing (once the driver, which checked the config against it, let it go)."""
        import fipgraph
        from fipgraph.path.build import _setup_log

        self.store = fipgraph.open_store(store_dir, mode="a", durable=durable)
        _setup_log(as_location(store_dir))  # this process's lines (where each run ran) go to the build log too

    def register(self, name: str, pid: int, host: str) -> str:
        """A run's task says where it runs (logged; the tests kill that worker); returns its sender name.
        An earlier worker of the same run is stale from now on."""
        old = self.senders.get(name, {}).get("sender")
        self.pending.pop(old, None)
        sender = f"{name}@{host}:{pid}:{uuid.uuid4().hex[:8]}"
        self.senders[name] = {"pid": pid, "host": host, "since": time.time(), "sender": sender}
        self.run_of[sender] = name
        log.info("run %s on worker pid %d at %s", name, pid, host)
        return sender

    def note(self, line: str) -> None:
        """A worker's line for the build log (workers have no log file of their own)."""
        log.info("%s", line)

    def who(self) -> dict[str, dict]:
        return dict(self.senders)

    def _check_sender(self, sender: str | None) -> None:
        name = self.run_of.get(sender) if sender is not None else None
        if name is not None and self.senders[name]["sender"] != sender:
            raise StaleSenderError(f"run {name!r} was retried on another worker; this call of its old worker "
                                   f"({sender}) is dropped so that no step is stored twice")

    def _resolve(self, sender: str | None, value: Any) -> Any:
        """Pending ids (also inside a list, tuple or as dict keys) -> the node ids this writer gave them."""
        if isinstance(value, PendingNode):
            try:
                return self.pending[sender][value]
            except KeyError:
                raise NodeNotFoundError(f"{value!r} of worker {sender} was never appended (an earlier append "
                                        "of that worker failed)") from None
        if isinstance(value, (list, tuple)):
            return type(value)(self._resolve(sender, v) for v in value)
        if isinstance(value, dict) and any(isinstance(k, PendingNode) for k in value):
            return {self._resolve(sender, k): v for k, v in value.items()}
        return value

    def append_many(self, sender: str | None, batch: list[dict], checkpoint: dict | None) -> list[int]:
        """Append a worker's nodes in order; keep the optimizer state that belongs to the last one."""
        t0 = time.perf_counter()
        if self.cpu_at_first is None:
            self.cpu_at_first = time.process_time()
        self._check_sender(sender)
        ids, out, meta = self.pending.setdefault(sender, {}), [], {}
        for node in batch:
            meta = {**node["meta"], "parent": self._resolve(sender, node["meta"].get("parent"))}
            if "written" in node:  # the worker wrote its rows to the shared store: only the catalog rows came
                nid = self.store.append_written(node["written"], **meta)
            else:
                nid = self.store.append(from_wire(node["arrays"], node["spec"]), **meta)
            ids[node["pending"]] = nid
            out.append(nid)
        if checkpoint is not None and meta.get("run") is not None:
            self._keep_state(meta["run"], out[-1], checkpoint)
        self.merge_seconds += time.perf_counter() - t0
        self.merged += len(out)
        return out

    def reserve_rows(self, arch_id: str, count: int, align: int) -> int:
        """Rows a worker on shared storage writes its nodes to (Store.reserve_rows); any caller, any order."""
        return self.store.reserve_rows(arch_id, count, align)

    def call(self, sender: str | None, method: str, *args: Any, **kwargs: Any) -> Any:
        """A store method the run engine uses (find_run, sql, ...), ``state_dict`` or ``files.*``."""
        self._check_sender(sender)
        args = tuple(self._resolve(sender, a) for a in args)
        kwargs = {k: self._resolve(sender, v) for k, v in kwargs.items()}
        if method == "state_dict":
            return to_wire(self.store.state_dict(args[0]))[0], None
        if method.startswith("files."):
            return self._files_call(method[len("files."):], *args)
        if method not in FORWARDED:
            raise AttributeError(f"StoreWriter does not forward {method!r}")
        return getattr(self.store, method)(*args, **kwargs)

    def _files_call(self, method: str, *args: Any) -> Any:
        """Optimizer state: the latest per run is kept in memory (a retried task resumes from it) and
        written beside the store at most once a minute and at close (as a local build does)."""
        if method == "load_optimizer_state":
            return self._latest_state(int(args[0]))
        if method == "save_optimizer_state":
            return self._keep_state(*args)
        if method == "drop_optimizer_state":
            node_state = self.latest.pop(int(args[0]), None)
            if node_state is not None and isinstance(node_state[1], PendingState):
                self.store.files.drop_pending_states([node_state[1].name])
            return self.store.files.drop_optimizer_state(*args)
        raise AttributeError(f"StoreWriter does not forward files.{method!r}")

    def _keep_state(self, run_id: int, node: int, state: Mapping | PendingState) -> None:
        """``state``: the optimizer state, or the name of the file a worker on shared storage saved it to."""
        old = self.latest.get(int(run_id))
        self.latest[int(run_id)] = (int(node), state if isinstance(state, PendingState) else dict(state))
        if old is not None and isinstance(old[1], PendingState) and old[1] != state:
            self.store.files.drop_pending_states([old[1].name])  # superseded: no retry resumes from it
        if time.time() - self.written.get(int(run_id), 0.0) > 60:
            self._write_state(int(run_id))

    def _state(self, state: Mapping | PendingState) -> dict:
        return self.store.files.load_pending_state(state.name) if isinstance(state, PendingState) else state

    def _write_state(self, run_id: int) -> None:
        node, state = self.latest[run_id]
        self.store.flush()  # the file names a committed node
        self.store.files.save_optimizer_state(run_id, node, self._state(state))
        self.written[run_id] = time.time()

    def _latest_state(self, run_id: int) -> dict | None:
        if run_id in self.latest:
            node, state = self.latest[run_id]
            return {"node": node, "state": self._state(state)}
        return self.store.files.load_optimizer_state(run_id)

    def merge_cost(self) -> tuple[int, float, float]:
        """(nodes merged, seconds spent in append_many, CPU seconds of this whole process since the first node
        arrived: appends, the store's background encoding and writes, the catalog, Ray's own threads).
        Call it after a flush, so that every node's background work is counted."""
        return self.merged, self.merge_seconds, time.process_time() - (self.cpu_at_first or time.process_time())

    def close(self) -> None:
        """Write every run's latest optimizer state (a rerun of the build resumes with it), then close."""
        if not self.closed:
            for run_id in list(self.latest):
                self._write_state(run_id)
            if self.store is not None:  # every state kept is written now; the rest are a dead worker's
                self.store.files.drop_pending_states()
            self.closed = True
        if self.store is not None:
            self.store.close()


# the Store methods a worker's RemoteStore calls by name (state_dict and files.* are handled above)
FORWARDED = {"find_run", "run_by_id", "start_run", "set_run_status", "finish_run", "last_node", "first_tagged",
             "add_evals", "add_evals_many", "has_evals", "flush", "sql", "node", "node_tags", "arch_spec",
             "write_settings", "chain_of"}


def worker_identity() -> tuple[int, str]:
    return os.getpid(), socket.gethostname()
