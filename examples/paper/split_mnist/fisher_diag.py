"""Size of the EWC penalty at the task-1 node: diagonal Fisher (the library's EWC code) and (λ/2)·ΣF·Δw² for the
fine-tuning step from task1 to finetune2 (what EWC would have paid to go where fine-tuning went).

    python examples/paper/split_mnist/fisher_diag.py paper-stores/split_mnist_task_s0 per_task

Measured this way (seed 0): a 2-way head that is 100 % right on task 1 has ΣF = 2.4e-5, so λ = 5,000 does nothing.
"""
import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", help="a store built by examples/paper/split_mnist/config.toml")
    ap.add_argument("head", choices=["single", "per_task"], help="the protocol that store was built with")
    ap.add_argument("--task1-node", type=int, default=1, help="the task-1 run's last node (step 190)")
    ap.add_argument("--finetune-node", type=int, default=6, help="finetune2's last node")
    args = ap.parse_args()

    import torch

    from fipgraph import open_store
    from fipgraph.data.tasks import make_tasks
    from fipgraph.models import build_model
    from fipgraph.path.ops.ewc import diagonal_fisher

    torch.set_num_threads(1)
    spec = {"name": "cnn5", "kwargs": {"in_channels": 1, "n_classes": 10}}
    tasks = make_tasks("mnist", [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]], head=args.head)
    with open_store(args.store, mode="r") as st:
        m = st.load_into(build_model(spec), args.task1_node)
        fisher = diagonal_fisher(m, tasks[0], args.head, 500, seed=1)
        w1 = [p.detach().clone() for p in m.parameters()]
        ft = st.load_into(build_model(spec), args.finetune_node)
    pen = sum(float((f * (p.detach() - w).pow(2)).sum()) for f, p, w in zip(fisher, ft.parameters(), w1))
    print(f"{args.head}: sum F = {sum(float(f.sum()) for f in fisher):.3e}, "
          f"max F = {max(float(f.max()) for f in fisher):.3e}, (5000/2)*sum F dw^2 (task1 -> finetune2) = {2500 * pen:.3e}")


if __name__ == "__main__":
    main()
