"""Secondary objectives L(w) of the FIP step, one registration each.

S(w) = odist(f(x_mem; w), f(x_mem; w_ref)) + λ·L(w). An objective says whether it uses the odist
term (and over which tasks' memory), whether it needs new-task batches, and what L is. A new
operation is one class with ``@register_objective("name")``; nothing else lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fipgraph.path.sparsity import magnitude_masks, prunable_names, sparsity_of

OBJECTIVES: dict[str, type["Objective"]] = {}


def register_objective(name: str) -> Callable[[type["Objective"]], type["Objective"]]:
    def deco(cls: type[Objective]) -> type[Objective]:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is registered twice")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return deco


@dataclass
class Context:
    """What a run knows before its first step, for objectives that need more than the live network."""

    store: Any  # the open fipgraph store (read ancestors, e.g. EWC's task-end nodes, lottery's rewind node)
    start: int | None  # the start node id (None = a freshly built network)
    model: nn.Module  # the start network itself, before any resume or step
    tasks: list  # every task of the build (fipgraph.data.Task)
    head: str  # "single" | "per_task"


class Objective:
    """Base: no odist term, no task batch, L = 0. Subclasses override what they need.

    Hooks the walk calls, in order: check (config time), __init__, prepare (start network),
    wrap (after a resume loaded its weights), total_steps, then per step before_step, penalty /
    memory_loss, node_tags; export whenever a node is evaluated and stored; finish at the end.
    """

    name: ClassVar[str] = ""
    uses_memory: ClassVar[bool] = False  # memory buffers of earlier (or anchoring) tasks enter every step
    uses_odist: ClassVar[bool] = True  # memory enters as odist to the frozen start network; False = memory_loss
    uses_task_batch: ClassVar[bool] = False  # cross-entropy batches of the run's task
    # RunConfig fields only this op reads: runs of other ops leave them out of their stored config,
    # so adding an op never changes (or blocks resuming) the stored runs of the others
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, run: Any, model: nn.Module) -> None:
        self.run = run
        self.keep: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (param, 0/1 mask) kept after each step

    @classmethod
    def check(cls, run: Any) -> None:
        """Cross-field rules of this op's settings; raise ConfigError naming the value and the fix."""

    def prepare(self, ctx: Context) -> None:
        """Called once with the start network, before any resume or step (e.g. EWC's Fisher)."""

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to optimise (e.g. a LoRA wrapper); called after a resume loaded its weights."""
        return model

    def export(self, model: nn.Module) -> nn.Module:
        """The network to evaluate and store (e.g. LoRA merged into a plain copy of the parent's architecture)."""
        return model

    def total_steps(self, steps: int) -> int:
        """Optimizer steps of the whole run given the config's steps (lottery: steps per round x rounds)."""
        return steps

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Called before optimizer step ``step`` (1-based), e.g. to prune and rewind at a round boundary."""

    def node_tags(self, step: int, total: int) -> dict[str, Any] | None:
        """Tags for the node after ``step``; not None forces that node to be saved and evaluated."""
        return None

    def memory_loss(self, logits: torch.Tensor, labels: torch.Tensor, batch: dict) -> torch.Tensor:
        """The memory term when ``uses_odist`` is False (replay: cross-entropy on the memory's labels)."""
        raise NotImplementedError(f"objective {self.name!r} sets uses_odist = False but has no memory_loss")

    def memory_tasks(self, task: int) -> list[int]:
        """1-based tasks whose memory buffers anchor the odist term."""
        return list(range(1, task + 1))

    def penalty(self, model: nn.Module, logits: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        """L(w) given the new-task logits and labels (None when uses_task_batch is False)."""
        return torch.zeros(())

    def converged(self) -> bool:
        """True ends the run before its step budget."""
        return False

    def report(self) -> dict[str, float]:
        """Extra numbers for the progress bar and log (e.g. sparsify's distance to its projection)."""
        return {}

    def finish(self, model: nn.Module) -> dict[str, Any] | None:
        """Change the model in place after the last step; return tags for one extra final node."""
        return None


@register_objective("finetune")
class Finetune(Objective):
    """Plain cross-entropy on the new task, no constraint: the baseline that forgets."""

    uses_task_batch = True

    def penalty(self, model, logits, labels):
        return F.cross_entropy(logits, labels)


@register_objective("continual")
class Continual(Objective):
    """Algorithm 1: learn task i (CE) while odist holds the outputs on tasks 1..i-1's memory."""

    uses_memory = True
    uses_task_batch = True

    def memory_tasks(self, task: int) -> list[int]:
        return list(range(1, task))

    def penalty(self, model, logits, labels):
        return F.cross_entropy(logits, labels)


@register_objective("undirected")
class Undirected(Objective):
    """Algorithm 3: L = 0; walk wherever odist on the memory stays small (H is evaluated per node)."""

    uses_memory = True


@register_objective("sparsify")
class Sparsify(Objective):
    """Algorithm 2: L = ||w - project_p(w)||^2 over the prunable weights; ends with a hard projection."""

    uses_memory = True

    def __init__(self, run: Any, model: nn.Module) -> None:
        super().__init__(run, model)
        self.names = prunable_names(model, run.prunable)
        if not self.names:
            from fipgraph.errors import ConfigError

            raise ConfigError(
                f"run {run.name!r}: no prunable parameters (prunable={run.prunable!r}); give fnmatch "
                f"patterns of parameter names, e.g. ['*.weight']"
            )
        self.relative_distance = float("inf")

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        return [params[n] for n in self.names]

    def penalty(self, model, logits, labels):
        params = self._params(model)
        masks = magnitude_masks(params, self.run.sparsity, self.run.prune_scope)
        # (w - w_p) is w on the pruned entries: L is the squared norm of what projection removes
        sq = sum((p * ~m).pow(2).sum() for p, m in zip(params, masks))
        norm = torch.sqrt(sum(p.detach().pow(2).sum() for p in params))
        self.relative_distance = float(torch.sqrt(sq.detach()) / norm.clamp_min(1e-12))
        return sq

    def converged(self) -> bool:
        return self.relative_distance < self.run.tolerance

    def report(self) -> dict[str, float]:
        return {"dist": self.relative_distance}

    def finish(self, model: nn.Module) -> dict[str, Any]:
        params = self._params(model)
        with torch.no_grad():
            for p, m in zip(params, magnitude_masks(params, self.run.sparsity, self.run.prune_scope)):
                p.mul_(m)
        return {
            "final_projection": True,
            "distance_before_projection": self.relative_distance,  # ||w - project(w)|| / ||w|| at the last step
            # the mask is the zero pattern of these parameters in this node's (bit-exact) weights
            "sparse_mask": {"params": self.names, "rule": "weight == 0", "sparsity": sparsity_of(params),
                            "target": self.run.sparsity, "scope": self.run.prune_scope},
        }


# The baselines register themselves on import; importing them here makes OBJECTIVES complete
# wherever it is read (config validation, the walk, the CLI).
from fipgraph.path import baselines, lora, pruning, travel  # noqa: E402,F401
