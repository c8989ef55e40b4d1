"""Many small walks at once: a run with ``replicas = K`` (or ``seeds = [...]``) walks K seeds as one batch.

Each replica is a run of its own in the store, named ``<run>/s<seed>``, with the config a single run
of that seed would have (so it resumes like one, and a later run with the same seeds starts replica i
from replica i). The K walks keep their own recipes (``RunRecipe``: model, memory, batches, nodes,
evaluations, optimizer checkpoint); only the step is shared: their parameters are stacked into one
(K, ...) tensor per weight, the forward runs once (``stacked.py``: batched matmuls for MLPs,
``torch.func.vmap`` + ``functional_call`` for other models), each walk's S(w) comes from the same ``fip_terms`` a single walk uses, and one optimizer steps the
stacked weights (Adam, AdamW and SGD are elementwise, so this equals K separate optimizers). Each
recipe's parameters are views into the stacked tensors, so saving, evaluating and checkpointing
work on each walk's own network unchanged.

A batched walk gives the nodes of K separate walks up to float rounding (a batched matmul sums in
another order): tests/test_replicas.py checks ≤ 1e-5 relative after 12 steps. Where batching cannot
give that (per-step hooks on one network, a sparse mask, dropout or buffers, fixed_step's global
norm, fp16's shared overflow check, text models, walks at different steps) the K walks run one at a
time, and the log says why. ``--max-steps`` counts a batched step once: the K walks step together.
On a CPU with idle cores the K walks split into one stacked group per core, stepped in parallel
threads, one intra-op thread each (``cpu_plan``); the groups step freely (no meeting after each step)
and each thread saves and evaluates its own walks, appending to the store one node at a time; they
agree on one step to stop at (``GroupStop``).
benchmarks/bench_engine.py measures it against K walks one after another.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import torch
from torch import nn
from tqdm.auto import tqdm

from fipgraph.data.seeds import derive_seed
from fipgraph.device import move_batch
from fipgraph.errors import ConfigError
from fipgraph.models import build_model, model_kind
from fipgraph.path.engine.interrupt import GroupStop
from fipgraph.path.engine.memory import batch_stream
from fipgraph.path.engine.optim import lr_at, make_optimizer, set_lr
from fipgraph.path.engine.stacked import fused_terms, stacked_forward
from fipgraph.path.engine.step import fip_terms, joined_batch
from fipgraph.path.engine.recipe import RunRecipe, RunResult
from fipgraph.path.ops import OBJECTIVES

log = logging.getLogger("fipgraph.build")

ELEMENTWISE_OPTIMIZERS = ("adam", "adamw", "sgd")  # one optimizer over stacked weights = K optimizers


@dataclasses.dataclass(frozen=True)
class ReplicaSettings:
    """How the batched engine steps K walks; the defaults are the measured best (benchmarks/bench_engine.py)."""

    threads: int | None = None  # intra-op threads per group of a batched CPU step; None: see cpu_plan
    groups: int | None = None  # stacked groups stepped in parallel threads on a CPU; None: see cpu_plan
    min_group_flops: float = 2e7  # a group in its own thread needs this much kernel work per step (see cpu_plan)
    fast_mlp: bool = True  # MLPs step as chains of batched matmuls (stacked.py); False: vmap for every model
    fused_loss: bool = True  # finetune/continual: the K walks' S(w) as one batched computation (stacked.fused_terms)
    batch: bool = True  # False: the K walks always run one after another (the oracle of tests and benchmarks)

    def __post_init__(self) -> None:
        for name in ("threads", "groups"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"ReplicaSettings.{name} = {value!r}: use a whole number >= 1, or None to let cpu_plan choose")


def replica_runs(run, start, groups: dict) -> list[tuple[object, int | str | None]]:
    """The runs (and their starts) one config run stands for: itself, or one per replica seed.

    ``groups`` maps earlier config runs to their replica seeds (None = plain) and gets this run's."""
    seeds, parent = run.replica_seeds(), groups.get(start) if isinstance(start, str) else None
    groups[run.name] = seeds
    if parent is not None and seeds != parent:
        raise ConfigError(
            f"run {run.name!r}: from={start!r} has replicas with seeds {parent}, so this run must have the same "
            f"(replica i starts from replica i): set seeds = {parent}, or start from one replica's node id")
    if seeds is None:
        return [(run, start)]
    return [(dataclasses.replace(run, name=f"{run.name}/s{s}", seed=s, replicas=1, seeds=None),
             f"{start}/s{s}" if parent is not None else start) for s in seeds]


