"""Paper experiment 6: queries and figures of the SmolLM2 submanifold store (examples/paper/lm_submanifold/config.toml).

    python examples/paper/lm_submanifold/queries.py record  --store S   # perplexity ± SE and 1/perplexity as evals "wiki"/"news"
    python examples/paper/lm_submanifold/queries.py report  --store S   # markdown tables (SQL on the store), e.g. > examples/paper/lm_submanifold/report.md
    python examples/paper/lm_submanifold/queries.py scatter --store S --out examples/paper/lm_submanifold/exp14_invppl_scatter.png

The per-node perplexities are the build's own evaluations (eval_all_tasks; every 12th step and each run's last
node): task1 = held-out Wikipedia, task2 = held-out news, the same 24 blocks of 128 tokens (3,072 tokens) per
source for every node; perplexity = exp(mean token cross-entropy), its standard error over the 24 blocks by the
delta method. ``record`` stores them as datasets "wiki" and "news" (metrics perplexity, perplexity_se and
inverse_perplexity), so the wide view has wiki_perplexity etc. for SQL and `fipgraph plot graph --color`.
"""
from __future__ import annotations

import argparse
import math

import fipgraph

# the build's evaluations (datasets task1/task2) and `fipgraph perplexity`'s, named after the data's tasks
QUERIES = {"task1": "wiki", "task2": "news", "wiki/causal": "wiki", "lee/causal": "news"}
# run names of the config: wiki, continual, co[sparsity=p], cl_co[sparsity=p], co_cl[sparsity=p]
BRANCH_SQL = """CASE
  WHEN r.name LIKE '%/wiki' THEN 'pretrained (+1 wiki step)'
  WHEN r.name LIKE '%/continual%' THEN 'CL'
  WHEN r.name LIKE '%/cl_co%' THEN 'CL then Co'
  WHEN r.name LIKE '%/co_cl%' THEN 'Co then CL'
  WHEN r.name LIKE '%/co%' THEN 'Co'
  ELSE 'other' END"""
EVALUATED = "w.wiki_perplexity IS NOT NULL"
# every node with its run and branch; a node scored after the build has no 'prunable' eval: a sparsify run's mask
# is fixed after its projection, so its last node has the run's (maximal) sparsity
NODES = f"""(SELECT w.*, r.name AS run, {BRANCH_SQL} AS branch,
                    coalesce(w.prunable_sparsity, max(w.prunable_sparsity) OVER (PARTITION BY w.run_id)) AS prunable
             FROM wide w JOIN runs r USING (run_id))"""


def record(store_path: str) -> None:
    with fipgraph.open_store(store_path, mode="a") as store:
        # a run's last node the build stored without its evaluation (stopped while evaluating) is scored here
        # on the same held-out blocks, recorded as the build would have (datasets task1/task2)
        missing = store.sql("""SELECT w.node_id FROM wide w JOIN runs r USING (run_id)
                               WHERE w.task1_perplexity IS NULL
                                 AND w.step = (SELECT max(step) FROM nodes n WHERE n.run_id = w.run_id)""")["node_id"]
        if len(missing):
            from fipgraph.query import perplexity
            perplexity(store, [int(n) for n in missing], batch_size=8, device="cpu")
        df = store.sql("SELECT node_id, dataset, metric, value FROM evals "
                       "WHERE metric IN ('perplexity', 'perplexity_se') AND dataset IN ?", [list(QUERIES)])
        by_node: dict[int, dict] = {}
        for n, ds, metric, value in zip(df["node_id"], df["dataset"], df["metric"], df["value"]):
            row = by_node.setdefault(int(n), {}).setdefault(QUERIES[ds], {})
            row[metric] = float(value)
            if metric == "perplexity":
                row["inverse_perplexity"] = 1.0 / float(value)
        store.add_evals_many(by_node)
        store.flush()
    print(f"recorded perplexity ± SE and 1/perplexity (wiki, news) for {len(by_node)} nodes")


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


def _pm(col: str) -> str:
    """SQL for 'value ± se' of a perplexity column of the wide view."""
    return f"printf('%.2f ± %.2f', {col}, {col}_se)"


