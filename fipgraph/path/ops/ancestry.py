"""What ops read from the store about a start node's ancestors (EWC's task-end nodes, lottery's rewind node)."""

from __future__ import annotations

from typing import Any

from fipgraph.errors import ConfigError


def need_earlier_task(run: Any) -> None:
    """Ops that learn task i while keeping tasks < i need i >= 2 and a start network."""
    where = f"run {run.name!r}"
    if run.task < 2:
        raise ConfigError(f"{where}: {run.op} on task {run.task} has no earlier task to remember; "
                          f"train task 1 with op='finetune' first, then set task = 2")
    if run.start is None:
        raise ConfigError(f"{where}: {run.op} needs a start network trained on the earlier tasks; "
                          f"set from = a run name or node id")


def ancestor_rows(store: Any, node: int) -> list[dict]:
    """``node`` and its ancestors by primary parent (rows of the nodes table), nearest first: one node at a
    time through the engine's store, where ``fipgraph.query.lineage`` reads the whole graph for ids."""
    import pandas as pd  # here, not at module level: every Ray worker imports this module (0.4 s for pandas)

    rows: list[dict] = []
    current: Any = node
    while current is not None and not pd.isna(current):
        row = store.node(int(current))
        rows.append(row)
        current = row.get("parent_id")
    return rows


def _trained_task(store: Any, run_id: Any, cache: dict) -> int | None:
    """The task a run trained by cross-entropy (None for runs that train no task, e.g. sparsify)."""
    import pandas as pd

    if run_id is None or pd.isna(run_id):
        return None
    rid = int(run_id)
    if rid not in cache:
        from fipgraph.path.ops.base import OBJECTIVES

        run = store.run_by_id(rid)
        task = None
        if run is not None and run["op"] in OBJECTIVES and OBJECTIVES[run["op"]].uses_task_batch:
            task = (run["config"].get("run") or {}).get("task")
        cache[rid] = task
    return cache[rid]


def task_end_nodes(store: Any, start: int, wanted: list[int]) -> dict[int, int]:
    """For each task in ``wanted``, the nearest ancestor of ``start`` (itself included) whose run trained it."""
    found: dict[int, int] = {}
    cache: dict = {}
    for row in ancestor_rows(store, start):
        task = _trained_task(store, row.get("run_id"), cache)
        if task in wanted and task not in found:
            found[task] = int(row["node_id"])
        if len(found) == len(wanted):
            break
    return found
