"""Model soups (Wortsman et al. 2022) of stored networks, stored as merge nodes.

"uniform": the mean of the selected networks' weights. "greedy": the networks in order of held-out
accuracy, each added to the soup only if the soup's held-out accuracy does not fall; held out means a
split that is not the test split (by default a fixed sample of the task's training examples), so the
test accuracy the soup is stored with is not the one that chose it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from fipgraph.errors import ConfigError
from fipgraph.query._common import check_same_arch, resolve_nodes
from fipgraph.query.merging import Merged, merge_states, score_and_record, score_state
from fipgraph.query.merge_methods import METHODS

SOUPS = ("uniform", "greedy")
HELD_OUT_EXAMPLES = 512  # training examples the greedy soup is chosen on when no held-out task is given


def held_out_split(task, n: int = HELD_OUT_EXAMPLES, seed: int = 0):
    """A copy of `task` whose test split is `n` of its training examples (fixed by `seed`), not its test split."""
    from dataclasses import replace

    return replace(task, name=f"{task.name}/held_out", test=task.sample(n, seed=seed))


def soup(store, nodes: Sequence[int] | None = None, *, where: str | dict | None = None, method: str = "uniform",
         data: Any = None, held_out: Any = None, record: bool = True, batch_size: int = 256,
         device: str | torch.device = "auto") -> Merged:
    """The `method` soup of the selected nodes (ids and/or a `where` condition), scored on `data` (a Task or
    list of Tasks; test splits) and, with `record`, stored as an op "merge" node whose parents are its
    ingredients. Greedy needs `data` (its first task) or `held_out` (a Task whose test split is held out)."""
    if method not in SOUPS:
        raise ConfigError(f"soup method {method!r}; use one of {list(SOUPS)}")
    ids = _chosen(store, nodes, where)
    check_same_arch(store, ids)
    tasks = [] if data is None else (list(data) if isinstance(data, (list, tuple)) else [data])
    info: dict = {"method": method, "candidates": ids}
    if method == "greedy":
        if held_out is None and not tasks:
            raise ConfigError("a greedy soup is chosen on held-out data: pass data= (its training examples are "
                              "sampled) or held_out=")
        ids, info = _greedy(store, ids, held_out or held_out_split(tasks[0]), batch_size, device, info)
    linear = METHODS["linear"]
    opts = dict(linear.options)
    merged = Merged("linear", ids, [1.0] * len(ids), None, opts, merge_states(store, linear, ids, [1.0] * len(ids),
                                                                             None, opts))
    merged.extra_tags = {"soup": info}
    return score_and_record(store, merged, tasks or None, record, batch_size, device)


def _chosen(store, nodes, where) -> list[int]:
    ids = resolve_nodes(store, nodes)
    if where is not None:
        from fipgraph.query.selection import select

        keep = set(select(store, where=where))
        ids = [n for n in ids if n in keep]
    if len(ids) < 2:
        raise ConfigError(f"a soup needs at least 2 networks; nodes={nodes!r}, where={where!r} chose {ids}")
    return ids


def _greedy(store, ids: list[int], held_out, batch_size: int, device, info: dict) -> tuple[list[int], dict]:
    """Wortsman's greedy soup: candidates by held-out accuracy, each kept if the soup's does not fall."""
    linear = METHODS["linear"]
    opts = dict(linear.options)
    states = {n: store.state_dict(n) for n in ids}

    def accuracy(members: list[int]) -> float:
        state = {k: linear.fn([states[m][k] for m in members], torch.ones(len(members), dtype=torch.float64), None,
                              **opts) if v.is_floating_point() else v for k, v in states[members[0]].items()}
        scores = score_state(store, members[0], state, held_out, batch_size=batch_size, device=device)
        return next(iter(scores.values()))["accuracy"]

    alone = {n: accuracy([n]) for n in ids}
    order = sorted(ids, key=lambda n: -alone[n])
    kept, best = [order[0]], alone[order[0]]
    for n in order[1:]:
        acc = accuracy(kept + [n])
        if acc >= best:
            kept, best = kept + [n], acc
    return kept, {**info, "order": order, "kept": kept, "held_out": held_out.name, "held_out_accuracy": best,
                  "held_out_accuracy_alone": {str(n): alone[n] for n in order}}
