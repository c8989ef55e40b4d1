"""Your own network in fipgraph: a plain training loop recorded, then a continual FIP walk from its last node.

    python examples/own_model.py --store store-own

Task 1 is digits 0-4, task 2 digits 5-9 (scikit-learn's digits, nothing downloaded). The model class is
defined here and registered nowhere. The loop is yours; `store.recorder` keeps one node per 20 steps.
Then `fipgraph.walk` learns task 2 with a `continual` FIP from the recorded run's last node, keeping
task 1, and prints both accuracies. Run it again: the recorded run is reused and the walk is already done.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fipgraph


class Net(nn.Module):
    """A small classifier of the user's own."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def digits() -> tuple[tuple, tuple]:
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16, dtype=torch.float32), torch.tensor(y)
    return (x[y < 5], y[y < 5]), (x[y >= 5], y[y >= 5])


def accuracy(model: nn.Module, data: tuple) -> float:
    with torch.no_grad():
        return float((model(data[0]).argmax(1) == data[1]).float().mean())


def train_task1(store, net: Net, task1: tuple, steps: int) -> int:
    """Your own loop, recorded: returns the last node's id."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    batches = DataLoader(TensorDataset(*task1), batch_size=32, shuffle=True)
    with store.recorder(run="task1-loop", config={"lr": 1e-2, "steps": steps}, resume=True) as rec:
        if rec.last_node is not None:  # recorded by an earlier run of this script: continue from it
            store.load_into(net, rec.last_node)
            return rec.last_node
        step = 0
        while step < steps:
            for x, y in batches:
                loss = nn.functional.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step % 20 == 0 or step == steps:
                    rec.save(net, step=step, metrics={"task1": {"accuracy": accuracy(net, task1), "loss": loss.item()}})
                if step == steps:
                    break
    return rec.last_node


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="store-own", help="store folder (created if missing)")
    parser.add_argument("--steps", type=int, default=100, help="steps of the recorded loop and of the walk")
    args = parser.parse_args(argv)
    task1, task2 = digits()
    torch.manual_seed(0)
    net = Net()
    with fipgraph.open_store(args.store, mode="a") as store:
        start = train_task1(store, net, task1, args.steps)
        walk = fipgraph.walk(net, task2, memory=task1, op="continual", parent=start, store=store, steps=args.steps,
                             lr=1e-2, save_every=25, device="cpu", progress=False,
                             test={"task1": task1, "task2": task2})
    accs = {name: round(m["accuracy"], 3) for name, m in walk.evaluations.items() if "accuracy" in m}
    print(f"recorded loop: last node {start}; continual walk: {len(walk.nodes)} nodes, last {walk.last_node}, "
          f"accuracy {accs}")
    return walk


if __name__ == "__main__":
    main()
