"""``build``: check a whole config against data, models and store, then walk its runs in order.

setup (tasks, store, plan and every check) → walk each run → summary. All configuration errors
surface in setup, before the first optimizer step of the first run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import fipgraph
from fipgraph.data import make_tasks
from fipgraph.device import check_precision, resolve_device
from fipgraph.errors import ConfigError, NodeNotFoundError
from fipgraph.models import build_model, forward_logits, normalize_spec
from fipgraph.path.config.schema import BuildConfig, RunConfig, config_to_dict, refuse_changed_run
from fipgraph.path.engine.interrupt import StopSignal
from fipgraph.path.ops import OBJECTIVES
from fipgraph.path.engine.replicas import ReplicaSettings, group_plans, replica_runs, walk_replicas
from fipgraph.path.engine.recipe import Limits, RunResult, walk
from fipgraph.storage.layout import Layout
from fipgraph.storage.remote import as_location
from fipgraph.storage.sidecar import StoreFiles

log = logging.getLogger("fipgraph.build")


@dataclass
class Plan:
    run: RunConfig
    name: str  # run name in the store
    spec: dict  # model spec of every node of this run
    start: int | str | None  # node id, earlier run name, or None (new network)
    group: str | None = None  # the config run this plan is a replica of (replicas = K): walked as one batch
    expect: dict | None = None  # the config's [model] when the start node's spec names it differently (a
    # pretrained LM is stored under its expanded "hf" spec): check_plan compares their layouts
    user: Any = None  # fipgraph.walk: the user's own network, forward and loss (engine.recipe.UserCode)


@dataclass
class BuildResult:
    status: str  # finished | interrupted
    runs: list[RunResult]
    accuracy: dict[str, dict[str, float]]  # run name -> {task: test accuracy at its last node}
    log_path: Path
    failed: dict[str, str] = field(default_factory=dict)  # run name -> error (--executor ray: the others went on)


def _node_spec(store, node_id: int) -> dict:
    try:
        spec = store.arch_spec(node_id).get("model")
    except NodeNotFoundError as exc:
        raise ConfigError(f"--from {node_id}: {exc}; list nodes with `fipgraph sql \"select node_id, run_id, op, step from nodes\"`") from None
    if not spec:
        raise ConfigError(f"node {node_id} has no model spec, so it cannot be rebuilt; start from a node appended by fipgraph build")
    return spec


def _same_arch(wanted: dict, found: dict) -> bool:
    """The config's model matches a node's if the names agree and every kwarg the config sets agrees."""
    w, f = normalize_spec(wanted), normalize_spec(found)
    return w["name"] == f["name"] and all(f["kwargs"].get(k, v) == v for k, v in w["kwargs"].items())


def _arch_mismatch(run_name: str, start, spec: dict, explicit: dict) -> ConfigError:
    return ConfigError(f"run {run_name!r}: node {start} is a {spec} but the config's model is {explicit}; "
                       f"start from a node of that architecture, or drop [model] from the config")


def plan_runs(config: BuildConfig, store, start_override: int | None) -> list[Plan]:
    plans: list[Plan] = []
    specs: dict[str, dict] = {}  # config run name -> model spec
    groups: dict[str, list[int] | None] = {}  # config run name -> its replica seeds
    for run in config.runs:
        start = run.start if run.start is not None else start_override
        expect = None
        explicit = run.model or config.model
        if start is None:
            if explicit is None:
                raise ConfigError(f"run {run.name!r} builds a new network but the config has no [model]; add one, e.g. "
                                  "[model] name = \"mlp\", or start from a stored node with --from NODE")
            spec = normalize_spec(explicit)
        elif isinstance(start, str):
            spec = specs[start]
        else:
            spec = _node_spec(store, int(start))
            if explicit is not None and not _same_arch(explicit, spec):
                if spec["name"] != "hf":
                    raise _arch_mismatch(run.name, start, spec, explicit)
                expect = normalize_spec(explicit)  # compared by the layouts both build, in check_plan
        specs[run.name] = spec
        group = run.name if run.replica_seeds() else None
        plans += [Plan(one, config.run_name(one), spec, one_start, group, expect)
                  for one, one_start in replica_runs(run, start, groups)]
    return plans


def _cached_model(spec: dict, models: dict | None) -> torch.nn.Module:
    key = json.dumps(spec, sort_keys=True, default=str)
    model = models.get(key) if models is not None else None
    if model is None:
        model = build_model(spec)
        if models is not None:
            models[key] = model
    return model


def check_plan(plan: Plan, tasks: list, head: str, models: dict | None = None) -> None:
    """Everything that can fail before a step: device and precision exist here, model builds, data fits
    its input and head, objective setup. ``models`` caches one built network per spec across plans (a
    pretrained LM takes ~17 s to load)."""
    run = plan.run
    check_precision(run.precision, resolve_device(run.device))  # e.g. cuda on a machine without it
    model = _cached_model(plan.spec, models)
    if plan.expect is not None and Layout.of(_cached_model(plan.expect, models).state_dict()) != Layout.of(model.state_dict()):
        raise _arch_mismatch(run.name, plan.start, plan.spec, plan.expect)
    OBJECTIVES[run.op](run, model)  # e.g. sparsify raises if nothing is prunable
    for i, task in enumerate(tasks[: run.task]):
        batch = task.sample(2, seed=0)
        try:
            with torch.no_grad():
                logits, _ = forward_logits(model, batch)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"run {run.name!r}: model {plan.spec} does not accept task{i + 1}'s data "
                              f"({exc}); use a model whose input matches the data, e.g. mlp in_features=64 for digits") from None
        # LM tasks have no class list (classes == []): their labels span the vocabulary, n_classes
        hi = task.label_offset + task.n_classes if head == "per_task" or not task.classes else max(task.classes) + 1
        if hi > logits.shape[-1]:
            raise ConfigError(f"run {run.name!r}: task{i + 1} uses output units up to {hi - 1} (classes {task.classes}) "
                              f"but model {plan.spec['name']} has {logits.shape[-1]} outputs; size the head for all "
                              f"tasks from the start, e.g. model.kwargs.n_classes={hi if head == 'single' else 'sum of task sizes'}")


def _setup_log(store_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(StoreFiles(store_dir).build_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def last_accuracies(store, node_id: int) -> dict[str, float]:
    df = store.sql("SELECT dataset, value FROM evals WHERE node_id = ? AND metric = 'accuracy' ORDER BY dataset", [int(node_id)])
    return dict(zip(df["dataset"], df["value"].astype(float)))


def build(config: BuildConfig, store_dir: str | Path = "store", *, start: int | None = None,
          max_hours: float | None = None, max_steps: int | None = None, progress: bool = True,
          durable: bool = False, replica_settings: ReplicaSettings | None = None) -> BuildResult:
    """Run (or resume) every run of ``config`` into the store at ``store_dir``.

    Ctrl-C anywhere (loading data and models, a step, an evaluation, the final save) stops cleanly:
    the result says "interrupted" and a rerun of the same build resumes (``fipgraph.path.engine.interrupt``).
    ``durable`` fsyncs each node's files and the catalog before its commit (survives a power loss).
    ``replica_settings`` tunes how replicas (``replicas = K``) step together; the defaults choose by themselves."""
    limits = Limits(deadline=None if max_hours is None else time.time() + 3600 * max_hours,
                    max_steps=max_steps, progress=progress)
    store_dir = as_location(store_dir)  # a URL (s3://...) stays a string
    with StopSignal() as stop, fipgraph.open_store(store_dir, mode="a", durable=durable,
                                                             **config.store) as store:
        try:
            with stop.immediate():  # data, model builds and checks: nothing to save yet
                tasks, plans = _prepare(config, store, start)
        except KeyboardInterrupt:
            return BuildResult("interrupted", [], {}, StoreFiles(store_dir).build_log)
        handler = _setup_log(store_dir)
        try:
            return _walk_all(config, plans, store, store_dir, tasks, limits, stop, replica_settings)
        finally:
            log.removeHandler(handler)
            handler.close()


def _prepare(config: BuildConfig, store, start: int | None) -> tuple[list, list[Plan]]:
    """Tasks and the checked plan of every run: all configuration errors surface here."""
    data = config.data
    tasks = make_tasks(data.source, split=data.split, seed=data.seed, head=data.head, **data.kwargs)
    if len(tasks) < max(r.task for r in config.runs):
        raise ConfigError(f"data gave {len(tasks)} tasks but a run asks for task {max(r.task for r in config.runs)}")
    plans = plan_runs(config, store, start)
    checked: dict = {}
    for plan in plans:
        check_plan(plan, tasks, data.head, checked)
    for plan in plans:  # a rerun with changed settings fails here, before any step
        stored = store.find_run(plan.name)
        if stored is not None:  # the start node is compared when the run starts (an earlier run may move it)
            refuse_changed_run(plan.name, {**stored["config"], "start_node": None}, resolved_config(config, plan, None), plan.run)
    return tasks, plans


def resolved_config(config: BuildConfig, plan: Plan, start_node: int | None) -> dict:
    """What is stored with a run (and compared, key by key, when it resumes)."""
    base = {k: v for k, v in config_to_dict(config).items() if k not in ("runs", "name", "model")}
    return {"build": config.name, **base, "model": plan.spec, "run": plan.run.to_dict(), "start_node": start_node}


def _walk_all(config: BuildConfig, plans: list[Plan], store, store_dir: Path, tasks: list, limits: Limits,
              stop: StopSignal, replica_settings: ReplicaSettings | None = None) -> BuildResult:
    log.info("build %s: %d runs into %s", config.name, len(plans), store_dir)
    results, last = [], {}
    for batch in group_plans(plans):  # one plan, or the K replicas of one config run
        resolved = [resolved_config(config, p, last[p.start] if isinstance(p.start, str) else p.start) for p in batch]
        if len(batch) == 1:
            done = [walk(batch[0], store, store_dir, tasks, config.data.head, limits, resolved[0], config.eval_all_tasks, stop)]
        else:
            done = walk_replicas(batch, store, store_dir, tasks, config.data.head, limits, resolved, config.eval_all_tasks, stop,
                                 replica_settings)
        results += done
        last.update({p.run.name: r.last_node for p, r in zip(batch, done)})
        if any(r.status != "finished" for r in done) or len(done) < len(batch):
            break
    store.flush()
    accuracy = {r.name: last_accuracies(store, r.last_node) for r in results}
    status = "finished" if all(r.status == "finished" for r in results) and len(results) == len(plans) else "interrupted"
    log.info("build %s: %s", config.name, status)
    return BuildResult(status, results, accuracy, StoreFiles(store_dir).build_log)


def format_table(result: BuildResult) -> str:
    """Per-task test accuracy at the last node of each run, as a plain text table."""
    tasks = sorted({t for accs in result.accuracy.values() for t in accs}, key=lambda s: (len(s), s))
    width = max([len("run")] + [len(n) for n in result.accuracy])
    lines = [f"{'run':<{width}}  {'node':>5}  " + "  ".join(f"{t:>7}" for t in tasks)]
    nodes = {r.name: r.last_node for r in result.runs}
    for name, accs in result.accuracy.items():
        cells = "  ".join(f"{accs[t] * 100:6.1f}%" if t in accs else f"{'-':>7}" for t in tasks)
        lines.append(f"{name:<{width}}  {nodes[name]:>5}  {cells}")
    return "\n".join(lines)


