"""Paper experiment 2: accuracy on each task after each training stage, per method (mean over seeds,
min-max band), read from the split-MNIST stores built by examples/paper/split_mnist/config.toml.

    python examples/paper/split_mnist/plot.py examples/paper/split_mnist/exp2_single.png "class-incremental" \
        paper-stores/split_mnist_single_s{0,1,2}
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import fipgraph  # noqa: E402

# accuracy matrix a[method, after_task, task] from the last node of each run (task1 is shared by every method)
MATRIX_SQL = """
WITH fin AS (SELECT split_part(r.name, '/', 2) AS run, w.* FROM wide w JOIN runs r USING (run_id)
             WHERE w.node_id IN (SELECT max(node_id) FROM nodes GROUP BY run_id)),
acc AS (UNPIVOT (SELECT run, task1_accuracy AS "1", task2_accuracy AS "2", task3_accuracy AS "3",
                        task4_accuracy AS "4", task5_accuracy AS "5" FROM fin)
        ON "1", "2", "3", "4", "5" INTO NAME i VALUE a),
t AS (SELECT regexp_extract(run, '^([a-z]+)', 1) AS m, CAST(regexp_extract(run, '([0-9])$', 1) AS INT) AS j,
             CAST(i AS INT) AS i, a FROM acc),
mat AS (SELECT m, j, i, a FROM t WHERE m <> 'task'
        UNION ALL SELECT ms.m, 1, t.i, t.a FROM t, (SELECT DISTINCT m FROM t WHERE m <> 'task') ms WHERE t.m = 'task')
SELECT m AS method, j AS after_task, i AS task, a AS accuracy FROM mat ORDER BY m, j, i
"""


def matrix(store_dir: str) -> pd.DataFrame:
    with fipgraph.open_store(store_dir, mode="r") as store:
        return store.sql(MATRIX_SQL)


ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("out", help="the figure (.png)")
ap.add_argument("title", help="its title, e.g. the protocol")
ap.add_argument("stores", nargs="+", help="one store per seed")
args = ap.parse_args()
out, title, stores = args.out, args.title, args.stores
df = pd.concat([matrix(s).assign(seed=k) for k, s in enumerate(stores)])
names = {"continual": "FIP (continual)", "finetune": "fine-tuning", "ewc": "EWC, λ=5000", "replay": "replay (250/task)"}
fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), sharey=True)
for ax, m in zip(axes, names):
    d = df[df.method == m]
    for i in range(1, 6):
        g = d[(d.task == i) & (d.after_task >= i)].groupby("after_task").accuracy
        mean, lo, hi = g.mean() * 100, g.min() * 100, g.max() * 100
        ax.plot(mean.index, mean.values, "o-", label=f"task {i}")
        ax.fill_between(mean.index, lo.values, hi.values, alpha=0.2)
    avg = d[d.task <= d.after_task].groupby(["seed", "after_task"]).accuracy.mean().groupby("after_task").mean() * 100
    ax.plot(avg.index, avg.values, "k--", lw=2, label="mean over tasks seen")
    ax.set_title(names[m]); ax.set_xlabel("after training task"); ax.set_xticks(range(1, 6)); ax.grid(alpha=0.3)
axes[0].set_ylabel("test accuracy (%)"); axes[-1].legend(fontsize=8, loc="lower left")
fig.suptitle(title, fontsize=10); fig.tight_layout(); fig.savefig(out, dpi=110)
