"""``undirected`` (Algorithm 3): walk wherever odist on the memory stays small; H is evaluated per node."""

from __future__ import annotations

import torch

from fipgraph.path.ops.base import Objective, UndirectedConfig, register_objective


@register_objective("undirected", config=UndirectedConfig)
class Undirected(Objective):
    """Algorithm 3: L = 0; walk wherever odist on the memory stays small (H is evaluated per node)."""

    uses_memory = True
    can_batch = True

    def node_metrics(self, model, step):
        """H on one test batch of each evaluated task, with the perturbation drawn for this step."""
        from fipgraph.data.seeds import derive_seed
        from fipgraph.device import move_batch
        from fipgraph.path.engine.evaluate import robustness_h

        ctx, out = self.ctx, {}
        gen = torch.Generator().manual_seed(derive_seed(self.run.seed, "robustness", step))
        for ds, task in (ctx.seen or {}).items():
            batch = move_batch(next(iter(task.test_loader(self.run.eval_batch_size))), ctx.device)
            h = robustness_h(model, batch, ctx.odist, self.options.h_attack, self.options.h_epsilon, gen)
            if h is not None:
                out[ds] = {"H": h}
        return out
