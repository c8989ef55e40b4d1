"""``fipgraph build --executor ray``: a build's runs as Ray tasks, one store as the result.

The driver checks the whole config (as a local build does), starts the ``StoreWriter`` actor on its
own machine, and submits every run whose ``from`` run has finished as a Ray task with the run's
``num_cpus``/``num_gpus``. Each task walks its run with the ordinary run engine against a
``RemoteStore`` (``fipgraph.scale.remote``), which ships nodes without waiting for the writer. When the store
is on shared storage (a URL, or a folder declared shared: ``shared_storage``), each worker encodes and writes its
own nodes' rows there and ships only their catalog rows. A task whose worker dies is retried by Ray and resumes
from its run's last committed node; a run that raises is marked failed (its dependants are not
started) and the others go on. Rerunning the same command resumes the whole build.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import fipgraph
from fipgraph.errors import ConfigError, WriterLockedError
from fipgraph.path.build import BuildResult, Plan, _prepare, _setup_log, last_accuracies, resolved_config
from fipgraph.path.config.schema import BuildConfig
from fipgraph.path.engine.interrupt import StopSignal
from fipgraph.path.engine.recipe import Limits, RunRecipe, RunResult
from fipgraph.scale.remote import RemoteStore
from fipgraph.scale.shard import StoreWriter, worker_identity
from fipgraph.storage.remote import as_location, is_url
from fipgraph.storage.sidecar import StoreFiles

log = logging.getLogger("fipgraph.build")
MAX_RETRIES = 3  # a worker that dies (preempted VM, OOM kill) is retried this often


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray on this machine and every worker: pip install 'fipgraph[ray]'") from None
    return ray


def _check_reachable(address: str) -> None:
    """host:port or ray://host:port must answer a TCP connect at once (Ray itself retries for minutes)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address {address!r}: give auto, HOST:PORT or ray://HOST:PORT (e.g. ray://10.0.0.5:10001)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({exc}); start one with "
                          "`ray start --head` on that machine, or drop --address to run Ray on this machine") from None


def connect(address: str | None, num_cpus: int | None = None) -> Any:
    """Join the cluster at ``address`` (auto, HOST:PORT, ray://HOST:PORT) or start a local one (None);
    an already connected session (e.g. tests) is reused."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    if address is not None:
        _check_reachable(address)
    else:
        # Ray starts its workers at nice 15 (its worker_niceness): on a shared machine the runs would then get
        # a fraction of the CPU a local build gets at the user's niceness. A local Ray is this command's own, so
        # its workers run at the driver's niceness (a value set by the user wins); a cluster keeps its setting.
        os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=True)
    except (ConnectionError, RuntimeError) as exc:
        raise ConfigError(f"--address {address}: could not join a Ray cluster ({exc}); start one with "
                          "`ray start --head`, or drop --address to run Ray on this machine") from None
    return ray


def check_resources(ray: Any, plans: list[Plan]) -> None:
    """Every run's num_cpus/num_gpus must fit on some alive node, or the task would wait forever."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for plan in plans:
        run = plan.run
        for key, want in (("CPU", run.num_cpus), ("GPU", run.num_gpus)):
            have = max((n.get(key, 0) for n in nodes), default=0)
            if want > have:
                raise ConfigError(f"run {plan.name!r} asks for num_{key.lower()}s={want:g} but no Ray node has more than "
                                  f"{have:g} {key}s; lower runs.{run.name}.num_{key.lower()}s or add such a node to the cluster")


