"""A selection of stored networks written out as a weight-space dataset, for tools outside fipgraph.

- "modelzoo": the Model Zoos layout (Schürholt et al. 2022; Ray Tune trial folders). One folder per run
  (nodes without a run, e.g. merges: one per node) holding `params.json` (the run's config), `result.json`
  (one JSON line per node: training_iteration = step, node_id, lineage, metrics) and
  `checkpoint_<node_id>/checkpoints` (the node's state dict, torch.save). At the top, `index_dict.json`
  maps slices of the flattened weight vector to tensors, per architecture.
- "parquet": `zoo.parquet`, one row per node (node_id, parents, parent_weights, run, op, step, arch_id,
  metrics, and `weights`: the float tensors as one float32 list, or `weights_file`: a safetensors file
  beside it), readable by `datasets.load_dataset("parquet", data_files=...)`; `index_dict.json` as above.
Nodes are read one at a time, so memory holds one network, whatever the size of the selection.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fipgraph.errors import ConfigError
from fipgraph.query._common import flat_vector
from fipgraph.query.zoo import Selection, select_nodes

FORMATS = ("modelzoo", "parquet")
ROWS_PER_GROUP = 64  # Parquet rows written at a time: bounded memory, few row groups


def export_zoo(store, out: str | Path, format: str = "modelzoo", *, where: str | dict | None = None,
               nodes: Sequence[int] | None = None, params: Sequence[str] | None = None,
               weights: str = "list") -> Path:
    """Write the selected nodes to `out` (a new or empty folder) as `format`; returns `out`.
    `params`: only these tensors (names or prefixes); `weights` (parquet): "list" or "safetensors"."""
    if format not in FORMATS:
        raise ConfigError(f"export format {format!r}; use one of {list(FORMATS)}")
    if weights not in ("list", "safetensors"):
        raise ConfigError(f"weights={weights!r}; use 'list' (a float32 list column) or 'safetensors' (a file per node)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; export into a new or empty folder")
    store.flush()
    sels = _per_arch(store, where, nodes, params)
    out.mkdir(parents=True, exist_ok=True)
    index = {store.node(s.ids[0])["arch_id"]: {n: {"start": a, "end": b, "shape": shape}
                                               for n, (a, b, shape) in s.index.items()} for s in sels}
    (out / "index_dict.json").write_text(json.dumps(index, indent=1))
    if format == "modelzoo":
        for sel in sels:
            _write_modelzoo(store, sel, out)
    else:
        _write_parquet(store, sels, out, weights)
    return out


def _per_arch(store, where, nodes, params) -> list[Selection]:
    """One Selection per architecture among the chosen nodes (a zoo may hold several)."""
    everything = select_nodes(store, where, nodes, params=None, one_arch=False)
    groups: dict[str, list[int]] = {}
    for n, info in zip(everything.ids, everything.nodes):
        groups.setdefault(info["arch_id"], []).append(n)
    return [select_nodes(store, None, ids, params) for ids in groups.values()]


def _record(sel: Selection, i: int) -> dict:
    """A node's catalog side as JSON-ready values (metrics a node lacks are left out)."""
    info = sel.nodes[i]
    metrics = {m: float(v) for m, v in zip(sel.metric_names, sel.metrics[i]) if not math.isnan(v)}
    return {"node_id": sel.ids[i], "parent_id": info["parent_id"], "parents": info["parents"],
            "parent_weights": info["parent_weights"], "run": info["run"], "op": info["op"], "step": info["step"],
            "arch_id": info["arch_id"], **metrics}


def _write_modelzoo(store, sel: Selection, out: Path) -> None:
    trials: dict[str, list[int]] = {}
    for i, info in enumerate(sel.nodes):
        trials.setdefault(info["run"] if info["run"] is not None else f"node_{sel.ids[i]:06d}", []).append(i)
    configs = _run_configs(store)
    for trial, rows in trials.items():
        folder = out / re.sub(r"[^A-Za-z0-9_.-]", "_", trial)  # a run name is free text, a folder name is not
        folder.mkdir(exist_ok=True)  # a run with nodes of two architectures: one trial, lines appended
        (folder / "params.json").write_text(json.dumps(configs.get(trial, {}), indent=1, default=str))
        with open(folder / "result.json", "a") as f:
            for i in sorted(rows, key=lambda i: (sel.nodes[i]["step"] is None, sel.nodes[i]["step"], sel.ids[i])):
                rec = _record(sel, i)
                ckpt = folder / f"checkpoint_{sel.ids[i]:06d}"
                ckpt.mkdir()
                state = store.state_dict(sel.ids[i], params=sel.names)
                torch.save({k: v.clone() for k, v in state.items()}, ckpt / "checkpoints")
                f.write(json.dumps({"training_iteration": rec["step"], "checkpoint": ckpt.name, **rec}) + "\n")


def _run_configs(store) -> dict[str, dict]:
    df = store.sql("SELECT name, config FROM runs")
    return {n: json.loads(c) if isinstance(c, str) else {} for n, c in zip(df["name"], df["config"])}


def _write_parquet(store, sels: list[Selection], out: Path, weights: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    metric_names = sorted({m for s in sels for m in s.metric_names})
    schema = pa.schema([("node_id", pa.int64()), ("parent_id", pa.int64()), ("parents", pa.list_(pa.int64())),
                        ("parent_weights", pa.list_(pa.float64())), ("run", pa.string()), ("op", pa.string()),
                        ("step", pa.int64()), ("arch_id", pa.string())]
                       + [(m, pa.float64()) for m in metric_names]
                       + [("weights", pa.list_(pa.float32())) if weights == "list" else ("weights_file", pa.string())])
    with pq.ParquetWriter(out / "zoo.parquet", schema) as writer:
        rows: list[dict] = []
        for sel in sels:
            for i in range(len(sel.ids)):
                rec = _record(sel, i)
                rows.append({**{m: None for m in metric_names}, **rec, **_weights_cell(store, sel, i, out, weights)})
                if len(rows) >= ROWS_PER_GROUP:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    rows = []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))


def _weights_cell(store, sel: Selection, i: int, out: Path, weights: str) -> dict:
    state = store.state_dict(sel.ids[i], params=sel.names)
    if weights == "list":
        return {"weights": np.asarray(flat_vector(state, sel.names))}
    from safetensors.torch import save_file

    name = f"weights/node_{sel.ids[i]:06d}.safetensors"
    (out / "weights").mkdir(exist_ok=True)
    save_file({k: v.clone().contiguous() for k, v in state.items()}, out / name)
    return {"weights_file": name}
