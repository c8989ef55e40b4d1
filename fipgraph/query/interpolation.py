"""Loss and accuracy along the straight segment between two stored networks.

w(t) = (1 - t) w_A + t w_B for t = 0, 1/(points-1), ..., 1 (every floating-point tensor,
buffers included; integer buffers are A's). The loss barrier, max_t [loss(t) - ((1-t) loss(0) +
t loss(1))], is the linear mode-connectivity measure (Frankle et al. 2020): near zero when A and B
lie in one linearly connected basin, which FIP paths are expected to preserve only along the path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fipgraph.device import resolve_device
from fipgraph.errors import ConfigError, ReadOnlyStoreError
from fipgraph.query._common import check_same_arch, resolve_nodes
from fipgraph.query.evaluation import empty_model, query_batches
from fipgraph.query.recorded import as_datasets
from fipgraph.query.scoring import node_heads, score_batches, task_columns, to_device


def blend(state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor], t: float) -> dict:
    """(1 - t) A + t B for floating-point tensors; other tensors (counters, masks) are A's."""
    return {k: torch.lerp(v, state_b[k].to(v.dtype), t) if v.is_floating_point() else v
            for k, v in state_a.items()}


def barrier(t: np.ndarray, values: np.ndarray, higher_is_worse: bool = True) -> float:
    """Largest excess of `values` over the straight line between its ends (for accuracy: deficit)."""
    line = (1 - t) * values[0] + t * values[-1]
    excess = values - line if higher_is_worse else line - values
    return float(excess.max())


def interpolate(store, a: int, b: int, datasets: Any = None, *, points: int = 11, batch_size: int = 256,
                max_batches: int | None = None, model: nn.Module | None = None, record: bool = True,
                device: str | torch.device = "auto") -> pd.DataFrame:
    """Loss and accuracy of w(t) on each dataset (a Task or a list of Tasks; None: every task of the data A
    and B were built with, a name such as "task2": that one) at `points` evenly
    spaced t in [0, 1]; a DataFrame with a row per t and columns "{task}_loss", "{task}_accuracy".
    `df.attrs["barrier"]` holds each task's loss and accuracy barriers. With `record`, the curve
    and barriers are stored as evals of node `a` under dataset "interpolate:{b}/{task}" (metrics
    loss_t0 .. loss_t{points-1}, accuracy_t0 .., loss_barrier, accuracy_barrier)."""
    if not isinstance(points, int) or points < 2:
        raise ConfigError(f"points={points!r}; use an integer >= 2 (the two ends are points too)")
    dev = resolve_device(device)
    a, b = resolve_nodes(store, [a, b])
    if a == b:
        raise ConfigError(f"A and B are both node {a}; interpolate between two different networks")
    check_same_arch(store, [a, b])
    datasets = as_datasets(store, [a, b], datasets)
    tasks = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets]
    heads = node_heads(store, [a, b])
    prepared = []
    for task in tasks:
        name, _, batches, _ = query_batches(task, batch_size=batch_size, max_batches=max_batches)
        cols = {n: task_columns(task, heads.get(n), n) for n in (a, b)}  # refuses a head mismatch
        prepared.append((name.replace("/", "_"), [to_device(x, dev) for x in batches], cols[a]))
    mdl = (model if model is not None else empty_model(store, a)).to(dev).eval()
    state_a = {k: v.to(dev) for k, v in store.state_dict(a).items()}
    state_b = {k: v.to(dev) for k, v in store.state_dict(b).items()}
    ts = np.linspace(0.0, 1.0, points)
    rows = []
    for t in ts:
        mdl.load_state_dict(blend(state_a, state_b, float(t)))
        row = {"t": float(t)}
        for name, batches, cols in prepared:
            s = score_batches(mdl, batches, cols)
            row[f"{name}_loss"], row[f"{name}_accuracy"] = s["loss"], s["accuracy"]
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update(a=a, b=b, barrier={})
    for name, _, _ in prepared:
        df.attrs["barrier"][f"{name}_loss"] = barrier(ts, df[f"{name}_loss"].to_numpy())
        df.attrs["barrier"][f"{name}_accuracy"] = barrier(ts, df[f"{name}_accuracy"].to_numpy(), False)
    if record:
        _record(store, df, [p[0] for p in prepared])
    return df


def _record(store, df: pd.DataFrame, names: Sequence[str]) -> None:
    a, b = df.attrs["a"], df.attrs["b"]
    evals = {}
    for name in names:
        metrics = {f"{m}_t{i}": float(v) for m in ("loss", "accuracy") for i, v in enumerate(df[f"{name}_{m}"])}
        metrics.update(loss_barrier=df.attrs["barrier"][f"{name}_loss"],
                       accuracy_barrier=df.attrs["barrier"][f"{name}_accuracy"])
        evals[f"interpolate:{b}/{name}"] = metrics
    try:
        store.add_evals(a, evals)
    except ReadOnlyStoreError:
        pass  # the caller still gets the curve


def plot_interpolation(df: pd.DataFrame, out: str) -> str:
    """Loss (left axis) and accuracy (right axis) against t, one line pair per task; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    acc_ax = ax.twinx()
    for col in df.columns:
        if col.endswith("_loss"):
            ax.plot(df["t"], df[col], marker="o", label=col)
        elif col.endswith("_accuracy"):
            acc_ax.plot(df["t"], df[col], marker="s", linestyle="--", label=col)
    ax.set_xlabel(f"t  (0 = node {df.attrs['a']}, 1 = node {df.attrs['b']})")
    ax.set_ylabel("loss (solid)")
    acc_ax.set_ylabel("accuracy (dashed)")
    lines = ax.get_legend_handles_labels()
    more = acc_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="best")
    ax.set_title("linear interpolation between two networks")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
