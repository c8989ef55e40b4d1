"""Build configuration: dataclasses validated on construction, loaded from TOML.

A build is a list of runs. Each run walks one path with one objective from a start node (another
run's last node, a stored node id, or a freshly built model) and writes its saved steps to the store.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fipgraph.data.user import call_arguments, is_user_source, resolve_source
from fipgraph.errors import ConfigError, need
from fipgraph.heads import HEADS
from fipgraph.path.config.fields import check_types
from fipgraph.path.engine.optim import OPTIMIZERS, SCHEDULES
from fipgraph.storage.options import StoreOptions



@dataclass
class DataConfig:
    source: str | list[str] = "digits"  # a fipgraph.data source name (digits ships with scikit-learn), a list of
    # image sources chained one task per source (["mnist", "fashion-mnist"]), or your own "package.module:function"
    split: list | str | None = field(default_factory=lambda: [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])  # classes of task1, task2, ... (text sources: domain names; "permuted:N")
    seed: int = 0  # fixes the train/test split, independent of the training seed
    head: str = "single"  # single: label = class id on one head sized for all tasks from the start; per_task: logits sliced to the task's block
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments for make_tasks

    def __post_init__(self) -> None:
        check_types(self, "data")
        need(self.head in HEADS, f"data.head={self.head!r}; use one of {list(HEADS)}")
        if isinstance(self.source, list):  # chained sources: the task sequence is the source list
            need(self.split in (None, DataConfig.__dataclass_fields__["split"].default_factory()),
                  f"data.split={self.split!r} with chained sources {self.source}; remove split (one task per source)")
            self.split = None
            return
        if is_user_source(self.source):
            self._check_user_source()
            return
        need(len(self.split) >= 1, f"data.split={self.split!r} is empty; give one class list per task")

    def _check_user_source(self) -> None:
        """Import the user's data function now (a bad path fails before any store is opened) and check that
        it takes the settings given; the digits default split means "none" to a function of the user's."""
        if self.split == DataConfig.__dataclass_fields__["split"].default_factory():
            self.split = None
        settings = {"split": self.split, "seed": self.seed, "head": self.head, "test_size": 0.2}
        call_arguments(self.source, resolve_source(self.source), settings, self.kwargs)

    @property
    def n_tasks(self) -> int | None:
        """Tasks in the sequence, where the config alone tells (None for 'classes:K')."""
        if isinstance(self.source, list):
            return len(self.source)
        if self.split is None:  # the user's own function: only its result tells
            return None
        if isinstance(self.split, str):
            kind, _, num = self.split.partition(":")
            return int(num) if kind == "permuted" and num.isdigit() else None
        return len(self.split)


