"""FIP sparsification (Algorithm 2) that walks until it is on the p-sparse submanifold.

S(w) = odist(f(x; w), f(x; w_dense)) + λ(t)·‖w − P_s(t)(w)‖² over the prunable weights, in phases:

1. **walk**: the target sparsity s(t) rises from the start network's sparsity to p over
   ``schedule_steps`` (cubic, Zhu & Gupta 2017; or ``sparsity_schedule = "constant"``: p from step 1),
   then λ grows ×``lambda_growth`` every ``lambda_period`` steps (``lambda_schedule = "grow"``) until
   ‖w − P_p(w)‖/‖w‖ ≤ ``tolerance``. The run's ``steps`` is only a safety cap: reaching it without
   the tolerance is logged as a WARNING (build.log and stderr) and tagged ``step_cap_hit`` on the nodes.
   ``penalty_step = "decoupled"`` takes the penalty's gradient step apart from the optimizer, as AdamW
   decouples weight decay: after each step the entries outside the target mask are multiplied by
   max(0, 1 − 2·lr·λ(t)), and the optimizer sees the odist alone. Adam normalises every gradient, so
   with the penalty in the loss a pruned weight moves about ``lr`` a step whatever λ is: SmolLM2's
   weights to prune at 50 % are |w| ≈ 0.06 (median), 0.11 (90th percentile), 500+ steps at 1e-4.
2. **projection**: w ← P_p(w) (exactly round(p·n) zeros). The node is tagged ``projection`` with the
   distance it had left and the accuracy it had just before (``accuracy_before_projection``).
3. **recovery** (``recovery_steps`` > 0): FIP steps with the mask fixed (pruned weights stay exactly
   zero) and odist still to the dense start network, so the last node is p-sparse and functionally
   close to the dense one. The last node is tagged ``final_projection`` and ``sparse_mask``.

A run's length is ``steps`` (walk cap) + ``recovery_steps``. Every evaluated walk node also records
``distance_to_sparse`` and ``projected_accuracy`` (what the projection of that node would score).
"""

from __future__ import annotations

import copy
import logging
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fipgraph.errors import ConfigError, need
from fipgraph.path.engine.evaluate import evaluate_tasks
from fipgraph.path.ops.base import Objective, SparseTargetConfig, register_objective
from fipgraph.path.ops.saliency import SalientPruning
from fipgraph.path.ops.sparsity import cubic_sparsity, distance_to_sparse, lambda_factor, prunable_names, sparsity_of

log = logging.getLogger("fipgraph.build")


@dataclass
class SparsifyConfig(SparseTargetConfig):
    """Settings of ``sparsify``; the run's ``steps`` caps the walk (a safety net, not the stop)."""

    tolerance: float = 1e-3  # the stop: ||w - P_p(w)|| / ||w|| at or below this (measured: RESULTS.md, issue 11)
    sparsity_schedule: str = "cubic"  # cubic: target rises start sparsity -> p over schedule_steps | constant: p from step 1
    schedule_steps: int | None = None  # length of the sparsity ramp, after which λ grows (None = a quarter of steps)
    lambda_schedule: str = "grow"  # grow: λ ×lambda_growth every lambda_period steps after the ramp | constant
    lambda_growth: float = 2.0
    lambda_period: int | None = None  # steps per ×lambda_growth (None = a fifth of the ramp)
    lambda_max: float = 1e6  # λ never exceeds this (λ of the run × growth is capped here)
    penalty_step: str = "loss"  # loss: λ·||w - P(w)||² in S(w), stepped by the optimizer | decoupled: shrink, AdamW-style
    recovery_steps: int = 1000  # FIP steps after the projection with the mask fixed, odist to the dense start
    # runs stored before these settings existed walked toward p from step 1 with a constant λ and no recovery
    LEGACY: ClassVar[dict[str, Any]] = {**SparseTargetConfig.LEGACY, "sparsity_schedule": "constant",
                                        "lambda_schedule": "constant", "recovery_steps": 0}

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self.tolerance > 0, f"tolerance={self.tolerance} must be > 0, e.g. 1e-3")
        need(self.sparsity_schedule in ("cubic", "constant"),
              f"sparsity_schedule={self.sparsity_schedule!r}; use 'cubic' or 'constant'")
        need(self.lambda_schedule in ("grow", "constant"), f"lambda_schedule={self.lambda_schedule!r}; use 'grow' or 'constant'")
        need(self.schedule_steps is None or self.schedule_steps >= 0, f"schedule_steps={self.schedule_steps} must be >= 0")
        need(self.lambda_growth >= 1.0, f"lambda_growth={self.lambda_growth} must be >= 1 (1 = constant λ)")
        need(self.lambda_period is None or self.lambda_period >= 1, f"lambda_period={self.lambda_period} must be >= 1")
        need(self.lambda_max > 0, f"lambda_max={self.lambda_max} must be > 0")
        need(self.penalty_step in ("loss", "decoupled"),
             f"penalty_step={self.penalty_step!r}; use 'loss' (Algorithm 2) or 'decoupled' (AdamW-style shrink)")
        need(self.recovery_steps >= 0, f"recovery_steps={self.recovery_steps} must be >= 0 (0 = end at the projection)")


