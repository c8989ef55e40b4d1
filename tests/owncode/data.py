"""Data functions of the user's own (imported by path in tests, as `[data] source = "tests.owncode.data:..."`)."""

import torch
from sklearn.datasets import load_digits

from fipgraph.data import Task


def _digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = torch.tensor(x, dtype=torch.float32)[order] / 16.0, torch.tensor(y)[order]
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def parity_tasks(seed: int = 0, scale: float = 1.0) -> list[Task]:
    """Two tasks of its own making: even digits, then odd ones (single 10-way head, label = digit)."""
    x_tr, y_tr, x_te, y_te = _digits(seed)
    tasks = []
    for i, classes in enumerate(([0, 2, 4, 6, 8], [1, 3, 5, 7, 9])):
        tr, te = torch.isin(y_tr, torch.tensor(classes)), torch.isin(y_te, torch.tensor(classes))
        tasks.append(Task(f"task{i + 1}", classes, 10, min(classes),
                          train={"x": x_tr[tr] * scale, "labels": y_tr[tr]},
                          test={"x": x_te[te] * scale, "labels": y_te[te]}, meta={"head": "single"}))
    return tasks


def fixed_tasks() -> list[Task]:
    """Takes no settings at all: fipgraph's split and seed are not passed."""
    return parity_tasks(seed=3)


def tensor_pairs(seed: int = 0) -> list[tuple]:
    """(train, test) pairs of (x, y) tensors, one per task, for fipgraph.data.adapters.to_task."""
    x_tr, y_tr, x_te, y_te = _digits(seed)
    return [((x_tr, y_tr), (x_te, y_te))]


def not_a_list() -> dict:
    return {"task1": None}
