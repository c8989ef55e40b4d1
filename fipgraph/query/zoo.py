"""A selection of stored networks as a weight-space dataset (Schürholt et al. 2022, Model Zoos): a lazy
torch Dataset of weight vectors with a layer-slice index, each with its metrics and lineage.

    ds = to_dataset(store, where="task1_accuracy > 0.9")     # one architecture
    loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=2)
    batch["weights"]            # (B, n_weights) float32; ds.index["fc1.weight"] -> (start, end, shape)

Nothing is read until an item is asked for; each process (DataLoader workers included) opens the store
read-only on its first item and keeps at most `cache_bytes` of decoded rows, so memory stays bounded
whatever the size of the selection.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fipgraph.errors import ConfigError
from fipgraph.query._common import check_same_arch, flat_vector, float_param_names, resolve_nodes

ID_COLUMNS = ("node_id", "parent_id", "run_id")  # in the wide view but not metrics
READ_CACHE_BYTES = 64 << 20  # per reading process: one node decoded at a time, a few kept


@dataclass
class Selection:
    """Which nodes, which tensors, and their catalog side (metrics, lineage), read once from the catalog."""

    ids: list[int]
    names: list[str]  # floating-point parameters in the vector, in order
    index: dict[str, tuple[int, int, list[int]]]  # name -> (start, end, shape) in the flat vector
    metric_names: list[str]
    metrics: np.ndarray  # (nodes, metrics) float64, NaN where a node lacks one
    nodes: list[dict]  # per node: parent_id, parents, parent_weights, run, op, step, arch_id


def select_nodes(store, where: str | dict | None = None, nodes: Sequence[int] | None = None,
                 params: Sequence[str] | None = None, one_arch: bool = True) -> Selection:
    """The nodes meeting `where` (SQL condition over the wide view, or select()'s dict form) and/or in
    `nodes` (default: every node), with the tensors named by `params` (names or prefixes; default all)."""
    from fipgraph.query.selection import select

    ids = resolve_nodes(store, nodes)
    if where is not None:
        chosen = set(select(store, where=where))
        ids = [n for n in ids if n in chosen]
    if not ids:
        raise ConfigError(f"no node meets where={where!r} (nodes={nodes!r}); loosen the condition "
                          "(`fipgraph select --where ...` shows what it picks)")
    if one_arch:
        check_same_arch(store, ids)
    names = float_param_names(store, ids[0], params)
    shapes = {n: list(s) for n, s, _ in store.arch_spec(ids[0])["params"]}
    index, start = {}, 0
    for name in names:
        size = math.prod(shapes[name])
        index[name] = (start, start + size, shapes[name])
        start += size
    metric_names, metrics = _metrics(store, ids)
    return Selection(ids, names, index, metric_names, metrics, _lineage(store, ids))


def _metrics(store, ids: list[int]) -> tuple[list[str], np.ndarray]:
    id_list = ",".join(map(str, ids))
    df = store.sql(f"SELECT * FROM wide WHERE node_id IN ({id_list})").set_index("node_id").reindex(ids)
    cols = [c for c in df.columns if c not in ID_COLUMNS and c != "step" and df[c].dtype.kind in "fiu"]
    return cols, df[cols].to_numpy(np.float64)


def _lineage(store, ids: list[int]) -> list[dict]:
    """Each node's parents (primary first; several for a merge, with their weights), run, op and step."""
    id_list = ",".join(map(str, ids))
    rows = store.catalog.query_arrow(
        f"SELECT n.node_id, n.parent_id, r.name AS run, n.op, n.step, n.arch_id FROM nodes n "
        f"LEFT JOIN runs r USING (run_id) WHERE n.node_id IN ({id_list})").to_pylist()
    several = store.catalog.query_arrow(
        f"SELECT node_id, parent_id, weight FROM node_parents WHERE node_id IN ({id_list}) "
        "ORDER BY node_id, position").to_pylist()
    by_id = {r["node_id"]: {**r, "parents": [] if r["parent_id"] is None else [r["parent_id"]],
                            "parent_weights": [None] if r["parent_id"] is not None else []} for r in rows}
    for r in {r["node_id"] for r in several}:
        by_id[r]["parents"], by_id[r]["parent_weights"] = [], []
    for r in several:
        by_id[r["node_id"]]["parents"].append(r["parent_id"])
        by_id[r["node_id"]]["parent_weights"].append(r["weight"])
    return [by_id[n] for n in ids]


class WeightDataset(torch.utils.data.Dataset):
    """Stored networks as items {"node_id", "weights", "metrics", "parent_id"}: `weights` one float32 vector
    (flatten=True; `index` maps each tensor to its slice) or {name: tensor}; `metrics` a float64 vector over
    `metric_names` (NaN where missing); `parent_id` the primary parent (-1 for a root). Variable-length
    lineage (every parent of a merge, runs, ops) is in `lineage(i)`. Picklable: workers reopen the store."""

    def __init__(self, root: str | Path, selection: Selection, flatten: bool = True,
                 cache_bytes: int = READ_CACHE_BYTES) -> None:
        self.root, self.selection, self.flatten, self.cache_bytes = Path(root), selection, flatten, cache_bytes
        self._store, self._pid = None, None

    @property
    def node_ids(self) -> list[int]:
        return self.selection.ids

    @property
    def index(self) -> dict[str, tuple[int, int, list[int]]]:
        return self.selection.index

    @property
    def metric_names(self) -> list[str]:
        return self.selection.metric_names

    def __len__(self) -> int:
        return len(self.selection.ids)

    def _reader(self):
        if self._store is None or self._pid != os.getpid():  # a forked worker must not share the parent's
            from fipgraph.storage import open_store

            self._store, self._pid = open_store(self.root, mode="r", cache_bytes=self.cache_bytes), os.getpid()
        return self._store

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} of a dataset of {len(self)} nodes")
        node = self.selection.ids[i]
        state = self._reader().state_dict(node, params=self.selection.names)
        weights = (torch.from_numpy(flat_vector(state, self.selection.names)) if self.flatten
                   else {k: v.clone() for k, v in state.items()})
        parent = self.selection.nodes[i]["parent_id"]
        return {"node_id": node, "weights": weights, "metrics": torch.from_numpy(self.selection.metrics[i].copy()),
                "parent_id": -1 if parent is None else int(parent)}

    def lineage(self, i: int) -> dict:
        """{"parent_id", "parents", "parent_weights", "run", "op", "step", "arch_id"} of item i."""
        return dict(self.selection.nodes[i])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None, "_pid": None}

    def close(self) -> None:
        if self._store is not None and self._pid == os.getpid():
            self._store.close()
        self._store = None


def to_dataset(store, where: str | dict | None = None, params: Sequence[str] | None = None, flatten: bool = True,
               nodes: Sequence[int] | None = None, cache_bytes: int = READ_CACHE_BYTES) -> WeightDataset:
    """A lazy torch Dataset over the selected nodes (one architecture); see WeightDataset for the items."""
    store.flush()
    return WeightDataset(store.root, select_nodes(store, where, nodes, params), flatten, cache_bytes)