def group_plans(plans: list) -> list[list]:
    """Consecutive plans of one replicated config run together; every other plan alone."""
    out: list[list] = []
    for plan in plans:
        if plan.group is not None and out and out[-1][0].group == plan.group:
            out[-1].append(plan)
        else:
            out.append([plan])
    return out


def static_reason(plan) -> str | None:
    """Why this config's walks cannot be batched, as far as the config and the model tell (None = they can)."""
    cfg = plan.run
    if not OBJECTIVES[cfg.op].can_batch:  # e.g. EWC's penalty reads the weights; sparsify and LoRA change or wrap them
        batched = ", ".join(name for name, op in OBJECTIVES.items() if op.can_batch)
        return f"op {cfg.op!r} acts on each network between steps (batched ops: {batched})"
    if cfg.optimizer not in ELEMENTWISE_OPTIMIZERS:
        return f"optimizer {cfg.optimizer!r} normalises by each walk's own gradient norm"
    if cfg.precision == "fp16":
        return "fp16's gradient scaler would skip a step for all walks when one overflows"
    user = getattr(plan, "user", None)
    if user is not None and (user.forward is not None or user.loss is not None):
        return "a forward or loss of your own is called once per walk"
    model = user.module if user is not None else build_model(plan.spec)
    if model_kind(model) != "classifier":
        return f"a {model_kind(model)} takes padded text batches"
    if any(True for _ in model.buffers()):
        return "the model has buffers (e.g. batch-norm statistics) that each walk updates"
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        return "dropout draws each walk's masks from its own generator"
    return None


class ReplicaRun(RunRecipe):
    """A RunRecipe whose optimizer state lives in the group's stacked optimizer while it walks batched."""

    group: "StackedWalks | None" = None

    def write_checkpoint(self, node: int) -> None:
        if self.group is not None:
            self.group.export_state(self)
        super().write_checkpoint(node)


def walk_replicas(plans: list, store, store_dir, tasks: list, head: str, limits, resolved: list[dict],
                  eval_all: bool = False, stop=None, settings: ReplicaSettings | None = None,
                  seen: dict | None = None) -> list[RunResult]:
    """Walk (or resume) the K replica runs of one config run: batched when they can be, else one by one.
    ``seen``: named test sets (``fipgraph.walk``) instead of the build's numbered tasks."""
    settings = settings or ReplicaSettings()
    recipes = [ReplicaRun(p, store, store_dir, tasks, head, limits, r, eval_all, stop, seen) for p, r in zip(plans, resolved)]
    reason = static_reason(plans[0]) if settings.batch else "batching is switched off (ReplicaSettings.batch = False)"
    if reason is not None:
        log.info("%s: %d replicas walk one at a time: %s", plans[0].group, len(plans), reason)
        return _one_by_one(recipes)
    results: dict[int, RunResult] = {}
    for i, recipe in enumerate(recipes):
        begun = recipe.begin()
        if begun is not None:
            results[i] = begun
            if begun.status != "finished":  # stopped while setting up: the replicas begun so far stop too
                return _stop_rest(recipes, results, i + 1, [j for j in range(i) if j not in results])
    active = [i for i in range(len(recipes)) if i not in results]
    if active:
        live = [recipes[i] for i in active]
        reason = StackedWalks.reason(live)
        if reason is not None:
            log.info("%s: %d replicas walk one at a time: %s", plans[0].group, len(live), reason)
            for i in active:  # after one stops (a limit, Ctrl-C), the rest record that stop, not walked
                stops = [r.stop_reason or "interrupt" for r in results.values() if r.status != "finished"]
                results[i] = recipes[i].complete(stops[0] if stops else "loop")
        else:
            for i, res in zip(active, walk_stacked(live, plans[0].group, settings)):
                results[i] = res
    return [results[i] for i in range(len(recipes))]


