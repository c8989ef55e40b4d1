"""``fipgraph.walk``: walk an FIP (or any op) from Python, on the user's own network and data.

The Python entrance to the same run recipe ``fipgraph build`` uses (``engine/recipe.py``): the same
progress bar, Ctrl-C (save the current network, stop), and resume — calling the same ``walk(...)``
again continues from the run's last node with its optimizer state, bit-exact with an uninterrupted
walk. What a build names in TOML, a walk takes as objects: any ``nn.Module``, and data as DataLoaders,
Datasets, Hugging Face datasets, tensors or streams (``fipgraph.data.adapters``).

Where the data goes, by op: ``continual`` / ``replay`` / ``ewc`` learn ``data`` while keeping ``memory``
(the earlier task's examples); ``sparsify`` / ``undirected`` / ``travel`` hold the outputs on ``memory``
(default: ``data``); ``finetune`` and the pruning baselines learn ``data``. ``test`` names held-out sets
evaluated at saved nodes (``{"task1": ..., "task2": ...}``).

``replicas=K`` (or ``seeds=[...]``) walks K copies of the network with seeds ``seed``, ``seed+1``, … as runs
``<run>/s<seed>``, batched into one stacked step when the op, optimizer and network allow (as a build's
``replicas = K``), and returns one ``WalkResult`` per walk.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from fipgraph.data.adapters import SourceTask
from fipgraph.errors import ConfigError, FipgraphError
from fipgraph.models import forward_logits, model_kind
from fipgraph.models.user import unwrap, user_spec
from fipgraph.path.build import Plan, _setup_log
from fipgraph.path.config.schema import RunConfig
from fipgraph.path.engine.interrupt import StopSignal
from fipgraph.path.engine.recipe import Limits, RunRecipe, UserCode
from fipgraph.path.engine.replicas import replica_runs, walk_replicas
from fipgraph.path.ops import OBJECTIVES
from fipgraph.storage.inputs import model_spec_of

log = logging.getLogger("fipgraph.build")
RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {"name", "op", "task", "start", "model", "options"}


@dataclass
class WalkResult:
    """What one ``walk`` call stored: the run, its nodes in step order, its last node and their evaluations."""

    run: str
    run_id: int
    status: str  # finished | interrupted
    nodes: list[int]
    last_node: int
    steps_done: int  # optimizer steps this call took (0 when the run had already finished)
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)  # the last node's {dataset: {metric: v}}


def walk(model: nn.Module, data: Any = None, *, op: str, store: Any = "store", memory: Any = None, test: Any = None,
         parent: int | None = None, run: str | None = None, forward: Callable | None = None, loss: Callable | None = None,
         model_kwargs: dict | None = None, progress: bool = True, max_steps: int | None = None,
         **settings: Any) -> WalkResult | list[WalkResult]:
    """Walk ``model`` with ``op`` into ``store`` (a path or an open store) and return what was stored.

    ``settings`` are the run's settings as in a TOML ``[[runs]]`` entry (``steps``, ``epochs``, ``lr``,
    ``optimizer``, ``batch_size``, ``save_every``, ``eval_every``, ``device``, ``precision``, ``seed``, ``lam``,
    ``odist``, ``memory_size``, …) and the op's own (e.g. ``sparsity`` for sparsify). ``parent``: a stored node to
    start from (its weights are loaded into ``model``). ``forward(model, batch)`` returns logits (or
    ``(logits, labels)``); ``loss(logits, labels)`` replaces cross-entropy. ``model_kwargs``: the init arguments
    of ``model``'s class, so ``model_from_node`` can rebuild its nodes in another process. ``replicas=K``:
    K walks, a list of K results."""
    plans, tasks, seen = _plan(model, data, op, memory, test, parent, run, forward, loss, model_kwargs, settings)
    own = not hasattr(store, "append")
    if own:
        import fipgraph

        store = fipgraph.open_store(store, mode="a")
    try:
        results = _walk(plans, store, tasks, seen, Limits(max_steps=max_steps, progress=progress))
        return results if plans[0].group is not None else results[0]
    finally:
        if own:
            store.close()


def _walk(plans: list[Plan], store, tasks: list, seen: dict, limits: Limits) -> list[WalkResult]:
    if getattr(store, "mode", "a") == "r":
        raise FipgraphError(f"the store at {store.root} is open read-only; open it with mode='a' to walk into it")
    data = {"source": "python", **{t.name: repr(t) for t in tasks}}
    resolved = [{"build": None, "data": data, "eval_all_tasks": False, "model": p.spec, "run": p.run.to_dict(),
                 "start_node": p.start} for p in plans]
    handler = _setup_log(store.root)
    try:
        with StopSignal() as stop:
            if plans[0].group is None:
                results = [RunRecipe(plans[0], store, store.root, tasks, "single", limits, resolved[0], stop=stop,
                                     seen=seen).run()]
            else:
                results = walk_replicas(plans, store, store.root, tasks, "single", limits, resolved, stop=stop, seen=seen)
    finally:
        log.removeHandler(handler)
        handler.close()
    store.flush()
    return [_result(store, r) for r in results]


def _result(store, result) -> WalkResult:
    nodes = store.sql("SELECT node_id FROM nodes WHERE run_id = ? ORDER BY step, node_id", [result.run_id])
    evals = store.sql("SELECT dataset, metric, value FROM evals WHERE node_id = ?", [int(result.last_node)])
    evaluations: dict[str, dict[str, float]] = {}
    for ds, metric, value in evals.itertuples(index=False):
        evaluations.setdefault(ds, {})[metric] = float(value)
    return WalkResult(result.name, result.run_id, result.status, [int(n) for n in nodes["node_id"]],
                      int(result.last_node), result.steps_done, evaluations)


def _plan(model, data, op, memory, test, parent, run, forward, loss, model_kwargs, settings) -> tuple[list[Plan], list, dict]:
    """Everything checked before the store is touched: the op, its settings, the data, one forward."""
    if not isinstance(model, nn.Module):
        raise FipgraphError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if op not in OBJECTIVES:
        raise ConfigError(f"unknown op {op!r}; choose one of {sorted(OBJECTIVES)}")
    module = unwrap(model)
    cls = OBJECTIVES[op]
    tasks, task_no = _tasks(cls, op, module, data, memory)
    seen = _test_sets(test, causal=model_kind(module) == "causal_lm")
    cfg = _run_config(run or f"{op}-{type(module).__name__}", op, task_no, parent, tasks[task_no - 1], settings)
    _check_forward(module, tasks, forward, loss)
    spec, user = _spec(module, model_kwargs), UserCode(module, forward, loss)
    if cfg.replica_seeds() is None:
        return [Plan(cfg, cfg.name, spec, parent, user=user)], tasks, seen
    # K walks from the same network (or stored node), each with its own seed: batches, noise, memory
    return [Plan(r, r.name, spec, parent, group=cfg.name, user=user) for r, _ in replica_runs(cfg, parent, {})], tasks, seen


def _spec(module: nn.Module, model_kwargs: dict | None) -> dict:
    """How nodes of this walk are rebuilt: fipgraph's or HF's own spec, else the class path and init arguments."""
    if model_kwargs is not None:
        return user_spec(module, model_kwargs)
    return model_spec_of(module) or user_spec(module, None)


def _tasks(cls, op: str, module: nn.Module, data: Any, memory: Any) -> tuple[list, int]:
    """The walk's tasks and which one it trains: [earlier, new] for ops that keep an earlier task, else [data]."""
    causal = model_kind(module) == "causal_lm"
    if cls.needs_earlier_task:
        if data is None or memory is None:
            raise ConfigError(f"op {op!r} learns data= while keeping memory= (examples of the earlier task); give both")
        return [SourceTask(memory, name="memory", causal=causal), SourceTask(data, name="data", causal=causal)], 2
    if data is None and memory is None:
        raise ConfigError(f"op {op!r} needs data= (or memory=, the examples whose outputs the walk keeps)")
    train = data if data is not None else memory
    return [SourceTask(train, name="data", memory=memory if data is not None else None, causal=causal)], 1


