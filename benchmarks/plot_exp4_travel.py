"""Issues 15 + 11 §2 figure (benchmarks/figures/exp4_travel.png), read from the store of the reduced experiment-4 rerun
(examples/paper_adversarial_ensembles_travel.toml, benchmarks/exp4_travel.sh) with SQL and stored weights only.

    PYTHONPATH=$PWD python benchmarks/plot_exp4_travel.py [/tmp/h15/advt]

Left: distance from the start network ind0 along each walk (the literal Algorithm 3 and travel at three λ), with the
distances of the independently trained networks for scale. Middle: test accuracy against that distance. Right: the
ensembles' transferred / white-box PGD accuracy, representation diversity and coherence against the travel path
prefix the members were chosen from, beside the single network, the independent and the literal-FIP ensembles.
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import fipgraph  # noqa: E402

STORE = sys.argv[1] if len(sys.argv) > 1 else "/tmp/h15/advt"
WALKS = {"undirected": "Algorithm 3 (L = 0)", "travel": "travel λ 0.1", "travel_l1": "travel λ 1",
         "travel_l3": "travel λ 3"}
ENSEMBLES = ["single", "independent", "fip", "fip_spread", "travel_s500", "travel_s1000", "travel_s2000"]


def _distance(a: dict, b: dict) -> float:
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a) ** 0.5)


def walk_rows(st) -> dict:
    start_id = int(st.sql("select node_id from nodes join runs using (run_id) where name = 'advt/ind0' and step = 938")
                   ["node_id"][0])
    start = st.state_dict(start_id)
    out = {}
    for run in WALKS:
        df = st.sql("select w.node_id, w.step, w.task1_accuracy as acc from wide w join runs r using (run_id) "
                    "where r.name = ? order by w.step", [f"advt/{run}"])
        if len(df):
            out[run] = (list(df.step), [_distance(start, st.state_dict(int(n))) for n in df.node_id], list(df.acc))
    ind = st.sql("select node_id from nodes join runs using (run_id) where name in "
                 "('advt/ind1','advt/ind2','advt/ind3','advt/ind4','advt/surrogate') and step = 938")["node_id"]
    return {"walks": out, "independent": [_distance(start, st.state_dict(int(n))) for n in ind],
            "start_acc": float(st.sql("select task1_accuracy from wide where node_id = ?", [start_id]).iloc[0, 0])}


def ensemble_metrics(st) -> dict:
    df = st.sql("select replace(dataset, 'ensemble:', '') as ens, metric, arg_max(value, created_at) as v from evals "
                "where dataset like 'ensemble:%' group by all")
    return {(e, m): float(v) for e, m, v in zip(df.ens, df.metric, df.v)}


def member_spread(st) -> dict:
    """Per recorded ensemble: (mean distance of the members from ind0, mean pairwise distance between members)."""
    import json

    start = st.state_dict(int(st.sql("select node_id from nodes join runs using (run_id) where name = 'advt/ind0' "
                                     "and step = 938")["node_id"][0]))
    out = {}
    for name, members in zip(*st.sql("select name, members from ensembles").T.values):
        ids = json.loads(members) if isinstance(members, str) else list(members)
        w = [st.state_dict(int(n)) for n in ids]
        pairs = [_distance(a, b) for i, a in enumerate(w) for b in w[i + 1:]]
        out[name] = (float(np.mean([_distance(start, a) for a in w])), float(np.mean(pairs)) if pairs else 0.0)
    return out


def main() -> None:
    with fipgraph.open_store(STORE, mode="r") as st:
        rows, ens, spread = walk_rows(st), ensemble_metrics(st), member_spread(st)
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 4.8))
    for run, (steps, dist, acc) in rows["walks"].items():
        a.plot([0] + steps, [0.0] + dist, ".-", label=WALKS[run])
        b.plot([0.0] + dist, [rows["start_acc"] * 100] + [x * 100 for x in acc], ".-", label=WALKS[run])
    for d in rows["independent"]:
        a.axhline(d, color="0.6", ls=":", lw=0.8)
    a.axhline(np.mean(rows["independent"]), color="0.4", ls="--", label="independently trained networks (from ind0)")
    a.set_xlabel("step (fixed length 0.02)"); a.set_ylabel("‖w − w_ind0‖"); a.legend(fontsize=8)
    a.set_title("distance from the start")
    b.axhline(rows["start_acc"] * 100 - 1, color="0.5", ls=":", label="start − 1 point")
    b.set_xlabel("‖w − w_ind0‖"); b.set_ylabel("test accuracy % (2,000 images)"); b.legend(fontsize=8)
    b.set_title("accuracy along the walks")
    prefixes = [500, 1000, 2000]
    series = [("pgd_transfer_ensemble", "PGD transfer %", 100), ("pgd_joint_ensemble", "white-box PGD %", 100),
              ("diversity_mean", "diversity ×10", 10), ("coherence", "coherence ×100", 100)]
    for i, (metric, label, scale) in enumerate(series):
        ys = [ens.get((f"travel_s{p}", metric), np.nan) * scale for p in prefixes]
        line, = c.plot([p * 0.02 for p in prefixes], ys, "o-", label=f"travel: {label}")
        for j, (ref, style) in enumerate([("independent", "--"), ("fip", ":")]):
            if (ref, metric) in ens:
                c.axhline(ens[(ref, metric)] * scale, color=line.get_color(), ls=style, lw=0.8)
    c.set_xlabel("travel path length the 5 members were chosen from"); c.set_ylabel("value")
    c.set_title("travel ensembles of 5 (dashed: independent, dotted: Alg. 3 lowest H)", fontsize=10)
    c.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig("benchmarks/figures/exp4_travel.png", dpi=110)
    print("ensemble metrics:")
    for e in ENSEMBLES:
        keys = ["clean_ensemble", "pgd_transfer_ensemble", "pgd_joint_ensemble", "diversity_mean", "coherence"]
        print(f"  {e:14s}", " ".join(f"{k}={ens[(e, k)]:.4f}" if (e, k) in ens else f"{k}=-" for k in keys),
              "from ind0 %.2f, pairwise %.2f" % spread.get(e, (np.nan, np.nan)))
    for run, (steps, dist, acc) in rows["walks"].items():
        print(f"  {run:12s} final distance {dist[-1]:.2f}, accuracy {acc[-1]:.4f} (min {min(acc):.4f}), start "
              f"{rows['start_acc']:.4f}")
    print("  independent distances from ind0:", [round(d, 2) for d in rows["independent"]])


if __name__ == "__main__":
    main()
