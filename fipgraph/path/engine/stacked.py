"""The forward pass of K stacked networks: batched matmuls for MLPs, ``vmap`` + ``functional_call`` otherwise.

``torch.func.vmap`` runs any model over stacked weights, but on a CPU its batching machinery costs
more than the matmuls of small networks, forward and backward: one step of 8 stacked LeNet-300-100s
at batch 64 took 20.6 ms of CPU time under vmap, 13.8 ms as a chain of ``baddbmm`` (8 separate
networks: 12.5 ms), and the 64-128-10 MLP at batch 32 0.99 vs 0.61 ms (8 separate: 2.54 ms;
tests measured on this 2-core machine, one thread, load ~10). So a model that is a chain of
Flatten, Linear and ReLU (``fipgraph.models.vision.MLP``: mlp, lenet300) runs as that chain of
batched matmuls; every other model goes through vmap. Both compute each walk's logits from its own
weights only; they sum in another order than a single network's ``nn.Linear``, so results agree with
separate walks within float rounding (tests/test_replicas.py checks both paths).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import torch.nn.functional as F

from fipgraph.models import forward_logits, model_kind
from fipgraph.path.engine.memory import n_scored
from fipgraph.path.ops.odist import BATCHED_ODISTS
from fipgraph.path.engine.step import StepOutput

Plan = list[tuple]  # ("flatten",) | ("relu",) | ("linear", weight index, bias index or None)


def mlp_plan(model: nn.Module, names: list[str]) -> Plan | None:
    """The layers of an MLP as operations on the stacked weights (indices into ``names``); None for other models."""
    from fipgraph.models.vision import MLP

    if type(model) is not MLP:  # its forward is head(body(x)) with body a Sequential: the order below
        return None
    prefixes = {module: name for name, module in model.named_modules()}
    index = {name: i for i, name in enumerate(names)}
    plan: Plan = []
    for layer in [*model.body, model.head]:
        if isinstance(layer, nn.Linear):
            weight, bias = index.get(f"{prefixes[layer]}.weight"), index.get(f"{prefixes[layer]}.bias")
            if weight is None or (layer.bias is not None and bias is None):  # a frozen weight is not stacked
                return None
            plan.append(("linear", weight, bias))
        elif isinstance(layer, nn.ReLU):
            plan.append(("relu",))
        elif isinstance(layer, nn.Flatten) and layer.start_dim == 1 and layer.end_dim == -1:
            plan.append(("flatten",))
        else:
            return None
    return plan


class StackedLinear(torch.autograd.Function):
    """``h @ w^T + b`` of K stacked layers: h (K, N, in), w (K, out, in), b (K, out) or None.

    Its backward writes each weight's gradient straight in the weight's (K, out, in) layout. Autograd's
    own ``bmm`` backward gives it transposed, and AccumulateGrad then copies it into that layout: for 4
    stacked LeNet-300-100s at batch 64 that made the backward 5.0 ms of CPU instead of 2.6 ms (one
    thread; the forward is the same). The same products, so the same values up to float rounding."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(h, w)
        ctx.has_bias = b is not None
        return torch.bmm(h, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, w = ctx.saved_tensors
        grad_h = torch.bmm(grad, w) if ctx.needs_input_grad[0] else None  # not for the first layer's input
        grad_w = torch.bmm(grad.transpose(1, 2), h) if ctx.needs_input_grad[1] else None  # (K, out, in)
        grad_b = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b


def run_mlp(plan: Plan, weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (K, N, C) of K MLPs with stacked ``weights`` (K, out, in) on their own inputs ``x`` (K, N, ...)."""
    # under autocast (bf16) the plain ops, whose backward autocast and autograd cast for us
    own_backward = not torch.is_autocast_enabled(x.device.type)
    h = x
    for op in plan:
        if op[0] == "flatten":
            h = h.flatten(2)
        elif op[0] == "relu":
            h = torch.relu(h)
        elif own_backward:
            h = StackedLinear.apply(h, weights[op[1]], None if op[2] is None else weights[op[2]])
        elif op[2] is None:
            h = torch.bmm(h, weights[op[1]].transpose(1, 2))
        else:
            h = torch.baddbmm(weights[op[2]].unsqueeze(1), h, weights[op[1]].transpose(1, 2))
    return h


class _Logits(nn.Module):
    """``forward_logits`` as a module call, so ``functional_call`` can swap in one replica's weights."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_logits(self.net, batch)


def stacked_forward(model: nn.Module, names: list[str], fast: bool = True) -> tuple[str, Callable]:
    """(kind, fn) where ``fn(weights, batch)`` gives the logits (K, P, C) and labels (K, P) of K stacked walks;
    ``weights`` are the stacked tensors of ``names``, ``batch`` the walks' batches stacked on dim 0."""
    plan = mlp_plan(model, names) if fast else None
    if plan is not None:
        return "batched matmuls", lambda weights, batch: (run_mlp(plan, weights, batch["x"]), batch["labels"])
    logits = _Logits(model)

    def one(weights: list[torch.Tensor], batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        params = {f"net.{n}": w for n, w in zip(names, weights)}
        return torch.func.functional_call(logits, params, (batch,), strict=False)

    return "vmap over stacked weights", torch.func.vmap(one, in_dims=(0, 0))


def fused_terms(recipes: list, logits: torch.Tensor, labels: torch.Tensor, tasks: list, mems: list,
                refs: list) -> tuple[torch.Tensor, list[StepOutput]] | None:
    """The K walks' S(w) as one computation over (K, P, C) logits: the sum to differentiate and each
    walk's StepOutput (its loss and memory logits); None where only ``fip_terms`` per walk applies.

    K walks of one config share op, λ, odist, head columns and batch sizes, so each term is one
    batched op instead of K small ones (on an MLP the K calls cost more than the batched matmuls)."""
    first = recipes[0]
    if not first.objective.can_fuse or first.cfg.odist not in BATCHED_ODISTS or model_kind(first.model) != "classifier":
        return None
    if len({_scored(t) for t in tasks}) > 1 or len({m is None for m in mems}) > 1:
        return None
    logits = logits.float()  # losses in fp32 also under autocast, as in fip_terms
    n_task = _scored(tasks[0])
    k = len(recipes)
    per_walk = torch.zeros(k, device=logits.device)
    if n_task:
        task_logits = logits[:, :n_task, first.cols]
        ce = F.cross_entropy(task_logits.reshape(k * n_task, -1), labels[:, :n_task].reshape(-1), reduction="none")
        per_walk = ce.view(k, n_task).mean(1)  # each walk's own mean: its CE as a single walk computes it
    memory = None
    if mems[0] is not None:
        memory = logits[:, n_task:]
        distance = BATCHED_ODISTS[first.cfg.odist](memory, torch.stack(refs))
        per_walk = distance + first.cfg.lam * per_walk
        memory = memory.detach()
    outs = [StepOutput(per_walk[i], {}, None if memory is None else memory[i]) for i in range(k)]
    return per_walk.sum(), outs


def _scored(batch: dict | None) -> int:
    """n_scored of a classifier's batch without its per-example tensor (one label per example)."""
    if batch is None:
        return 0
    return int(batch["labels"].shape[0]) if batch["labels"].dim() == 1 else n_scored(batch)
