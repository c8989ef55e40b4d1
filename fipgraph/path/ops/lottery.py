"""``lottery`` (Frankle & Carbin 2019, iterative magnitude pruning with rewinding).

Round r prunes ``prune_rate`` of the remaining prunable weights by the current magnitudes, rewinds every
weight to the rewind node (the start node's initialisation by default), resets the optimizer and retrains
``steps`` steps under the mask. Each round's last step is a tagged node, so the store holds
sparsities 20, 36, 48.8, ... % up to exactly the target (the last round is clipped to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fipgraph.errors import ConfigError
from fipgraph.path.ops.ancestry import ancestor_rows
from fipgraph.path.ops.base import Context, SparseTargetConfig, register_objective
from fipgraph.path.ops.oneshot_prune import MaskedRetrain


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
    chain = ancestor_rows(store, start)
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


@register_objective("lottery", config=LotteryConfig)
class Lottery(MaskedRetrain):
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
