"""Paper experiment 3, baselines: accuracy vs sparsity for LeNet-300-100 on MNIST, read back from the stores.

    python examples/paper/lenet_sparsity/plot_baselines.py paper-stores/lenet_baselines_s{0,1,2} [--out examples/paper/lenet_sparsity/exp3_accuracy_vs_sparsity.png]
    python examples/paper/lenet_sparsity/plot_baselines.py --path STORE RUN P     # one FIP run: per saved node, distance to and accuracy after projection

One store per seed, built by examples/paper/lenet_sparsity/baselines.toml (``--old``: stores of the plain-Adam first attempt, whose config
is in git history as examples/paper_lenet_sparsity.toml). Prints the markdown
table cells ("seed0 / seed1 / seed2 (mean ± std)") and writes the figure. Every number comes from
the stores' ``wide`` view: the tagged ``sparse_mask`` node of each run (lottery: each round's node).
"""

from __future__ import annotations

import argparse
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import fipgraph  # noqa: E402

# tagged sparse nodes, plus the last node of each "FIP + fine-tune" run (finetune tags nothing; it keeps the zeros)
SQL = """select r.name, w.prunable_sparsity as s, w.task1_accuracy as acc from wide w join runs r using (run_id)
         where r.status = 'finished' and w.task1_accuracy is not null and (w.tags like '%sparse_mask%' or
         (r.name like '%/fipft_%' and w.step = (select max(step) from nodes n where n.run_id = r.run_id)))"""
DENSE_SQL = """select w.task1_accuracy as acc from wide w join runs r using (run_id)
               where r.name like '%/dense' and w.task1_accuracy is not null order by w.step desc limit 1"""
# sparsify runs: the accuracy just before the hard projection (not yet sparse) and the distance it had left.
# Stores written since issue 11 project in place at the converged step: that node is tagged "projection" and its tags
# hold both values. Older stores (issue 5) appended the projection as a separate node one step after the last walk
# node, whose own evaluation is the accuracy before; their tags have no projection_step.
BEFORE_SQL = """select r.name, json_extract(p.tags, '$.accuracy_before_projection.task1')::double as acc,
           json_extract(p.tags, '$.distance_before_projection')::double as dist
    from nodes p join runs r using (run_id)
    where r.status = 'finished' and r.name like '%/sparsify_%'
      and json_extract(p.tags, '$.projection')::boolean and json_extract(p.tags, '$.projection_step') is not null
    union all
    select r.name, w.task1_accuracy, json_extract(f.tags, '$.distance_before_projection')::double
    from wide w join runs r using (run_id) join nodes f on f.run_id = r.run_id and f.step = w.step + 1
    where r.status = 'finished' and r.name like '%/sparsify_%' and f.tags like '%final_projection%'
      and json_extract(f.tags, '$.projection_step') is null"""
# the paper's LeNet-300-100 numbers quoted in the issue: (sparsity %, mean, half-range or std)
PAPER_FIP = [(99.1, 96.55, 0.25), (99.4, 96.0, 0.6)]
PAPER_LT = [(99.4, 91.0, 3.0)]
# (row label, run-name prefix) in the fixed-step config; lottery is handled per round
METHODS = [("FIP, fixed step (λ = 1)", "sparsify_"), ("FIP + fine-tune", "fipft_"), ("one-shot + fine-tune", "oneshot_")]


def read(store: str) -> tuple[dict[str, tuple[float, float]], float | None]:
    """{run name without build prefix (lottery: 'lottery@<sparsity %>'): (sparsity %, accuracy %)}, dense acc %.

    Also 'before_<tag>': (100·||w - project(w)||/||w||, accuracy %) of a sparsify run's node before its projection.
    """
    out: dict[str, tuple[float, float]] = {}
    with fipgraph.open_store(store, mode="r") as st:
        for name, s, acc in st.sql(SQL).itertuples(index=False):
            run = name.split("/", 1)[1]
            key = f"lottery@{100 * s:.2f}" if run == "lottery" else run
            out[key] = (100 * float(s), 100 * float(acc))
        for name, acc, dist in st.sql(BEFORE_SQL).itertuples(index=False):
            if acc == acc:  # NaN = not evaluated (stores written before d4cd5e2 skipped some nodes)
                out["before_" + name.split("/sparsify_", 1)[1]] = (100 * float(dist), 100 * float(acc))
        dense = st.sql(DENSE_SQL)
    return out, (100 * float(dense.acc.iloc[0]) if len(dense) else None)