@dataclass
class RunConfig:
    """The settings every op shares; an op's own settings live in ``options`` (its registered dataclass)."""

    name: str  # unique within the build; the store run is named "{build}/{name}"
    op: str  # objective: continual | sparsify | undirected | finetune | ewc | replay | oneshot_prune | lottery | lora
    task: int = 1  # 1-based task trained now (continual/finetune) or whose data anchors odist
    start: int | str | None = None  # TOML "from": a run name (its last node), a node id, or None = new model
    model: dict[str, Any] | None = None  # overrides [model] for a run that builds a new network
    optimizer: str = "adam"  # sgd | adam | adamw | fixed_step (the authors' FIP optimizer: each step has length lr)
    lr: float = 1e-3  # Adam's usual default; the paper's CL used 1e-2 (Adam) or 1e-3 (SGD)
    lr_schedule: str = "constant"  # constant | cosine (lr → lr_min over the run) | cyclic (cosine restarts, FGE/snapshots)
    lr_min: float = 0.0  # cosine/cyclic: the rate at the end of the run / of each cycle
    lr_cycle: int | None = None  # cyclic: steps per cycle (save_every = lr_cycle saves the low-rate snapshots)
    momentum: float = 0.9  # sgd only, as in the authors' code
    weight_decay: float = 0.0  # the paper's CNN used 2e-4
    lam: float = 1.0  # λ: weight of L against odist (paper: 1); finetune has no odist term, so its loss is plain CE
    odist: str = "bhattacharyya"  # output distance: bhattacharyya (authors') | l2 | kl
    batch_size: int = 32  # new-task batch
    memory_size: int = 500  # examples kept per earlier (or anchoring) task, as in the paper
    memory_batch_size: int = 32  # memory examples per step; odist is summed over them
    steps: int | None = None  # optimizer steps (lottery: per round); None with no epochs = DEFAULT_STEPS
    epochs: float | None = None  # alternative to steps, in passes over the task's training set
    save_every: int = 10  # write a node every k steps (the first and last step always)
    eval_every: int | None = None  # evaluate saved nodes every k steps (None = every saved node)
    seed: int = 0  # seeds init, batch order, memory choice: a run is reproducible from it
    prunable: list[str] | None = None  # fnmatch patterns of prunable parameter names (None = Linear/Conv/attention weights)
    keep_zeros: bool | None = None  # re-zero a sparse start node's zeros after each step (None = if the start node has a mask)
    eval_batch_size: int = 256  # evaluation only; no effect on the path
    probe_size: int = 32  # fixed examples for each edge's output_distance (odist to the parent, per example); 0 = skip
    device: str | None = None  # auto | cpu | cuda | cuda:N | mps; None = the build's device
    precision: str | None = None  # fp32 | bf16 | fp16 (autocast over fp32 master weights); None = the build's
    replicas: int = 1  # K walks of this run, seeds seed, seed+1, ...: stored as runs "<name>/s<seed>", batched when they can be
    seeds: list[int] | None = None  # explicit replica seeds instead (replicas = their number)
    num_cpus: float = 1  # --executor ray: CPUs this run's Ray task reserves (no effect on its nodes)
    num_gpus: float = 0  # --executor ray: GPUs this run's Ray task reserves (fractions share a GPU)
    options: Any = None  # this op's own settings: its registered config dataclass, or a dict of them

    DEFAULT_STEPS: ClassVar[int] = 300
    # what makes two runs "the same run" for resuming (besides the op's own options): every setting that
    # changes the nodes. Not here: name (the run's key), device (a run may resume elsewhere),
    # eval_batch_size (evaluation only). A key missing from a stored config counts as its default.
    IDENTITY: ClassVar[tuple[str, ...]] = (
        "op", "task", "from", "model", "optimizer", "lr", "lr_schedule", "lr_min", "lr_cycle", "momentum",
        "weight_decay", "lam", "odist", "batch_size", "memory_size", "memory_batch_size", "steps", "epochs",
        "save_every", "eval_every", "seed", "prunable", "keep_zeros", "probe_size", "precision")

    def __post_init__(self) -> None:
        from fipgraph.path.ops import OBJECTIVES
        from fipgraph.path.ops.odist import ODISTS

        where = f"run {self.name!r}"
        check_types(self, where, skip=("options",))
        need(self.op in OBJECTIVES, f"{where}: unknown op {self.op!r}; choose one of {sorted(OBJECTIVES)}")
        self.options = _make_options(OBJECTIVES[self.op], self.options, where)
        if self.steps is None and self.epochs is None:
            self.steps = self.DEFAULT_STEPS
        need(self.optimizer in OPTIMIZERS, f"{where}: unknown optimizer {self.optimizer!r}; choose one of {list(OPTIMIZERS)}")
        need(self.odist in ODISTS, f"{where}: unknown odist {self.odist!r}; choose one of {sorted(ODISTS)}")
        need(self.task >= 1, f"{where}: task={self.task}; tasks are numbered from 1")
        self._check_schedule(where)
        need(self.lam >= 0, f"{where}: lambda (lam)={self.lam} must be >= 0")
        for key in ("batch_size", "memory_batch_size", "save_every", "eval_batch_size"):
            need(getattr(self, key) >= 1, f"{where}: {key}={getattr(self, key)} must be >= 1")
        need(self.num_cpus >= 0 and self.num_gpus >= 0,
              f"{where}: num_cpus={self.num_cpus}, num_gpus={self.num_gpus}; Ray resources must be >= 0")
        need(self.probe_size >= 0, f"{where}: probe_size={self.probe_size} must be >= 0 (0 = no edge output_distance)")
        need(self.eval_every is None or self.eval_every >= 1, f"{where}: eval_every={self.eval_every} must be >= 1")
        need((self.steps is None) != (self.epochs is None), f"{where}: give exactly one of steps={self.steps} and epochs={self.epochs}")
        need(self.steps is None or self.steps >= 1, f"{where}: steps={self.steps} must be >= 1")
        need(self.epochs is None or self.epochs > 0, f"{where}: epochs={self.epochs} must be > 0")
        _check_device_words(self.device, self.precision, where)
        self._check_replicas(where)
        objective = OBJECTIVES[self.op]
        if objective.uses_memory:
            need(self.memory_size >= 1, f"{where}: memory_size={self.memory_size}: {self.op} needs a memory buffer; set memory_size >= 1 (paper: 500)")
        objective.check(self)

    def _check_schedule(self, where: str) -> None:
        need(self.lr > 0, f"{where}: lr={self.lr} must be > 0")
        need(self.lr_schedule in SCHEDULES, f"{where}: unknown lr_schedule {self.lr_schedule!r}; choose one of {list(SCHEDULES)}")
        need(0 <= self.lr_min <= self.lr, f"{where}: lr_min={self.lr_min} must be in [0, lr={self.lr}]")
        need((self.lr_schedule == "cyclic") == (self.lr_cycle is not None),
              f"{where}: lr_cycle={self.lr_cycle} with lr_schedule={self.lr_schedule!r}; give lr_cycle (steps per cycle) exactly when the schedule is 'cyclic'")
        need(self.lr_cycle is None or self.lr_cycle >= 1, f"{where}: lr_cycle={self.lr_cycle} must be >= 1")

    def _check_replicas(self, where: str) -> None:
        need(self.replicas >= 1, f"{where}: replicas={self.replicas} must be >= 1 (the number of walks, each with its own seed)")
        if self.seeds is None:
            return
        need(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds),
              f"{where}: seeds={self.seeds} must be a non-empty list of distinct seeds, e.g. [0, 1, 2]")
        need(self.replicas in (1, len(self.seeds)),
              f"{where}: replicas={self.replicas} but seeds={self.seeds} has {len(self.seeds)}; give one of them, or make them agree")
        self.replicas = len(self.seeds)

    def replica_seeds(self) -> list[int] | None:
        """The seeds of this run's replica walks; None for a plain run (one walk, stored under its own name)."""
        if self.seeds is not None:
            return list(self.seeds)
        return [self.seed + i for i in range(self.replicas)] if self.replicas > 1 else None

    def identity_keys(self) -> tuple[str, ...]:
        """The stored-config keys that must agree for a rerun to resume this run."""
        return self.IDENTITY + tuple(f.name for f in dataclasses.fields(self.options))

    def to_dict(self) -> dict[str, Any]:
        """The run as stored with it: shared settings and this op's own, flat (the TOML layout)."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "options"}
        out.update(dataclasses.asdict(self.options))
        if self.seeds is None and self.replicas == 1:  # a plain run stores what it stored before replicas existed
            out.pop("seeds"), out.pop("replicas")
        if self.lr_schedule == "constant":  # the default: kept out so runs stored before schedules existed still resume
            for key in ("lr_schedule", "lr_min", "lr_cycle"):
                out.pop(key)
        out["from"] = out.pop("start")
        return out


def _make_options(objective: Any, given: Any, where: str) -> Any:
    """The op's config dataclass from a dict of its settings (or as given), errors prefixed with the run."""
    if isinstance(given, objective.Config):
        return given
    given = dict(given or {})
    allowed = sorted(objective.Config.__dataclass_fields__)
    unknown = sorted(set(given) - set(allowed))
    need(not unknown, f"{where}: op {objective.name!r} has no settings {unknown}; its own settings are {allowed}")
    try:
        return objective.Config(**given)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_device_words(device: str | None, precision: str | None, where: str) -> None:
    """Spelling only: whether this machine has the device is checked when the build starts."""
    from fipgraph.device import PRECISIONS, is_device_name

    need(device is None or is_device_name(device),
          f"{where}: unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    need(precision is None or precision.strip().lower() in PRECISIONS,
          f"{where}: unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")


