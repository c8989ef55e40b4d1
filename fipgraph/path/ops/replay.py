"""``replay``: L = CE(new task) + λ·CE(memory), on exactly the memory buffers ``continual`` uses
(same examples, same budget), with no output-distance term.
"""

from __future__ import annotations


import torch.nn.functional as F

from fipgraph.path.engine.evaluate import head_slice
from fipgraph.path.ops.base import Context, Objective, register_objective


@register_objective("replay")
class Replay(Objective):
    """Experience replay: cross-entropy on task i and on the earlier tasks' memory buffers."""

    uses_memory = True
    uses_odist = False
    uses_task_batch = True
    needs_earlier_task = True
    can_batch = True

    def memory_tasks(self, task: int) -> list[int]:
        return list(range(1, task))  # the buffers `continual` anchors with odist

    def prepare(self, ctx: Context) -> None:
        super().prepare(ctx)
        self.tasks, self.head = ctx.tasks, ctx.head

    def penalty(self, model, logits, labels):
        return self.task_loss(logits, labels)

    def memory_loss(self, logits, labels, batch):
        if self.head == "single" or "task" not in batch:
            return F.cross_entropy(logits, labels)
        # per-task heads: each example is scored on its own task's block of logits
        total = logits.new_zeros(())
        for t in batch["task"].unique().tolist():
            rows = batch["task"] == t
            total = total + F.cross_entropy(logits[rows, head_slice(self.tasks[t - 1], self.head)], labels[rows],
                                            reduction="sum")
        return total / logits.shape[0]
