"""Which weights a pruning op removes: |W| or Wanda's |W_ij|·‖X_j‖₂, over which comparison group.

Wanda (Sun et al. 2023) scales each weight by the l2 norm of its input feature over a calibration
set, so a small weight on a loud input survives; on SmolLM2-135M at 50 % per row it is 74 vs 422
perplexity for magnitude (REFERENCES.md). The norms come from forward hooks on the Linear layers
owning the prunable weights, over the first ``calibration_size`` examples of the run's memory
(the same seeded draw, so they are a subset of it), taken once from the start network: a FIP walk
stays functionally close to that network by construction, so its input statistics move little
(measured in benchmarks/RESULTS.md, issue 22) and a bit-exact resume recomputes the same norms.

``saliency = "auto"`` / ``prune_scope = "auto"``: Wanda per row on transformers, the authors'
global magnitude otherwise; the choice is logged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from fipgraph.data.seeds import derive_seed
from fipgraph.errors import ConfigError
from fipgraph.models import forward_logits

log = logging.getLogger("fipgraph.build")


def is_transformer(model: nn.Module) -> bool:
    """A Hugging Face transformers model, or any module holding attention layers."""
    if type(model).__module__.startswith("transformers"):
        return True
    return any(isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer)) for m in model.modules())


def resolve_saliency(saliency: str, scope: str, model: nn.Module, where: str) -> tuple[str, str]:
    """("wanda", "row") for a transformer and ("magnitude", "global") otherwise, where a setting is "auto"."""
    tf = is_transformer(model)
    out = (saliency if saliency != "auto" else ("wanda" if tf else "magnitude"),
           scope if scope != "auto" else ("row" if tf else "global"))
    if "auto" in (saliency, scope):
        log.info("%s: saliency=%s prune_scope=%s (%s model; set saliency / prune_scope to choose)", where, *out,
                 "transformer" if tf else "non-transformer")
    return out


@torch.no_grad()
def input_norms(model: nn.Module, names: list[str], batches: list[dict]) -> list[torch.Tensor | None]:
    """‖X_j‖₂ over every position of ``batches`` for each named weight's input features (None: not a Linear)."""
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        mod = model.get_submodule(name.rpartition(".")[0])
        if not isinstance(mod, nn.Linear) or name.rpartition(".")[2] != "weight":
            continue

        def hook(_m, inputs, _out, key=name):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sums[key] = sums.get(key, 0) + x.pow(2).sum(0)

        hooks.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for batch in batches:
            forward_logits(model, batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return [sums[n].sqrt() if n in sums else None for n in names]


class SalientPruning:
    """Mixin of the pruning ops: resolves saliency and scope, takes Wanda's norms, makes masks."""

    names: list[str]
    saliency, scope = "magnitude", "global"
    scales: list[torch.Tensor | None] | None = None

    def _resolve(self, run: Any, model: nn.Module) -> None:
        self.saliency, self.scope = resolve_saliency(self.options.saliency, self.options.prune_scope, model,
                                                     f"run {run.name!r} ({run.op})")

    def _calibrate(self, ctx: Any) -> None:
        """Wanda's input norms on the start network over the first calibration_size memory examples."""
        if self.saliency != "wanda":
            return
        run, n = self.run, self.options.calibration_size
        task = ctx.tasks[run.task - 1]
        sample = task.sample(n, seed=derive_seed(run.seed, "memory", run.task))
        from fipgraph.device import move_batch

        size = max(1, run.eval_batch_size)
        rows = len(next(iter(sample.values())))  # n, or fewer when the task has fewer examples
        batches = [move_batch({k: v[i:i + size] for k, v in sample.items()}, ctx.device) for i in range(0, rows, size)]
        self.scales = input_norms(ctx.model, self.names, batches)
        skipped = [nm for nm, s in zip(self.names, self.scales) if s is None]
        if len(skipped) == len(self.names):
            if self.options.saliency == "auto":  # e.g. GPT-2's Conv1D layers: no input norms to take
                log.info("run %r: no prunable nn.Linear weight for Wanda's norms; ranked by magnitude", run.name)
                self.saliency, self.scales = "magnitude", None
                return
            raise ConfigError(f"run {run.name!r}: saliency='wanda' needs nn.Linear weights among the prunable "
                              f"parameters, found none in {self.names[:3]}...; use saliency='magnitude'")
        if skipped:
            log.info("run %r: %d prunable tensors are not Linear weights; ranked by magnitude: %s",
                     run.name, len(skipped), skipped[:5])

    def _masks(self, params: list[torch.Tensor], p: float) -> list[torch.Tensor]:
        from fipgraph.path.ops.sparsity import magnitude_masks

        return magnitude_masks([w.detach() for w in params], p, self.scope, self.scales)

    def _scope_tags(self) -> dict[str, Any]:
        return {"scope": self.scope, "saliency": self.saliency}
