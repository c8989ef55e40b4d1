"""Saving a node without stalling the device: pinned host snapshots, copied behind the step that made them.

On a CUDA device a plain save waits: ``tensor.to("cpu")`` blocks the host until every kernel queued so
far has run, then copies, so the device idles while the host copies and until it queues the next step.
``NodeSaver.save`` instead queues non-blocking copies into pinned (page-locked) host buffers on the
device's current stream, records an event behind them, and returns at once. The copies run after the
optimizer step that made the node and before any later step (one stream runs its work in order), so a
node's bytes are the weights at its step, never a later step's. After each step ``poll`` appends every
snapshot whose event has fired (``event.query()`` never blocks), in the order they were taken, so the
store's CPU work overlaps the device's next steps. The loop waits only when ``SNAPSHOT_DEPTH`` snapshots
are still in flight (their buffers are all in use) or the store's own bounded writer queue is full.

Each set of host buffers is reused once its node is appended: ``Store.append`` copies the weights into
its own snapshot before it returns (storage/writer.py: "training threads only snapshot the weights").
Tied tensors share one host buffer, so the store sees the tie as it would on the device.

Elsewhere (CPU, MPS, or a store that must read other state at the moment of the append, such as a Ray
worker's RemoteStore with its optimizer checkpoint) ``save`` appends at once, exactly as before. A
snapshot not yet appended is like a node still in the writer's queue: not committed, so a crash can
lose it, and ``drain`` (called when a walk stops or finishes) appends it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from dataclasses import dataclass

import torch

from fipgraph.device import HostWeights, host_buffer_like, host_state_dict, record_event
from fipgraph.storage.inputs import model_spec_of

log = logging.getLogger("fipgraph.build")
SNAPSHOT_DEPTH = 2  # snapshots in flight before a save waits for the oldest (each holds one copy of the weights)
DEFERRED_DEVICES = ("cuda",)  # device types whose saves are snapshotted and appended later (tests add "cpu")


class _Pending:
    """Stands for the node taken just before by the same saver, whose id is not known yet."""

    def __repr__(self) -> str:
        return "PENDING"


PENDING = _Pending()


def _structure(state: dict[str, torch.Tensor]) -> tuple:
    """Names, shapes, dtypes and ties of a state dict: buffers fit another state dict with the same structure."""
    first: dict[tuple, int] = {}
    out = []
    for i, (name, t) in enumerate(state.items()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        out.append((name, tuple(t.shape), t.dtype, first.setdefault(key, i)))
    return tuple(out)


class HostBuffers:
    """Host copies of one state dict's tensors (pinned on CUDA), filled by non-blocking copies and reused."""

    def __init__(self, state: dict[str, torch.Tensor], structure: tuple, device: torch.device) -> None:
        self.structure = structure
        self.tensors: dict[str, torch.Tensor] = {}
        for (name, _, _, owner), t in zip(structure, state.values()):
            owner_name = structure[owner][0]
            self.tensors[name] = self.tensors[owner_name] if owner_name in self.tensors else host_buffer_like(t, device)
        self.distance: torch.Tensor | None = None

    def fill(self, state: dict[str, torch.Tensor], distance: torch.Tensor | None) -> None:
        """Queue the copies (on CUDA they return before the bytes arrive: read them after the event)."""
        done: set[int] = set()
        for (name, _, _, owner), t in zip(self.structure, state.values()):
            if owner not in done:  # a tied tensor is copied once
                done.add(owner)
                self.tensors[name].copy_(t.detach(), non_blocking=True)
        if distance is not None:
            if self.distance is None or self.distance.dtype != distance.dtype:
                self.distance = host_buffer_like(distance.detach().reshape(()), distance.device)
            self.distance.copy_(distance.detach().reshape(()), non_blocking=True)


@dataclass
class _InFlight:
    buffers: HostBuffers
    event: "torch.cuda.Event | None"  # None: the copies were synchronous
    parent: "int | None | _Pending"
    distance_per: int | None  # output_distance = float(distance) / distance_per; None: no distance
    spec: dict | None
    meta: dict


