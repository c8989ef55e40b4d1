"""``oneshot_prune``: before the first step, project the start network onto exactly p % zeros (by
magnitude or Wanda scores, globally, per layer or per row: ``ops.saliency``), then fine-tune on the task
with that mask kept: pruned weights stay exactly zero. The last node is at exactly p. With
``retrain = false`` it stops there: the pruned start network is the run's one node (Wanda's
setting, no weight update).

``MaskedRetrain`` is shared with ``lottery``; both select and project through ``ops.sparsity``,
like ``sparsify``, so "sparsity" means the same thing for all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fipgraph.errors import ConfigError
from fipgraph.path.ops.base import Objective, SparseTargetConfig, register_objective
from fipgraph.path.ops.saliency import SalientPruning
from fipgraph.path.ops.sparsity import prunable_names, sparsity_of


class MaskedRetrain(SalientPruning, Objective):
    """Cross-entropy under a pruning mask over the prunable weights (shared by both baselines)."""

    uses_task_batch = True

    @classmethod
    def check(cls, run: Any) -> None:
        where = f"run {run.name!r}"
        if run.options.sparsity <= 0:
            raise ConfigError(f"{where}: {run.op} with sparsity={run.options.sparsity} prunes nothing; give the "
                              f"fraction of zeros to reach, e.g. sparsity = 0.9")
        if run.start is None:
            raise ConfigError(f"{where}: {run.op} prunes a trained network; set from = a run name or node id")

    def __init__(self, run: Any, model: nn.Module) -> None:
        super().__init__(run, model)
        self.names = prunable_names(model, run.prunable)
        if not self.names:
            raise ConfigError(f"run {run.name!r}: no prunable parameters (prunable={run.prunable!r}); give fnmatch "
                              f"patterns of parameter names, e.g. ['*.weight']")
        self._resolve(run, model)

    def prepare(self, ctx) -> None:
        super().prepare(ctx)
        self._calibrate(ctx)

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        return [params[n] for n in self.names]

    @torch.no_grad()
    def _prune(self, model: nn.Module, p: float) -> None:
        """Zero the prunable weights of lowest score (fraction p); earlier zeros score 0, so stay pruned."""
        params = self._params(model)
        masks = self._masks(params, p)
        self.keep = [(w, m.to(w.dtype)) for w, m in zip(params, masks)]
        for w, m in self.keep:
            w.mul_(m)

    def _keep_zeros(self, model: nn.Module) -> None:
        """A resumed run: the mask is the zero pattern of the weights it was saved with."""
        self.keep = [(w, (w != 0).to(w.dtype)) for w in self._params(model)]

    def _mask_tags(self, target: float) -> dict[str, Any]:
        """The ``sparse_mask`` tag: the mask is the zero pattern of these parameters in the node's weights,
        so a run started from the node keeps them zero (as after ``sparsify``)."""
        weights = [w.detach() for w, _ in self.keep or []]
        return {"params": self.names, "rule": "weight == 0", "sparsity": sparsity_of(weights),
                "target": target, **self._scope_tags()}

    def penalty(self, model, logits, labels):
        return self.task_loss(logits, labels)


@dataclass
class OneShotConfig(SparseTargetConfig):
    retrain: bool = True  # false: store the pruned start network and stop (the one-shot baseline, no weight update)


@register_objective("oneshot_prune", config=OneShotConfig)
class OneShotPrune(MaskedRetrain):
    """Prune once to the target sparsity, then (retrain = true) fine-tune with the mask kept."""

    def total_steps(self, steps: int) -> int:
        return steps if self.options.retrain else 0

    def before_step(self, model, optimizer, step):
        if step == 1:
            self._prune(model, self.options.sparsity)
        elif self.keep is None:
            self._keep_zeros(model)

    def node_tags(self, step, total):
        return {"sparse_mask": self._mask_tags(self.options.sparsity)} if step == total else None

    def finish(self, model: nn.Module) -> dict[str, Any] | None:
        """retrain = false: the pruned network is the one node, saved after the (empty) loop."""
        if self.options.retrain:
            return None
        self._prune(model, self.options.sparsity)
        return {"sparse_mask": self._mask_tags(self.options.sparsity), "retrained": False}