def identity_diff(stored: dict[str, Any], resolved: dict[str, Any], run: RunConfig) -> list[str]:
    """Keys in which a stored run's config and this build's resolved config differ (empty = same run).

    Only the explicit identity keys are compared, so a setting added later (to any op) never blocks
    resuming a run stored before it existed: a key a stored config lacks counts as its default, or,
    for a setting whose default changed the op's behaviour, as the value the op's config class lists
    in ``LEGACY`` (what runs stored before the setting existed did)."""
    from fipgraph.path.config.fields import field_defaults

    diff = [k for k in BUILD_IDENTITY if stored.get(k) != resolved.get(k)]
    defaults = {**field_defaults(RunConfig), **field_defaults(type(run.options)), "from": None,
                "steps": RunConfig.DEFAULT_STEPS, "precision": "fp32"}
    legacy = {**defaults, **getattr(type(run.options), "LEGACY", {})}
    old, new = stored.get("run") or {}, resolved["run"]
    diff += [f"run.{k}" for k in run.identity_keys() if old.get(k, legacy.get(k)) != new.get(k, defaults.get(k))]
    return diff


def refuse_changed_run(name: str, stored: dict[str, Any], resolved: dict[str, Any], run: RunConfig) -> None:
    """ConfigError when a stored run of this name is not this run (see ``identity_diff``)."""
    changed = identity_diff(stored, resolved, run)
    need(not changed, f"run {name!r} is already in the store with a different config (differs in {changed}); "
                       f"rerun with the same settings to resume it, or pass --run NEWNAME for a new run")


BUILD_IDENTITY = ("build", "data", "eval_all_tasks", "model", "start_node")  # resolved-config keys beside "run"