class NodeSaver:
    """Appends a walk's nodes to its store; on a CUDA device through pinned snapshots (see the module doc)."""

    def __init__(self, store, device: torch.device, depth: int = SNAPSHOT_DEPTH) -> None:
        self.store, self.device, self.depth = store, device, max(1, int(depth))
        self.last_id: int | None = None  # the last node this saver appended
        self._flight: collections.deque[_InFlight] = collections.deque()
        self._free: list[HostBuffers] = []
        # held around each Store.append: several threads saving into one store share one (replica groups)
        self.store_lock: contextlib.AbstractContextManager = contextlib.nullcontext()

    @property
    def deferred(self) -> bool:
        """Whether saves snapshot now and append later (a Ray worker's store reads the optimizer at the append)."""
        return self.device.type in DEFERRED_DEVICES and not hasattr(self.store, "checkpoint_of")

    @property
    def in_flight(self) -> int:
        return len(self._flight)

    def save(self, net: torch.nn.Module, *, parent, distance: torch.Tensor | None = None, distance_per: int = 1,
             **meta) -> int | None:
        """Store ``net`` as it is now (child of ``parent``, or of the previous save when PENDING).

        Returns the node id, or None when the node is snapshotted and appended later (``poll``/``drain``).
        ``output_distance`` is ``float(distance) / distance_per``; ``meta`` goes to ``Store.append``."""
        if not self.deferred:
            self.drain()
            od = None if distance is None else float(distance) / distance_per
            parent = self.last_id if parent is PENDING else parent
            with self.store_lock:
                self.last_id = self.store.append(host_state_dict(net), parent=parent, output_distance=od, **meta)
            return self.last_id
        state = net.state_dict()
        while len(self._flight) >= self.depth:  # the bounded queue is full: wait for the oldest snapshot
            self._append_oldest()
        buffers = self._buffers_for(state)
        buffers.fill(state, distance)
        self._flight.append(_InFlight(buffers, record_event(self.device), parent,
                                      None if distance is None else distance_per, model_spec_of(net), meta))
        return None

    def _buffers_for(self, state: dict[str, torch.Tensor]) -> HostBuffers:
        structure = _structure(state)
        for i, buffers in enumerate(self._free):
            if buffers.structure == structure:
                return self._free.pop(i)
        if len(self._free) >= self.depth:  # another architecture (e.g. LoRA merged): drop the oldest unused set
            self._free.pop(0)
        return HostBuffers(state, structure, self.device)

    def poll(self) -> None:
        """Append every snapshot whose copies have finished, oldest first; never waits for the device."""
        while self._flight and (self._flight[0].event is None or self._flight[0].event.query()):
            self._append_oldest()

    def drain(self) -> int | None:
        """Append every snapshot (waiting for its copies); returns the id of the last node appended."""
        while self._flight:
            self._append_oldest()
        return self.last_id

    def drain_after_error(self, name: str) -> None:
        """``drain`` while another error propagates: a failure here is logged, so the caller sees the first."""
        try:
            self.drain()
        except Exception as exc:
            log.error("%s: node(s) taken before the error could not be stored: %s", name, exc)

    def _append_oldest(self) -> None:
        job = self._flight.popleft()
        try:
            if job.event is not None:
                job.event.synchronize()
            weights = HostWeights(job.buffers.tensors)
            weights.fipgraph_spec = job.spec
            od = None if job.distance_per is None else float(job.buffers.distance) / job.distance_per
            parent = self.last_id if job.parent is PENDING else job.parent
            with self.store_lock:
                self.last_id = self.store.append(weights, parent=parent, output_distance=od, **job.meta)
        except BaseException:
            self._flight.clear()  # the later snapshots descend from this node: none of them can be stored
            raise
        self._free.append(job.buffers)  # the store copied the bytes: the buffers can take the next snapshot
