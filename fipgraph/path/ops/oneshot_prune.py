"""``oneshot_prune``: before the first step, project the start network onto exactly p % zeros (global
magnitude over the prunable weights, ``sparsity.magnitude_masks``), then fine-tune on the task
with that mask kept: pruned weights stay exactly zero. The last node is at exactly p.

``MaskedRetrain`` is shared with ``lottery``; both select and project through ``ops.sparsity``,
like ``sparsify``, so "sparsity" means the same thing for all three.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fipgraph.errors import ConfigError
from fipgraph.path.ops.base import Objective, SparseTargetConfig, register_objective
from fipgraph.path.ops.sparsity import magnitude_masks, prunable_names, sparsity_of


class MaskedRetrain(Objective):
    """Cross-entropy under a magnitude mask over the prunable weights (shared by both baselines)."""

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

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        return [params[n] for n in self.names]

    @torch.no_grad()
    def _prune(self, model: nn.Module, p: float) -> None:
        """Zero exactly round(p·n) prunable weights of smallest magnitude; earlier zeros rank lowest, so stay pruned."""
        params = self._params(model)
        masks = magnitude_masks(params, p, self.options.prune_scope)
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
                "target": target, "scope": self.options.prune_scope}

    def penalty(self, model, logits, labels):
        return self.task_loss(logits, labels)


@register_objective("oneshot_prune", config=SparseTargetConfig)
class OneShotPrune(MaskedRetrain):
    """Prune once to the target sparsity, then fine-tune with the mask kept."""

    def before_step(self, model, optimizer, step):
        if step == 1:
            self._prune(model, self.options.sparsity)
        elif self.keep is None:
            self._keep_zeros(model)

    def node_tags(self, step, total):
        return {"sparse_mask": self._mask_tags(self.options.sparsity)} if step == total else None
