"""Merges of stored networks: linear (model soups), task arithmetic, TIES, SLERP, stored as new nodes.

A merge is a node with several parents (the merged nodes, with their weights; `node_parents`), op
"merge", and the method, base and options in its tags, evaluated like any node. The arithmetic lives in
`merge_methods` (mergekit's definitions); this module checks the request, reads the weights, evaluates
and records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fipgraph.device import resolve_device
from fipgraph.errors import ConfigError, ReadOnlyStoreError
from fipgraph.query._common import check_same_arch, resolve_nodes
from fipgraph.query.merge_methods import MergeMethod, method as merge_method


@dataclass
class Merged:
    """A merge's result before and after it is stored: its weights, where they came from, its scores."""

    method: str
    nodes: list[int]
    weights: list[float]
    base: int | None
    options: dict
    state: dict[str, torch.Tensor]
    metrics: dict = field(default_factory=dict)  # {dataset: {metric: value}}
    node_id: int | None = None
    extra_tags: dict = field(default_factory=dict)  # e.g. {"soup": how a soup chose its ingredients}

    @property
    def tags(self) -> dict:
        return {"merge": {"method": self.method, "nodes": self.nodes, "weights": self.weights, "base": self.base,
                          "options": {("lambda" if k == "lambda_" else k): v for k, v in self.options.items()}},
                **self.extra_tags}

    def save(self, store, run: int | None = None) -> int:
        """Append the merge as a node whose parents are the merged nodes (primary: the first)."""
        self.node_id = store.append(self.state, parents=dict(zip(self.nodes, self.weights)), op="merge", run=run,
                                    metrics=self.metrics or None, tags=self.tags)
        return self.node_id


def merge(store, nodes: Sequence[int], method: str = "linear", *, base: int | None = None,
          weights: Sequence[float] | None = None, data: Any = None, record: bool = True, batch_size: int = 256,
          device: str | torch.device = "auto", **options: Any) -> Merged:
    """Merge stored networks of one architecture with `method` and (with `record`) store the result as a node.

    - "linear": sum_i w_i x_i / sum_i w_i (`normalize=True`); equal weights make a uniform soup.
    - "task_arithmetic": base + lambda_ * sum_i w_i (x_i - base) (`normalize=False`, `lambda_=1`).
    - "ties": TIES over the task vectors x_i - base (`density=1`, `normalize=True`, `lambda_=1`).
    - "slerp": two nodes, spherical interpolation from the first (t = 0) to the second (`t=0.5`).
    `base` (task_arithmetic, ties) must be an ancestor of every merged node. `weights`: one per node
    (default 1 each). `data`: a Task or list of Tasks the merge is scored on (accuracy, loss), as evaluate does.
    Bad input raises ConfigError (or NodeNotFoundError) before anything is written."""
    spec = merge_method(method)
    ids = resolve_nodes(store, nodes)
    opts = _options(spec, options)
    w = _weights(spec, ids, weights, opts)
    _check_base(store, spec, ids, base)
    check_same_arch(store, ids + ([base] if base is not None else []))
    merged = Merged(spec.name, ids, w, base, opts, merge_states(store, spec, ids, w, base, opts))
    return score_and_record(store, merged, data, record, batch_size, device)


def score_and_record(store, merged: "Merged", data, record: bool, batch_size: int, device) -> "Merged":
    """Score a merged network on ``data`` (if any) and store it as a node (if ``record``): merges and soups alike."""
    if data is not None:
        merged.metrics = score_state(store, merged.nodes[0], merged.state, data, batch_size=batch_size, device=device)
    if record:
        if getattr(store, "mode", "a") == "r":
            raise ReadOnlyStoreError(f"store {store.root} is open read-only; open it with mode='a' to record the "
                                     "merge, or pass record=False and call .save(store) on a writable store")
        merged.save(store)
        store.flush()
    return merged


def merge_states(store, spec: MergeMethod, ids: list[int], weights: list[float], base: int | None,
                 options: dict) -> dict[str, torch.Tensor]:
    """The merged state dict; tensors that are not floating point (counters, masks) are the first node's."""
    states = [store.state_dict(n) for n in ids]
    base_state = store.state_dict(base) if base is not None else None
    w = torch.tensor(weights, dtype=torch.float64)
    out = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        tensors = [s[name] for s in states]
        out[name] = spec.fn(tensors, w, None if base_state is None else base_state[name], **options)
    return out


