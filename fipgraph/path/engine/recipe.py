"""Walk one run as a small recipe: setup → resume → loop → finish.

``RunRecipe`` holds what a run needs (model on its device, frozen reference, objective, optimizer,
the last saved node); each phase is one short method, and everything op-specific is a hook of the
objective (``fipgraph.path.ops.base``), never a branch on the op's name here.

Steps are numbered from the start node (step 0). A node is saved every ``save_every`` steps, at the
last step and whenever the walk stops early, so a rerun resumes from the last node with no step
stored twice. The optimizer state of the last saved node (and the objective's own resume state,
e.g. LoRA's adapters) is kept beside the store (``<store>/optim/run-<id>.pt``: written when the walk
stops, and at a save at most once a minute) and restored when it matches the node a rerun resumes
from. Ctrl-C (``fipgraph.path.engine.interrupt``): during set-up and evaluation it abandons that phase at
once; between steps it saves the current network as a node and stops; a second one stops at once.
"""

from __future__ import annotations

import logging
import math
import time
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fipgraph.data.seeds import derive_seed
from fipgraph.device import check_precision, move_batch, resolve_device
from fipgraph.errors import FipgraphError
from fipgraph.models import build_model, forward_logits, model_from_node
from fipgraph.path.config.schema import refuse_changed_run
from fipgraph.path.engine.evaluate import evaluate_tasks, head_slice
from fipgraph.path.engine.interrupt import StopSignal
from fipgraph.path.engine.memory import FrozenReference, batch_size_of, batch_stream, cat_batches, index_batch
from fipgraph.path.ops import OBJECTIVES, Context
from fipgraph.path.ops.odist import get_odist
from fipgraph.storage.remote import as_location
from fipgraph.path.engine.optim import lr_at, make_optimizer, set_lr
from fipgraph.path.engine.snapshot import PENDING, NodeSaver
from fipgraph.path.ops.sparsity import prunable_names, sparsity_of
from fipgraph.path.engine.step import Amp, fip_step

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

    def count(self, steps: int = 1) -> None:
        if self.max_steps is not None:
            self.max_steps -= steps


@dataclass
class RunResult:
    name: str
    run_id: int  # -1: stopped before the run was entered in the store
    status: str  # finished | interrupted
    last_node: int  # -1: no node yet (stopped while setting up a new network)
    steps_done: int = 0  # optimizer steps taken by this invocation
    stop_reason: str | None = None  # "limit" | "interrupt"


@dataclass
class UserCode:
    """What a walk from Python brings instead of registry names (``fipgraph.walk``): the user's own network
    (copied, never changed), and optionally its forward (model, batch) -> logits and task loss (logits, labels)."""

    module: torch.nn.Module
    forward: Any = None
    loss: Any = None


