"""Paper experiment 6: queries and figures of the SmolLM2 submanifold store (examples/paper/lm_submanifold/config.toml).

    python examples/paper/lm_submanifold/queries.py record  --store S   # perplexity + 1/perplexity of every node as evals
    python examples/paper/lm_submanifold/queries.py report  --store S   # markdown tables (SQL on the store), e.g. > examples/paper/lm_submanifold/report.md
    python examples/paper/lm_submanifold/queries.py scatter --store S --out examples/paper/lm_submanifold/exp14_invppl_scatter.png

The per-node perplexities are the build's own evaluations (eval_all_tasks, every node): task1 = held-out
Wikipedia, task2 = held-out news, the same 4 blocks of 64 tokens for every node; perplexity = exp(mean
token cross-entropy). ``record`` stores them as datasets "wiki" and "news" (metrics perplexity and
inverse_perplexity), so the wide view has wiki_inverse_perplexity etc. for `fipgraph plot graph --color`.
"""
from __future__ import annotations

import argparse
import math

import fipgraph

QUERIES = {"task1": "wiki", "task2": "news"}
BRANCH_SQL = """CASE
  WHEN r.name LIKE '%/wiki' THEN 'pretrained (+1 wiki step)'
  WHEN r.name LIKE '%/continual%' THEN 'CL (news)'
  WHEN r.name LIKE '%/cl_co_%' THEN 'CL then Co'
  WHEN r.name LIKE '%/co_cl_%' THEN 'Co then CL'
  WHEN r.name LIKE '%/co_%' THEN 'Co (sparsify)'
  ELSE 'other' END"""


def record(store_path: str) -> None:
    with fipgraph.open_store(store_path, mode="a") as store:
        df = store.sql("SELECT node_id, dataset, value FROM evals WHERE metric = 'loss' AND dataset IN ('task1', 'task2')")
        by_node: dict[int, dict] = {}
        for n, ds, loss in zip(df["node_id"], df["dataset"], df["value"]):
            ppl = math.exp(float(loss))
            by_node.setdefault(int(n), {})[QUERIES[ds]] = {"perplexity": ppl, "inverse_perplexity": 1.0 / ppl}
        store.add_evals_many(by_node)
        store.flush()
    print(f"recorded perplexity and 1/perplexity (wiki, news) for {len(by_node)} nodes")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if v != 0 and abs(v) < 0.01 else f"{v:.2f}"
    return str(v)


def _md(df) -> str:
    cols = list(df.columns)
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in df.itertuples(index=False):
        rows.append("| " + " | ".join(_fmt(v) for v in rec) + " |")
    return "\n".join(rows)


def report(store_path: str) -> None:
    with fipgraph.open_store(store_path, mode="r") as store:
        runs = store.sql(f"""
            SELECT r.name AS run, count(*) AS nodes, min(w.step) AS first_step, max(w.step) AS last_step,
                   round(max(w.prunable_sparsity), 3) AS sparsity,
                   round(arg_max(w.wiki_perplexity, w.step), 2) AS wiki_last, round(arg_max(w.news_perplexity, w.step), 2) AS news_last,
                   round(min(w.wiki_perplexity), 2) AS wiki_min, round(min(w.news_perplexity), 2) AS news_min
            FROM wide w JOIN runs r USING (run_id) GROUP BY r.name, r.run_id ORDER BY r.run_id""")
        print("## per run\n" + _md(runs))
        branches = store.sql(f"""
            SELECT {BRANCH_SQL} AS branch, count(*) AS nodes,
                   round(median(w.wiki_perplexity), 2) AS wiki_median, round(min(w.wiki_perplexity), 2) AS wiki_min,
                   round(median(w.news_perplexity), 2) AS news_median, round(min(w.news_perplexity), 2) AS news_min
            FROM wide w JOIN runs r USING (run_id) GROUP BY 1 ORDER BY 1""")
        print("\n## per branch\n" + _md(branches))
        for q in ("wiki", "news"):
            best = store.sql(f"""
                SELECT w.node_id, r.name AS run, w.step, round(w.prunable_sparsity, 3) AS sparsity,
                       round(w.{q}_perplexity, 2) AS {q}_perplexity, {BRANCH_SQL} AS branch
                FROM wide w JOIN runs r USING (run_id) ORDER BY w.{q}_perplexity LIMIT 5""")
            print(f"\n## best 5 nodes for the {q} query\n" + _md(best))
        matched = store.sql(f"""
            SELECT round(w.prunable_sparsity, 1) AS sparsity, {BRANCH_SQL} AS branch, count(*) AS nodes,
                   round(min(w.wiki_perplexity), 2) AS wiki_min, round(min(w.news_perplexity), 2) AS news_min
            FROM wide w JOIN runs r USING (run_id) WHERE w.prunable_sparsity >= 0.05
            GROUP BY 1, 2 ORDER BY 1, 2""")
        print("\n## exactly sparse nodes (>= 5 % zeros), per sparsity and branch\n" + _md(matched))
        enc = store.sql("""SELECT s.encoding, count(*) AS nodes, round(sum(s.stored_bytes) / 1e9, 2) AS stored_gb,
                                  round(avg(s.stored_bytes / (4.0 * n.n_params)), 3) AS stored_over_raw,
                                  max(s.max_error_ratio) AS max_error_ratio, max(s.max_abs_error) AS max_abs_error,
                                  median(s.max_abs_error) AS median_max_abs_error
                           FROM storage s JOIN nodes n USING (node_id) GROUP BY s.encoding ORDER BY s.encoding""")
        print("\n## storage per encoding\n" + _md(enc))
        tags = store.sql("""SELECT r.name AS run, n.step, json_extract(n.tags, '$.lambda') AS lambda,
                                   json_extract(n.tags, '$.projection_step') AS projection_step,
                                   json_extract(n.tags, '$.distance_before_projection') AS distance_before,
                                   json_extract(n.tags, '$.step_cap_hit') AS cap_hit
                            FROM nodes n JOIN runs r USING (run_id)
                            -- the projection node: tagged "projection", or "final_projection" when no recovery
                            -- steps follow it (then it is the run's last node, and projection_step = its step)
                            WHERE CAST(json_extract(n.tags, '$.projection_step') AS INTEGER) = n.step
                            ORDER BY n.node_id""")
        print("\n## sparsify projections (stopping rule)\n" + _md(tags))


def scatter(store_path: str, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with fipgraph.open_store(store_path, mode="r") as store:
        df = store.sql(f"SELECT w.wiki_inverse_perplexity AS wiki, w.news_inverse_perplexity AS news, {BRANCH_SQL} AS branch "
                       "FROM wide w JOIN runs r USING (run_id)")
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for b, g in df.groupby("branch"):
        ax.scatter(g["wiki"], g["news"], label=f"{b} ({len(g)})", s=16)
    ax.set_xlabel("1 / perplexity, held-out Wikipedia")
    ax.set_ylabel("1 / perplexity, held-out news (Lee)")
    ax.set_title(f"SmolLM2-135M submanifold: {len(df)} nodes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print("wrote", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["record", "report", "scatter"])
    ap.add_argument("--store", required=True, help="a store built by examples/paper/lm_submanifold/config.toml")
    ap.add_argument("--out", default="examples/paper/lm_submanifold/exp14_invppl_scatter.png")
    a = ap.parse_args()
    {"record": lambda: record(a.store), "report": lambda: report(a.store), "scatter": lambda: scatter(a.store, a.out)}[a.what]()


if __name__ == "__main__":
    main()
