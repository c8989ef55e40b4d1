"""Optimizers and learning-rate schedules for a run.

``fixed_step`` is the authors' FIP optimizer: every step moves the weights by exactly ``lr`` in
Euclidean norm along the (global) gradient direction, so a path of T steps has length T·lr whatever
the loss scale. Schedules are a pure function of the step, so a resumed run gets the same rate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam", "adamw", "fixed_step")
SCHEDULES = ("constant", "cosine", "cyclic")


class FixedStep(torch.optim.Optimizer):
    """w ← w − lr · g / ‖g‖, with ‖g‖ over all parameters together (a fixed-length step)."""

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-12):
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return loss
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        for group in self.param_groups:
            scale = -group["lr"] / (float(norm) + group["eps"])
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=scale)
        return loss


def make_optimizer(run, model: nn.Module, **impl) -> torch.optim.Optimizer:
    """The run's optimizer over the model's trainable parameters; ``impl`` picks torch's implementation
    of sgd/adam/adamw (e.g. ``fused=True`` for stacked replica weights), never the update rule."""
    params = [p for p in model.parameters() if p.requires_grad]
    if run.optimizer == "sgd":
        return torch.optim.SGD(params, lr=run.lr, momentum=run.momentum, weight_decay=run.weight_decay, **impl)
    if run.optimizer == "fixed_step":
        return FixedStep(params, lr=run.lr)
    cls = torch.optim.Adam if run.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=run.lr, weight_decay=run.weight_decay, **impl)


def lr_at(run, step: int, total: int) -> float:
    """Learning rate for optimizer step ``step`` (1-based) of a run of ``total`` steps.

    cosine: lr → lr_min over the run. cyclic: the same cosine within each cycle of ``lr_cycle`` steps,
    restarting at lr (snapshot ensembles / FGE: the node saved at a cycle's end sits at the low rate).
    """
    if run.lr_schedule == "constant":
        return run.lr
    length = total if run.lr_schedule == "cosine" else run.lr_cycle
    t = ((step - 1) % length + 1) / length  # (0, 1], reaching 1 at the cycle's last step
    return run.lr_min + 0.5 * (run.lr - run.lr_min) * (1 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