def _warn(msg: str) -> None:
    """Loud on purpose: build.log (WARNING) and the console, whatever the progress bar does."""
    log.warning(msg)
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


@register_objective("sparsify", config=SparsifyConfig)
class Sparsify(SalientPruning, Objective):
    """Algorithm 2 with a stop at the tolerance, then the hard projection and an optional recovery."""

    uses_memory = True

    def __init__(self, run: Any, model: nn.Module) -> None:
        super().__init__(run, model)
        self.names = prunable_names(model, run.prunable)
        if not self.names:
            raise ConfigError(
                f"run {run.name!r}: no prunable parameters (prunable={run.prunable!r}); give fnmatch "
                f"patterns of parameter names, e.g. ['*.weight']"
            )
        self._resolve(run, model)
        self.model = model  # the live network (sparsify wraps nothing): projected in place at the walk's end
        self.relative_distance = float("inf")  # to P_target(w), measured in the last penalty
        self.start_sparsity = sparsity_of([p.detach() for p in self._params(model)])
        self.step, self.cap, self.target, self.factor = 0, run.steps or 0, self.start_sparsity, 1.0
        self.phase = "walk"  # walk | recover | done
        self.projection: dict[str, Any] = {}  # tags of the projection node, repeated on the last node
        self.recover_end = 0
        self.pending: dict[str, Any] | None = None  # tags for the node of the current step
        self.walk_masks: list[torch.Tensor] | None = None  # decoupled: this step's target mask (True = kept)

    @classmethod
    def check(cls, run: Any) -> None:
        ramp = run.options.schedule_steps
        if run.steps is not None and ramp is not None:
            need(run.steps > ramp, f"run {run.name!r}: steps={run.steps} (the walk's cap) must exceed schedule_steps={ramp}; "
                                    f"raise steps, e.g. steps={4 * ramp}")

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        return [params[n] for n in self.names]

    def prepare(self, ctx) -> None:
        """On a resume after the projection: continue the recovery (the mask is the stored zeros)."""
        super().prepare(ctx)
        self._calibrate(ctx)
        if ctx.run_id < 0:
            return
        projected = ctx.store.first_tagged(ctx.run_id, "projection")
        if projected is not None:
            self.projection = projected.tags
            self.phase, self.recover_end = "recover", projected.step + self.options.recovery_steps

    def total_steps(self, steps: int) -> int:
        opt = self.options
        self.cap = steps
        self.ramp = opt.schedule_steps if opt.schedule_steps is not None else steps // 4
        self.period = opt.lambda_period if opt.lambda_period is not None else max(1, self.ramp // 5)
        return steps + opt.recovery_steps

    def before_step(self, model, optimizer, step):
        self.step = step
        if self.phase == "recover" and self.keep is None:  # resumed mid-recovery: keep the zeros of the stored node
            self.keep = [(p, (p != 0).to(p.dtype)) for p in self._params(model)]
        opt = self.options
        ramp = self.ramp if opt.sparsity_schedule == "cubic" else 0
        self.target = cubic_sparsity(step, self.start_sparsity, opt.sparsity, ramp)
        if opt.lambda_schedule == "grow":
            cap = opt.lambda_max / max(self.run.lam, 1e-12)
            self.factor = lambda_factor(step, self.ramp, opt.lambda_growth, self.period, cap)
        if opt.penalty_step == "decoupled" and self.phase == "walk":
            self._decoupled_shrink(model, optimizer)

    def _decoupled_shrink(self, model, optimizer) -> None:
        """The penalty's gradient step at the current lr, applied by the engine after the optimizer's step
        (through ``keep``): pruned entries ×(1 − 2·lr·λ(t)), at most to zero. Zeros stay zero, as the
        engine's own ``keep`` holds a sparse start's zeros when the objective has none."""
        params = self._params(model)
        self.walk_masks = self._masks(params, self.target)
        rate = min(1.0, 2.0 * optimizer.param_groups[0]["lr"] * self.run.lam * self.factor)
        self.keep = [(p, torch.where(m, 1.0, 1.0 - rate).to(p.dtype) * (p != 0)) for p, m in zip(params, self.walk_masks)]

    def penalty(self, model, logits, labels):
        zero = torch.zeros((), device=next(model.parameters()).device)
        if self.phase != "walk":  # recovery: odist only, the mask keeps the zeros
            return zero
        params = self._params(model)
        decoupled = self.walk_masks is not None
        if decoupled:  # the shrink is the penalty's step: only its distance is needed here, no graph
            params = [p.detach() for p in params]
        masks = self.walk_masks if decoupled else self._masks(params, self.target)
        # (w - w_p) is w on the pruned entries: L is the squared norm of what projection removes
        sq = sum((p * ~m).pow(2).sum() for p, m in zip(params, masks))
        norm = torch.sqrt(sum(p.detach().pow(2).sum() for p in params))
        self.relative_distance = float(torch.sqrt(sq.detach()) / norm.clamp_min(1e-12))
        return zero if decoupled else self.factor * sq

    def converged(self) -> bool:
        """Called after each step: ends the walk at the tolerance (or the cap), the run after the recovery."""
        if self.phase == "recover":
            if self.step < self.recover_end:
                return False
            self.pending = self._final_tags(recovered=True)
            self.phase = "done"
            return True
        if self.phase == "done":
            return True
        at_cap = self.step >= self.cap
        if self.target != self.options.sparsity and not at_cap:
            return False  # the ramp is still moving the target
        # the penalty's distance is from before this step; measure afresh only when it is near the tolerance
        if not at_cap and self.relative_distance > 2 * self.options.tolerance:
            return False
        dist = self._distance(self.model)
        if dist > self.options.tolerance and not at_cap:
            return False
        self._project(dist, cap_hit=dist > self.options.tolerance)
        if self.options.recovery_steps == 0:
            self.pending = self._final_tags(recovered=False)
            self.phase = "done"
            return True
        self.pending, self.phase = dict(self.projection), "recover"
        self.recover_end = self.step + self.options.recovery_steps
        return False

    def _project(self, dist: float, cap_hit: bool) -> None:
        """Hard projection in place; the mask is kept from here on. Records what the network had before."""
        opt = self.options
        if cap_hit:
            _warn(f"run {self.run.name!r}: the step cap ({self.cap} steps) was reached {100 * dist:.3g} % of ||w|| "
                  f"from the {opt.sparsity:.4g}-sparse set (tolerance {100 * opt.tolerance:.3g} %); projecting from there. "
                  f"Raise steps, or lambda_growth, to let the walk arrive")
        before = self._accuracies(self.model)
        params = self._params(self.model)
        masks = self._masks(params, opt.sparsity)
        with torch.no_grad():
            for p, m in zip(params, masks):
                p.mul_(m)
        self.keep = [(p, m.to(p.dtype)) for p, m in zip(params, masks)]
        self.projection = {"projection": True, "projection_step": self.step, "distance_before_projection": dist,
                           "accuracy_before_projection": before, "step_cap_hit": cap_hit, "lambda": self.run.lam * self.factor,
                           "sparse_mask": self._mask_info()}

    def _mask_info(self) -> dict[str, Any]:
        # the mask is the zero pattern of these parameters in this node's (bit-exact) weights
        return {"params": self.names, "rule": "weight == 0", "sparsity": sparsity_of([p.detach() for p in self._params(self.model)]),
                "target": self.options.sparsity, **self._scope_tags()}

    def _final_tags(self, recovered: bool) -> dict[str, Any]:
        tags = {**self.projection, "final_projection": True, "recovered": recovered, "sparse_mask": self._mask_info()}
        tags.pop("projection", None)  # the projection node itself is the one tagged "projection"
        if recovered:
            tags["recovery_steps"] = self.options.recovery_steps
        return tags

    def node_tags(self, step: int, total: int) -> dict[str, Any] | None:
        tags, self.pending = self.pending, None
        return tags

    def _accuracies(self, model: nn.Module) -> dict[str, float]:
        ctx = self.ctx
        if ctx is None or not ctx.seen:
            return {}
        metrics = evaluate_tasks(model, ctx.seen, ctx.head, self.run.eval_batch_size)
        return {ds: m["accuracy"] for ds, m in metrics.items() if "accuracy" in m}

    def node_metrics(self, model, step):
        """On the walk: how far the node is from the p-sparse set and what its projection would score."""
        if self.phase != "walk":
            return {}
        out: dict[str, dict[str, float]] = {"prunable": {"distance_to_sparse": self._distance(model)}}
        projected = copy.deepcopy(model)
        proj_params = self._params(projected)
        with torch.no_grad():
            for p, m in zip(proj_params, self._masks(proj_params, self.options.sparsity)):
                p.mul_(m)
        for ds, acc in self._accuracies(projected).items():
            out[ds] = {"projected_accuracy": acc}
        return out

    def _distance(self, model: nn.Module) -> float:
        return distance_to_sparse([p.detach() for p in self._params(model)], self.options.sparsity, self.scope, self.scales)

    def report(self) -> dict[str, float]:
        return {"dist": self.relative_distance, "target": self.target, "lam_x": self.factor}

    def finish(self, model: nn.Module) -> dict[str, Any] | None:
        """Nothing left when the run converged; a run ended otherwise (e.g. a changed cap) projects here."""
        if self.phase == "done":
            return None
        self.model = model
        dist = self._distance(model)
        self._project(dist, cap_hit=dist > self.options.tolerance)
        self.phase = "done"
        return self._final_tags(recovered=False)