def report(store_path: str) -> None:
    with fipgraph.open_store(store_path, mode="r") as store:
        dense = store.sql(f"""SELECT w.wiki_perplexity AS wiki, w.news_perplexity AS news FROM wide w JOIN runs r USING (run_id)
                              WHERE r.name LIKE '%/wiki' AND {EVALUATED} ORDER BY w.step DESC LIMIT 1""").iloc[0]
        d_wiki, d_news = float(dense["wiki"]), float(dense["news"])
        print(f"Dense start (the wiki node): wiki {d_wiki:.2f}, news {d_news:.2f}; 2x dense = {2 * d_wiki:.2f} / {2 * d_news:.2f}.")
        runs = store.sql(f"""
            SELECT w.run, count(*) AS nodes, count(w.wiki_perplexity) AS evaluated,
                   round(max(w.prunable), 3) AS sparsity,
                   arg_max({_pm('w.wiki_perplexity')}, CASE WHEN {EVALUATED} THEN w.step END) AS wiki_last,
                   arg_max({_pm('w.news_perplexity')}, CASE WHEN {EVALUATED} THEN w.step END) AS news_last
            FROM {NODES} w GROUP BY w.run, w.run_id ORDER BY w.run_id""")
        print("\n## per run (last evaluated node, perplexity ± standard error over 24 blocks)\n" + _md(runs))
        cells = store.sql(f"""
            WITH e AS (SELECT w.*, round(w.prunable, 1) AS sp FROM {NODES} w WHERE {EVALUATED})
            SELECT branch, sp AS sparsity, count(*) AS evaluated,
                   round(avg(CASE WHEN wiki_perplexity <= {2 * d_wiki} OR news_perplexity <= {2 * d_news} THEN 1 ELSE 0 END), 2)
                       AS share_within_2x,
                   arg_min(printf('%s: node %d, %.2f ± %.2f', run, node_id, wiki_perplexity, wiki_perplexity_se), wiki_perplexity) AS best_for_wiki,
                   arg_min(printf('%s: node %d, %.2f ± %.2f', run, node_id, news_perplexity, news_perplexity_se), news_perplexity) AS best_for_news
            FROM e GROUP BY 1, 2 ORDER BY 2, 1""")
        print("\n## per branch and sparsity: best node for each query; share of evaluated nodes within 2x of the dense "
              "perplexity on at least one query set\n" + _md(cells))
        for q in ("wiki", "news"):
            best = store.sql(f"""
                SELECT w.node_id, w.run, w.step, round(w.prunable, 3) AS sparsity,
                       {_pm(f'w.{q}_perplexity')} AS {q}_perplexity, w.branch
                FROM {NODES} w WHERE {EVALUATED} ORDER BY w.{q}_perplexity LIMIT 5""")
            print(f"\n## best 5 nodes for the {q} query\n" + _md(best))
        for p in (0.3, 0.5):
            best = store.sql(f"""
                SELECT w.node_id, w.run, w.step, {_pm('w.wiki_perplexity')} AS wiki, {_pm('w.news_perplexity')} AS news,
                       w.branch
                FROM {NODES} w WHERE {EVALUATED} AND round(w.prunable, 1) = {p}
                ORDER BY least(w.wiki_perplexity / {d_wiki}, w.news_perplexity / {d_news}) LIMIT 5""")
            print(f"\n## best 5 exactly {p:.0%}-sparse nodes (by the lower of wiki/dense, news/dense)\n" + _md(best))
        enc = store.sql("""SELECT s.encoding, count(*) AS nodes, round(sum(s.stored_bytes) / 1e9, 2) AS stored_gb,
                                  round(avg(s.stored_bytes / (4.0 * n.n_params)), 3) AS stored_over_raw,
                                  max(s.max_error_ratio) AS max_error_ratio, max(s.max_abs_error) AS max_abs_error
                           FROM storage s JOIN nodes n USING (node_id) GROUP BY s.encoding ORDER BY s.encoding""")
        print("\n## storage per encoding\n" + _md(enc))
        tags = store.sql("""SELECT r.name AS run, n.step, json_extract(n.tags, '$.distance_before_projection') AS distance_before,
                                   json_extract(n.tags, '$.step_cap_hit') AS cap_hit
                            FROM nodes n JOIN runs r USING (run_id)
                            WHERE CAST(json_extract(n.tags, '$.projection_step') AS INTEGER) = n.step
                            ORDER BY n.node_id""")
        print("\n## sparsify projections (distance to the sparse set left when the walk stopped)\n" + _md(tags))


def scatter(store_path: str, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with fipgraph.open_store(store_path, mode="r") as store:
        df = store.sql(f"SELECT w.wiki_inverse_perplexity AS wiki, w.news_inverse_perplexity AS news, {BRANCH_SQL} AS branch "
                       "FROM wide w JOIN runs r USING (run_id) WHERE " + EVALUATED)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for b, g in df.groupby("branch"):
        ax.scatter(g["wiki"], g["news"], label=f"{b} ({len(g)})", s=16)
    ax.set_xlabel("1 / perplexity, held-out Wikipedia")
    ax.set_ylabel("1 / perplexity, held-out news (Lee)")
    ax.set_title(f"SmolLM2-135M submanifold: the {len(df)} evaluated nodes (3,072 tokens per set)")
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
