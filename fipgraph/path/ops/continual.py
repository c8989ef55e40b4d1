"""``continual`` (Algorithm 1): learn task i while odist holds the outputs on tasks 1..i-1's memory."""

from __future__ import annotations



from fipgraph.path.ops.base import Objective, register_objective


@register_objective("continual")
class Continual(Objective):
    """Algorithm 1: learn task i (CE) while odist holds the outputs on tasks 1..i-1's memory."""

    uses_memory = True
    uses_task_batch = True
    needs_earlier_task = True
    can_batch = True
    can_fuse = True

    def memory_tasks(self, task: int) -> list[int]:
        return list(range(1, task))

    def penalty(self, model, logits, labels):
        return self.task_loss(logits, labels)