class _RayRecipe(RunRecipe):
    """The run engine unchanged, except that a batch of nodes ships with the optimizer state of its last node."""

    def setup(self) -> None:
        super().setup()
        self.store.checkpoint_of = self.checkpoint_if_at

    def checkpoint_if_at(self, step: int | None) -> dict | None:
        """The optimizer state, when the model is still the network saved at ``step`` (else it belongs to no node)."""
        return self.checkpoint_state() if step == self.step else None

    def run(self) -> RunResult:
        try:
            result = super().run()
        except BaseException:
            try:  # what the walk saved before it failed is committed, as in a local build
                self.store.settle()
            except Exception:  # noqa: BLE001 - the walk's own error is the one to report
                pass
            raise
        self.store.settle()
        result.last_node = self.store.resolve(result.last_node)  # the writer's id, for runs starting from it
        return result


def walk_remote(plan: Plan, writer: Any, store_dir: str, tasks: list, head: str, resolved: dict, eval_all: bool,
                deadline: float | None, threads: int, opened: list, shared: bool = False) -> RunResult:
    """The body of one run's Ray task (on any worker of the cluster). ``opened`` holds the ref of the writer's
    ``open`` call, awaited here (in a list, so the task starts before it): Ray orders one caller's actor
    calls, not calls from different callers, so this worker's first call could otherwise come before it.
    ``shared``: the worker writes its nodes' rows into the store at ``store_dir`` itself."""
    import ray
    import torch

    torch.set_num_threads(threads)
    ray.get(opened[0])
    pid, host = worker_identity()
    sender = ray.get(writer.register.remote(plan.name, pid, host))
    # FIPGRAPH_RAY_BYTES=1 (benchmarks/bench_ray.py): the build log says how many bytes the nodes' calls took
    store = RemoteStore(writer, store_dir, sender, shared=shared, measure_bytes=os.environ.get("FIPGRAPH_RAY_BYTES") == "1")
    limits = Limits(deadline=deadline, max_steps=None, progress=False)
    try:
        result = _RayRecipe(plan, store, as_location(store_dir), tasks, head, limits, resolved, eval_all,
                            StopSignal()).run()
    finally:
        store.detach()
    written = store.chain.written if store.chain is not None else 0
    sent = "" if store.sent_bytes is None else f" ({store.sent_bytes} bytes of nodes, {store.state_bytes} of optimizer state)"
    writer.note.remote(f"run {plan.name}: {store.waited:.2f} s waiting for the writer; {written} nodes written by "
                       f"the worker, {store.shipped} sent to the writer{sent}")  # logged in build.log
    return result


def shared_storage_of(store_dir: str | Path, shared_storage: bool | None) -> bool:
    """Whether workers write their own rows: a URL store is shared; a folder only when the user says so."""
    if shared_storage not in (None, True, False):
        raise ConfigError(f"shared_storage={shared_storage!r}: give True (every worker mounts the store at the same "
                          "path, or it is a URL), False (workers send their weights to the writer) or None (True for "
                          "a URL, False for a folder)")
    if is_url(store_dir) and str(store_dir).startswith("memory://"):
        raise ConfigError(f"--store {store_dir}: a memory:// store lives inside one process, so Ray's workers and "
                          "writer cannot share it; use a folder or a bucket (s3://...)")
    return is_url(store_dir) if shared_storage is None else shared_storage


