"""The ``travel`` op: an undirected FIP (Algorithm 3) whose secondary goal is to move.

Algorithm 3 as written (L = 0) starts at the minimum of what it descends, so it stays in the start's well: on
digits a 4,000-step walk ends 0.04 from its start (examples/paper/adversarial_ensembles/travel_digits.py). ``travel``
keeps the same odist constraint to the frozen start network and adds

    L(w) = −⟨w − w_start, v⟩,   v a random unit vector over all trainable weights, fixed per walk,

so S(w) = odist + λ·L pushes along v while odist bends the walk back wherever the outputs would move. Measured
against the alternatives (v projected off the metric tensor's top eigenvectors, repulsion from the walk's saved
nodes, isotropic noise on the normalised step) it travels as far at the same accuracy, costs nothing per step, and
its whole state is (w_start, seed), so a resumed walk is the same walk.

Settings (``TravelConfig``): the step budget is the run's ``steps``; ``target_distance`` ends the walk once
‖w − w_start‖ reaches it; ``direction_seed`` draws v (None = the run's seed, so replicas with different seeds walk
different directions); λ is the run's ``lam``. Its scale is set by the odist gradient's noise, so it is per model:
digits MLP λ 0.1 held accuracy within a point to distance ≈ 30 in 8,000 steps of 0.01; cnn5 on Fashion-MNIST needed
λ 3 to travel (26.9 in 2,000 steps of 0.02, accuracy −0.4 point; λ 0.1 moved 1.1). See RESULTS.md, issue 15.

Hooks of the objective API it uses: ``prepare`` (the start weights), ``wrap`` (the live module, so node tags see
the weights after a step), ``penalty`` (L), ``converged`` (target distance), ``report`` (distance for the log),
``node_tags`` (per saved node: distance from the start, to the parent node and to the nearest earlier node of this
walk). The logic is in the pure functions below; the class only wires them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fipgraph.errors import ConfigError
from fipgraph.path.ops.base import Context, UndirectedConfig, register_objective
from fipgraph.path.ops.undirected import Undirected


@dataclass
class TravelConfig(UndirectedConfig):
    """Settings only ``travel`` reads (flat keys of its [[runs]] entry); H's settings come from undirected."""

    target_distance: float | None = None  # stop once ||w - w_start|| >= this (None = walk the whole step budget)
    direction_seed: int | None = None  # seed of the direction v; None = the run's seed (replicas walk apart)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_distance is not None and not self.target_distance > 0:
            raise ConfigError(f"target_distance={self.target_distance} must be > 0 (a weight-space distance, "
                              "e.g. the distance between two independently trained networks), or leave it out")


def flat_weights(params: list[torch.Tensor]) -> torch.Tensor:
    """All parameters as one vector (differentiable: L's gradient reaches every parameter)."""
    return torch.cat([p.reshape(-1) for p in params])


def random_direction(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A unit vector uniform on the sphere in R^n, the same for the same (n, seed) on every machine."""
    gen = torch.Generator().manual_seed(int(seed))
    v = torch.randn(n, generator=gen, dtype=torch.float64)
    return (v / v.norm()).to(dtype)


def travel_loss(w: torch.Tensor, w_start: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """L(w) = −⟨w − w_start, v⟩: lower the farther the walk has gone along v."""
    return -torch.dot(w - w_start, direction)


def distance(w: torch.Tensor, other: torch.Tensor) -> float:
    """Euclidean distance between two weight vectors (float64 sum, as the store's edge distances)."""
    return float((w.detach().double() - other.double()).norm())


def node_distances(w: torch.Tensor, w_start: torch.Tensor, earlier: list[torch.Tensor]) -> dict[str, float | None]:
    """Per saved node: distance from the start, to the previous saved node, to the nearest earlier saved node."""
    to_earlier = [distance(w, e) for e in earlier]
    return {"distance_from_start": distance(w, w_start),
            "distance_to_previous": to_earlier[-1] if to_earlier else None,
            "distance_to_nearest_earlier": min(to_earlier) if to_earlier else None}


@register_objective("travel", config=TravelConfig)
class Travel(Undirected):
    """Undirected FIP that travels: odist to the frozen start + λ·(−⟨w − w_start, v⟩); see the module docstring."""

    can_batch = False  # its distance terms and direction read each network's own weights

    def __init__(self, run: Any, model: nn.Module) -> None:
        super().__init__(run, model)
        self.settings: TravelConfig = self.options
        self.seed = self.settings.direction_seed if self.settings.direction_seed is not None else run.seed
        self.w_start: torch.Tensor | None = None
        self.direction: torch.Tensor | None = None
        self.model: nn.Module | None = None
        self.saved: list[torch.Tensor] = []  # this walk's saved nodes since the process started (for the tags)
        self.travelled = 0.0

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        return [p for p in model.parameters() if p.requires_grad]

    def prepare(self, ctx: Context) -> None:
        """The start weights and the direction, both fixed for the walk (also across resumes)."""
        super().prepare(ctx)
        self.w_start = flat_weights(self._params(ctx.model)).detach().clone()
        self.direction = random_direction(self.w_start.numel(), self.seed, self.w_start.dtype)

    def wrap(self, model: nn.Module) -> nn.Module:
        self.model = model  # node_tags reads the weights after each step from here
        return model

    def penalty(self, model, logits, labels):
        w = flat_weights(self._params(model))
        if self.w_start.device != w.device:  # the walk placed the model (fipgraph.device); follow it once
            self.w_start, self.direction = self.w_start.to(w.device), self.direction.to(w.device)
        self.travelled = distance(w, self.w_start)  # of the weights before this step: converged() lags one step
        return travel_loss(w, self.w_start, self.direction)

    def converged(self) -> bool:
        target = self.settings.target_distance
        return target is not None and self.travelled >= target

    def report(self) -> dict[str, float]:
        return {"dist": self.travelled}

    def node_tags(self, step: int, total: int) -> dict[str, Any] | None:
        """Distances of the node after ``step`` at every saved step (save_every, the last, the target)."""
        if not (step % self.run.save_every == 0 or step == total or self.converged()):
            return None  # not a saved step: skip the O(n) distances
        w = flat_weights(self._params(self.model)).detach()
        self.travelled = distance(w, self.w_start)
        tags = node_distances(w, self.w_start, self.saved)
        self.saved.append(w.clone())
        return {"travel": {**tags, "direction_seed": self.seed, "target_distance": self.settings.target_distance}}