def _one_by_one(recipes: list[ReplicaRun]) -> list[RunResult]:
    out = []
    for recipe in recipes:
        out.append(recipe.run())
        if out[-1].status != "finished":
            break
    return out


def _stop_rest(recipes, results: dict, end: int, begun: list[int]) -> list[RunResult]:
    """Mark the replicas already set up as interrupted (nothing walked); the rest stay as they are."""
    for j in begun:
        results[j] = recipes[j].complete("interrupt")
    return [results[j] for j in range(end)]


class StackedWalks:
    """K recipes at the same step, stepped as one: stacked weights, one batched forward, one optimizer."""

    def __init__(self, recipes: list[ReplicaRun], name: str, settings: ReplicaSettings | None = None) -> None:
        self.recipes, self.name, self.k = recipes, name, len(recipes)
        self.settings = settings or ReplicaSettings()
        first = recipes[0]
        self.cfg = first.cfg
        self.names = [n for n, p in first.model.named_parameters() if p.requires_grad]
        own = [dict(r.model.named_parameters()) for r in recipes]
        self.holder = nn.ParameterList(
            nn.Parameter(torch.stack([o[n].detach() for o in own]).contiguous()) for n in self.names)  # (K, ...)
        for k, o in enumerate(own):  # each walk's weights become views of its slice: saves see the stacked steps
            for n, stacked in zip(self.names, self.holder):
                o[n].data = stacked.data[k]
        # fused: one kernel over every stacked weight (3x faster than the per-tensor loop at K = 8 on a
        # CPU); same update rule, summed in another order, so within the float tolerance above
        fused = first.device.type in ("cpu", "cuda") and all(p.dtype == torch.float32 for p in self.holder)
        self.optimizer = make_optimizer(self.cfg, self.holder, **({"fused": True} if fused else {}))
        self.import_state()
        self.kind, self.batched = stacked_forward(first.model, self.names, self.settings.fast_mlp)
        for r in recipes:
            r.group = self

    @staticmethod
    def reason(recipes: list[ReplicaRun]) -> str | None:
        """Why these set-up recipes cannot step together (None = they can)."""
        if len({(r.step, r.total) for r in recipes}) > 1:
            return f"the walks are at different steps {[r.step for r in recipes]} (an earlier stop hit them apart)"
        if any(r.keep is not None or r.objective.keep is not None for r in recipes):
            return "the start node is sparse: each walk re-zeros its own mask"
        if len({bool(r.optimizer.state) for r in recipes}) > 1:
            return "some walks resume with their optimizer state and some without"
        steps = {float(s["step"]) for r in recipes for s in r.optimizer.state.values() if "step" in s}
        if len(steps) > 1:
            return f"the walks' optimizer states are at different steps {sorted(steps)}"
        return None

    def _params(self, k: int) -> list[torch.Tensor]:
        """Walk k's own parameters in stacking order (the recipe's optimizer keys)."""
        own = dict(self.recipes[k].model.named_parameters())
        return [own[n] for n in self.names]

    def import_state(self) -> None:
        """Stack the walks' resumed optimizer states (same step everywhere: checked in ``reason``)."""
        states = [[r.optimizer.state.get(p) for p in self._params(k)] for k, r in enumerate(self.recipes)]
        for i, stacked in enumerate(self.holder):
            per_walk = [s[i] for s in states]
            if any(s is None or not s for s in per_walk):
                continue
            self.optimizer.state[stacked] = {
                key: torch.stack([s[key] for s in per_walk]) if _per_weight(v, stacked.shape[1:]) else _copy(v)
                for key, v in per_walk[0].items()}
        for r in self.recipes:  # the stacked optimizer owns the state now; the recipes' copies are stale
            r.optimizer.state.clear()

    def export_state(self, recipe: ReplicaRun) -> None:
        """Walk ``recipe``'s slice of the stacked optimizer state into its own optimizer (for its checkpoint)."""
        k = self.recipes.index(recipe)
        for stacked, own in zip(self.holder, self._params(k)):
            state = self.optimizer.state.get(stacked)
            if state:
                recipe.optimizer.state[own] = {key: v[k].clone() if _per_weight(v, stacked.shape) else _copy(v)
                                               for key, v in state.items()}
        set_lr(recipe.optimizer, self.optimizer.param_groups[0]["lr"])

    def streams(self) -> list:
        return [batch_stream(r.task, r.cfg.batch_size, r.cfg.seed, r.step, r.device.type == "cuda")
                if r.objective.uses_task_batch else None for r in self.recipes]

    def step(self, streams: list) -> list:
        """One optimizer step of every walk: its own batches and memory sample, one batched forward/backward.
        Touches nothing outside this group (no store, no shared counters): groups may step in parallel threads."""
        tasks, mems, refs = [], [], []
        for r, stream in zip(self.recipes, streams):
            r.step += 1
            gen = torch.Generator().manual_seed(derive_seed(r.cfg.seed, "step", r.step))
            tasks.append(move_batch(next(stream), r.device) if stream is not None else None)
            mem, ref = r.reference.sample(r.cfg.memory_batch_size, gen) if r.reference else (None, None)
            mems.append(mem)
            refs.append(ref)
        step = self.recipes[0].step
        if self.cfg.lr_schedule != "constant":
            set_lr(self.optimizer, lr_at(self.cfg, step, self.recipes[0].total))
        joined = [joined_batch(t, m) for t, m in zip(tasks, mems)]
        stacked = {key: torch.stack([j[key] for j in joined]) for key in joined[0]}  # (K, N, ...)
        with self.recipes[0].amp.autocast():
            logits, labels = self.batched(list(self.holder), stacked)  # (K, P, C), (K, P)
            fused = fused_terms(self.recipes, logits, labels, tasks, mems, refs) if self.settings.fused_loss else None
            if fused is None:
                outs = [fip_terms(r.model, r.objective, r.odist, r.cfg.lam, logits[k], labels[k], tasks[k], mems[k],
                                  refs[k], r.cols) for k, r in enumerate(self.recipes)]
            loss, outs = fused if fused is not None else (torch.stack([o.loss for o in outs]).sum(), outs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # walks share no weights: each gets its own gradient
        self.optimizer.step()
        for r, ref in zip(self.recipes, refs):
            r.steps_done += 1
            r.last_ref_logits = ref
        return outs


def walk_stacked(recipes: list[ReplicaRun], name: str, settings: ReplicaSettings | None = None) -> list[RunResult]:
    """Step the K walks to their budget (or a stop), then let each recipe finish or record its stop.

    On a CPU with idle cores the walks split into one stacked group per core (``cpu_plan``), stepped
    in parallel threads (torch kernels release the GIL) with one intra-op thread each; each group's
    thread also saves and evaluates its own walks, one append to the store at a time."""
    settings = settings or ReplicaSettings()
    threads = torch.get_num_threads()
    on_cpu = recipes[0].device.type == "cpu"
    n_groups, n_threads = cpu_plan(len(recipes), threads, step_flops(recipes[0]), settings) if on_cpu else (1, threads)
    size = -(-len(recipes) // n_groups)
    groups = [StackedWalks(recipes[i:i + size], name, settings) for i in range(0, len(recipes), size)]
    appending = threading.Lock()  # Store.append numbers nodes: one group's append at a time
    for r in recipes:
        r.saver.store_lock = appending
    torch.set_num_threads(n_threads)
    log.info("%s: %d replicas walk batched (%s; %d group(s) in parallel, %d thread(s) each)", name, len(recipes),
             groups[0].kind, len(groups), n_threads)
    # each worker sets its own thread count: a new thread's MKL calls otherwise take every core
    # (measured: two threads of 512x512 matmuls ran 0.29x as fast as one after another, 0.89x with this)
    pool = ThreadPoolExecutor(len(groups) - 1, thread_name_prefix="fipgraph-replicas", initializer=torch.set_num_threads,
                              initargs=(n_threads,)) if len(groups) > 1 else None
    try:
        stop = _loop(groups, recipes, name, pool)
    except BaseException:
        for r in recipes:  # the nodes taken before the error are still stored
            r.saver.drain_after_error(r.name)
        raise
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            pool.shutdown(wait=True)
    return [r.complete(stop) for r in recipes]


def _loop(groups: list[StackedWalks], recipes: list[ReplicaRun], name: str, pool) -> str | None:
    """Step every group to the budget or a stop; the first on this thread, the others in ``pool``'s threads.

    The groups do not meet after each step: each steps and saves its own walks (evaluations included,
    so the last nodes' evaluations also run on every core), and ``GroupStop`` makes them stop at one step."""
    first = recipes[0]
    start = first.step
    halt = GroupStop(len(groups), start, first.total, first.limits, first.stop)
    bar = tqdm(total=first.total, initial=start, desc=f"{name} x{len(recipes)}", unit="step",
               disable=not first.limits.progress, dynamic_ncols=True)
    jobs = [pool.submit(_walk_group, g, group, halt, None) for g, group in enumerate(groups) if g]
    try:
        _walk_group(0, groups[0], halt, bar)
        for job in jobs:
            job.result()  # a group's error is raised here
    except KeyboardInterrupt:  # a second Ctrl-C: the weights may be mid-step, nothing more is saved
        halt.abort()
        wait(jobs)  # the other groups' step ends before anything reads their weights
        for r in recipes:
            r.saved_step = r.step
        return "hard-interrupt"
    except BaseException:
        halt.abort()
        wait(jobs)
        raise
    finally:
        bar.close()
        first.limits.count(first.step - start)  # a step of all K walks counts once, however many groups
    return halt.reason


def _walk_group(g: int, group: StackedWalks, halt: GroupStop, bar) -> None:
    """Group ``g``'s steps and its walks' saves until ``halt`` says stop (on the thread that calls it)."""
    stream, guarded = group.streams(), False
    try:
        while halt.begin(g):
            outs = group.step(stream)
            for r, out in zip(group.recipes, outs):
                if r.reference is not None and not guarded and r.step >= 2:
                    r._check_reference_is_frozen(out)
                r.after_step(False)
            guarded = guarded or group.recipes[0].step >= 2
            if bar is not None:
                bar.update(1)
    except BaseException:
        halt.abort()  # the other groups stop at their next step
        raise


def cpu_plan(k: int, current: int, flops_per_walk: float = float("inf"),
             settings: ReplicaSettings | None = None) -> tuple[int, int]:
    """(groups stepped in parallel, intra-op threads each) for K batched walks on a CPU.

    While the machine is otherwise idle: one group per core (at most K), one thread each, as long as
    each group keeps at least ``settings.min_group_flops`` of kernels per step; below that a step is mostly
    Python, which holds the GIL, so the groups would take turns (the 64-128-10 MLP: 2 groups ran
    0.58x as fast as 1). Else one group on the build's threads: on a busy machine threads that are
    time-sliced wait for each other (with load 17 on 2 cores, 2 intra-op threads ran 0.3-0.8x as fast
    as 1). ``settings.groups`` / ``settings.threads`` force it."""
    settings = settings or ReplicaSettings()
    if settings.groups is not None or settings.threads is not None:
        groups = max(1, min(k, settings.groups or 1))
        return groups, settings.threads if settings.threads is not None else (1 if groups > 1 else current)
    cores = len(os.sched_getaffinity(0))
    groups = int(min(k, cores, max(1.0, k * flops_per_walk / settings.min_group_flops)))
    if groups >= 2 and os.getloadavg()[0] < cores:
        return groups, 1
    return 1, current


def step_flops(recipe: ReplicaRun) -> float:
    """Rough matmul work of one walk's step: 6 x parameters x rows (forward + backward). Exact for an
    MLP; a convolution does more per parameter, so conv nets split later than they could."""
    rows = (recipe.cfg.batch_size if recipe.objective.uses_task_batch else 0) + \
        (recipe.cfg.memory_batch_size if recipe.reference is not None else 0)
    return 6.0 * sum(p.numel() for p in recipe.model.parameters() if p.requires_grad) * rows


def _per_weight(value, shape: torch.Size) -> bool:
    """An optimizer state entry with one value per weight (exp_avg, momentum), not a shared scalar (step)."""
    return torch.is_tensor(value) and value.dim() > 0 and value.shape == shape


def _copy(value):
    return value.clone() if torch.is_tensor(value) else value