def _test_sets(test: Any, causal: bool) -> dict[str, SourceTask]:
    if test is None:
        return {}
    named = test if isinstance(test, dict) and not all(isinstance(v, torch.Tensor) for v in test.values()) else {"test": test}
    return {str(name): SourceTask(d, d, name=str(name), causal=causal) for name, d in named.items()}


def _run_config(name: str, op: str, task_no: int, parent: int | None, task: SourceTask, settings: dict) -> RunConfig:
    """The run's settings checked like a TOML [[runs]] entry; keys that are not shared go to the op's own."""
    shared = {k: v for k, v in settings.items() if k in RUN_FIELDS}
    options = {k: v for k, v in settings.items() if k not in RUN_FIELDS}
    shared.setdefault("device", "auto")  # CUDA, then MPS, then CPU: the house default (fipgraph.device)
    shared.setdefault("precision", "fp32")
    if task.batch_size is not None:
        shared.setdefault("batch_size", task.batch_size)  # the user's DataLoader says how large a batch is
    if task.streamed and shared.get("epochs") is not None:
        raise ConfigError(f"epochs={shared['epochs']} over a stream (an IterableDataset has no length); give steps=")
    start = parent if parent is not None else ("your model" if OBJECTIVES[op].needs_earlier_task else None)
    return RunConfig(name=name, op=op, task=task_no, start=start, options=options, **shared)


def _check_forward(module: nn.Module, tasks: list, forward, loss) -> None:
    """One forward (and loss) on two examples of each task, so unreadable data or outputs fail before any write."""
    was = module.training
    module.eval()
    try:
        for task in tasks:
            batch = task.sample(2, seed=0)
            batch = {k: v.to(next(module.parameters()).device) for k, v in batch.items()}
            with torch.no_grad():
                if forward is not None:
                    module.fipgraph_forward = forward
                try:
                    logits, labels = forward_logits(module, batch)
                    if loss is not None:
                        loss(logits, labels)
                finally:
                    module.__dict__.pop("fipgraph_forward", None)
    finally:
        module.train(was)