def score_state(store, like: int, state: dict, data: Any, *, batch_size: int = 256,
                device: str | torch.device = "auto") -> dict:
    """{task: {accuracy, loss}} of `state` loaded into node `like`'s architecture, scored as evaluate scores."""
    from fipgraph.query.evaluation import empty_model, query_batches
    from fipgraph.query.scoring import node_heads, score_batches, task_columns

    dev = resolve_device(device)
    mdl = empty_model(store, like)
    mdl.load_state_dict(state)
    mdl.to(dev).eval()
    head = node_heads(store, [like]).get(like)
    out = {}
    for task in (list(data) if isinstance(data, (list, tuple)) else [data]):
        name, _, batches, _ = query_batches(task, batch_size=batch_size)
        s = score_batches(mdl, batches, task_columns(task, head, like), device=dev)
        out[name] = {"accuracy": s["accuracy"], "loss": s["loss"]}
    return out


def _options(spec: MergeMethod, options: Mapping) -> dict:
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ConfigError(f"merge method {spec.name!r} takes options {sorted(spec.options) or 'none'}, "
                          f"not {unknown}")
    opts = {**spec.options, **options}
    for key in ("density", "t"):
        if key in opts and not (isinstance(opts[key], (int, float)) and 0 <= opts[key] <= 1):
            raise ConfigError(f"{spec.name}: {key}={opts[key]!r}; use a number in [0, 1]")
    if "density" in opts and opts["density"] <= 0:
        raise ConfigError(f"ties: density={opts['density']!r} keeps no entry of the task vectors; use 0 < density <= 1")
    if "lambda_" in opts and not (isinstance(opts["lambda_"], (int, float)) and math.isfinite(opts["lambda_"])):
        raise ConfigError(f"{spec.name}: lambda_={opts['lambda_']!r}; use a finite number")
    return opts


def _weights(spec: MergeMethod, ids: list[int], weights: Sequence[float] | None, opts: dict) -> list[float]:
    n = len(ids)
    if n < spec.min_nodes or (spec.max_nodes is not None and n > spec.max_nodes):
        want = spec.min_nodes if spec.min_nodes == spec.max_nodes else f"at least {spec.min_nodes}"
        raise ConfigError(f"merge method {spec.name!r} takes {want} nodes, got {n}: {ids}")
    if len(set(ids)) != n:
        raise ConfigError(f"nodes {ids} name a node twice; give each node once and weigh it with weights=")
    if not spec.weighted:
        if weights is not None:
            raise ConfigError(f"{spec.name} takes no weights; set where it lies between the two nodes with t=")
        return [1 - float(opts["t"]), float(opts["t"])]  # recorded as the parents' weights
    w = [1.0] * n if weights is None else [float(x) for x in weights]
    if len(w) != n or not all(math.isfinite(x) for x in w):
        raise ConfigError(f"weights={list(weights or [])} for {n} nodes {ids}: give one finite number per node")
    if spec.name == "linear" and opts.get("normalize") and abs(sum(w)) < 1e-12:
        raise ConfigError(f"linear merge weights {w} sum to 0, so they cannot be normalised; change them "
                          "or pass normalize=False")
    return w


def _check_base(store, spec: MergeMethod, ids: list[int], base: int | None) -> None:
    """A method that adds task vectors needs a base every merged node descends from; others take none."""
    if not spec.needs_base:
        if base is not None:
            raise ConfigError(f"merge method {spec.name!r} takes no base (base={base}); leave it out")
        return
    if base is None:
        raise ConfigError(f"merge method {spec.name!r} needs base=: the node the task vectors start from, "
                          "an ancestor of every merged node (e.g. the pretrained network they were tuned from)")
    import networkx as nx

    base = resolve_nodes(store, [base])[0]
    g = store.graph()
    strangers = [n for n in ids if base not in nx.ancestors(g, n)]
    if strangers:
        raise ConfigError(f"base node {base} is not an ancestor of node(s) {strangers}, so x - base is no task "
                          f"vector; choose a common ancestor (fipgraph.query.lineage(store, {strangers[0]}, "
                          "every_parent=True) lists them)")
