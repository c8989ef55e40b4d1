"""How many calibration blocks Wanda needs, and whether its norms must be refreshed along a FIP walk.

    python examples/paper/lm_sparsity/calibration.py --store STORE [--node N] [--sizes 4 16 64]

For the dense start node of a store built by run.py: the share of Wanda's 50 %-per-row keep mask that
changes when the norms come from n memory blocks instead of the largest n given (the first n of the
same seeded draw, as a build takes them). With --node (e.g. a FIP run's last node): how far that
node's input norms moved from the dense node's (median and 99th percentile of |Δ‖X_j‖| / ‖X_j‖ over
all prunable input features), and the share of the mask that refreshed norms would change.
"""

from __future__ import annotations

import argparse

import torch


def norms_for(model, names, sample, n, batch=8):
    from fipgraph.path.ops.saliency import input_norms

    batches = [{k: v[i:i + batch] for k, v in sample.items()} for i in range(0, n, batch)]
    return input_norms(model, names, batches)


def mask_change(params, a, b, p=0.5) -> float:
    from fipgraph.path.ops.sparsity import magnitude_masks

    ma, mb = magnitude_masks(params, p, "row", a), magnitude_masks(params, p, "row", b)
    return sum(int((x != y).sum()) for x, y in zip(ma, mb)) / sum(m.numel() for m in ma)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--node", type=int, help="a later node to compare with the dense start node")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import fipgraph
    from fipgraph.data import make_tasks
    from fipgraph.data.seeds import derive_seed
    from fipgraph.models import model_from_node
    from fipgraph.path.ops.sparsity import prunable_names

    with fipgraph.open_store(args.store, "r") as s:
        dense_id = int(s.sql("select n.node_id from nodes n join runs r using (run_id) where r.name like '%/dense' "
                             "order by n.step desc limit 1")["node_id"][0])
        model = model_from_node(s, dense_id).eval()
        later = model_from_node(s, args.node).eval() if args.node is not None else None
    task = make_tasks(["wiki", "lee"], seed=0, tokenizer="smollm2", objective="causal", block_size=128,
                      test_blocks=24)[0]
    sample = task.sample(max(args.sizes), seed=derive_seed(0, "memory", 1))
    names = prunable_names(model)
    params = [dict(model.named_parameters())[n].detach() for n in names]
    ref = norms_for(model, names, sample, max(args.sizes))
    for n in sorted(args.sizes)[:-1]:
        print(f"calibration {n:3d} vs {max(args.sizes)} blocks: {100 * mask_change(params, norms_for(model, names, sample, n), ref):.2f} "
              f"% of the 50 %-per-row mask differs")
    if later is not None:
        moved = norms_for(later, names, sample, 16)
        dense16 = norms_for(model, names, sample, 16)
        rel = torch.cat([((m - d).abs() / d.clamp_min(1e-8)) for m, d in zip(moved, dense16)])
        print(f"node {args.node} vs dense: |Δ‖X_j‖|/‖X_j‖ median {rel.median():.4f}, 99th pct {rel.quantile(0.99):.4f}")
        later_params = [dict(later.named_parameters())[n].detach() for n in names]
        print(f"refreshing the norms at node {args.node} changes {100 * mask_change(later_params, dense16, moved):.2f} "
              f"% of its 50 %-per-row mask")


if __name__ == "__main__":
    main()
