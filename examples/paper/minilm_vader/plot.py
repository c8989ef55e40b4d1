"""Paper experiment 5 (MiniLM, VADER movie five-class -> Amazon binary on one 7-output head, task 1 on outputs 0-4,
task 2 on 5-6; examples/paper/minilm_vader/config.toml), read from the stores:

    python examples/paper/minilm_vader/plot.py cells paper-stores/vader_s0 paper-stores/vader_s1 paper-stores/vader_s2   # table cells
    python examples/paper/minilm_vader/plot.py dist paper-stores/vader_s0                                                 # weight distances
    python examples/paper/minilm_vader/plot.py figure paper-stores/vader_s0 examples/paper/minilm_vader/exp5_minilm_vader_seed0.png
    python examples/paper/minilm_vader/plot.py whole paper-stores/vader_s0 ...   # argmax over all 7 outputs (not stored)
"""
import argparse
import statistics as st

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import fipgraph  # noqa: E402

LAST_SQL = ("select split_part(r.name, '/', 2) run, w.step, w.task1_accuracy t1, w.task2_accuracy t2 from wide w "
            "join runs r using (run_id) where w.node_id in (select max(node_id) from nodes group by run_id)")
RUNS = ["task1", "continual", "finetune", "lora", "ewc"]


def cells(stores: list[str]) -> None:
    """'seed0 / seed1 / ... (mean ± std)' for movie (5-way over outputs 0-4), Amazon (2-way over outputs 5-6) and
    their mean at each run's last node; then the share of the task-1 node's movie accuracy each run keeps."""
    acc: dict = {}
    for s in stores:
        with fipgraph.open_store(s, mode="r") as store:
            for _, r in store.sql(LAST_SQL).iterrows():
                d = acc.setdefault(r.run, {"movie": [], "amazon": [], "mean": []})
                d["movie"].append(r.t1), d["amazon"].append(r.t2), d["mean"].append((r.t1 + r.t2) / 2)

    def cell(v: list[float]) -> str:
        s = " / ".join(f"{100 * x:.1f}" for x in v)
        return s + (f" ({100 * st.mean(v):.1f} ± {100 * st.stdev(v):.1f})" if len(v) > 1 else "")
    for run in RUNS:
        print(f"| {run} | " + " | ".join(cell(acc[run][k]) for k in ("movie", "amazon", "mean")) + " |")
    for run in RUNS[1:]:
        kept = [a / b for a, b in zip(acc[run]["movie"], acc["task1"]["movie"])]
        print(f"{run}: movie accuracy kept {cell(kept)} % of the task-1 node's")


def dist(store_dir: str) -> None:
    """L2 distance of each task-2 run's last node from the task-1 node: all weights, query/value, head."""
    with fipgraph.open_store(store_dir, mode="r") as s:
        last = s.sql("select split_part(r.name, '/', 2) run, max(n.node_id) nid from nodes n join runs r "
                     "using (run_id) group by r.name")
        sd = {r.run: s.state_dict(int(r.nid)) for _, r in last.iterrows()}
    base = sd.pop("task1")

    def norm(w: dict, keep=lambda k: True) -> float:
        return float(torch.sqrt(sum(((w[k].float() - base[k].float()) ** 2).sum() for k in base if keep(k))))
    zero = {k: torch.zeros_like(v) for k, v in base.items()}
    print(f"||w_task1|| = {norm(zero):.1f}")
    for run in RUNS[1:]:
        w = sd[run]
        print(f"{run}: all {norm(w):.3f}  query/value {norm(w, lambda k: '.query.' in k or '.value.' in k):.3f}  "
              f"head {norm(w, lambda k: k.startswith('classifier')):.3f}")


