"""Secondary objectives L(w) of the FIP step, one registration each, and their settings.

S(w) = odist(f(x_mem; w), f(x_mem; w_ref)) + λ·L(w). An objective says whether it uses the odist
term (and over which tasks' memory), whether it needs new-task batches, and what L is.

Adding an op (e.g. "travel") is one module-level block, nothing else lists ops::

    @dataclass
    class TravelConfig(OpConfig):          # settings only this op reads, checked in __post_init__
        distance: float = 1.0

    @register_objective("travel", config=TravelConfig)
    class Travel(Objective):
        uses_memory = True                  # odist to the frozen start network on the memory
        def penalty(self, model, logits, labels): ...   # L(w) of one batch, a pure function of params

The op's settings are flat keys of its ``[[runs]]`` entry (``distance = 2.0``); they land in
``run.options`` (a ``TravelConfig``), are type-checked like every other key, and are part of that
op's resume identity only: adding a setting to one op never blocks resuming stored runs of another.

Hooks the run recipe calls, in order: ``check`` (config time), ``__init__``, ``prepare`` (start
network, before any resume), ``wrap`` (after the weights are loaded), ``total_steps``; per step
``before_step``, ``penalty`` / ``memory_loss``, ``report``, ``converged``, ``node_tags``; at a
saved node ``export`` and, when it is evaluated, ``node_metrics``; ``finish`` after the last step.
``state_dict`` / ``load_state_dict`` carry state a bit-exact resume needs beyond the stored node.
Keep ``penalty`` a function of the parameters and the batch only, so a batched (vmap) step can
reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fipgraph.errors import need
from fipgraph.path.config.fields import check_types
from fipgraph.path.ops.ancestry import need_earlier_task

OBJECTIVES: dict[str, type["Objective"]] = {}


@dataclass
class OpConfig:
    """Settings that only one op reads (the base has none); subclasses add fields and checks.

    Messages name the key, the value and the fix; the run config prefixes them with the run's name."""

    def __post_init__(self) -> None:
        check_types(self, "")



@dataclass
class SparseTargetConfig(OpConfig):
    """The target of ops that prune: sparsify, oneshot_prune, lottery (which weights: ops/saliency.py)."""

    sparsity: float = 0.9  # target fraction p of zeros over prunable weights
    prune_scope: str = "auto"  # comparison group: global (all prunable weights) | layer | row (per output row) | auto
    saliency: str = "auto"  # magnitude: |W| | wanda: |W|·‖X‖ (input norms) | auto: wanda on transformers, else magnitude
    calibration_size: int = 16  # wanda: memory examples whose input norms scale |W| (Wanda's paper: 128 × 2048 tokens)
    # runs stored before saliency existed ranked |W| over all prunable weights
    LEGACY: ClassVar[dict[str, Any]] = {"prune_scope": "global", "saliency": "magnitude"}

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self.prune_scope in SCOPES, f"prune_scope={self.prune_scope!r}; use one of {', '.join(SCOPES)}")
        need(self.saliency in SALIENCIES, f"saliency={self.saliency!r}; use one of {', '.join(SALIENCIES)}")
        need(self.calibration_size >= 1, f"calibration_size={self.calibration_size} must be >= 1, e.g. 16")
        need(0.0 <= self.sparsity < 1.0, f"sparsity={self.sparsity} is outside [0, 1); give the fraction of zeros, e.g. 0.9")


SCOPES = ("auto", "global", "layer", "row")
SALIENCIES = ("auto", "magnitude", "wanda")


@dataclass
class UndirectedConfig(OpConfig):
    h_attack: str = "fgsm"  # perturbation for H: fgsm (eps*sign input-gradient) | noise (uniform l_inf)
    h_epsilon: float = 0.1  # l_inf size of that perturbation (digits pixels are scaled to [0, 1])

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self.h_attack in ("fgsm", "noise"), f"h_attack={self.h_attack!r}; use 'fgsm' or 'noise'")
        need(self.h_epsilon > 0, f"h_epsilon={self.h_epsilon} must be > 0")


def register_objective(name: str, config: type[OpConfig] = OpConfig) -> Callable[[type["Objective"]], type["Objective"]]:
    """Register an op under ``name`` with the dataclass of its own settings (peft style: one call per op)."""
    def deco(cls: type[Objective]) -> type[Objective]:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is registered twice")
        cls.name, cls.Config = name, config
        OBJECTIVES[name] = cls
        return cls

    return deco


def option_names(op: str) -> tuple[str, ...]:
    """The setting names of one op (the fields of its config dataclass)."""
    return tuple(OBJECTIVES[op].Config.__dataclass_fields__)


def all_option_names() -> set[str]:
    """Every op's setting names: keys that belong in some op's ``run.options``."""
    return {k for op in OBJECTIVES for k in option_names(op)}


