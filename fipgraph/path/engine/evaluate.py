"""Evaluations written at saved nodes: per-task accuracy/loss, prunable sparsity, robustness H."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fipgraph.models import forward_logits
from fipgraph.path.engine.memory import Batch
from fipgraph.query.scoring import head_slice, perplexity_of, score_batches  # one scorer for build and query time

LM_KINDS = ("causal_lm", "masked_lm")


def task_logits(model: nn.Module, batch: Batch, task, head: str) -> tuple[torch.Tensor, torch.Tensor]:
    logits, labels = forward_logits(model, batch)
    return logits[:, head_slice(task, head)], labels


@torch.no_grad()
def evaluate_tasks(model: nn.Module, tasks: dict[str, object], head: str, batch_size: int = 256) -> dict:
    """{dataset: {"accuracy", "loss"}} on each task's held-out split, on the device the model is on;
    language-model tasks also get perplexity, perplexity_se and loss_se (standard errors over blocks)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = {}
    for name, task in tasks.items():
        batches = task.test_loader(batch_size, pin_memory=device.type == "cuda")
        scores = score_batches(model, batches, head_slice(task, head), device)
        out[name] = {"accuracy": scores["accuracy"], "loss": scores["loss"]}
        if getattr(task, "kind", None) in LM_KINDS:  # the same numbers `fipgraph perplexity` stores
            out[name].update(loss_se=scores["loss_se"], **perplexity_of(scores["loss"], scores["loss_se"]))
    model.train(was_training)
    return out


def robustness_h(model: nn.Module, batch: Batch, odist, attack: str, epsilon: float,
                 generator: torch.Generator) -> float | None:
    """H = odist(f(x; w), f(x'; w)) per example, x' = x + eps*sign(grad_x CE) or uniform l_inf noise.

    Only for float inputs (``"x"``); token inputs have no input gradient (returns None)."""
    if "x" not in batch:
        return None
    was_training = model.training
    model.eval()
    x = batch["x"].detach()
    if attack == "fgsm":
        x_adv = x.clone().requires_grad_(True)
        logits, labels = forward_logits(model, {**batch, "x": x_adv})
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), x_adv)
        x_pert = x + epsilon * grad.sign()
    else:
        x_pert = x + epsilon * (2 * torch.rand(x.shape, generator=generator) - 1).to(x.device)
    with torch.no_grad():
        clean, _ = forward_logits(model, batch)
        pert, _ = forward_logits(model, {**batch, "x": x_pert})
        h = float(odist(pert, clean)) / x.shape[0]
    model.train(was_training)
    return h
