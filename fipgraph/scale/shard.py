"""The two ends of a Ray build's one store: the writer actor (holds it) and a worker's proxy to it.

Workers never open the main catalog. A run's Ray task walks with a ``RemoteStore``: every call the
run engine makes on its store (append, evals, run status, SQL, reads of start nodes, optimizer
state) becomes one call on the ``StoreWriter`` actor, which the driver pins to its own machine and
which alone holds the read-write store there. So no shared filesystem is needed: what crosses the
network per node is its weights as numpy arrays (Ray's object store), its metrics and tags, and the
run's optimizer state. The writer assigns node ids, so they are unique and stable, and a node's
parent may be any committed node (e.g. another run's last one).

A node and the optimizer state that belongs to it arrive in one actor call and are kept together
(in the writer's memory; on disk at most once a minute and at close), so a Ray retry of a killed
worker resumes from the last committed node with its optimizer state: no committed node is lost and
no (run, step) is stored twice.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from fipgraph.device import HostWeights

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


class StoreWriter:
    """The Ray actor that holds the build's one read-write store (one call at a time)."""

    def __init__(self, store_dir: str, durable: bool) -> None:
        import fipgraph
        from fipgraph.path.build import _setup_log

        self.store = fipgraph.open_store(store_dir, mode="a", durable=durable)
        _setup_log(Path(store_dir))  # this process's lines (where each run ran) go to the build log too
        self.senders: dict[str, dict] = {}  # run name -> the worker that walks it (pid, host)
        self.latest: dict[int, tuple[int, dict]] = {}  # run id -> (node, optimizer state of that node)
        self.written: dict[int, float] = {}  # run id -> when its state was last written to disk
        self.merge_seconds, self.merged, self.closed = 0.0, 0, False

    def register(self, name: str, pid: int, host: str) -> None:
        """A run's task says where it runs (logged; the tests kill that worker)."""
        self.senders[name] = {"pid": pid, "host": host, "since": time.time()}
        log.info("run %s on worker pid %d at %s", name, pid, host)

    def who(self) -> dict[str, dict]:
        return dict(self.senders)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A store method the run engine uses that needs no translation (find_run, sql, ...)."""
        if method not in _FORWARDED:
            raise AttributeError(f"StoreWriter does not forward {method!r}")
        return getattr(self.store, method)(*args, **kwargs)

    def files_call(self, method: str, *args: Any) -> Any:
        """Optimizer state: the latest per run is kept in memory (a retried task resumes from it) and
        written beside the store at most once a minute and at close (as a local build does)."""
        if method == "load_optimizer_state":
            return self._latest_state(int(args[0]))
        if method == "save_optimizer_state":
            return self._keep_state(*args)
        if method == "drop_optimizer_state":
            self.latest.pop(int(args[0]), None)
            return self.store.files.drop_optimizer_state(*args)
        raise AttributeError(f"StoreWriter does not forward files.{method!r}")

    def _keep_state(self, run_id: int, node: int, state: Mapping) -> None:
        self.latest[int(run_id)] = (int(node), dict(state))
        if time.time() - self.written.get(int(run_id), 0.0) > 60:
            self._write_state(int(run_id))

    def _write_state(self, run_id: int) -> None:
        node, state = self.latest[run_id]
        self.store.flush()  # the file names a committed node
        self.store.files.save_optimizer_state(run_id, node, state)
        self.written[run_id] = time.time()

    def _latest_state(self, run_id: int) -> dict | None:
        if run_id in self.latest:
            node, state = self.latest[run_id]
            return {"node": node, "state": state}
        return self.store.files.load_optimizer_state(run_id)

    def append(self, arrays: Mapping[str, Any], spec: dict | None, meta: dict, checkpoint: dict | None) -> int:
        """Append a worker's node; keep the optimizer state that belongs to it in the same call."""
        t0 = time.perf_counter()
        node = self.store.append(from_wire(arrays, spec), **meta)
        if checkpoint is not None and meta.get("run") is not None:
            self._keep_state(meta["run"], node, checkpoint)
        self.merge_seconds += time.perf_counter() - t0
        self.merged += 1
        return node

    def state_dict(self, node_id: int) -> tuple[dict[str, Any], dict | None]:
        return to_wire(self.store.state_dict(node_id))[0], None

    def merge_cost(self) -> tuple[int, float]:
        """(nodes merged, seconds spent in append on the writer's side)."""
        return self.merged, self.merge_seconds

    def close(self) -> None:
        """Write every run's latest optimizer state (a rerun of the build resumes with it), then close."""
        if not self.closed:
            for run_id in list(self.latest):
                self._write_state(run_id)
            self.closed = True
        self.store.close()


_FORWARDED = {"find_run", "start_run", "set_run_status", "finish_run", "add_evals", "add_evals_many",
              "flush", "sql", "node", "arch_spec"}


class _RemoteFiles:
    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def load_optimizer_state(self, run_id: int) -> dict | None:
        return _get(self.actor.files_call.remote("load_optimizer_state", run_id))

    def save_optimizer_state(self, run_id: int, node: int, state: Mapping) -> None:
        _get(self.actor.files_call.remote("save_optimizer_state", run_id, node, dict(state)))

    def drop_optimizer_state(self, run_id: int) -> None:
        _get(self.actor.files_call.remote("drop_optimizer_state", run_id))


def _get(ref: Any) -> Any:
    import ray

    return ray.get(ref)


class RemoteStore:
    """What a worker's run engine sees as its store: every call goes to the writer actor."""

    def __init__(self, actor: Any, root: str | Path) -> None:
        self.actor, self.root = actor, Path(root)
        self.files = _RemoteFiles(actor)
        self.checkpoint_of: Callable[[], dict] | None = None  # the run's current optimizer state

    def __getattr__(self, method: str) -> Any:
        if method not in _FORWARDED:
            raise AttributeError(method)
        return lambda *args, **kwargs: _get(self.actor.call.remote(method, *args, **kwargs))

    def append(self, weights: Any, **meta: Any) -> int:
        arrays, spec = to_wire(weights)
        checkpoint = self.checkpoint_of() if self.checkpoint_of is not None else None
        return _get(self.actor.append.remote(arrays, spec, meta, checkpoint))

    def state_dict(self, node_id: int) -> dict[str, torch.Tensor]:
        arrays, _ = _get(self.actor.state_dict.remote(node_id))
        return dict(from_wire(arrays, None))

    def load_into(self, model: torch.nn.Module, node_id: int) -> torch.nn.Module:
        model.load_state_dict(self.state_dict(node_id))
        return model


def worker_identity() -> tuple[int, str]:
    return os.getpid(), socket.gethostname()
