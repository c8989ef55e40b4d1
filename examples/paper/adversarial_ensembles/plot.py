"""Issues 11 §2 + 15: experiment 4 at three seeds (ensembles of k), read back from the stores with SQL and stored weights.

    python examples/paper/adversarial_ensembles/plot.py paper-stores/adv_s0 paper-stores/adv_s1 paper-stores/adv_s2 [--out examples/paper/adversarial_ensembles/exp4_travel3.png]

One store per seed, built and attacked by run_seed.sh (config.toml;
ensembles named s3_*). Prints the markdown rows "seed 0 / seed 1 / seed 2 (mean ± std)" per ensemble (clean, PGD
transfer, white-box PGD, diversity, coherence, members' mean distance from ind0 and from each other) and per walk (final
distance from ind0, final and minimum test accuracy), and draws: left, distance from ind0 along both walks for every
seed beside the independently trained networks; middle, test accuracy against that distance; right, the travel
ensembles' PGD transfer / white-box accuracy, diversity and coherence against the path prefix their members were chosen
from (mean ± std over the seeds), with the independent and Algorithm-3 ensembles' means as horizontal lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import fipgraph  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/paper/: seeds.py
from seeds import seed_cell as cell  # noqa: E402

WALKS = {"undirected3": "Algorithm 3 (L = 0)", "travel3": "travel λ 3"}
ENSEMBLES = ["single", "independent", "fip", "fip_spread", "travel_s500", "travel_s1000", "travel_s2000"]
PREFIXES_K = {"s3_": "k = 5", "s10_": "k = 10"}  # exp4_travel3.sh's ensemble-name prefixes
PREFIXES = [500, 1000, 2000]
METRICS = [("clean_ensemble", "clean %", 100, 1), ("pgd_transfer_ensemble", "PGD transfer %", 100, 1),
           ("pgd_joint_ensemble", "white-box PGD %", 100, 1), ("diversity_mean", "diversity", 1, 2),
           ("coherence", "coherence", 1, 3)]
START_SQL = "select node_id from nodes join runs using (run_id) where name = 'advt/ind0' and step = 938"


def _distance(a: dict, b: dict) -> float:
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a) ** 0.5)


def read_seed(store: str) -> dict:
    """Walk curves, independent networks' distances, the s3_* ensembles' metrics and their members' spread."""
    with fipgraph.open_store(store, mode="r") as st:
        start_id = int(st.sql(START_SQL)["node_id"][0])
        start = st.state_dict(start_id)
        walks = {}
        for run in WALKS:
            df = st.sql("select w.node_id, w.step, w.task1_accuracy as acc from wide w join runs r using (run_id) "
                        "where r.name = ? order by w.step", [f"advt/{run}"])
            walks[run] = (list(df.step), [_distance(start, st.state_dict(int(n))) for n in df.node_id], list(df.acc))
        ind = st.sql("select node_id from nodes join runs using (run_id) where (name like 'advt/ind%' or "
                     "name = 'advt/surrogate') and name <> 'advt/ind0' and step = 938")["node_id"]
        ind_dist = [_distance(start, st.state_dict(int(n))) for n in ind]
        metrics = st.sql("select name, metric, arg_max(value, created_at) as v from ensemble_evals "
                         "where name like 's3_%' or name like 's10_%' group by all")
        spread = {}
        for name, members in st.sql("select name, members from ensembles where name like 's3_%' or name like 's10_%'").itertuples(index=False):
            w = [st.state_dict(int(n)) for n in (json.loads(members) if isinstance(members, str) else members)]
            pairs = [_distance(a, b) for i, a in enumerate(w) for b in w[i + 1:]]
            spread[name] = (float(np.mean([_distance(start, a) for a in w])), float(np.mean(pairs)) if pairs else 0.0)
        start_acc = float(st.sql("select task1_accuracy from wide where node_id = ?", [start_id]).iloc[0, 0])
        found = {(n, m): float(v) for n, m, v in metrics.itertuples(index=False)}
        found.update(_reused(st, found))
    return {"walks": walks, "ind_dist": ind_dist, "start_acc": start_acc, "spread": spread,
            "metrics": found}


def _reused(st, found: dict) -> dict:
    """Metrics of s3_/s10_ ensembles that were not attacked here but whose exact member set was attacked before in
    this store with the same attack (an older ensemble, its results in `evals` as 'ensemble:<name>'): the one-seed
    store that seed 0 extends measured single and independent (ind0..ind4) already; PGD is seeded, so a rerun repeats
    them. Printed, so the table says which cells are reused."""
    rows = st.sql("select name, members from ensembles").itertuples(index=False)
    members = {n: frozenset(json.loads(m) if isinstance(m, str) else m) for n, m in rows}
    attack = ("n_inputs", "eps", "max_iter")
    out = {}
    for name in [n for n in members if n.startswith(tuple(PREFIXES_K)) and (n, "pgd_transfer_ensemble") not in found]:
        for old, old_members in members.items():
            if old.startswith(tuple(PREFIXES_K)) or old_members != members[name]:
                continue
            ev = st.sql("select metric, arg_max(value, created_at) as v from evals where dataset = ? group by all",
                        [f"ensemble:{old}"])
            got = dict(zip(ev.metric, ev.v))
            if got and all(got.get(k) == v for k, v in zip(attack, (1000, 0.1, 10))):
                print(f"{name}: not attacked again; the same members were attacked as {old!r} with the same attack")
                out.update({(name, m): float(v) for m, v in got.items()})
                break
    return out