class RunRecipe:
    """One run of a build: ``RunRecipe(...).run()`` walks it (or resumes it) and returns a RunResult."""

    def __init__(self, plan, store, store_dir: Path, tasks: list, head: str, limits: Limits, resolved: dict,
                 eval_all: bool = False, stop: StopSignal | None = None, seen: dict | None = None) -> None:
        self.plan, self.cfg, self.name = plan, plan.run, plan.name
        self.store, self.store_dir, self.tasks, self.head = store, as_location(store_dir), tasks, head
        self.limits, self.resolved, self.stop = limits, resolved, stop or StopSignal()
        self.task = tasks[self.cfg.task - 1]
        self.user: UserCode | None = getattr(plan, "user", None)
        if seen is None:  # a build evaluates its tasks by number; a walk from Python names its test sets
            seen = {f"task{i + 1}": t for i, t in enumerate(tasks if eval_all else tasks[: self.cfg.task])}
        self.seen = seen
        self.run_id, self.found = -1, None  # store run id; (node, step, tags) of the node to resume from
        self.parent: int | None = None  # the last node of this run's branch (a new node's parent)
        self.parent_probe: torch.Tensor | None = None
        self.step = self.saved_step = 0  # the current step; the step of the last node stored
        self.steps_done, self.accs, self.last_write = 0, {}, time.time()
        self.last_write_seconds = 0.0  # how long the last optimizer-state write took

    # -- the recipe ---------------------------------------------------------------------------
    def run(self) -> RunResult:
        return self.begin() or self.complete()

    def begin(self) -> RunResult | None:
        """Set-up and resume; a RunResult when the run ends here (already finished, or stopped while setting up)."""
        existing = self._existing()
        if existing is not None and existing["status"] == "finished" and self.found is not None:
            log.info("run %s already finished at node %d", self.name, self.found[0])
            return RunResult(self.name, self.run_id, "finished", self.found[0])
        try:
            if self.stop.requested:  # a Ctrl-C during an earlier run's last moments: start nothing new
                raise KeyboardInterrupt
            with self.stop.immediate():  # model loading, memory, reference: abandoned at once on Ctrl-C
                self.setup()
        except KeyboardInterrupt:
            log.info("%s: interrupted while setting up; nothing of this run changed", self.name)
            node = self.found[0] if self.found else (self.resolved["start_node"] if self.resolved["start_node"] is not None else -1)
            return RunResult(self.name, self.run_id, "interrupted", node, 0, "interrupt")
        self._enter_run(existing)
        if self.resume():
            return RunResult(self.name, self.run_id, "finished", self.found[0])
        return None

    def complete(self, stop: str | None = "loop") -> RunResult:
        """Walk the steps (unless a caller such as a replica group walked them and says why it stopped),
        then finish or record the stop."""
        try:
            if stop == "loop":
                stop = self.loop()
            self.settle()
        except BaseException:
            self.saver.drain_after_error(self.name)  # the nodes taken before the error are still stored
            raise
        if stop is None and self.stop.requested:  # e.g. the last node's evaluation was abandoned: finish on the rerun
            stop = "interrupt"
        return self.stopped(stop) if stop is not None else self.finish()

    def _existing(self) -> dict | None:
        """The stored run of this name, if any; refuses one whose identity differs from this config."""
        existing = self.store.find_run(self.name)
        if existing is None:
            return None
        refuse_changed_run(self.name, existing["config"], self.resolved, self.cfg)
        self.run_id = int(existing["run_id"])
        self.found = self.store.last_node(self.run_id)
        return existing

    def _enter_run(self, existing: dict | None) -> None:
        if existing is None:
            self.run_id = self.store.start_run(self.name, self.cfg.op, self.resolved)
        else:
            self.store.set_run_status(self.run_id, "running")

    def setup(self) -> None:
        """Device, model, objective, memory and frozen reference, weights to resume, optimizer."""
        cfg = self.cfg
        self.device = resolve_device(cfg.device)
        self.amp = Amp.of(self.device, check_precision(cfg.precision, self.device))
        log.info("%s: device %s (asked: %s), precision %s", self.name, self.device, cfg.device, self.amp.precision)
        self.start = self.resolved["start_node"]
        model = self._start_model()
        self.objective = OBJECTIVES[cfg.op](cfg, model)
        if self.user is not None and self.user.loss is not None:
            self.objective.loss_fn = self.user.loss
        self.odist = get_odist(cfg.odist)
        self.cols = head_slice(self.task, self.head)
        self.prunable = prunable_names(model, cfg.prunable)
        self.reference = self._reference(model) if self.objective.uses_memory else None
        self.objective.prepare(Context(store=self.store, start=self.start, model=model, tasks=self.tasks,
                                       head=self.head, device=self.device, seen=self.seen, odist=self.odist,
                                       run_id=self.run_id))
        self.probe = self._probe()
        self.keep = self._keep_zeros(model)
        self.checkpoint = self._read_checkpoint()
        own_state = (self.checkpoint or {}).get("objective")
        if self.found is not None and own_state is None:
            self.store.load_into(model, self.found[0])  # the weights as last saved, before any wrapper (LoRA) goes on
        self.model = self.objective.wrap(model)
        if own_state is not None:  # e.g. LoRA: the start weights plus the adapters as they were at the node
            self.objective.load_state_dict(self.model, own_state)
        steps = cfg.steps if cfg.steps is not None else math.ceil(cfg.epochs * len(self.task.train_loader(cfg.batch_size, 0)))
        self.total = self.objective.total_steps(steps)
        self.optimizer = make_optimizer(cfg, self.model)
        self.saver = NodeSaver(self.store, self.device)  # on CUDA: pinned snapshots, appended behind the steps

    def _start_model(self) -> torch.nn.Module:
        if self.user is not None:  # the user's network, copied; a stored start node's weights loaded into it
            model = copy.deepcopy(self.user.module)
            model.fipgraph_spec = self.plan.spec  # how its nodes are rebuilt: class path (+ init arguments if given)
            if self.user.forward is not None:
                model.fipgraph_forward = self.user.forward
            if self.start is not None:
                self.store.load_into(model, self.start)
        elif self.start is None:
            torch.manual_seed(derive_seed(self.cfg.seed, "init"))  # same seed, same initial network, also when resuming
            model = build_model(self.plan.spec)
        else:
            model = model_from_node(self.store, self.start)
        return model.to(self.device).train()

    def _reference(self, model: torch.nn.Module) -> FrozenReference:
        """Memory of the objective's tasks and the start network's logits on it (before any resume or step)."""
        tasks = self.objective.memory_tasks(self.cfg.task)
        samples = [self.tasks[t - 1].sample(self.cfg.memory_size, seed=derive_seed(self.cfg.seed, "memory", t)) for t in tasks]
        if not self.objective.uses_odist:  # replay scores each example on its own task's head: say which task it is
            samples = [{**b, "task": torch.full((batch_size_of(b),), t)} for b, t in zip(samples, tasks)]
        memory = move_batch(cat_batches(samples), self.device)
        return FrozenReference.take(model, memory, self.cfg.eval_batch_size)

    def _probe(self) -> dict | None:
        """Fixed inputs for each edge's output_distance."""
        n = self.cfg.probe_size
        if not n:
            return None
        if self.reference is not None:
            return index_batch(self.reference.memory, torch.arange(min(n, len(self.reference))))
        return move_batch(self.task.sample(n, derive_seed(self.cfg.seed, "probe")), self.device)

    def _keep_zeros(self, model: torch.nn.Module) -> list | None:
        """(param, 0/1 mask) pairs whose zeros stay zero: a sparse start node's mask, or keep_zeros = true."""
        mask_info = (self.store.node_tags(self.start) if self.start is not None else {}).get("sparse_mask")
        if not (self.cfg.keep_zeros or (self.cfg.keep_zeros is None and mask_info)):
            return None
        params = dict(model.named_parameters())
        self.keep_names = mask_info["params"] if mask_info else self.prunable
        return [(params[n], (params[n] != 0).to(params[n].dtype)) for n in self.keep_names]

    def _carried_mask(self, tags: dict | None) -> dict | None:
        """A run that keeps its start node's zeros tags its nodes ``sparse_mask`` too, so a run started from
        one of them keeps the same zeros (a second continual walk from a sparse branch stayed sparse only
        for its first run before)."""
        if self.keep is None or self.objective.keep is not None or (tags and "sparse_mask" in tags):
            return tags
        weights = [w.detach() for w, _ in self.keep]
        mask = {"params": self.keep_names, "rule": "weight == 0", "sparsity": sparsity_of(weights), "carried": True}
        return {**(tags or {}), "sparse_mask": mask}

    def _read_checkpoint(self) -> dict | None:
        """The optimizer (and objective) state saved with the node this run resumes from, if it matches."""
        if self.found is None or self.run_id < 0:
            return None
        saved = self.store.files.load_optimizer_state(self.run_id)  # weights_only: a tampered file runs no code
        if saved is None:
            return None
        if "param_groups" not in saved["state"]:  # this layout: optimizer, objective and scaler under "state"
            saved = {"node": saved["node"], **saved["state"]}
            saved["state"] = saved.pop("optimizer")
        if saved.get("node") != self.found[0]:
            log.warning("%s: optimizer state is for node %s, not %d; restarting the optimizer",
                        self.name, saved.get("node"), self.found[0])
            return None
        return saved

    def resume(self) -> bool:
        """Place the walk at its start or its last saved node; True when nothing is left to do."""
        if self.found is None and self.start is None:
            self.save(0)  # the freshly initialised network is the root of this branch
            return False
        if self.found is None:
            self.parent, self.parent_probe = self.start, self.probe_logits()
            return False
        self.parent, self.step = self.found[0], self.found[1]
        self.saved_step, self.parent_probe = self.step, self.probe_logits()
        if self.checkpoint is not None:
            self.optimizer.load_state_dict(self.checkpoint["state"])
            if self.amp.scaler is not None and self.checkpoint.get("scaler"):
                self.amp.scaler.load_state_dict(self.checkpoint["scaler"])
            log.info("%s: resumed at step %d (node %d) with its optimizer state", self.name, self.step, self.found[0])
        final = bool(self.found[2].get("final_projection"))
        if final or self.step >= self.total:
            self._evaluate_if_missing(self.found[0])  # its evaluation may have been abandoned by a Ctrl-C
        if final:  # interrupted after the final node: nothing left to do
            self.store.finish_run(self.run_id, "finished")
            return True
        log.info("%s: resuming from node %d at step %d of %d", self.name, self.found[0], self.step, self.total)
        return False

    def _evaluate_if_missing(self, node: int) -> None:
        if not self.store.has_evals(node):
            self.store.add_evals(node, self.evaluate(self.objective.export(self.model), self.step))

    # -- the loop -----------------------------------------------------------------------------
    def loop(self) -> str | None:
        """Steps until the budget, a limit or a Ctrl-C; returns why it stopped early (None = it did not)."""
        cfg = self.cfg
        pin = self.device.type == "cuda"
        stream = batch_stream(self.task, cfg.batch_size, cfg.seed, self.step, pin) if self.objective.uses_task_batch else None
        bar = tqdm(total=self.total, initial=self.step, desc=self.name, unit="step", disable=not self.limits.progress,
                   dynamic_ncols=True)
        guarded = False
        try:
            while self.step < self.total:
                if self.stop.requested or self.limits.exhausted():
                    return "interrupt" if self.stop.requested else "limit"
                out = self.train_step(stream)
                if self.reference is not None and not guarded and self.step >= 2:
                    guarded = True
                    self._check_reference_is_frozen(out)
                converged = self.objective.converged()
                self.after_step(converged)
                bar.update(1)
                if self.step % 10 == 0 or self.step == self.total:
                    bar.set_postfix({**{k: f"{v:.3g}" for k, v in out.terms.items()}, **self.accs}, refresh=False)
                if converged:
                    break
        except KeyboardInterrupt:  # second Ctrl-C, or one outside the handler: the model may be mid-step
            self.saved_step = self.step
            return "hard-interrupt"
        finally:
            bar.close()
        return None

    def train_step(self, stream):
        """One optimizer step: seeds, batches, learning rate, the objective's hook, the FIP step."""
        cfg, self.step = self.cfg, self.step + 1
        seed = derive_seed(cfg.seed, "step", self.step)
        # dropout/noise reproducible per step, across resumes (CPU generator: torch.manual_seed
        # also seeds CUDA lazily, which costs ~2 ms a call; on CUDA the device generator is seeded too)
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        task_batch = move_batch(next(stream), self.device) if stream is not None else None
        mem_batch, ref_logits = self.reference.sample(cfg.memory_batch_size, gen) if self.reference else (None, None)
        if cfg.lr_schedule != "constant":
            set_lr(self.optimizer, lr_at(cfg, self.step, self.total))
        self.objective.before_step(self.model, self.optimizer, self.step)
        keep = self.objective.keep if self.objective.keep is not None else self.keep
        out = fip_step(self.model, self.optimizer, self.objective, self.odist, cfg.lam, task_batch, mem_batch,
                       ref_logits, self.cols, keep, self.amp)
        self.steps_done += 1
        self.limits.count()
        self.last_ref_logits = ref_logits
        return out

    def _check_reference_is_frozen(self, out) -> None:
        """Weights moved since the reference was taken: outputs must differ somewhere."""
        if torch.equal(out.memory_logits, self.last_ref_logits.to(out.memory_logits.dtype)):
            raise LiveReferenceError(
                f"run {self.name!r}: at step {self.step} the memory outputs equal the reference outputs exactly, "
                "so the reference follows the live network and odist constrains nothing; the "
                "reference must be a frozen copy taken when the task starts")

    def after_step(self, converged: bool) -> None:
        """Save the node this step made when it is due (tagged, converged, every save_every, the last)."""
        self.saver.poll()  # nodes whose snapshots have reached the host go to the store now
        tags = self.objective.node_tags(self.step, self.total)
        if tags is not None:
            self.save(self.step, tags, final=True)  # e.g. the end of a lottery round: always stored and evaluated
        elif converged or self.step % self.cfg.save_every == 0 or self.step == self.total:
            self.save(self.step, final=converged or self.step == self.total)  # a run's last node is always evaluated

    # -- nodes --------------------------------------------------------------------------------
    def probe_logits(self) -> torch.Tensor | None:
        if self.probe is None:
            return None
        was = self.model.training
        self.model.eval()
        with torch.no_grad(), self.amp.autocast():
            out = forward_logits(self.model, self.probe)[0].float()
        self.model.train(was)
        return out

    def evaluate(self, net: torch.nn.Module, step: int) -> dict[str, dict[str, float]]:
        """Accuracy and loss per seen task, prunable sparsity, and the objective's own metrics (e.g. H)."""
        with self.amp.autocast():
            metrics = evaluate_tasks(net, self.seen, self.head, self.cfg.eval_batch_size)
        net_params = dict(net.named_parameters())
        metrics["prunable"] = {"sparsity": sparsity_of([net_params[n].detach() for n in self.prunable])}
        for ds, extra in self.objective.node_metrics(self.model, step).items():
            metrics.setdefault(ds, {}).update(extra)
        return metrics

    def save(self, step: int, tags: dict | None = None, final: bool = False) -> int | None:
        """Store the network at ``step`` as a child of the last node (evaluated when due); its node id, or
        None while its snapshot is on the way to the host (``self.parent`` is PENDING until ``settle``)."""
        net = self.objective.export(self.model)  # what is stored: the model itself, or e.g. LoRA merged into a plain copy
        metrics: dict[str, dict[str, float]] = {}
        if final or step % (self.cfg.eval_every or self.cfg.save_every) == 0:
            try:
                with self.stop.immediate():
                    metrics = self.evaluate(net, step)
            except KeyboardInterrupt:  # the node is kept without its metrics; the run stops next
                self.stop.requested, metrics = True, {}
                log.info("%s: evaluation at step %d abandoned (Ctrl-C); the node is stored without it", self.name, step)
        now = self.probe_logits()
        distance = None if self.parent_probe is None or now is None else self.odist(now, self.parent_probe)
        nid = self.saver.save(net, parent=self.parent, distance=distance, distance_per=1 if now is None else now.shape[0],
                              run=self.run_id, op=self.cfg.op, step=step, metrics=metrics or None, tags=self._carried_mask(tags))
        self.parent, self.parent_probe, self.saved_step = PENDING if nid is None else nid, now, step
        if metrics:
            self.accs = {k: f"{v['accuracy']:.3f}" for k, v in metrics.items() if "accuracy" in v}
            log.info("%s step %d node %s %s", self.name, step, "(on its way)" if nid is None else nid,
                     {k: round(v.get("accuracy", v.get("sparsity", 0.0)), 4) for k, v in metrics.items()})
        # bound what a hard kill can lose, and what the writes cost: a 1 GB Adam state (SmolLM2) took
        # 7 s to write, so a walk saving a node a minute spent a tenth of its time here
        if time.time() - self.last_write > max(60.0, 20 * self.last_write_seconds):
            self.write_checkpoint(self.settle())  # the optimizer state belongs to this node: it needs its id
        return nid

    def settle(self) -> int | None:
        """Append the snapshots still on their way (waits for their copies); the last node's id."""
        last = self.saver.drain()
        if self.parent is PENDING:
            self.parent = last
        return self.parent

    def checkpoint_state(self) -> dict:
        """Optimizer, objective and grad-scaler state as they are now (what a resume restores)."""
        return {"optimizer": self.optimizer.state_dict(), "objective": self.objective.state_dict(self.model),
                "scaler": self.amp.scaler.state_dict() if self.amp.scaler is not None else None}

    def write_checkpoint(self, node: int) -> None:
        """Optimizer (and objective) state that belongs to ``node``; call only while the model equals that node."""
        began = time.time()
        self.store.files.save_optimizer_state(self.run_id, node, self.checkpoint_state())  # atomic; fsynced when the store is durable
        self.last_write = time.time()
        self.last_write_seconds = self.last_write - began

    # -- the end ------------------------------------------------------------------------------
    def stopped(self, stop: str) -> RunResult:
        """A limit or a Ctrl-C: keep the work (a consistent network is saved), mark the run interrupted."""
        if self.saved_step != self.step:
            self.save(self.step)  # stopped between steps: a consistent network, so keep the work
        self.settle()
        self.store.flush()
        if stop != "hard-interrupt":
            self.write_checkpoint(self.parent)
        stop = "interrupt" if stop == "hard-interrupt" else stop
        self.store.set_run_status(self.run_id, "interrupted")
        log.info("%s: stopped (%s) at step %d; rerun the same command to resume", self.name, stop, self.step)
        return RunResult(self.name, self.run_id, "interrupted", self.parent, self.steps_done, stop)

    def finish(self) -> RunResult:
        """The objective's last change (e.g. sparsify's hard projection) as one more node, then done."""
        tags = self.objective.finish(self.model)
        if tags is not None:
            self.step += 1
            self.save(self.step, tags, final=True)  # e.g. the hard projection onto exactly p sparse
            self.settle()
            if self.stop.requested:  # its evaluation was abandoned: the rerun evaluates it and finishes
                self.store.flush()
                self.store.set_run_status(self.run_id, "interrupted")
                return RunResult(self.name, self.run_id, "interrupted", self.parent, self.steps_done, "interrupt")
        self.store.finish_run(self.run_id, "finished")
        self.store.flush()
        self.store.files.drop_optimizer_state(self.run_id)
        log.info("%s: finished at step %d, node %d", self.name, self.step, self.parent)
        return RunResult(self.name, self.run_id, "finished", self.parent, self.steps_done)


def walk(plan, store, store_dir: Path, tasks: list, head: str, limits: Limits, resolved: dict,
         eval_all: bool = False, stop: StopSignal | None = None) -> RunResult:
    """Execute (or resume) one planned run; see the module docstring."""
    return RunRecipe(plan, store, store_dir, tasks, head, limits, resolved, eval_all, stop).run()