def build_ray(config: BuildConfig, store_dir: str | Path = "store", *, start: int | None = None,
              max_hours: float | None = None, durable: bool = False, address: str | None = None,
              threads: int = 1, num_cpus: int | None = None, shared_storage: bool | None = None) -> BuildResult:
    """``build`` with every run as a Ray task (see the module docstring); same arguments plus ``address`` and
    ``shared_storage`` (None: workers write their own rows when the store is a URL; True: also into a folder
    that every worker mounts at the same path; False: they send their weights to the writer)."""
    shared = shared_storage_of(store_dir, shared_storage)
    store_dir = as_location(store_dir)  # a URL stays a string
    where = store_dir if is_url(store_dir) else str(store_dir.resolve())  # as the writer and the workers open it
    if config.store:  # the writer actor opens the store with the defaults: say so rather than write other rows
        raise ConfigError(f"[store] {config.store} is not supported with --executor ray yet; build with the "
                          "local executor, or drop the [store] table (lossless rows)")
    # a cluster to join is joined first, so a bad --address creates nothing; a local Ray starts after
    # the config's checks (it takes seconds)
    ray = connect(address, num_cpus) if address is not None else _import_ray()
    # joined already: the writer's process and the workers' imports (seconds each) start beside the checks
    writer = _start_early(ray, where, len(config.runs)) if ray.is_initialized() else None
    try:
        with _open_when_free(store_dir, durable) as store:  # checks, then handed to the writer
            tasks, plans = _prepare(config, store, start)
        ray = connect(address, num_cpus)
        check_resources(ray, plans)
    except BaseException:
        if writer is not None:  # it never opened the store
            ray.kill(writer)
        raise
    writer = writer or _start_writer(ray, where)
    handler = _setup_log(store_dir)
    try:
        deadline = None if max_hours is None else time.time() + 3600 * max_hours
        opened = writer.open.remote(where, durable)  # after the driver let the store go
        log.info("build %s: %s", config.name, "workers write their nodes' rows to the store themselves" if shared
                 else "workers send their nodes' weights to the writer")
        results, failed = _schedule(ray, config, plans, writer, where, ray.put(tasks), deadline, threads, opened, shared)
        ray.get(writer.call.remote(None, "flush"))
        merged, seconds, cpu = ray.get(writer.merge_cost.remote())
        log.info("build %s: %d nodes merged, %.2f ms each on the writer (%.2f CPU-ms each in the writer's process)",
                 config.name, merged, 1e3 * seconds / max(merged, 1), 1e3 * cpu / max(merged, 1))
    finally:  # also on Ctrl-C: commit what the writer holds before it goes
        try:
            ray.get(writer.close.remote(), timeout=120)
        finally:
            ray.kill(writer)
        log.removeHandler(handler)
        handler.close()
    with fipgraph.open_store(store_dir, mode="r") as store:
        accuracy = {r.name: last_accuracies(store, r.last_node) for r in results if r.status == "finished"}
    ok = len(results) == len(plans) and all(r.status == "finished" for r in results)
    status = "finished" if ok else ("failed" if failed else "interrupted")
    return BuildResult(status, results, accuracy, StoreFiles(store_dir).build_log, failed)


def _open_when_free(store_dir: str | Path, durable: bool, wait: float = 60.0):
    """Open the store for writing; a killed driver's writer actor may hold it for some seconds more
    while Ray tears its job down, so a lock is waited for (up to ``wait`` s) before it is an error."""
    end = time.time() + wait
    while True:
        try:
            return fipgraph.open_store(store_dir, mode="a", durable=durable)
        except WriterLockedError:
            if time.time() > end:
                raise
            time.sleep(0.5)


def writer_name(store_dir: str | Path) -> str:
    """The writer actor's name (``ray.get_actor(name).who.remote()``: which worker walks which run)."""
    return f"fipgraph-writer:{store_dir if is_url(store_dir) else Path(store_dir).resolve()}"


def _start_writer(ray: Any, store_dir: str) -> Any:
    """The writer actor, pinned to this (the driver's) machine: the store lives on its disk. It imports
    what the store needs at once and opens the store when asked (``open``), once the driver lets it go."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(StoreWriter).options(
        name=writer_name(store_dir), num_cpus=0, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
    return actor.remote()  # its start overlaps the workers' (see _schedule)


def _warm_up() -> None:
    """Nothing: a worker that runs this has imported this module (torch, the run engine), so a run's task
    that comes to it starts at once."""


def _start_early(ray: Any, store_dir: str, runs: int) -> Any:
    """The writer actor, and one warm-up task per run that can start at once (at most one per CPU): a fresh
    worker process spends seconds importing torch and fipgraph, which then overlap the driver's checks."""
    writer = _start_writer(ray, store_dir)
    warm = ray.remote(_warm_up).options(num_cpus=1, max_retries=0, name="fipgraph:warm-up")
    for _ in range(min(runs, int(ray.available_resources().get("CPU", 0)))):
        warm.remote()  # not awaited: a worker that fails here fails the run's own task with its error
    return writer