def whole(stores: list[str]) -> None:
    """Class-incremental reading of each run's last node: argmax over all 7 outputs (task-2 labels are 5 and 6),
    as the paper's 0 % initial IMDb accuracy implies it scored. The build scores each task on its own block."""
    from fipgraph.query import evaluate
    from fipgraph.query.recorded import recorded_tasks

    for s in stores:
        with fipgraph.open_store(s, mode="r") as store:
            last = store.sql("select split_part(r.name, '/', 2) run, max(n.node_id) nid from nodes n join runs r "
                             "using (run_id) group by r.name")
            nids = [int(n) for n in last.nid]
            row = {}
            for t in recorded_tasks(store, nids):
                batches = [{**b, "labels": b["labels"] + t.label_offset} for b in t.test_loader(64)]
                df = evaluate(store, nids, batches, name=f"{t.name}/all-outputs", record=False, progress=False)
                row[t.name] = dict(zip(last.run, df.loc[nids, "accuracy"]))
            for run in RUNS:
                print(s, run, "  ".join(f"{name} {100 * acc[run]:.1f}" for name, acc in row.items()))


def figure(store_dir: str, out: str) -> None:
    """Movie and Amazon test accuracy along each task-2 run, starting from the task-1 node (step 0)."""
    with fipgraph.open_store(store_dir, mode="r") as s:
        df = s.sql("select split_part(r.name, '/', 2) run, w.step, w.task1_accuracy t1, w.task2_accuracy t2 "
                   "from wide w join runs r using (run_id) where w.task1_accuracy is not null order by run, w.step")
        head = s.find_run("minilm_vader/task1")["config"]["data"]["head"]
    start = df[df.run == "task1"].iloc[-1]  # every task-2 run starts from the task-1 run's last node
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    style = {"continual": ("FIP (continual)", "C0", "o-"), "finetune": ("fine-tuning", "C3", "s--"),
             "lora": ("LoRA r=16", "C2", "^--"), "ewc": ("EWC", "C1", "d--")}
    for run, (label, color, fmt) in style.items():
        d = df[df.run == run]
        for ax, col in zip(axes, ["t1", "t2"]):
            ax.plot([0] + list(d.step), [100 * start[col]] + list(100 * d[col]), fmt, color=color, label=label)
    axes[0].axhline(20, color="gray", lw=.8, ls=":"), axes[1].axhline(59, color="gray", lw=.8, ls=":")  # chance, majority
    scored = ["(argmax over all 7 outputs)"] * 2 if head == "single" else ["(outputs 0-4)", "(outputs 5-6)"]
    for ax, title in zip(axes, [f"task 1: movie, 5 rating classes {scored[0]}", f"task 2: Amazon, binary {scored[1]}"]):
        ax.set_title(title, fontsize=10), ax.set_xlabel("task-2 step (batch 8)"), ax.grid(alpha=.3)
    axes[0].set_ylabel("accuracy (%)"), axes[1].legend(fontsize=8, loc="lower right")
    sparse = " LoRA / EWC evaluated at start and end only;" if (df.run == "lora").sum() <= 1 else ""
    kind = "class-incremental (trained over all 7)" if head == "single" else "each task on its own block"
    fig.suptitle(f"MiniLM, VADER movie (5 classes) -> Amazon (binary), one 7-output head, {kind} "
                 f"({store_dir.rstrip('/').rsplit('/', 1)[-1]})\nstep 0 = the task-1 node;{sparse} "
                 "dotted: chance (20 %) / majority (59 %)", fontsize=8)
    fig.tight_layout(), fig.savefig(out, dpi=120)
    print("wrote", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["cells", "dist", "figure", "whole"])
    ap.add_argument("args", nargs="+", help="cells, whole: one store per seed; dist: a store; figure: a store and the .png")
    args = ap.parse_args()
    {"cells": lambda a: cells(a), "dist": lambda a: dist(a[0]), "figure": lambda a: figure(a[0], a[1]),
     "whole": lambda a: whole(a)}[args.what](args.args)


if __name__ == "__main__":
    main()