def print_tables(seeds: list[dict]) -> None:
    nan = float("nan")
    print("| ensemble | members from ind0 (mean) | pairwise member distance | "
          + " | ".join(m[1] for m in METRICS) + " |")
    print("|---" * (len(METRICS) + 3) + "|")
    for prefix, k in PREFIXES_K.items():
        for e in [prefix + e for e in ENSEMBLES if any(prefix + e in s["spread"] for s in seeds)]:
            dist = [s["spread"].get(e, (nan, nan)) for s in seeds]
            cells = [cell([d[0] for d in dist], 2), cell([d[1] for d in dist], 2)]
            cells += [cell([s["metrics"].get((e, m), nan) * scale for s in seeds], digits)
                      for m, _, scale, digits in METRICS]
            print(f"| {e.removeprefix(prefix)} ({k}) | " + " | ".join(cells) + " |")
    print("\n| walk | distance from ind0 at the end | test accuracy at the end | min along the walk | start |")
    print("|---|---|---|---|---|")
    for run, label in WALKS.items():
        ws = [s["walks"].get(run) for s in seeds]
        last = lambda f: [f(w) if w and w[0] else nan for w in ws]  # noqa: E731
        print(f"| {label} | {cell(last(lambda w: w[1][-1]), 2)} | {cell(last(lambda w: 100 * w[2][-1]), 2)} | "
              f"{cell(last(lambda w: 100 * min(w[2])), 2)} | {cell([100 * s['start_acc'] for s in seeds], 2)} |")
    print("| independent networks (from ind0: min–max per seed) | "
          + " / ".join(f"{min(s['ind_dist']):.1f}–{max(s['ind_dist']):.1f}" for s in seeds) + " | | | |")


def figure(seeds: list[dict], out: str) -> None:
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, s in enumerate(seeds):
        for j, (run, label) in enumerate(WALKS.items()):
            steps, dist, acc = s["walks"][run]
            kw = dict(color=f"C{j}", alpha=1.0 if i == 0 else 0.5, lw=1.2 if i == 0 else 0.8,
                      label=label if i == 0 else None)
            a.plot([0] + steps, [0.0] + dist, ".-", ms=3, **kw)
            b.plot([0.0] + dist, [100 * s["start_acc"]] + [100 * x for x in acc], ".-", ms=3, **kw)
        a.axhline(np.mean(s["ind_dist"]), color="0.4", ls="--", lw=0.8,
                  label="independent networks from ind0 (mean, per seed)" if i == 0 else None)
    a.set(xlabel="step (fixed length 0.02)", ylabel="‖w − w_ind0‖", title=f"distance from the start ({len(seeds)} seeds)")
    a.legend(fontsize=8)
    b.set(xlabel="‖w − w_ind0‖", ylabel="test accuracy % (2,000 images)", title="accuracy along the walks")
    b.legend(fontsize=8)
    # attacks as points over the same seed's single network: the surrogate's examples transfer very differently to
    # different start networks, so the seeds' absolute levels differ by ~10 points and would hide the within-seed gap
    series = [("pgd_transfer_ensemble", "PGD transfer − single net, points", 100),
              ("pgd_joint_ensemble", "white-box PGD − single net, points", 100),
              ("diversity_mean", "diversity", 1), ("coherence", "coherence ×10", 10)]

    def value(s: dict, name: str, metric: str, scale: float) -> float:
        base = s["metrics"].get(("s3_single", metric), np.nan) if metric.startswith("pgd") else 0.0
        return (s["metrics"].get((name, metric), np.nan) - base) * scale

    for metric, label, scale in series:
        vals = [[value(s, f"s3_travel_s{p}", metric, scale) for s in seeds] for p in PREFIXES]
        line = c.errorbar([p * 0.02 for p in PREFIXES], [np.nanmean(v) for v in vals],
                          yerr=[np.nanstd(v, ddof=1) if np.isfinite(v).sum() > 1 else 0 for v in vals],
                          marker="o", capsize=3, label=f"travel: {label}")[0]
        for ref, style in (("s3_independent", "--"), ("s3_fip", ":")):
            ref_vals = [value(s, ref, metric, scale) for s in seeds]
            if np.isfinite(ref_vals).any():
                c.axhline(np.nanmean(ref_vals), color=line.get_color(), ls=style, lw=0.8)
    k = next((int(v) for s in seeds for (e, m), v in s["metrics"].items() if m == "k" and e == "s3_independent"), "k")
    c.axhline(0, color="k", lw=0.6)
    c.set(xlabel="travel path length the members were chosen from", ylabel="value (mean ± std over seeds)")
    c.set_title(f"travel ensembles of {k} (dashed: independent, dotted: Alg. 3 lowest H)", fontsize=10)
    c.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print("figure:", out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+", help="one store per seed, seed 0 first")
    ap.add_argument("--out", default="examples/paper/adversarial_ensembles/exp4_travel3.png")
    args = ap.parse_args(argv)
    seeds = [read_seed(s) for s in args.stores]
    print_tables(seeds)
    figure(seeds, args.out)


if __name__ == "__main__":
    main()
