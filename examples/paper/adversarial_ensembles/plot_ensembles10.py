"""Issue 5, experiment 4 figures (exp4_path_s0.png, exp4_pgd.png), drawn from the stores /tmp/p5/adv_s{0,1,2} with the query API and SQL only."""
import json, sys
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import fipgraph
from fipgraph.query import WeightPCA

def members(st, name):
    return json.loads(st.sql("select members from ensembles where name = ?", [name])["members"][0])

# 1) seed-0 store: weight-space PCA of ind0, the undirected path and the FGE snapshots; H along the path
with fipgraph.open_store("/tmp/p5/adv_s0", mode="r") as st:
    w = st.sql("select w.node_id, r.name as run, w.step, w.task1_accuracy as acc, w.task1_H as h from wide w "
               "join runs r using (run_id) where w.step > 0 and r.name in ('adv/ind0', 'adv/undirected', 'adv/fge', 'adv/fge_hi') "
               "order by w.node_id")
    pca = WeightPCA(2, nodes=list(w.node_id), record=False, progress=False).fit(st)
    fip, fge = members(st, "fip"), members(st, "fge")
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
G = np.array([xy[n] for n in w[w.run == "adv/fge"].node_id])
a.plot(*np.vstack([start, G]).T, color="orange", lw=0.8, marker="s", ms=4, label="FGE snapshots (10 cycle ends)")
H = np.array([xy[n] for n in w[w.run == "adv/fge_hi"].node_id])
a.plot(*np.vstack([start, H]).T, color="purple", lw=0.8, marker="^", ms=4, label="FGE, lr 0.05 (fge_hi) snapshots")
a.scatter(*start, marker="*", s=250, color="k", label="ind0 (start network)", zorder=4)
a.set_xlabel(f"PC1 ({pca.explained_variance_ratio_[0]:.0%})"); a.set_ylabel(f"PC2 ({pca.explained_variance_ratio_[1]:.0%})")
a.legend(fontsize=8); a.set_title("seed 0: weight-space PCA of ind0, undirected FIP, FGE runs")
b.plot(und.step, und.h, ".-", label="H")
sel = und[und.node_id.isin(fip)]
b.scatter(sel.step, sel.h, s=110, facecolors="none", edgecolors="red", label="selected (FIP ensemble)")
b.set_xlabel("undirected FIP step"); b.set_ylabel("H"); b2 = b.twinx()
b2.plot(und.step, und.acc * 100, color="gray", ls="--", label="test accuracy (2,000 images)"); b2.set_ylabel("accuracy %")
b.legend(loc="upper left", fontsize=8); b2.legend(loc="upper right", fontsize=8); b.set_title("seed 0: H and accuracy along the path")
fig.tight_layout(); fig.savefig("benchmarks/figures/exp4_path_s0.png", dpi=110)

# 2) PGD accuracy per ensemble and seed, read back from the stores' evals
names = ["single", "independent", "fge", "fge_hi", "fip", "fip_diverse"]
metrics = [("pgd_transfer_ensemble", "PGD transfer from surrogate (1,000 imgs)"), ("pgd_joint_ensemble", "white-box PGD on the summed softmax (200 imgs)"),
           ("clean_ensemble", "clean (1,000 imgs)")]
vals = {m: {n: [] for n in names} for m, _ in metrics}
for s in (0, 1, 2):
    try:
        st = fipgraph.open_store(f"/tmp/p5/adv_s{s}", mode="r")
    except Exception:
        continue
    with st:
        df = st.sql("select dataset, metric, value from evals where dataset like 'ensemble:%'")
    for m, _ in metrics:
        for n in names:
            v = df[(df.dataset == f"ensemble:{n}") & (df.metric == m)]["value"]
            if len(v):
                vals[m][n].append(float(v.iloc[-1]) * 100)
fig, ax = plt.subplots(figsize=(10, 4.5))
wd = 0.27
fig.set_size_inches(12, 4.5)
for j, (m, lab) in enumerate(metrics):
    xs = np.arange(len(names)) + (j - 1) * wd
    mu = [np.mean(vals[m][n]) if vals[m][n] else np.nan for n in names]
    sd = [np.std(vals[m][n], ddof=1) if len(vals[m][n]) > 1 else 0 for n in names]
    ax.bar(xs, mu, wd, yerr=sd, capsize=3, label=lab)
    for i, n in enumerate(names):
        ax.scatter([xs[i]] * len(vals[m][n]), vals[m][n], color="k", s=8, zorder=3)
ax.set_xticks(range(len(names))); ax.set_xticklabels(["single (ind0)", "independent x10", "FGE x10 (lr 0.01)", "FGE x10 (lr 0.05)", "FIP x10 (low H)", "FIP x10 (weight-diverse)"])
ax.set_ylabel("accuracy %"); ax.legend(fontsize=8); ax.set_title("Fashion-MNIST cnn5, PGD l_inf eps 0.1, 10 steps; bars: mean ± std over seeds, dots: seeds")
fig.tight_layout(); fig.savefig("benchmarks/figures/exp4_pgd.png", dpi=110)
print({m: {n: vals[m][n] for n in names} for m, _ in metrics})
