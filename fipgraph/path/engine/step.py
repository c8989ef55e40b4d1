"""One FIP step: S(w) = odist(f(x_mem; w), f(x_mem; w_ref)) + λ·L(w), one forward pass.

The new-task batch and the memory batch go through the network together, so FIP costs one forward
and one backward on (new + memory); the reference side is cached logits (see memory.FrozenReference).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from fipgraph.device import autocast, grad_scaler
from fipgraph.models import forward_logits, model_kind
from fipgraph.path.engine.memory import Batch, cat_batches, n_scored


@dataclass
class Amp:
    """Mixed precision of a run: autocast for forward (and the loss), fp32 master weights, and for
    fp16 a gradient scaler against underflow. ``Amp()`` is plain fp32 on the CPU."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    scaler: "torch.amp.GradScaler | None" = None

    @classmethod
    def of(cls, device: torch.device, precision: str) -> "Amp":
        return cls(device, precision, grad_scaler(device, precision))

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """backward and optimizer step, through the scaler when there is one."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)  # unscales first; skips the step if a gradient overflowed
        self.scaler.update()


@dataclass
class StepOutput:
    loss: torch.Tensor  # S(w), still attached to the graph
    terms: dict[str, float]  # "odist" and/or "L", for the progress bar and log
    memory_logits: torch.Tensor | None  # live logits on the memory batch (detached), for the live-reference guard


def fip_loss(model: nn.Module, objective, odist, lam: float, task_batch: Batch | None,
             memory_batch: Batch | None, ref_logits: torch.Tensor | None, cols: slice = slice(None)) -> StepOutput:
    """S(w) for one step. ``cols`` selects the task's logit columns for its cross-entropy."""
    logits, labels = forward_logits(model, joined_batch(task_batch, memory_batch))
    return fip_terms(model, objective, odist, lam, logits, labels, task_batch, memory_batch, ref_logits, cols)


def joined_batch(task_batch: Batch | None, memory_batch: Batch | None) -> Batch:
    """New-task and memory examples as one batch: one forward pass serves both terms."""
    batches = [b for b in (task_batch, memory_batch) if b is not None]
    return batches[0] if len(batches) == 1 else cat_batches(batches)


def fip_terms(model: nn.Module, objective, odist, lam: float, logits: torch.Tensor, labels: torch.Tensor,
              task_batch: Batch | None, memory_batch: Batch | None, ref_logits: torch.Tensor | None,
              cols: slice = slice(None)) -> StepOutput:
    """S(w) from the logits of ``joined_batch`` (also the replica step's, whose forward is batched)."""
    logits = logits.float()  # losses in fp32 also under bf16/fp16 autocast (a no-op at fp32)
    n_task = n_scored(task_batch, causal=model_kind(model) == "causal_lm") if task_batch is not None else 0
    terms: dict[str, float] = {}
    if task_batch is not None:
        L = objective.penalty(model, logits[:n_task, cols], labels[:n_task])
    else:
        L = objective.penalty(model, None, None)
    loss = L
    terms["L"] = float(L.detach())
    terms.update(objective.report())
    mem_logits = None
    if memory_batch is not None:
        mem_logits = logits[n_task:]  # (P_mem, C)
        if objective.uses_odist:
            d = odist(mem_logits, ref_logits)
            loss = d + lam * L
            terms["odist"] = float(d.detach())
        else:  # replay: the memory is extra labelled data (weighted by λ); its outputs are free to move
            r = objective.memory_loss(mem_logits, labels[n_task:], memory_batch)
            loss = L + lam * r
            terms["replay"] = float(r.detach())
        mem_logits = mem_logits.detach()
    return StepOutput(loss, terms, mem_logits)


def fip_step(model: nn.Module, optimizer: torch.optim.Optimizer, objective, odist, lam: float,
             task_batch: Batch | None, memory_batch: Batch | None, ref_logits: torch.Tensor | None,
             cols: slice = slice(None), keep: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
             amp: Amp | None = None) -> StepOutput:
    """Forward (under ``amp``'s autocast), backward, optimizer step; ``keep`` = (param, mask) pairs
    whose zeros must stay zero."""
    amp = amp or Amp()
    with amp.autocast():
        out = fip_loss(model, objective, odist, lam, task_batch, memory_batch, ref_logits, cols)
    optimizer.zero_grad(set_to_none=True)
    amp.backward_step(out.loss, optimizer)
    if keep:
        with torch.no_grad():
            for p, m in keep:
                p.mul_(m)
    return out