def _fits(ray: Any, running: list[Plan], plan: Plan) -> bool:
    """Whether the cluster has the CPUs/GPUs for ``plan`` beside the runs already submitted. Submitting
    only what fits matters: Ray lends a task's CPU to another task while it waits in ray.get (here: on
    the writer), so runs submitted beyond the cluster's CPUs would start and share the cores with the
    running ones, and the last would then run alone with cores idle."""
    if not running:
        return True
    have = ray.cluster_resources()
    for key, want in (("CPU", plan.run.num_cpus), ("GPU", plan.run.num_gpus)):
        if want and sum(getattr(p.run, f"num_{key.lower()}s") for p in running) + want > have.get(key, 0) + 1e-9:
            return False
    return True


def _schedule(ray: Any, config: BuildConfig, plans: list[Plan], writer: Any, store_dir: str, tasks_ref: Any,
              deadline: float | None, threads: int, opened: Any, shared: bool) -> tuple[list[RunResult], dict[str, str]]:
    """Submit each run once its ``from`` run has finished and the cluster has room for it; collect results
    as they come. ``opened`` (the ref of the writer's ``open``) is awaited after the first runs are
    submitted (both start at once)."""
    remote = ray.remote(walk_remote)
    waiting, running, done, failed = list(plans), {}, {}, {}
    writer_ready = opened
    while waiting or running:
        for plan in list(waiting):
            dep = plan.start if isinstance(plan.start, str) else None
            if dep in failed:
                failed[plan.run.name] = f"not started: its from run {dep!r} did not finish"
                waiting.remove(plan)
            elif dep in done and done[dep].status != "finished":  # stopped at --max-hours: a rerun goes on
                log.info("run %s: not started, %s stopped before its end", plan.name, dep)
                waiting.remove(plan)
            elif (dep is None or dep in done) and _fits(ray, list(running.values()), plan):
                start_node = done[dep].last_node if dep else plan.start
                ref = remote.options(num_cpus=plan.run.num_cpus, num_gpus=plan.run.num_gpus, max_retries=MAX_RETRIES,
                                     retry_exceptions=False, name=f"fipgraph:{plan.name}").remote(
                    plan, writer, store_dir, tasks_ref, config.data.head,
                    resolved_config(config, plan, start_node), config.eval_all_tasks, deadline, threads, [opened], shared)
                running[ref], _ = plan, waiting.remove(plan)
        if writer_ready is not None:
            ray.get(writer_ready)  # the store is open in the writer (or its error surfaces here)
            writer_ready = None
        if not running:
            break
        ready, _ = ray.wait(list(running), num_returns=1)
        plan = running.pop(ready[0])
        try:
            done[plan.run.name] = ray.get(ready[0])
            log.info("run %s: %s at node %d", plan.name, done[plan.run.name].status, done[plan.run.name].last_node)
        except ray.exceptions.RayError as exc:
            failed[plan.run.name] = _mark_failed(ray, writer, plan, exc)
    names = {p.run.name: p.name for p in plans}
    return [done[p.run.name] for p in plans if p.run.name in done], {names[n]: e for n, e in failed.items()}


def _mark_failed(ray: Any, writer: Any, plan: Plan, exc: Exception) -> str:
    """runs.status = 'failed' for a run whose task raised (or died more than MAX_RETRIES times)."""
    cause = getattr(exc, "cause", None) or exc
    text = f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    stored = ray.get(writer.call.remote(None, "find_run", plan.name))
    if stored is not None:
        ray.get(writer.call.remote(None, "finish_run", int(stored["run_id"]), "failed", text))
    log.error("run %s failed: %s", plan.name, text)
    return text
