"""The data the chosen nodes were built with, read back from their runs' stored configs.

A query that scores nodes defaults to the ``[data]`` table (source, split, seed, head, kwargs) that every
run stores in ``runs.config``, so ``fipgraph evaluate --task task2`` scores a build's own task 2. Flags
override it field by field; a source other than the recorded one drops the recorded split, seed and
kwargs (they belonged to that source). Nodes without a recorded ``[data]`` (imported, recorded loops)
fall back to the digits demo's source, as before this existed; nodes walked from Python objects
(``fipgraph.walk``) have data no query can remake, and ask for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from fipgraph.errors import ConfigError
from fipgraph.query._common import resolve_nodes

FALLBACK_SOURCE = "digits"
IN_MEMORY = "python"  # the source fipgraph.walk records for data given as objects: nothing to remake it from


def _run_data(config: Any) -> dict | None:
    """The [data] of one stored run config, if it has one fipgraph can remake."""
    data = (json.loads(config) if isinstance(config, str) and config else {}).get("data")
    if not isinstance(data, dict) or not isinstance(data.get("source"), (str, list)):
        return None  # e.g. a recorded training loop whose config says nothing about its data
    return {k: data.get(k) for k in ("source", "split", "seed", "head", "kwargs")}


def _describe(data: dict) -> str:
    return f"source={data['source']!r} split={data['split']!r} seed={data['seed']!r} kwargs={data['kwargs']!r}"


def recorded_data(store, nodes: Iterable[int] | None = None) -> dict | None:
    """The [data] shared by the runs of ``nodes`` (None = every node), or None if no run recorded one.
    ConfigError naming the runs when they were built on different data."""
    chosen = "" if nodes is None else f"where n.node_id in ({','.join(map(str, resolve_nodes(store, nodes)))})"
    df = store.sql(f"select distinct r.name, r.config from nodes n join runs r using (run_id) {chosen} order by r.name")
    found: dict[str, tuple[dict, list[str]]] = {}
    for run, config in zip(df["name"], df["config"]):
        data = _run_data(config)
        if data is not None:
            found.setdefault(json.dumps(data, sort_keys=True), (data, []))[1].append(str(run))
    if len(found) > 1:
        kinds = "; ".join(f"{', '.join(runs[:3])}: {_describe(d)}" for d, runs in found.values())
        raise ConfigError(f"the chosen nodes come from runs built on different data ({kinds}); pass --data "
                          f"(and --split, --seed) to score them all on one data set, or choose nodes of one build "
                          f"with --nodes/--where")
    return next(iter(found.values()))[0] if found else None


def data_settings(store, nodes: Iterable[int] | None = None, *, source: Any = None, split: Any = None,
                  seed: int | None = None, kwargs: dict | None = None) -> dict:
    """make_tasks arguments: what is given, else what the nodes' runs recorded (see the module docstring)."""
    try:
        recorded = recorded_data(store, nodes)
    except ConfigError:
        if source is None:
            raise
        recorded = None  # --data was given: the runs' own data no longer matters
    if recorded is not None and source is not None and source != recorded["source"]:
        recorded = None
    if recorded is not None and recorded["source"] == IN_MEMORY:
        raise ConfigError("the chosen nodes were walked from Python objects (fipgraph.walk), which a query cannot "
                          "remake; pass --data (and --split), or in Python the data itself: evaluate(store, nodes, "
                          "fipgraph.data.adapters.to_task(train, test))")
    base = recorded or {"source": FALLBACK_SOURCE, "split": None, "seed": 0, "kwargs": {}}
    return {"source": base["source"] if source is None else source,
            "split": base["split"] if split is None else split,
            "seed": (base["seed"] or 0) if seed is None else seed,
            "kwargs": dict(base["kwargs"] or {}) if kwargs is None else kwargs}


def built_head(store, nodes: Iterable[int] | None = None) -> str:
    """The data.head the nodes were built with (they must agree); "single" where none was recorded."""
    from fipgraph.query.scoring import node_heads

    heads = {h or "single" for h in node_heads(store, resolve_nodes(store, nodes)).values()}
    if len(heads) > 1:
        raise ConfigError(f"the chosen nodes were built with different heads {sorted(heads)}; choose nodes "
                          "of one build with --nodes/--where, or pass --head")
    return heads.pop() if heads else "single"


def pick_task(tasks: list, name: str | None) -> list:
    """Every task (name None), or the one named by its name or 0-based index."""
    if name is None:
        return tasks
    for i, t in enumerate(tasks):
        if name in (t.name, str(i), t.name.split("/")[-1]):
            return [t]
    raise ConfigError(f"task {name!r} is not one of {[t.name for t in tasks]} (or their index)")


def recorded_tasks(store, nodes: Iterable[int] | None = None, *, task: str | None = None, head: str | None = None,
                   **given: Any) -> list:
    """The tasks the nodes were built on (``given``: source, split, seed, kwargs overriding the record), all
    of them or the one named ``task``."""
    from fipgraph.data import make_tasks

    settings = data_settings(store, nodes, **given)
    try:
        tasks = make_tasks(settings["source"], split=settings["split"], seed=settings["seed"],
                           head=head or built_head(store, nodes), **settings["kwargs"])
    except ConfigError as exc:
        if given.get("source") is not None:
            raise
        raise ConfigError(f"the data the chosen nodes' runs recorded ({_describe(settings)}) cannot be remade "
                          f"here: {exc}. Pass --data (and --split) to score them on other data") from None
    return pick_task(tasks, task)


def as_datasets(store, nodes: Iterable[int] | None, dataset: Any) -> Any:
    """What a query function scores: ``dataset`` itself, or for None every recorded task of ``nodes`` (a
    list) and for a task name ("task2") that recorded task."""
    if dataset is None or isinstance(dataset, str):
        tasks = recorded_tasks(store, nodes, task=dataset)
        return tasks if dataset is None else tasks[0]
    return dataset
