"""``continual`` (Algorithm 1): learn task i while odist holds the outputs on tasks 1..i-1's memory."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from fipgraph.path.ops.ancestry import need_earlier_task
from fipgraph.path.ops.base import Objective, register_objective


@register_objective("continual")
class Continual(Objective):
    """Algorithm 1: learn task i (CE) while odist holds the outputs on tasks 1..i-1's memory."""

    uses_memory = True
    uses_task_batch = True
    can_batch = True
    can_fuse = True

    @classmethod
    def check(cls, run: Any) -> None:
        need_earlier_task(run)

    def memory_tasks(self, task: int) -> list[int]:
        return list(range(1, task))

    def penalty(self, model, logits, labels):
        return F.cross_entropy(logits, labels)