@dataclass
class Context:
    """What a run knows before its first step, for objectives that need more than the live network."""

    store: Any  # the open fipgraph store (read ancestors, e.g. EWC's task-end nodes, lottery's rewind node)
    start: int | None  # the start node id (None = a freshly built network)
    model: nn.Module  # the start network itself, before any resume or step
    tasks: list  # every task of the build (fipgraph.data.Task)
    head: str  # "single" | "per_task"
    device: torch.device = torch.device("cpu")  # where the model and its batches live
    seen: dict | None = None  # {dataset: task} evaluated at each node
    odist: Any = None  # the run's output distance
    run_id: int = -1  # this run's id in the store (find its own stored nodes when resuming)


class Objective:
    """Base: no odist term, no task batch, L = 0. Subclasses override what they need (module docstring)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[OpConfig]] = OpConfig  # set by register_objective
    uses_memory: ClassVar[bool] = False  # memory buffers of earlier (or anchoring) tasks enter every step
    uses_odist: ClassVar[bool] = True  # memory enters as odist to the frozen start network; False = memory_loss
    uses_task_batch: ClassVar[bool] = False  # cross-entropy batches of the run's task
    # capabilities the batched engine reads (engine/replicas.py, engine/stacked.py):
    can_batch: ClassVar[bool] = False  # S(w) from the logits alone, no hook acting on one network between steps
    can_fuse: ClassVar[bool] = False  # S(w) = odist(memory) + λ·CE(task batch): one batched computation for K walks
    needs_earlier_task: ClassVar[bool] = False  # learns task i while keeping tasks < i (its memory is theirs)
    loss_fn: Callable | None = None  # the user's task loss(logits, labels); None = cross-entropy

    def __init__(self, run: Any, model: nn.Module) -> None:
        self.run = run
        self.options = run.options  # this op's own settings (an instance of Config)
        self.keep: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (param, 0/1 mask) kept after each step
        self.ctx: Context | None = None

    @classmethod
    def check(cls, run: Any) -> None:
        """Cross-field rules between this op's settings and the shared ones; raise ConfigError naming the fix."""
        if cls.needs_earlier_task:
            need_earlier_task(run)

    def prepare(self, ctx: Context) -> None:
        """Called once with the start network, before any resume or step (e.g. EWC's Fisher)."""
        self.ctx = ctx

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to optimise (e.g. a LoRA wrapper); called after a resume loaded its weights."""
        return model

    def export(self, model: nn.Module) -> nn.Module:
        """The network to evaluate and store (e.g. LoRA merged into a plain copy of the parent's architecture)."""
        return model

    def state_dict(self, model: nn.Module) -> dict[str, Any] | None:
        """State beyond the stored node that a bit-exact resume needs (kept with the optimizer state)."""
        return None

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned, into the wrapped module ``model``."""

    def total_steps(self, steps: int) -> int:
        """Optimizer steps of the whole run given the config's steps (lottery: steps per round x rounds)."""
        return steps

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Called before optimizer step ``step`` (1-based), e.g. to prune and rewind at a round boundary."""

    def node_tags(self, step: int, total: int) -> dict[str, Any] | None:
        """Tags for the node after ``step``; not None forces that node to be saved and evaluated."""
        return None

    def node_metrics(self, model: nn.Module, step: int) -> dict[str, dict[str, float]]:
        """Extra per-node evaluations of this op ({dataset: {metric: value}}), e.g. undirected's H."""
        return {}

    def memory_loss(self, logits: torch.Tensor, labels: torch.Tensor, batch: dict) -> torch.Tensor:
        """The memory term when ``uses_odist`` is False (replay: cross-entropy on the memory's labels)."""
        raise NotImplementedError(f"objective {self.name!r} sets uses_odist = False but has no memory_loss")

    def memory_tasks(self, task: int) -> list[int]:
        """1-based tasks whose memory buffers anchor the odist term."""
        return list(range(1, task + 1))

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The new task's loss: cross-entropy, or the user's ``loss`` (``fipgraph.walk(..., loss=...)``)."""
        return F.cross_entropy(logits, labels) if self.loss_fn is None else self.loss_fn(logits, labels)

    def penalty(self, model: nn.Module, logits: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        """L(w) given the new-task logits and labels (None when uses_task_batch is False)."""
        return torch.zeros((), device=next(model.parameters()).device)

    def converged(self) -> bool:
        """True ends the run before its step budget."""
        return False

    def report(self) -> dict[str, float]:
        """Extra numbers for the progress bar and log (e.g. sparsify's distance to its projection)."""
        return {}

    def finish(self, model: nn.Module) -> dict[str, Any] | None:
        """Change the model in place after the last step; return tags for one extra final node."""
        return None