def cell(values: list[float | None]) -> str:
    """'a / b / c (mean ± std)' over seeds; n/a for a missing seed."""
    parts = " / ".join("n/a" if v is None else f"{v:.1f}" for v in values)
    got = [v for v in values if v is not None]
    if len(got) >= 2:
        parts += f" ({statistics.mean(got):.1f} ± {statistics.stdev(got):.1f}{'' if len(got) == len(values) else f', n={len(got)}'})"
    return parts


def series(seeds: list[dict], keys: list[str]) -> tuple[list[float], list[float], list[float]]:
    """x = mean sparsity %, y = mean accuracy %, e = std over seeds, for the keys every seed has."""
    xs, ys, es = [], [], []
    for k in keys:
        pts = [d[k] for d in seeds if k in d]
        if not pts:
            continue
        xs.append(statistics.mean(p[0] for p in pts))
        ys.append(statistics.mean(p[1] for p in pts))
        es.append(statistics.stdev(p[1] for p in pts) if len(pts) > 1 else 0.0)
    return xs, ys, es


def path_diagnostics(store: str, run: str, p: float) -> None:
    """Per saved node of ``run``: ||w||, ||w - project_p(w)|| / ||w||, test accuracy, and test accuracy of project_p(w).

    Shows where a sparsify path stands before its final hard projection (which the store evaluates only at the end).
    """
    import torch

    from fipgraph.data import make_tasks
    from fipgraph.models import model_from_node
    from fipgraph.path.ops.sparsity import magnitude_masks, prunable_names

    torch.set_num_threads(1)
    test = next(iter(make_tasks("mnist", [list(range(10))])[0].test_loader(10000)))  # the 10,000 test images
    with fipgraph.open_store(store, mode="r") as st:
        nodes = st.sql("select n.node_id, n.step from nodes n join runs r using (run_id) where r.name = ? order by n.step", [run])
        if nodes.empty:
            raise SystemExit(f"no run {run!r} in {store}; give the stored name, e.g. lenetfx/sparsify_994")
        for nid, step in nodes.itertuples(index=False):
            model = model_from_node(st, int(nid)).eval()
            params = dict(model.named_parameters())
            ws = [params[n] for n in prunable_names(model)]
            with torch.no_grad():
                acc = (model(test["x"]).argmax(1) == test["labels"]).float().mean().item()
                masks = magnitude_masks(ws, p)
                norm = torch.sqrt(sum(w.pow(2).sum() for w in ws)).item()
                dist = torch.sqrt(sum((w * ~m).pow(2).sum() for w, m in zip(ws, masks))).item()
                for w, m in zip(ws, masks):
                    w.mul_(m)
                projected = (model(test["x"]).argmax(1) == test["labels"]).float().mean().item()
            print(f"step {step:6d}  |w| {norm:7.3f}  dist/|w| {dist / norm:.4f}  acc {100 * acc:5.1f}  projected {100 * projected:5.1f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stores", nargs="*", help="one store per seed (baselines.toml)")
    ap.add_argument("--path", nargs=3, metavar=("STORE", "RUN", "P"), help="diagnose one sparsify run instead")
    ap.add_argument("--old", nargs="*", default=[], help="stores of the plain-Adam first attempt (config in git history)")
    ap.add_argument("--out", default="examples/paper/lenet_sparsity/exp3_accuracy_vs_sparsity.png")
    args = ap.parse_args(argv)
    if args.path:
        return path_diagnostics(args.path[0], args.path[1], float(args.path[2]))
    if not args.stores:
        ap.error("give one store per seed, or --path STORE RUN P")

    read_all = [read(s) for s in args.stores]
    seeds, dense = [r[0] for r in read_all], [r[1] for r in read_all]
    old = [read(s)[0] for s in args.old]
    found = {k.split("_", 1)[1]: v[0] for d in seeds for k, v in d.items() if k.startswith("sparsify_")}
    tags = sorted(found, key=found.get)  # by sparsity: "20", "67", ..., "994"
    print("dense:", cell(dense))
    for tag in tags:
        row = [f"{tag}:"] + [f"{label}: {cell([d.get(p + tag, (0, None))[1] for d in seeds])}" for label, p in METHODS]
        row.append(f"FIP before projection: {cell([d.get('before_' + tag, (0, None))[1] for d in seeds])}, "
                   f"dist % {cell([d.get('before_' + tag, (None,))[0] for d in seeds])}")
        print(" | ".join(row))
    lottery = sorted({k for d in seeds for k in d if k.startswith("lottery@")}, key=lambda k: float(k[8:]))
    for k in lottery:
        print(f"{k}: {cell([d.get(k, (0, None))[1] for d in seeds])}")
    for k in sorted({k for d in old for k in d if not k.startswith("lottery")}):
        print(f"old {k}: {cell([d.get(k, (0, None))[1] for d in old])}")

    # left: the whole range (FIP's hard projection collapses at high sparsity); right: zoom on 80-99 %
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, zoom in zip(axes, (False, True)):
        for (label, prefix), marker in zip(METHODS, "osD"):
            x, y, e = series(seeds, [prefix + t for t in tags])
            ax.errorbar(x, y, yerr=e, marker=marker, capsize=3, label=f"ours: {label}")
        x, y, e = series(seeds, lottery)
        ax.errorbar(x, y, yerr=e, marker="^", ms=4, capsize=2, label="ours: lottery ticket (each round)")
        x, y, e = series(seeds, [f"sparsify_{t}" for t in tags])  # x: the targets; y: the path before projection
        _, yb, eb = series(seeds, [f"before_{t}" for t in tags])
        if len(yb) == len(x):
            ax.errorbar(x, yb, yerr=eb, marker="o", mfc="none", ls="--", color="tab:blue", alpha=0.6, capsize=2,
                        label="ours: FIP path before the hard projection (NOT sparse)")
        if old:
            x, y, e = series(old, sorted(k for k in old[0] if k.startswith("sparsify_") and "lam1" not in k))
            ax.errorbar(x, y, yerr=e, marker="x", ls=":", color="grey", capsize=2,
                        label="ours, first attempt: FIP, plain Adam, λ = 20")
        for pts, label, marker in ((PAPER_FIP, "paper: FIP", "*"), (PAPER_LT, "paper: lottery ticket", "P")):
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker=marker, ms=11,
                        ls="none", color="black" if marker == "*" else "dimgrey", capsize=4, label=label)
        ax.set_xscale("function", functions=(lambda v: -_log_density(v), lambda v: 100 - 10 ** (-v)))
        ticks = [20, 67, 89, 96, 98.7, 99.1, 99.4]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlim(15, 99.6)
        if zoom:
            ax.set_ylim(80, 99)
        ax.set_xlabel("sparsity of the prunable weights (%), log scale of the weights kept")
        ax.set_ylabel("MNIST test accuracy (%)")
        ax.set_title(f"LeNet-300-100, {len(seeds)} seed{'s' if len(seeds) > 1 else ''} (mean ± std)"
                     + (": zoom on 80-99 %" if zoom else ""))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=130)
    print("wrote", args.out)


def _log_density(s):
    import numpy as np

    return np.log10(np.clip(100 - np.asarray(s, dtype=float), 1e-3, None))


if __name__ == "__main__":
    main()
