"""LoRA baseline (peft) for transformers models: adapters on the target modules, a trained head.

The live module is a ``peft`` wrapper; every stored node is that wrapper merged into a plain copy
(``merge_and_unload``), so it has the parent's architecture, parameter names and spec, and sits in
the same store (PCA, distances, queries) as FIP and fine-tuning nodes. Only the target modules'
weights and the fully trained modules (``lora_train``, the classifier head) differ from the parent.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fipgraph.data.seeds import derive_seed
from fipgraph.errors import ConfigError
from fipgraph.models import model_kind
from fipgraph.path.ops.base import Objective, OpConfig, register_objective


def _matches(module_names: list[str], key: str) -> bool:
    """peft's rule for a plain string: the module's name is ``key`` or ends with ``.key``."""
    return any(n == key or n.endswith("." + key) for n in module_names)


@dataclass
class LoRAConfig(OpConfig):
    lora_r: int = 16  # adapter rank (issue 5: 16; paper: 1-256)
    lora_alpha: float | None = None  # scale numerator; None = 2·lora_r, as in the paper
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value"])  # module names (suffixes) that get adapters
    lora_dropout: float = 0.0  # dropout on the adapter input
    lora_train: list[str] = field(default_factory=lambda: ["classifier"])  # modules trained in full beside the adapters (the head)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_r < 1:
            raise ConfigError(f"lora_r={self.lora_r} must be >= 1 (issue 5: 16; paper: 1-256)")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha={self.lora_alpha} must be > 0, or leave it out for 2·lora_r")
        if not self.lora_targets:
            raise ConfigError("lora_targets is empty; name the modules that get adapters, e.g. ['query', 'value']")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")


@register_objective("lora", config=LoRAConfig)
class LoRA(Objective):
    """Cross-entropy on the task through low-rank adapters (frozen base weights).

    A stored node holds the merged weights, which cannot be split back into base + adapters; so the
    adapters and the trained modules travel with the optimizer state (``state_dict``), and a resume
    that finds them rebuilds the wrapper on the start network's weights and loads them: the Adam
    moments then meet exactly the adapters they were computed for."""

    uses_task_batch = True

    def __init__(self, run: Any, model: nn.Module) -> None:
        super().__init__(run, model)
        names = [n for n, _ in model.named_modules()]
        opts = self.options
        for key, what in [(k, "lora_targets") for k in opts.lora_targets] + [(k, "lora_train") for k in opts.lora_train]:
            if not _matches(names, key):
                leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
                raise ConfigError(f"run {run.name!r}: {what} entry {key!r} matches no module of {type(model).__name__}; "
                                  f"its Linear layers are named {leaves[:12]} (BERT: lora_targets = ['query', 'value'], "
                                  f"lora_train = ['classifier'])")
        self.spec = getattr(model, "fipgraph_spec", None)

    def wrap(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        opts = self.options
        config = LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha or 2 * opts.lora_r,
                            target_modules=list(opts.lora_targets), lora_dropout=opts.lora_dropout,
                            modules_to_save=list(opts.lora_train) or None, bias="none")
        with torch.random.fork_rng():  # adapter init from the run's seed, not from whatever ran before
            torch.manual_seed(derive_seed(self.run.seed, "init"))
            wrapped = get_peft_model(model, config)
        wrapped.fipgraph_kind = model_kind(model)  # forward_logits would see "PeftModel" and guess classifier
        return wrapped

    def export(self, model: nn.Module) -> nn.Module:
        merged = copy.deepcopy(model).merge_and_unload()  # a copy: the live adapters keep training
        if self.spec is not None:
            merged.fipgraph_spec = self.spec
        return merged

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The trainable tensors (adapters and ``lora_train`` modules) as host copies."""
        return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        params = dict(model.named_parameters())
        missing = sorted(set(state) - set(params))
        if missing:
            raise ConfigError(f"run {self.run.name!r}: saved LoRA state has parameters {missing[:4]} that the "
                              f"wrapper lacks; delete the optimizer state file to restart the adapters")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def penalty(self, model, logits, labels):
        return self.task_loss(logits, labels)
