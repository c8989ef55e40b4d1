"""Paper experiment 3: FIP sparsification walked to the p-sparse set, read back from the stores.

    python examples/paper/lenet_sparsity/plot.py STORE [STORE ...] [--out examples/paper/lenet_sparsity/exp3_converge.png]
    python examples/paper/lenet_sparsity/plot.py --seed paper-stores/lenet_s0 --seed paper-stores/lenet_s1 --seed paper-stores/lenet_s2
        (one --seed per seed, with the stores that seed's runs are in: also prints the "seed 0 / seed 1 / seed 2
        (mean ± std)" table, and the figure draws every seed, one colour per sparsity)

Each store holds a dense node and sparsify runs built by examples/paper/lenet_sparsity/config.toml (or
validation.toml). Prints one markdown row per sparsify run (walk steps, cap hit, path length, wall time,
accuracy before / after the projection and after the recovery) and draws, per run, the walk: distance to
the p-sparse set, the node's accuracy and what its projection would score, against the step.
Every number comes from SQL on the stores (tags of the tagged nodes, the wide view's evaluations).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import fipgraph  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/paper/: seeds.py
from seeds import seed_cell  # noqa: E402

RUNS_SQL = """select r.run_id, r.name, r.config, r.status, epoch(r.finished_at) - epoch(r.started_at) as wall_s
              from runs r where r.op = 'sparsify' order by r.run_id"""
TAGGED_SQL = """select w.step, w.tags, w.task1_accuracy as acc, w.prunable_sparsity as sp, w.path_length as len
                from wide w where w.run_id = ? and w.tags is not null order by w.step"""
PATH_SQL = """select w.step, w.task1_accuracy as acc, w.task1_projected_accuracy as proj,
                     w.prunable_distance_to_sparse as dist from wide w
              where w.run_id = ? and w.prunable_distance_to_sparse is not null order by w.step"""
START_LEN_SQL = """select n.path_length as len from nodes n where n.node_id = (select parent_id from nodes
                   where run_id = ? order by step limit 1)"""


def read(store: str) -> list[dict]:
    """One dict per sparsify run: its settings, tagged nodes and walk curve."""
    out = []
    with fipgraph.open_store(store, mode="r") as st:
        for run_id, name, config, status, wall in st.sql(RUNS_SQL).itertuples(index=False):
            run = json.loads(config)["run"]
            tagged = [dict(step=s, tags=json.loads(t), acc=a, sp=sp, len=ln)
                      for s, t, a, sp, ln in st.sql(TAGGED_SQL, [run_id]).itertuples(index=False)]
            proj = next((t for t in tagged if t["tags"].get("projection") or t["tags"].get("final_projection")), None)
            final = next((t for t in tagged if t["tags"].get("final_projection")), None)
            start_len = st.sql(START_LEN_SQL, [run_id])["len"]
            out.append(dict(store=store, name=name, status=status, wall=wall, run=run, proj=proj, final=final,
                            start_len=float(start_len[0]) if len(start_len) and start_len[0] == start_len[0] else 0.0,
                            path=st.sql(PATH_SQL, [run_id]).to_dict("records")))
    return out


def row(r: dict) -> str:
    run, proj, final = r["run"], r["proj"], r["final"]
    if proj is None:
        return f"| {r['name']} | {100 * run['sparsity']:g} % | not projected yet ({r['status']}) |"
    t = proj["tags"]
    before = 100 * t.get("accuracy_before_projection", {}).get("task1", float("nan"))
    cap = " (CAP HIT)" if t.get("step_cap_hit") else ""
    length = (final or proj)["len"] - r["start_len"] if (final or proj)["len"] is not None else float("nan")
    after_rec = f"{100 * final['acc']:.1f}" if final is not None and final["tags"].get("recovered") else "–"
    wall = f"{r['wall'] / 60:.1f}" if r["wall"] == r["wall"] and r["wall"] is not None else "–"
    return (f"| {r['name']} | {100 * run['sparsity']:g} % | {t['projection_step']:,}{cap} | "
            f"{100 * t['distance_before_projection']:.3f} | {t.get('lambda', float('nan')):.3g} | {length:.1f} | {wall} | "
            f"{before:.1f} | {100 * proj['acc']:.1f} | {after_rec} | {100 * (final or proj)['sp']:.2f} |")


def figure(runs: list[dict], out: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {p: f"C{i}" for i, p in enumerate(sorted({r["run"]["sparsity"] for r in runs}))}
    for r in runs:
        if not r["path"]:
            continue
        seed = r.get("seed", 0)
        if seed:  # further seeds: same colour as seed 0's run at that sparsity, thin, no legend entry
            _seed_lines(axes, r, colours[r["run"]["sparsity"]])
            continue
        label = f"{100 * r['run']['sparsity']:g} % ({r['name']})"
        path = [(p["step"], p["dist"], p["acc"], p["proj"]) for p in r["path"]]
        if r["proj"] is not None:  # the walk's last point: the node just before the projection, and the projection
            t = r["proj"]["tags"]
            path.append((t["projection_step"], t["distance_before_projection"],
                         t.get("accuracy_before_projection", {}).get("task1", float("nan")), r["proj"]["acc"]))
        steps, dist, acc, proj = zip(*path)
        line, = axes[0].plot(steps, [100 * d for d in dist], label=label, color=colours[r["run"]["sparsity"]])
        axes[1].plot(steps, [100 * a for a in acc], color=line.get_color(), label=label)
        axes[1].plot(steps, [100 * p for p in proj], color=line.get_color(), ls="--", lw=1)
        if r["final"] is not None and r["final"]["tags"].get("recovered"):
            axes[1].plot([r["final"]["step"]], [100 * r["final"]["acc"]], "o", color=line.get_color(), ms=4)
    if any(r.get("seed", 0) for r in runs):
        axes[0].plot([], [], color="0.5", lw=0.8, alpha=0.55, label="thin: seeds 1, 2 (same colour = same sparsity)")
    axes[0].set(yscale="log", xlabel="FIP step", ylabel="‖w − P_p(w)‖ / ‖w‖  (%)", title="distance to the p-sparse set")
    axes[0].axhline(0.1, color="k", lw=0.8, ls="--")
    axes[0].legend(fontsize=6)
    axes[1].set(xlabel="FIP step", ylabel="accuracy (%)", ylim=(0, 100),
                title="solid: walk node; dashed: its projection; dot: after recovery")
    axes[1].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"figure: {out}")


def _seed_lines(axes, r: dict, colour: str) -> None:
    """A further seed's walk: distance and accuracy only, thin and translucent in its sparsity's colour."""
    steps = [p["step"] for p in r["path"]]
    axes[0].plot(steps, [100 * p["dist"] for p in r["path"]], color=colour, lw=0.8, alpha=0.55)
    axes[1].plot(steps, [100 * p["acc"] for p in r["path"]], color=colour, lw=0.8, alpha=0.55)
    if r["final"] is not None and r["final"]["tags"].get("recovered"):
        axes[1].plot([r["final"]["step"]], [100 * r["final"]["acc"]], "o", color=colour, ms=3, alpha=0.55)


def seed_values(r: dict) -> dict[str, float]:
    """The per-run numbers of the seed table (NaN where the run has not been projected yet)."""
    proj, final, nan = r["proj"], r["final"], float("nan")
    if proj is None:
        return {}
    t, last = proj["tags"], final or proj
    return {"steps": float(t["projection_step"]), "lambda": float(t.get("lambda", nan)),
            "length": last["len"] - r["start_len"] if last["len"] is not None else nan,
            "before": 100 * t.get("accuracy_before_projection", {}).get("task1", nan), "after": 100 * proj["acc"],
            "final": 100 * final["acc"] if final is not None and final["tags"].get("recovered") else nan,
            "cap": float(bool(t.get("step_cap_hit")))}


def seed_table(groups: list[list[dict]]) -> None:
    """One markdown row per target sparsity, each cell over the seeds (one group of runs per seed)."""
    per_seed = [{r["run"]["sparsity"]: seed_values(r) for r in runs} for runs in groups]
    cols = [("steps", "walk steps to the tolerance", 0), ("lambda", "λ at the projection", 1),
            ("length", "path length", 0), ("before", "test acc. before projection", 1),
            ("after", "after projection", 1), ("final", "after recovery (final node)", 1)]
    print("| sparsity | " + " | ".join(c[1] for c in cols) + " | cap hit |")
    print("|---" * (len(cols) + 2) + "|")
    for p in sorted({p for d in per_seed for p in d}):
        vals = [d.get(p, {}) for d in per_seed]
        cells = [seed_cell([v.get(k, float("nan")) for v in vals], digits) for k, _, digits in cols]
        caps = sum(int(v.get("cap", 0)) for v in vals)
        print(f"| {100 * p:g} % | " + " | ".join(cells) + f" | {caps} of {len(vals)} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stores", nargs="*")
    ap.add_argument("--seed", action="append", nargs="+", metavar="STORE", default=[],
                    help="the stores holding one seed's runs; repeat once per seed (seed 0 first)")
    ap.add_argument("--out", default="examples/paper/lenet_sparsity/exp3_converge.png")
    args = ap.parse_args(argv)
    if not args.stores and not args.seed:
        ap.error("give the stores (positional) or one --seed STORE... per seed")
    groups = [[dict(r, seed=i) for s in group for r in read(s)] for i, group in enumerate(args.seed)]
    runs = [r for s in args.stores for r in read(s)] + [r for g in groups for r in g]
    if groups:
        seed_table(groups)
    print("| run | target | walk steps to the tolerance | distance left at the projection, % of ‖w‖ | λ at the projection "
          "| path length (Σ node-to-node distance) | wall min | acc. before projection | after projection "
          "| after recovery | final sparsity % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(row(r))
    figure(runs, args.out)


if __name__ == "__main__":
    main()
