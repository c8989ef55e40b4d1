"""What the run engine (``fipgraph.path``) asks of its store, declared.

``Store`` satisfies it in a local build; a Ray worker's ``RemoteStore`` (``fipgraph.scale.remote``) in a
scaled-out one, sending each call to the writer actor. The engine calls nothing else: no raw SQL, so a
store needs no catalog of its own to walk. tests/test_store_protocol.py checks both against it.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import torch

from fipgraph.storage.sql import NodeAt


@runtime_checkable
class OptimizerStates(Protocol):
    """``store.files``: a run's optimizer checkpoint, beside the store (for a bit-exact resume)."""

    def load_optimizer_state(self, run_id: int) -> dict | None: ...

    def save_optimizer_state(self, run_id: int, node: int, state: Mapping) -> None: ...

    def drop_optimizer_state(self, run_id: int) -> None: ...


@runtime_checkable
class EngineStore(Protocol):
    files: OptimizerStates

    # -- runs
    def find_run(self, name: str) -> dict | None:
        """The runs row named ``name`` (config decoded), or None."""

    def run_by_id(self, run_id: int) -> dict | None:
        """The runs row ``run_id`` (config decoded), or None."""

    def start_run(self, name: str, op: str | None = None, config: Mapping | None = None) -> int: ...

    def set_run_status(self, run_id: int, status: str) -> None: ...

    def finish_run(self, run_id: int, status: str = "finished", error: str | None = None) -> None: ...

    def last_node(self, run_id: int) -> NodeAt | None:
        """The run's node furthest along its walk (``fipgraph.storage.sql``), or None before its first."""

    def first_tagged(self, run_id: int, tag: str) -> NodeAt | None:
        """The run's first node (by step) whose tags hold ``tag: true``, or None."""

    # -- nodes
    def append(self, weights: Any, **meta: Any) -> int: ...

    def node(self, node_id: int) -> dict: ...

    def node_tags(self, node_id: int) -> dict: ...

    def arch_spec(self, node_id: int) -> dict: ...

    def state_dict(self, node_id: int) -> dict[str, torch.Tensor]: ...

    def load_into(self, model: torch.nn.Module, node_id: int) -> torch.nn.Module: ...

    # -- evaluations and commits
    def add_evals(self, node_id: int, metrics: Mapping) -> None: ...

    def has_evals(self, node_id: int) -> bool: ...

    def flush(self) -> None: ...
