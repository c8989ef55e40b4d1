"""``ewc`` (Kirkpatrick et al. 2017), the continual-learning baseline with a quadratic penalty.

L = CE + Σ_{j<i} (λ_ewc/2)·Σ_k F_jk (w_k − w*_jk)², with F_j the diagonal (empirical) Fisher from
``fisher_samples`` examples of task j and w*_j the network as it was when task j ended (found by
walking the start node's ancestors in the store). Learns from the same start node as ``continual``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fipgraph.data.seeds import derive_seed
from fipgraph.device import move_batch
from fipgraph.errors import ConfigError
from fipgraph.path.engine.evaluate import task_logits
from fipgraph.path.engine.memory import batch_size_of, index_batch
from fipgraph.path.ops.ancestry import task_end_nodes
from fipgraph.path.ops.base import Context, Objective, OpConfig, register_objective

log = logging.getLogger("fipgraph.build")


def diagonal_fisher(model: nn.Module, task: Any, head: str, n: int, seed: int) -> list[torch.Tensor]:
    """Empirical diagonal Fisher: mean over n training examples of (∂ log p(y|x; w)/∂w)² at the true y.

    One backward per example: the Fisher needs per-example squared gradients, which a batched
    backward (the square of a sum) would not give. Evaluated in eval mode (no dropout)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    device = next(model.parameters()).device
    batch = move_batch(task.sample(n, seed=seed), device)
    count = batch_size_of(batch)
    was = model.training
    model.eval()
    for i in range(count):
        logits, labels = task_logits(model, index_batch(batch, torch.tensor([i], device=device)), task, head)
        grads = torch.autograd.grad(F.cross_entropy(logits, labels), params, allow_unused=True)
        for f, g in zip(fisher, grads):
            if g is not None:
                f.add_(g.detach().pow(2))
    model.train(was)
    return [f / count for f in fisher]


@dataclass
class EWCConfig(OpConfig):
    ewc_lambda: float = 5000.0  # weight of (1/2)·Σ F_i (w_i - w*_i)^2 (paper: 5,000)
    fisher_samples: int = 500  # examples per earlier task for its diagonal Fisher (paper: 500)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ewc_lambda < 0:
            raise ConfigError(f"ewc_lambda={self.ewc_lambda} must be >= 0 (paper: 5000)")
        if self.fisher_samples < 1:
            raise ConfigError(f"fisher_samples={self.fisher_samples} must be >= 1 (paper: 500)")


@register_objective("ewc", config=EWCConfig)
class EWC(Objective):
    """Cross-entropy on task i plus the EWC quadratic penalty around each earlier task's end point."""

    uses_task_batch = True
    needs_earlier_task = True

    def __init__(self, run: Any, model: nn.Module) -> None:
        super().__init__(run, model)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.anchors: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []  # per earlier task: (F_j, w*_j)
        self.anchor_nodes: dict[int, int] = {}
        self.ewc_term = 0.0

    def prepare(self, ctx: Context) -> None:
        super().prepare(ctx)
        earlier = list(range(1, self.run.task))
        ends = task_end_nodes(ctx.store, ctx.start, earlier) if ctx.start is not None else {}
        for j in earlier:
            node = ends.get(j, ctx.start)
            if j not in ends:
                log.warning("run %s: no ancestor of node %s trained task %d; its EWC anchor is the start node",
                            self.run.name, ctx.start, j)
            net = ctx.model if node == ctx.start else ctx.store.load_into(copy.deepcopy(ctx.model), node)
            fisher = diagonal_fisher(net, ctx.tasks[j - 1], ctx.head, self.options.fisher_samples,
                                     seed=derive_seed(self.run.seed, "fisher", j))
            params = dict(net.named_parameters())
            self.anchors.append((fisher, [params[n].detach().clone() for n in self.names]))
            self.anchor_nodes[j] = int(node)

    def penalty(self, model, logits, labels):
        params = dict(model.named_parameters())
        live = [params[n] for n in self.names]
        quad = sum(sum((f * (p - w).pow(2)).sum() for f, p, w in zip(fisher, live, star))
                   for fisher, star in self.anchors)
        ewc = 0.5 * self.options.ewc_lambda * quad
        self.ewc_term = float(ewc.detach()) if torch.is_tensor(ewc) else float(ewc)
        return self.task_loss(logits, labels) + ewc

    def report(self) -> dict[str, float]:
        return {"ewc": self.ewc_term}
