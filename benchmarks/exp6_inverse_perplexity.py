"""Record 1/perplexity of each query as its own eval (the wide view then has <dataset>_inverse_perplexity)."""
import fipgraph
with fipgraph.open_store("/tmp/p5/smol", mode="a") as store:
    df = store.sql("select node_id, dataset, value from evals where metric = 'perplexity' and dataset in ('wiki/causal', 'lee/causal')")
    by_node = {}
    for n, ds, v in zip(df["node_id"], df["dataset"], df["value"]):
        by_node.setdefault(int(n), {})[ds] = {"inverse_perplexity": 1.0 / float(v)}
    store.add_evals_many(by_node)
    print("recorded inverse perplexity for", len(by_node), "nodes")
