"""``finetune``: plain cross-entropy on the new task, no constraint (the baseline that forgets)."""

from __future__ import annotations


from fipgraph.path.ops.base import Objective, register_objective


@register_objective("finetune")
class Finetune(Objective):
    """Plain cross-entropy on the new task, no constraint: the baseline that forgets."""

    uses_task_batch = True
    can_batch = True
    can_fuse = True

    def penalty(self, model, logits, labels):
        return self.task_loss(logits, labels)
