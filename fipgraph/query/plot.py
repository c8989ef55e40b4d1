"""PNG pictures of a store: the graph laid out in weight-space PCA coloured by a metric (like the
paper's 300 BERT models coloured by perplexity), and metrics along the path of a run."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fipgraph.errors import ConfigError  # noqa: E402
from fipgraph.query._common import as_list, check_metric  # noqa: E402
from fipgraph.storage.sql import quote_ident  # noqa: E402


def plot_graph(store, out: str, color: str | None = None, *, pca_dataset: str = "pca",
               fit_if_missing: bool = True, cmap: str = "viridis", log_color: bool = False,
               title: str | None = None) -> str:
    """Nodes at their recorded PCA coordinates ({pca_dataset}_pc1/_pc2; fitted and recorded when
    missing), parent→child edges as lines, nodes coloured by the wide-view column `color`."""
    x_col, y_col = f"{pca_dataset}_pc1", f"{pca_dataset}_pc2"
    cols = list(store.sql("select * from wide limit 0").columns)
    if color is not None:
        check_metric(store, color)
    sel = f", {quote_ident(color)} as c" if color else ""
    if x_col not in cols or y_col not in cols:
        if not fit_if_missing:
            raise ConfigError(f"no PCA coordinates ({x_col}, {y_col}) in the store; run `fipgraph pca` first")
        from fipgraph.query.pca import WeightPCA

        # coordinates from the fit itself: a store that records later (a query command) has none yet
        pca = WeightPCA(2, dataset=pca_dataset, progress=False).fit(store)
        df = store.sql(f"select node_id{sel} from wide order by node_id")
        coords = pd.DataFrame({"node_id": pca.nodes_, "x": pca.coords_[:, 0], "y": pca.coords_[:, 1]})
        df = coords.merge(df, on="node_id", how="left")
    else:
        df = store.sql(f"select node_id, {quote_ident(x_col)} as x, {quote_ident(y_col)} as y{sel} "
                       "from wide order by node_id").dropna(subset=["x", "y"])
    pos = {int(n): (x, y) for n, x, y in zip(df["node_id"], df["x"], df["y"])}
    edges = store.sql("select src, dst from edges")
    fig, ax = plt.subplots(figsize=(7, 6))
    segs = [(pos[s], pos[d]) for s, d in zip(edges["src"], edges["dst"]) if s in pos and d in pos]
    if segs:
        from matplotlib.collections import LineCollection

        ax.add_collection(LineCollection(segs, colors="0.7", linewidths=0.6, zorder=1))
    if color:
        c = df["c"].to_numpy(float)
        c = np.log10(c) if log_color else c
        sc = ax.scatter(df["x"], df["y"], c=c, cmap=cmap, s=14, zorder=2, plotnonfinite=True)
        fig.colorbar(sc, ax=ax, label=(f"log10 {color}" if log_color else color))
    else:
        ax.scatter(df["x"], df["y"], s=14, zorder=2)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title(title or f"{len(df)} networks in weight-space PCA")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def run_series(store, run: str | int, metrics: Sequence[str] | None = None,
               x: str = "step") -> dict[str, pd.DataFrame]:
    """Per metric, the (x, value) rows of a run's nodes that have the metric (evaluated nodes only)."""
    if isinstance(run, str):
        info = store.find_run(run)
        if info is None:
            names = list(store.sql("select name from runs")["name"])
            raise ConfigError(f"no run named {run!r}; runs: {names}")
        run_id = int(info["run_id"])
    else:
        run_id = int(run)
    cols = list(store.sql("select * from wide limit 0").columns)
    metrics = as_list(metrics) or [c for c in cols if c.endswith("accuracy")]
    if not metrics:
        raise ConfigError("no *_accuracy column in the store; pass metrics=[...] (wide-view columns)")
    for m in metrics:
        check_metric(store, m)
    if x not in ("step", "path_length", "node_id"):
        raise ConfigError(f"x={x!r}; use 'step', 'path_length' or 'node_id'")
    sel = ", ".join(quote_ident(m) for m in metrics)
    df = store.sql(f"select {x}, {sel} from wide where run_id = {run_id} order by {x}")
    if df.empty:
        raise ConfigError(f"run {run} has no nodes")
    # nodes are often evaluated every k-th save only: drop the gaps so each metric draws one line
    return {m: df[[x, m]].dropna().reset_index(drop=True) for m in metrics}


def plot_run(store, run: str | int, out: str, metrics: Sequence[str] | None = None,
             x: str = "step") -> str:
    """Lines of `metrics` (default: every *_accuracy column) along the nodes of a run, by step."""
    series = run_series(store, run, metrics, x)
    fig, ax = plt.subplots(figsize=(7, 4))
    for m, points in series.items():
        ax.plot(points[x], points[m], marker=".", label=m)
    ax.set_xlabel(x)
    ax.set_ylabel("value")
    ax.legend()
    ax.set_title(f"run {run}")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
