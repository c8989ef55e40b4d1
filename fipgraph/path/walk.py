"""Walk one run: start or resume, step, save nodes with evaluations, stop cleanly.

Steps are numbered from the start node (step 0). A node is saved every ``save_every`` steps, at the
last step and whenever the walk stops early, so a rerun resumes from the last node with no step
stored twice. The optimizer state of the last saved node is kept beside the store
(``<store>/optim/run-<id>.pt``: written when the walk stops, and at a save at most once a minute)
and restored when it matches the node a rerun resumes from. Ctrl-C is caught between steps: the
current network is saved as a node, then the walk stops; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fipgraph.errors import ConfigError, FipgraphError
from fipgraph.models import build_model, forward_logits, model_from_node
from fipgraph.path.evaluate import evaluate_tasks, head_slice, robustness_h
from fipgraph.path.memory import FrozenReference, batch_size_of, batch_stream, cat_batches, index_batch
from fipgraph.path.objectives import OBJECTIVES, Context
from fipgraph.path.odist import get_odist
from fipgraph.path.optim import lr_at, make_optimizer, set_lr
from fipgraph.path.sparsity import prunable_names, sparsity_of
from fipgraph.path.step import fip_step

log = logging.getLogger("fipgraph.build")


class LiveReferenceError(FipgraphError, RuntimeError):
    """The odist reference moved with the live network, so the FIP constraint did nothing."""


@dataclass
class Limits:
    """Shared by every run of one build: the --max-hours deadline and a step cap (tests, demos)."""

    deadline: float | None = None  # time.time() after which runs stop and save
    max_steps: int | None = None  # optimizer steps left for this invocation
    progress: bool = True  # show a tqdm bar

    def exhausted(self) -> bool:
        if self.max_steps is not None and self.max_steps <= 0:
            return True
        return self.deadline is not None and time.time() >= self.deadline

    def count(self) -> None:
        if self.max_steps is not None:
            self.max_steps -= 1


@dataclass
class RunResult:
    name: str
    run_id: int
    status: str  # finished | interrupted
    last_node: int
    steps_done: int = 0  # optimizer steps taken by this invocation
    stop_reason: str | None = None  # "limit" | "interrupt"


@dataclass
class _State:
    parent: int | None = None
    parent_probe: torch.Tensor | None = None
    saved_step: int = -1  # step of the last node this run has in the store
    accs: dict = field(default_factory=dict)  # last evaluated accuracies, for the progress bar
    last_write: float = field(default_factory=time.time)


def last_node(store, run_id: int) -> tuple[int, int, dict] | None:
    df = store.sql("SELECT node_id, step, tags FROM nodes WHERE run_id = ? ORDER BY step DESC, node_id DESC LIMIT 1", [int(run_id)])
    if df.empty:
        return None
    tags = df["tags"][0]
    return int(df["node_id"][0]), int(df["step"][0]), (json.loads(tags) if isinstance(tags, str) and tags else {})


class _CtrlC:
    """First SIGINT sets a flag the loop checks between steps; the second raises as usual."""

    def __init__(self) -> None:
        self.requested, self._old = False, None

    def __enter__(self) -> "_CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def walk(plan, store, store_dir: Path, tasks: list, head: str, limits: Limits, resolved: dict,
         eval_all: bool = False) -> RunResult:
    """Execute (or resume) one planned run; see the module docstring."""
    run, name = plan.run, plan.name
    existing = store.find_run(name)
    found = None
    if existing is not None:
        if existing["config"] != resolved:
            diff = sorted(k for k in set(resolved) | set(existing["config"]) if resolved.get(k) != existing["config"].get(k))
            raise ConfigError(f"run {name!r} is already in the store with a different config (differs in {diff}); "
                              f"rerun with the same settings to resume it, or pass --run NEWNAME for a new run")
        run_id = int(existing["run_id"])
        found = last_node(store, run_id)
        if existing["status"] == "finished" and found is not None:
            log.info("run %s already finished at node %d", name, found[0])
            return RunResult(name, run_id, "finished", found[0])
        store.set_run_status(run_id, "running")
    else:
        run_id = store.start_run(name, run.op, resolved)

    start = resolved["start_node"]
    if start is None:
        torch.manual_seed(run.seed)  # same seed, same initial network, also when resuming
        model = build_model(plan.spec)
    else:
        model = model_from_node(store, start)
    model.train()
    objective = OBJECTIVES[run.op](run, model)
    odist = get_odist(run.odist)
    task = tasks[run.task - 1]
    shown = tasks if eval_all else tasks[: run.task]
    seen = {f"task{i + 1}": t for i, t in enumerate(shown)}
    cols = head_slice(task, head)
    prunable = prunable_names(model, run.prunable)
    params = dict(model.named_parameters())

    reference = None
    if objective.uses_memory:  # taken from the start network, before any resume or step
        samples = [tasks[t - 1].sample(run.memory_size, seed=run.seed * 1000 + t) for t in objective.memory_tasks(run.task)]
        if not objective.uses_odist:  # replay scores each example on its own task's head: say which task it is
            samples = [{**b, "task": torch.full((batch_size_of(b),), t)} for b, t in
                       zip(samples, objective.memory_tasks(run.task))]
        memory = cat_batches(samples)
        reference = FrozenReference.take(model, memory, run.eval_batch_size)
    objective.prepare(Context(store=store, start=start, model=model, tasks=tasks, head=head))
    probe = None  # fixed inputs for each edge's output_distance
    if run.probe_size:
        probe = (index_batch(reference.memory, torch.arange(min(run.probe_size, len(reference)))) if reference
                 else task.sample(run.probe_size, run.seed))

    keep = None
    start_tags = store.node(start).get("tags") if start is not None else None
    start_tags = json.loads(start_tags) if isinstance(start_tags, str) and start_tags else start_tags
    mask_info = start_tags.get("sparse_mask") if isinstance(start_tags, dict) else None
    if run.keep_zeros or (run.keep_zeros is None and mask_info):
        names = mask_info["params"] if mask_info else prunable
        keep = [(params[n], (params[n] != 0).to(params[n].dtype)) for n in names]

    if found is not None:
        store.load_into(model, found[0])  # resume: the weights as last saved, before any wrapper (LoRA) goes on
    model = objective.wrap(model)
    total = objective.total_steps(run.steps if run.steps is not None
                                  else math.ceil(run.epochs * len(task.train_loader(run.batch_size, 0))))
    eval_every = run.eval_every or run.save_every
    optimizer = make_optimizer(run, model)
    optim_path = Path(store_dir) / "optim" / f"run-{run_id}.pt"
    st = _State()

    def _write_optim(path: Path, node: int) -> None:
        """Optimizer state that belongs to ``node`` (call only while the model equals that node)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"node": node, "state": optimizer.state_dict()}, tmp)
        os.replace(tmp, path)  # atomic: a crash leaves the old file or the new one

    def probe_logits() -> torch.Tensor | None:
        if probe is None:
            return None
        was = model.training
        model.eval()
        with torch.no_grad():
            out = forward_logits(model, probe)[0]
        model.train(was)
        return out

    def save(step: int, tags: dict | None = None, final: bool = False) -> int:
        net = objective.export(model)  # what is stored: the model itself, or e.g. LoRA merged into a plain copy
        metrics: dict[str, dict[str, float]] = {}
        if final or step % eval_every == 0:
            metrics = evaluate_tasks(net, seen, head, run.eval_batch_size)
            net_params = dict(net.named_parameters())
            metrics["prunable"] = {"sparsity": sparsity_of([net_params[n].detach() for n in prunable])}
            if run.op == "undirected":
                gen = torch.Generator().manual_seed(run.seed + step)
                for ds, t in seen.items():
                    batch = next(iter(t.test_loader(run.eval_batch_size)))
                    h = robustness_h(model, batch, odist, run.h_attack, run.h_epsilon, gen)
                    if h is not None:
                        metrics[ds]["H"] = h
        now = probe_logits()
        od = None if st.parent_probe is None or now is None else float(odist(now, st.parent_probe)) / now.shape[0]
        nid = store.append(net, parent=st.parent, run=run_id, op=run.op, step=step,
                           metrics=metrics or None, tags=tags, output_distance=od)
        st.parent, st.parent_probe, st.saved_step = nid, now, step
        if metrics:
            st.accs = {k: f"{v['accuracy']:.3f}" for k, v in metrics.items() if "accuracy" in v}
        if time.time() - st.last_write > 60:  # bound what a hard kill can lose
            _write_optim(optim_path, nid)
            st.last_write = time.time()
        if metrics:
            log.info("%s step %d node %d %s", name, step, nid,
                     {k: round(v.get("accuracy", v.get("sparsity", 0.0)), 4) for k, v in metrics.items()})
        return nid

    step = 0
    if found is None and start is None:
        save(0)  # the freshly initialised network is the root of this branch
    elif found is None:
        st.parent, st.parent_probe, st.saved_step = start, probe_logits(), 0
    else:
        st.parent, step, st.saved_step = found[0], found[1], found[1]  # weights loaded above
        st.parent_probe = probe_logits()
        if optim_path.exists():
            saved = torch.load(optim_path, weights_only=False)
            if saved.get("node") == found[0]:
                optimizer.load_state_dict(saved["state"])
                log.info("%s: resumed at step %d (node %d) with its optimizer state", name, step, found[0])
            else:
                log.warning("%s: optimizer state is for node %s, not %d; restarting the optimizer", name, saved.get("node"), found[0])
        if found[2].get("final_projection"):  # interrupted after the final node: nothing left to do
            store.finish_run(run_id, "finished")
            return RunResult(name, run_id, "finished", found[0])
        log.info("%s: resuming from node %d at step %d of %d", name, found[0], step, total)

    stream = batch_stream(task, run.batch_size, run.seed, step) if objective.uses_task_batch else None
    bar = tqdm(total=total, initial=step, desc=name, unit="step", disable=not limits.progress, dynamic_ncols=True)
    done, stop, guarded = 0, None, False
    ctrl_c = _CtrlC()
    try:
        ctrl_c.__enter__()
        while step < total:
            if ctrl_c.requested or limits.exhausted():
                stop = "interrupt" if ctrl_c.requested else "limit"
                break
            step += 1
            # dropout/noise reproducible per step, across resumes (CPU generator: torch.manual_seed
            # also seeds CUDA lazily, which costs ~2 ms a call)
            torch.default_generator.manual_seed(run.seed * 1_000_003 + step)
            gen = torch.Generator().manual_seed(run.seed * 1_000_003 + step)
            task_batch = next(stream) if stream is not None else None
            mem_batch, ref_logits = reference.sample(run.memory_batch_size, gen) if reference else (None, None)
            if run.lr_schedule != "constant":
                set_lr(optimizer, lr_at(run, step, total))
            objective.before_step(model, optimizer, step)
            out = fip_step(model, optimizer, objective, odist, run.lam, task_batch, mem_batch, ref_logits, cols,
                           objective.keep if objective.keep is not None else keep)
            done += 1
            limits.count()
            if reference is not None and not guarded and step >= 2:
                guarded = True  # weights moved since the reference was taken: outputs must differ somewhere
                if torch.equal(out.memory_logits, ref_logits):
                    raise LiveReferenceError(
                        f"run {name!r}: at step {step} the memory outputs equal the reference outputs exactly, "
                        "so the reference follows the live network and odist constrains nothing; the "
                        "reference must be a frozen copy taken when the task starts")
            converged = objective.converged()
            node_tags = objective.node_tags(step, total)
            if node_tags is not None:
                save(step, node_tags, final=True)  # e.g. the end of a lottery round: always stored and evaluated
            elif converged or step % run.save_every == 0 or step == total:
                save(step, final=converged or step == total)  # a run's last node is always evaluated
            bar.update(1)
            if step % 10 == 0 or step == total:
                bar.set_postfix({**{k: f"{v:.3g}" for k, v in out.terms.items()}, **st.accs}, refresh=False)
            if converged:
                break
    except KeyboardInterrupt:  # second Ctrl-C, or one outside the handler: the model may be mid-step
        stop, st.saved_step = "hard-interrupt", step
    finally:
        ctrl_c.__exit__()
        bar.close()

    if stop is not None:
        if st.saved_step != step:
            save(step)  # stopped between steps: a consistent network, so keep the work
        store.flush()
        if stop != "hard-interrupt":
            _write_optim(optim_path, st.parent)
        stop = "interrupt" if stop == "hard-interrupt" else stop
        store.set_run_status(run_id, "interrupted")
        log.info("%s: stopped (%s) at step %d; rerun the same command to resume", name, stop, step)
        return RunResult(name, run_id, "interrupted", st.parent, done, stop)

    tags = objective.finish(model)
    if tags is not None:
        step += 1
        save(step, tags, final=True)  # e.g. the hard projection onto exactly p sparse
    store.finish_run(run_id, "finished")
    store.flush()
    optim_path.unlink(missing_ok=True)
    log.info("%s: finished at step %d, node %d", name, step, st.parent)
    return RunResult(name, run_id, "finished", st.parent, done)
