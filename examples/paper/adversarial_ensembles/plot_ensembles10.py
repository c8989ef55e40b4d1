"""Paper experiment 4, ensembles of 10 (ensembles10.toml): the figures exp4_path_s0.png (seed 0: weight-space PCA of
ind0, the undirected FIP and the FGE snapshots; H and accuracy along the path) and exp4_pgd.png (accuracy per
ensemble and seed), drawn from the stores with the query API and SQL only.

    python examples/paper/adversarial_ensembles/plot_ensembles10.py paper-stores/adv10_s0 paper-stores/adv10_s1 \\
        paper-stores/adv10_s2 [--out-dir examples/paper/adversarial_ensembles]
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import fipgraph  # noqa: E402

NAMES = ["single", "independent", "fge", "fge_hi", "fip", "fip_diverse"]
LABELS = ["single (ind0)", "independent x10", "FGE x10 (lr 0.01)", "FGE x10 (lr 0.05)", "FIP x10 (low H)",
          "FIP x10 (weight-diverse)"]
METRICS = [("pgd_transfer_ensemble", "PGD transfer from surrogate (1,000 imgs)"),
           ("pgd_joint_ensemble", "white-box PGD on the summed softmax (200 imgs)"), ("clean_ensemble", "clean (1,000 imgs)")]
PATH_SQL = """select w.node_id, r.name as run, w.step, w.task1_accuracy as acc, w.task1_H as h from wide w
              join runs r using (run_id) where w.step > 0 and r.name in ('adv/ind0', 'adv/undirected', 'adv/fge', 'adv/fge_hi')
              order by w.node_id"""


def members(st, name: str) -> list[int]:
    return json.loads(st.sql("select members from ensembles where name = ?", [name])["members"][0])


def path_figure(store: str, out: Path) -> None:
    """Seed 0: the PCA of the walks with the chosen FIP members circled, and H / accuracy along the path."""
    from fipgraph.query import WeightPCA

    with fipgraph.open_store(store, mode="r") as st:
        w = st.sql(PATH_SQL)
        pca = WeightPCA(2, nodes=list(w.node_id), record=False, progress=False).fit(st)
        fip = members(st, "fip")
    xy = dict(zip(pca.nodes_, pca.coords_))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5))
    und = w[w.run == "adv/undirected"]
    P = np.array([xy[n] for n in und.node_id])
    start = xy[int(w[w.run == "adv/ind0"].node_id.iloc[0])]
    a.plot(*np.vstack([start, P]).T, color="0.7", lw=0.8, zorder=1)
    sc = a.scatter(P[:, 0], P[:, 1], c=und.h, cmap="viridis", s=25, zorder=2)
    fig.colorbar(sc, ax=a, label="H (FGSM eps 0.1, per example Bhattacharyya)")
    F = np.array([xy[n] for n in fip])
    a.scatter(F[:, 0], F[:, 1], s=110, facecolors="none", edgecolors="red", label="FIP ensemble (10 lowest H)", zorder=3)
    for run, colour, marker, label in [("adv/fge", "orange", "s", "FGE snapshots (10 cycle ends)"),
                                       ("adv/fge_hi", "purple", "^", "FGE, lr 0.05 (fge_hi) snapshots")]:
        G = np.array([xy[n] for n in w[w.run == run].node_id])
        a.plot(*np.vstack([start, G]).T, color=colour, lw=0.8, marker=marker, ms=4, label=label)
    a.scatter(*start, marker="*", s=250, color="k", label="ind0 (start network)", zorder=4)
    a.set_xlabel(f"PC1 ({pca.explained_variance_ratio_[0]:.0%})")
    a.set_ylabel(f"PC2 ({pca.explained_variance_ratio_[1]:.0%})")
    a.legend(fontsize=8); a.set_title("seed 0: weight-space PCA of ind0, undirected FIP, FGE runs")
    b.plot(und.step, und.h, ".-", label="H")
    sel = und[und.node_id.isin(fip)]
    b.scatter(sel.step, sel.h, s=110, facecolors="none", edgecolors="red", label="selected (FIP ensemble)")
    b.set_xlabel("undirected FIP step"); b.set_ylabel("H"); b2 = b.twinx()
    b2.plot(und.step, und.acc * 100, color="gray", ls="--", label="test accuracy (2,000 images)")
    b2.set_ylabel("accuracy %")
    b.legend(loc="upper left", fontsize=8); b2.legend(loc="upper right", fontsize=8)
    b.set_title("seed 0: H and accuracy along the path")
    fig.tight_layout(); fig.savefig(out, dpi=110)


def ensemble_results(stores: list[str]) -> dict[str, dict[str, list[float]]]:
    """metric -> ensemble -> one accuracy (%) per seed, the latest recorded."""
    vals = {m: {n: [] for n in NAMES} for m, _ in METRICS}
    for store in stores:
        with fipgraph.open_store(store, mode="r") as st:
            df = st.sql("select name, metric, arg_max(value, created_at) as v from ensemble_evals group by all")
        for m, _ in METRICS:
            for n in NAMES:
                v = df[(df.name == n) & (df.metric == m)]["v"]
                if len(v):
                    vals[m][n].append(float(v.iloc[0]) * 100)
    return vals


def pgd_figure(stores: list[str], out: Path) -> None:
    """Bars: mean ± std over seeds per ensemble and metric; dots: the seeds."""
    vals = ensemble_results(stores)
    fig, ax = plt.subplots(figsize=(12, 4.5))
    wd = 0.27
    for j, (m, lab) in enumerate(METRICS):
        xs = np.arange(len(NAMES)) + (j - 1) * wd
        mu = [np.mean(vals[m][n]) if vals[m][n] else np.nan for n in NAMES]
        sd = [np.std(vals[m][n], ddof=1) if len(vals[m][n]) > 1 else 0 for n in NAMES]
        ax.bar(xs, mu, wd, yerr=sd, capsize=3, label=lab)
        for i, n in enumerate(NAMES):
            ax.scatter([xs[i]] * len(vals[m][n]), vals[m][n], color="k", s=8, zorder=3)
    ax.set_xticks(range(len(NAMES))); ax.set_xticklabels(LABELS)
    ax.set_ylabel("accuracy %"); ax.legend(fontsize=8)
    ax.set_title("Fashion-MNIST cnn5, PGD l_inf eps 0.1, 10 steps; bars: mean ± std over seeds, dots: seeds")
    fig.tight_layout(); fig.savefig(out, dpi=110)
    print(vals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stores", nargs="+", help="one store per seed, seed 0 first")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()
    path_figure(args.stores[0], args.out_dir / "exp4_path_s0.png")
    pgd_figure(args.stores, args.out_dir / "exp4_pgd.png")


if __name__ == "__main__":
    main()
