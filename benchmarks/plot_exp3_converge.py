"""Issue 11, experiment 3 rerun: FIP sparsification walked to the p-sparse set, read back from the stores.

    python benchmarks/plot_exp3_converge.py /tmp/i11/cv_20 ... /tmp/i11/cv_994 [--out benchmarks/figures/exp3_converge.png]

Each store holds a dense node and sparsify runs built by examples/paper_lenet_sparsity_converge.toml (or the
validation config). Prints one markdown row per sparsify run (walk steps, cap hit, path length, wall time,
accuracy before / after the projection and after the recovery) and draws, per run, the walk: distance to
the p-sparse set, the node's accuracy and what its projection would score, against the step.
Every number comes from SQL on the stores (tags of the tagged nodes, the wide view's evaluations).
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import fipgraph  # noqa: E402

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
    for r in runs:
        if not r["path"]:
            continue
        label = f"{100 * r['run']['sparsity']:g} % ({r['name']})"
        path = [(p["step"], p["dist"], p["acc"], p["proj"]) for p in r["path"]]
        if r["proj"] is not None:  # the walk's last point: the node just before the projection, and the projection
            t = r["proj"]["tags"]
            path.append((t["projection_step"], t["distance_before_projection"],
                         t.get("accuracy_before_projection", {}).get("task1", float("nan")), r["proj"]["acc"]))
        steps, dist, acc, proj = zip(*path)
        line, = axes[0].plot(steps, [100 * d for d in dist], label=label)
        axes[1].plot(steps, [100 * a for a in acc], color=line.get_color(), label=label)
        axes[1].plot(steps, [100 * p for p in proj], color=line.get_color(), ls="--", lw=1)
        if r["final"] is not None and r["final"]["tags"].get("recovered"):
            axes[1].plot([r["final"]["step"]], [100 * r["final"]["acc"]], "o", color=line.get_color(), ms=4)
    axes[0].set(yscale="log", xlabel="FIP step", ylabel="‖w − P_p(w)‖ / ‖w‖  (%)", title="distance to the p-sparse set")
    axes[0].axhline(0.1, color="k", lw=0.8, ls="--")
    axes[0].legend(fontsize=6)
    axes[1].set(xlabel="FIP step", ylabel="accuracy (%)", ylim=(0, 100),
                title="solid: walk node; dashed: its projection; dot: after recovery")
    axes[1].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"figure: {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--out", default="benchmarks/figures/exp3_converge.png")
    args = ap.parse_args(argv)
    runs = [r for s in args.stores for r in read(s)]
    print("| run | target | walk steps to the tolerance | distance left at the projection, % of ‖w‖ | λ at the projection "
          "| path length (Σ node-to-node distance) | wall min | acc. before projection | after projection "
          "| after recovery | final sparsity % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(row(r))
    figure(runs, args.out)


if __name__ == "__main__":
    main()
