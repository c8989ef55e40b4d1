"""The table and curves of issue 22 §3 from one or more stores built by run.py (read-only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

QUERIES = {"task1": "wiki", "task2": "news"}  # task 1 = gensim's enwiki, task 2 = the Lee news corpus

SQL = """
select r.name as run, n.node_id, n.step, n.tags, e.dataset, e.metric, e.value
from nodes n join runs r using (run_id) join evals e using (node_id)
where e.metric in ('perplexity', 'perplexity_se', 'loss', 'loss_se', 'sparsity', 'distance_to_sparse')
"""


def read_store(path: Path) -> pd.DataFrame:
    """One row per (store, run, node, step) with wiki/news perplexity and standard error and sparsity."""
    import fipgraph

    with fipgraph.open_store(path, "r") as s:
        df = s.sql(SQL)
    df["run"] = df["run"].str.split("/").str[-1]
    df["key"] = df["dataset"].map(QUERIES).fillna(df["dataset"]) + "_" + df["metric"]
    wide = df.pivot_table(index=["run", "node_id", "step"], columns="key", values="value", aggfunc="last").reset_index()
    wide = wide.merge(df[["node_id", "tags"]].drop_duplicates("node_id"), on="node_id", how="left")
    for q in QUERIES.values():  # stores built before perplexity was recorded: exp(loss)
        if f"{q}_perplexity" not in wide and f"{q}_loss" in wide:
            wide[f"{q}_perplexity"] = wide[f"{q}_loss"].map(math.exp)
    wide["store"] = path.name
    return wide


ORDER = ["pretrained", "dense", "oneshot_magnitude_30", "oneshot_wanda_30", "fip_30 projection", "fip_30",
         "fip_30_walk projection", "fip_30_walk", "oneshot_magnitude_50", "oneshot_wanda_50", "fip_50 projection", "fip_50", "fip_50_r90 projection", "fip_50_r90",
         "fip_50_walk projection", "fip_50_walk"]


def last_nodes(df: pd.DataFrame) -> pd.DataFrame:
    """Each run's last evaluated node, the pretrained network (dense step 0) and each FIP run's projection node."""
    rows = df.sort_values("step").groupby(["store", "run"]).tail(1)
    pre = df[(df["run"] == "dense") & (df["step"] == 0)].assign(run="pretrained")
    proj = df[df["tags"].fillna("").str.contains('"projection": true')] if "tags" in df else df.iloc[:0]
    out = pd.concat([pre, rows, proj.assign(run=proj["run"] + " projection")]).drop_duplicates(["store", "run"])
    rank = {r: i for i, r in enumerate(ORDER)}
    return out.assign(_o=out["run"].map(lambda r: rank.get(r, len(ORDER)))).sort_values(["_o", "store"])


def _cell(row, q: str, dense: float) -> str:
    ppl, se = row.get(f"{q}_perplexity"), row.get(f"{q}_perplexity_se")
    if ppl is None or pd.isna(ppl):
        return "–"
    err = f" ± {se:.2g}" if se is not None and not pd.isna(se) else ""
    return f"{ppl:.4g}{err} ({ppl / dense:.2f}×)"


def table(df: pd.DataFrame) -> str:
    last = last_nodes(df)
    dense = last[last["run"] == "dense"]
    ref = {q: float(dense[f"{q}_perplexity"].iloc[0]) for q in QUERIES.values()}
    lines = ["| run | store | step | sparsity | wiki perplexity ± SE (× dense) | news perplexity ± SE (× dense) |",
             "|---|---|---|---|---|---|"]
    for _, r in last.iterrows():
        sp = r.get("prunable_sparsity")
        sp = f"{100 * sp:.1f} %" if sp is not None and not pd.isna(sp) else "0"
        lines.append(f"| {r['run']} | {r['store']} | {int(r['step'])} | {sp} | {_cell(r, 'wiki', ref['wiki'])} | "
                     f"{_cell(r, 'news', ref['news'])} |")
    spread = dense.groupby("store")["wiki_perplexity"].first()
    note = (f"\nDense start node in every store: wiki perplexity {', '.join(f'{v:.6g}' for v in spread)} "
            f"({'identical' if spread.nunique() == 1 else 'DIFFERENT: do not compare across stores'}).\n")
    return "\n".join(lines) + "\n" + note


def curves(df: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = last_nodes(df)
    start = last[last["run"] == "dense"].iloc[0]  # every run's step 0 is the dense start node
    lines = {"dense": ("k", "-"), "oneshot_wanda_30": ("C0", "--"), "oneshot_wanda_50": ("C1", "--"),
             "oneshot_magnitude_30": ("C0", ":"), "oneshot_magnitude_50": ("C1", ":")}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), sharex=True)
    for ax, q in zip(axes, QUERIES.values()):
        for i, (run, g) in enumerate(df[df["run"].str.startswith("fip")].groupby("run")):
            g = pd.concat([start.to_frame().T.assign(step=0), g]).sort_values("step").dropna(subset=[f"{q}_perplexity"])
            se = g[f"{q}_perplexity_se"].astype(float) if f"{q}_perplexity_se" in g else None
            ax.errorbar(g["step"].astype(int), g[f"{q}_perplexity"].astype(float), yerr=se, marker="o", ms=3,
                        label=run, capsize=2, color=f"C{2 + i}")
        for run, (color, ls) in lines.items():
            r = last[last["run"] == run]
            if len(r) and not pd.isna(r[f"{q}_perplexity"].iloc[0]):
                ax.axhline(float(r[f"{q}_perplexity"].iloc[0]), color=color, ls=ls, lw=1, label=run)
        ax.set_yscale("log")
        ax.set_xlabel("step (walk, projection, recovery)")
        ax.set_ylabel(f"{q} perplexity (3,048 held-out tokens)")
        ax.set_title(q)
    axes[0].legend(fontsize=7)
    distance_panel(df, axes[2])
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def distance_panel(df: pd.DataFrame, ax) -> None:
    """How far each FIP walk was from its sparse set: evaluated walk nodes, and the distance it projected from."""
    fip = df[df["run"].str.startswith("fip")]
    for i, (run, g) in enumerate(fip.groupby("run")):
        col = "prunable_distance_to_sparse"  # absent from stores whose walks no evaluation reached
        walk = g.dropna(subset=[col]) if col in g else g.iloc[:0].assign(**{col: []})
        proj = [json.loads(t) for t in g["tags"].dropna() if '"projection": true' in t]
        steps = list(walk["step"].astype(int)) + [int(t["projection_step"]) for t in proj]
        dist = list(walk[col]) + [float(t["distance_before_projection"]) for t in proj]
        ax.plot(steps, [100 * d for d in dist], marker="o", ms=4, color=f"C{2 + i}", label=f"{run} (last point: projection)")
    ax.axhline(0.5, color="k", ls=":", lw=1, label="tolerance 0.5 %")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("‖w − P(w)‖ / ‖w‖ (%)")
    ax.set_title("distance to the run's sparse set (30 or 50 %)")
    ax.legend(fontsize=7)


def write_report(stores: list[Path], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    df = pd.concat([read_store(s) for s in stores], ignore_index=True)
    (out / "lm_sparsity.md").write_text("# Issue 22 §3: SmolLM2-135M sparsity\n\n" + table(df))
    df.drop(columns="tags").to_csv(out / "lm_sparsity_nodes.csv", index=False)
    curves(df, out / "lm_sparsity_curves.png")
    print((out / "lm_sparsity.md").read_text())
