"""LoRA baseline (peft) for transformers models: adapters on the target modules, a trained head.

The live module is a ``peft`` wrapper; every stored node is that wrapper merged into a plain copy
(``merge_and_unload``), so it has the parent's architecture, parameter names and spec, and sits in
the same store (PCA, distances, queries) as FIP and fine-tuning nodes. Only the target modules'
weights and the fully trained modules (``lora_train``, the classifier head) differ from the parent.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fipgraph.errors import ConfigError
from fipgraph.models import model_kind
from fipgraph.path.objectives import Objective, register_objective


def _matches(module_names: list[str], key: str) -> bool:
    """peft's rule for a plain string: the module's name is ``key`` or ends with ``.key``."""
    return any(n == key or n.endswith("." + key) for n in module_names)


@register_objective("lora")
class LoRA(Objective):
    """Cross-entropy on the task through low-rank adapters (frozen base weights)."""

    uses_task_batch = True
    options = ("lora_r", "lora_alpha", "lora_targets", "lora_dropout", "lora_train")

    @classmethod
    def check(cls, run: Any) -> None:
        where = f"run {run.name!r}"
        if run.lora_r < 1:
            raise ConfigError(f"{where}: lora_r={run.lora_r} must be >= 1 (issue 5: 16; paper: 1-256)")
        if run.lora_alpha is not None and run.lora_alpha <= 0:
            raise ConfigError(f"{where}: lora_alpha={run.lora_alpha} must be > 0, or leave it out for 2·lora_r")
        if not run.lora_targets:
            raise ConfigError(f"{where}: lora_targets is empty; name the modules that get adapters, e.g. ['query', 'value']")
        if not 0 <= run.lora_dropout < 1:
            raise ConfigError(f"{where}: lora_dropout={run.lora_dropout} must be in [0, 1)")

    def __init__(self, run: Any, model: nn.Module) -> None:
        super().__init__(run, model)
        names = [n for n, _ in model.named_modules()]
        for key, what in [(k, "lora_targets") for k in run.lora_targets] + [(k, "lora_train") for k in run.lora_train]:
            if not _matches(names, key):
                leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
                raise ConfigError(f"run {run.name!r}: {what} entry {key!r} matches no module of {type(model).__name__}; "
                                  f"its Linear layers are named {leaves[:12]} (BERT: lora_targets = ['query', 'value'], "
                                  f"lora_train = ['classifier'])")
        self.spec = getattr(model, "fipgraph_spec", None)

    def wrap(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=self.run.lora_r, lora_alpha=self.run.lora_alpha or 2 * self.run.lora_r,
                            target_modules=list(self.run.lora_targets), lora_dropout=self.run.lora_dropout,
                            modules_to_save=list(self.run.lora_train) or None, bias="none")
        with torch.random.fork_rng():  # adapter init from the run's seed, not from whatever ran before
            torch.manual_seed(self.run.seed)
            wrapped = get_peft_model(model, config)
        wrapped.fipgraph_kind = model_kind(model)  # forward_logits would see "PeftModel" and guess classifier
        return wrapped

    def export(self, model: nn.Module) -> nn.Module:
        merged = copy.deepcopy(model).merge_and_unload()  # a copy: the live adapters keep training
        if self.spec is not None:
            merged.fipgraph_spec = self.spec
        return merged

    def penalty(self, model, logits, labels):
        return F.cross_entropy(logits, labels)
