"""Issue 25 §3: the soup of a FIP walk's nodes vs the output ensemble of the same nodes vs the best single node
(test accuracy and PGD transferred from an independent surrogate), and the loss barrier between the walk's ends.

Build the store first (65 s here), then run this (about a minute), or both with reproduce.sh:
    python -m fipgraph build examples/paper/soups/config.toml --store paper-stores/soups --threads 1 --no-progress
    python examples/paper/soups/analyse.py --store paper-stores/soups --out examples/paper/soups/soups.png
Prints a Markdown table; nothing is written to the store.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import fipgraph
from fipgraph.data import make_tasks
from fipgraph.query import Ensemble, evaluate, interpolate, soup
from fipgraph.query.evaluation import empty_model
from fipgraph.query.robustness import accuracy, pgd_examples
from fipgraph.query.soups import held_out_split

WALKS = ("soups/travel", "soups/undirected")


def last_node(st, run: str) -> int:
    return int(st.sql("SELECT max(node_id) AS n FROM nodes JOIN runs USING (run_id) WHERE name = ?", [run])["n"][0])


def walk_nodes(st, run: str) -> list[int]:
    return st.sql("SELECT node_id FROM nodes JOIN runs USING (run_id) WHERE name = ? ORDER BY step",
                  [run])["node_id"].tolist()


def model_of(st, node: int, state=None) -> torch.nn.Module:
    mdl = empty_model(st, node)
    mdl.load_state_dict(state if state is not None else st.state_dict(node))
    return mdl.eval()


def compare(st, run: str, task, held, x_adv, y) -> dict:
    """Test and transferred-PGD accuracy of the best single node (chosen on held-out data), the ensemble, the
    uniform and the greedy soup of the walk's saved nodes."""
    nodes = walk_nodes(st, run)
    on_held = evaluate(st, nodes, held, record=False, progress=False, device="cpu")["accuracy"]
    best = int(on_held.idxmax())
    models = {"best single": model_of(st, best),
              "ensemble": Ensemble([model_of(st, n) for n in nodes], nodes)}
    for method in ("uniform", "greedy"):
        s = soup(st, nodes, method=method, data=task, held_out=held, record=False, device="cpu")
        models[f"{method} soup ({len(s.nodes)})"] = model_of(st, nodes[0], s.state)
    x, yt = task.test["x"], task.test["labels"]
    return {name: (accuracy(m, x, yt), accuracy(m, x_adv, y)) for name, m in models.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", default="paper-stores/soups")
    p.add_argument("--eps", type=float, default=0.1, help="L-inf PGD budget (pixels in [0, 1])")
    p.add_argument("--out", default="examples/paper/soups/soups.png")
    args = p.parse_args()
    torch.manual_seed(0)
    task = make_tasks("digits", split=[list(range(10))], seed=0)[0]
    held = held_out_split(task)
    with fipgraph.open_store(args.store, mode="r") as st:
        start, surrogate = last_node(st, "soups/ind0"), last_node(st, "soups/surrogate")
        x, y = task.test["x"], task.test["labels"]
        x_adv = pgd_examples(model_of(st, surrogate), x, y, n_classes=10, eps=args.eps, max_iter=20, clip=(0.0, 1.0))
        print(f"surrogate node {surrogate}: test {accuracy(model_of(st, surrogate), x, y):.4f}, "
              f"on its own PGD examples {accuracy(model_of(st, surrogate), x_adv, y):.4f}")
        rows, curves = {}, {}
        for run in WALKS:
            rows[run] = compare(st, run, task, held, x_adv, y)
            end = last_node(st, run)
            curves[f"{run.split('/')[1]}: ind0 -> node {end}"] = interpolate(st, start, end, task, record=False,
                                                                             device="cpu")
        curves[f"independent: ind0 -> surrogate {surrogate}"] = interpolate(st, start, surrogate, task,
                                                                           record=False, device="cpu")
    print("| walk | network | test accuracy | transferred PGD accuracy |\n|---|---|---|---|")
    for run, res in rows.items():
        for name, (clean, adv) in res.items():
            print(f"| {run} | {name} | {clean:.4f} | {adv:.4f} |")
    print("\n| segment | loss barrier | accuracy barrier |\n|---|---|---|")
    for name, df in curves.items():
        b = df.attrs["barrier"]
        print(f"| {name} | {b[f'{task.name}_loss']:.4f} | {b[f'{task.name}_accuracy']:.4f} |")
    plot(rows, curves, task.name, args.out)
    print("wrote", args.out)


def plot(rows: dict, curves: dict, task_name: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    names = [n.split(" (")[0] for n in next(iter(rows.values()))]
    width = 0.2
    for i, (run, res) in enumerate(rows.items()):
        vals = list(res.values())
        xs = np.arange(len(vals)) + (i - 0.5) * 2 * width
        ax.bar(xs - width / 2, [v[0] for v in vals], width, label=f"{run.split('/')[1]}: test")
        ax.bar(xs + width / 2, [v[1] for v in vals], width, label=f"{run.split('/')[1]}: transferred PGD", alpha=0.6)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("walk nodes: single vs ensemble vs soups")
    for name, df in curves.items():
        bx.plot(df["t"], df[f"{task_name}_loss"], marker="o", label=name)
    bx.set_xlabel("t (linear interpolation between the two networks)")
    bx.set_ylabel("test loss")
    bx.set_yscale("log")
    bx.legend(fontsize=7)
    bx.set_title("loss along the straight segment")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
