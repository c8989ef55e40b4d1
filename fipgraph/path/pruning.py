"""Pruning baselines for FIP sparsification: one-shot magnitude pruning and the lottery ticket.

- ``oneshot_prune``: before the first step, project the start network onto exactly p % zeros (global
  magnitude over the prunable weights, ``sparsity.magnitude_masks``), then fine-tune on the task
  with that mask kept: pruned weights stay exactly zero. The last node is at exactly p.
- ``lottery`` (Frankle & Carbin 2019, iterative magnitude pruning with rewinding): round r prunes
  ``prune_rate`` of the remaining prunable weights by the current magnitudes, rewinds every weight
  to the rewind node (the start node's initialisation by default), resets the optimizer and retrains
  ``steps`` steps under the mask. Each round's last step is a tagged node, so the store holds
  sparsities 20, 36, 48.8, ... % up to exactly the target (the last round is clipped to it).

Both select and project through ``fipgraph.path.sparsity``, like ``sparsify``, so "sparsity" means
the same thing for all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fipgraph.errors import ConfigError
from fipgraph.path.baselines import lineage
from fipgraph.path.objectives import Context, Objective, SparseTargetConfig, register_objective
from fipgraph.path.sparsity import magnitude_masks, prunable_names, sparsity_of


def lottery_levels(target: float, rate: float) -> list[float]:
    """Sparsity after each round: 1 − (1 − rate)^r, the last one clipped to ``target``."""
    levels: list[float] = []
    kept = 1.0
    while True:
        kept *= 1.0 - rate
        if 1.0 - kept >= target - 1e-9:
            return levels + [target]
        levels.append(1.0 - kept)


def rewind_node(store: Any, start: int, rewind_step: int) -> int:
    """The start node's ancestor in its lineage's first run at the latest saved step <= rewind_step."""
    chain = lineage(store, start)
    root_run = chain[-1]["run_id"]
    same = [r for r in chain if r["run_id"] == root_run and int(r["step"]) <= rewind_step]
    return int(max(same, key=lambda r: int(r["step"]))["node_id"]) if same else int(chain[-1]["node_id"])


@dataclass
class LotteryConfig(SparseTargetConfig):
    prune_rate: float = 0.2  # fraction of the remaining prunable weights removed per round (paper: 20 %)
    rewind_step: int = 0  # rewind survivors to the start node's ancestor at this step of its first run (0 = the initialisation)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.prune_rate < 1:
            raise ConfigError(f"prune_rate={self.prune_rate} must be in (0, 1); the lottery ticket prunes 0.2 "
                              f"of the remaining weights per round")
        if self.rewind_step < 0:
            raise ConfigError(f"rewind_step={self.rewind_step} must be >= 0 (0 = rewind to the initialisation)")


class _MaskedRetrain(Objective):
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
        return F.cross_entropy(logits, labels)


@register_objective("oneshot_prune", config=SparseTargetConfig)
class OneShotPrune(_MaskedRetrain):
    """Prune once to the target sparsity, then fine-tune with the mask kept."""

    def before_step(self, model, optimizer, step):
        if step == 1:
            self._prune(model, self.options.sparsity)
        elif self.keep is None:
            self._keep_zeros(model)

    def node_tags(self, step, total):
        return {"sparse_mask": self._mask_tags(self.options.sparsity)} if step == total else None


@register_objective("lottery", config=LotteryConfig)
class Lottery(_MaskedRetrain):
    """Iterative magnitude pruning with rewinding; one tagged node per round."""

    def __init__(self, run: Any, model: nn.Module) -> None:
        super().__init__(run, model)
        self.levels = lottery_levels(self.options.sparsity, self.options.prune_rate)
        self.round_steps = 0
        self.rewind: dict[str, torch.Tensor] | None = None
        self.rewind_node: int | None = None

    def prepare(self, ctx: Context) -> None:
        super().prepare(ctx)
        self.rewind_node = rewind_node(ctx.store, ctx.start, self.options.rewind_step)
        self.rewind = {k: v.to(ctx.device) for k, v in ctx.store.state_dict(self.rewind_node).items()}

    def total_steps(self, steps: int) -> int:
        self.round_steps = steps
        return steps * len(self.levels)

    def before_step(self, model, optimizer, step):
        rnd, pos = divmod(step - 1, self.round_steps)
        if pos == 0:
            self._prune(model, self.levels[rnd])  # by the magnitudes the last round trained
            masks = [m for _, m in self.keep]
            model.load_state_dict(self.rewind)  # in place: the optimizer's parameters stay the same tensors
            with torch.no_grad():
                for (w, m), mask in zip(self.keep, masks):
                    w.mul_(mask)
            optimizer.state.clear()  # each round retrains from the rewound weights with a fresh optimizer
        elif self.keep is None:
            self._keep_zeros(model)

    def node_tags(self, step, total):
        if step % self.round_steps:
            return None
        rnd = step // self.round_steps
        return {"lottery_round": rnd, "rewind_node": self.rewind_node, "sparse_mask": self._mask_tags(self.levels[rnd - 1])}
