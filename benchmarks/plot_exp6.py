"""Paper Fig. 6c bottom analogue: inverse perplexity on the two queries, one point per node, coloured by branch."""
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import fipgraph
SQL = """select w.node_id, r.name as run, w."wiki/causal_inverse_perplexity" as wiki, w."lee/causal_inverse_perplexity" as lee
from wide w join runs r using (run_id)"""
with fipgraph.open_store("/tmp/p5/smol", mode="r") as store:
    df = store.sql(SQL)
def branch(run: str) -> str:
    run = run.split("/", 1)[1]
    if run == "wiki": return "pretrained / wiki"
    if run == "continual": return "continual (CL)"
    if run.startswith("cl_sparsify"): return "CL then sparsify"
    if run.startswith("sparsify"): return "sparsify (Co)"
    return "sparsify then CL"
df["branch"] = df["run"].map(branch)
fig, ax = plt.subplots(figsize=(6.5, 5))
for b, g in df.groupby("branch"):
    ax.scatter(g["wiki"], g["lee"], label=b, s=22)
ax.set_xlabel("1 / perplexity, held-out Wikipedia (wiki/causal)")
ax.set_ylabel("1 / perplexity, held-out news (lee/causal)")
ax.set_title(f"SmolLM2-135M submanifold: {len(df)} nodes")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig("/work/main/benchmarks/figures/exp6_invppl_scatter.png", dpi=120)
print("wrote benchmarks/figures/exp6_invppl_scatter.png")
