"""One place that turns a run's seed into the seed of each random choice it makes.

Every generator a build seeds (initialisation, memory buffers, batch order, per-step dropout, EWC's
Fisher sample, text masking, pixel permutations, ...) asks :func:`derive_seed` with a purpose name
and an index. The formulas are the ones fipgraph used before this helper existed ("seed format 1"):
changing any of them would change the nodes of stored runs, so a resumed run would silently walk a
different path. A new formula therefore needs a new purpose name (or a new format), never an edit.
"""

from __future__ import annotations

from typing import Callable

SEED_FORMAT = 1  # stored runs were built with these formulas; bump only together with a new table

_FORMULAS: dict[str, Callable[[int, int], int]] = {
    "init": lambda seed, i: seed,  # the freshly built network (and LoRA's adapters)
    "memory": lambda seed, task: seed * 1000 + task,  # examples kept of task ``task`` (1-based)
    "fisher": lambda seed, task: seed * 1000 + task,  # EWC: the sample of task ``task`` its Fisher uses
    "epoch": lambda seed, epoch: seed * 1000 + epoch,  # a run's loader seed for epoch ``epoch``
    "shuffle": lambda seed, epoch: seed * 1_000_003 + epoch,  # a loader's permutation of pass ``epoch``
    "step": lambda seed, step: seed * 1_000_003 + step,  # dropout/noise and memory batch of step ``step``
    "probe": lambda seed, i: seed,  # fixed inputs for each edge's output_distance
    "robustness": lambda seed, step: seed + step,  # undirected: the perturbation for H at ``step``
    "mask": lambda seed, k: seed * 2 + k,  # masked-LM: the masking of split ``k``
    "permutation": lambda seed, task: seed * 10_007 + task,  # permuted-pixel tasks
}
PURPOSES = tuple(_FORMULAS)


def derive_seed(run_seed: int, purpose: str, i: int = 0) -> int:
    """The seed for choice ``i`` of kind ``purpose`` in a run seeded ``run_seed`` (see the module docstring)."""
    try:
        formula = _FORMULAS[purpose]
    except KeyError:
        raise ValueError(f"unknown seed purpose {purpose!r}; use one of {list(PURPOSES)}") from None
    return int(formula(int(run_seed), int(i)))