@dataclass
class BuildConfig:
    name: str = "default"  # prefix of every run name in the store; --run NAME changes it
    data: DataConfig = field(default_factory=DataConfig)  # the task sequence
    model: dict[str, Any] | None = None  # fipgraph.models spec for runs that build a new network; must match a --from node's
    runs: list[RunConfig] = field(default_factory=list)  # executed in order; later runs may start from earlier ones
    eval_all_tasks: bool = False  # evaluate saved nodes on every task, not just those seen so far
    device: str = "auto"  # every run's device unless it sets its own: auto (CUDA, then MPS, then CPU) | cpu | cuda[:N] | mps
    precision: str = "fp32"  # every run's precision unless it sets its own: fp32 | bf16 | fp16
    store: dict[str, Any] = field(default_factory=dict)  # open_store options of the build: encoding, tolerance, keyframe_every

    def __post_init__(self) -> None:
        check_types(self, "config", skip=("data", "runs"))
        StoreOptions.from_build_table(self.store)  # a bad value fails here, before any data or model loads
        _check_device_words(self.device, self.precision, "config")
        need(len(self.runs) >= 1, "the config has no [[runs]]; add at least one")
        for run in self.runs:  # a run without its own device/precision takes the build's
            run.device = self.device if run.device is None else run.device
            run.precision = (self.precision if run.precision is None else run.precision).strip().lower()
        seen: set[str] = set()
        for run in self.runs:
            need(run.name not in seen, f"run name {run.name!r} is used twice; names must be unique")
            n = self.data.n_tasks
            need(n is None or run.task <= n, f"run {run.name!r}: task={run.task} but the data has {n} tasks")
            if isinstance(run.start, str):
                need(run.start in seen, f"run {run.name!r}: from={run.start!r} is not an earlier run; use one of {sorted(seen)} or a node id")
            seen.add(run.name)

    def run_name(self, run: RunConfig) -> str:
        return f"{self.name}/{run.name}"


def shared_keys() -> set[str]:
    """Keys of a [[runs]] entry that every op has (TOML spelling: from, lambda)."""
    return {f.name for f in dataclasses.fields(RunConfig)} - {"start", "lam", "options"} | {"from", "lambda"}


def _run_kwargs(i: int, run: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """One [[runs]] entry merged with [defaults], split into shared settings and the op's own (``options``)."""
    from fipgraph.path.ops import OBJECTIVES, all_option_names, option_names

    need("name" in run or "name" in defaults, f"runs[{i}] needs a name and an op")
    defaults = dict(defaults)
    if "epochs" in run and "steps" not in run:  # the run's own length wins over the defaults' other one
        defaults.pop("steps", None)
    if "steps" in run and "epochs" not in run:
        defaults.pop("epochs", None)
    merged = {**defaults, **run}
    need("name" in merged and "op" in merged, f"runs[{i}] needs a name and an op")
    op = merged["op"]
    need(isinstance(op, str) and op in OBJECTIVES, f"runs[{i}]: unknown op {op!r}; choose one of {sorted(OBJECTIVES)}")
    own, others = set(option_names(op)), all_option_names() - set(option_names(op))
    wrong = sorted(k for k in run if k in others and k not in own)
    need(not wrong, f"run {merged['name']!r}: {wrong} are settings of other ops, not of {op!r}; its own are {sorted(own)}")
    bad = sorted(set(merged) - shared_keys() - all_option_names())
    need(not bad, f"runs[{i}]: unknown keys {bad}; allowed: {sorted(shared_keys() | own)}")
    kwargs = {k: v for k, v in merged.items() if k in shared_keys()}  # [defaults] of other ops are dropped
    kwargs["options"] = {k: v for k, v in merged.items() if k in own}
    if "from" in kwargs:
        kwargs["start"] = kwargs.pop("from")
    if "lambda" in kwargs:
        kwargs["lam"] = kwargs.pop("lambda")
    return kwargs


def build_config(raw: dict[str, Any]) -> BuildConfig:
    """Validate a config dict (TOML layout); [defaults] fill every run's missing keys."""
    raw = copy.deepcopy(raw)
    known = {f.name for f in dataclasses.fields(BuildConfig)} | {"defaults"}
    unknown = set(raw) - known
    need(not unknown, f"unknown top-level config keys {sorted(unknown)}; allowed: {sorted(known)}")
    defaults = raw.pop("defaults", {})
    need(isinstance(defaults, dict), f"[defaults] must be a table, got {defaults!r}")
    runs = [RunConfig(**_run_kwargs(i, run, defaults)) for i, run in enumerate(raw.pop("runs", []))]
    try:
        data = DataConfig(**raw.pop("data", {}))
        return BuildConfig(data=data, runs=runs, **raw)
    except TypeError as exc:
        raise ConfigError(f"bad config: {exc}") from None


def config_to_dict(config: BuildConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["runs"] = [r.to_dict() for r in config.runs]
    return out
