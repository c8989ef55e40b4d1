"""Build configuration: dataclasses validated on construction, loaded from TOML.

A build is a list of runs. Each run walks one path with one objective from a start node (another
run's last node, a stored node id, or a freshly built model) and writes its saved steps to the store.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fipgraph.errors import ConfigError
from fipgraph.path.optim import OPTIMIZERS, SCHEDULES


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


@dataclass
class DataConfig:
    source: str | list[str] = "digits"  # a fipgraph.data source name (digits ships with scikit-learn), or a
    # list of image sources chained one task per source, e.g. ["mnist", "fashion-mnist"]
    split: list[list[int]] = field(default_factory=lambda: [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])  # classes of task1, task2, ...
    seed: int = 0  # fixes the train/test split, independent of the training seed
    head: str = "single"  # single: label = class id on one head sized for all tasks from the start; per_task: logits sliced to the task's block
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments for make_tasks

    def __post_init__(self) -> None:
        _need(self.head in ("single", "per_task"), f"data.head={self.head!r}; use 'single' or 'per_task'")
        if isinstance(self.source, list):  # chained sources: the task sequence is the source list
            _need(self.split in (None, DataConfig.__dataclass_fields__["split"].default_factory()),
                  f"data.split={self.split!r} with chained sources {self.source}; remove split (one task per source)")
            self.split = None
            return
        _need(len(self.split) >= 1, f"data.split={self.split!r} is empty; give one class list per task")

    @property
    def n_tasks(self) -> int | None:
        """Tasks in the sequence, where the config alone tells (None for 'classes:K')."""
        if isinstance(self.source, list):
            return len(self.source)
        if isinstance(self.split, str):
            kind, _, num = self.split.partition(":")
            return int(num) if kind == "permuted" and num.isdigit() else None
        return len(self.split)


@dataclass
class RunConfig:
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
    steps: int | None = 300  # optimizer steps (lottery: per round); None = use epochs
    epochs: float | None = None  # alternative to steps, in passes over the task's training set
    save_every: int = 10  # write a node every k steps (the first and last step always)
    eval_every: int | None = None  # evaluate saved nodes every k steps (None = every saved node)
    seed: int = 0  # seeds init, batch order, memory choice: a run is reproducible from it
    sparsity: float = 0.9  # sparsify: target fraction p of zeros over prunable weights
    prune_scope: str = "global"  # sparsify: rank magnitudes over all prunable weights or per layer
    prunable: list[str] | None = None  # fnmatch patterns of prunable parameter names (None = Linear/Conv/attention weights)
    tolerance: float = 1e-3  # sparsify: stop when ||w - project(w)|| / ||w|| falls below this
    keep_zeros: bool | None = None  # re-zero a sparse start node's zeros after each step (None = if the start node has a mask)
    h_attack: str = "fgsm"  # undirected: perturbation for H: fgsm (eps*sign input-gradient) | noise (uniform l_inf)
    h_epsilon: float = 0.1  # undirected: l_inf size of that perturbation (digits pixels are scaled to [0, 1])
    eval_batch_size: int = 256  # evaluation only; no effect on the path
    probe_size: int = 32  # fixed examples for each edge's output_distance (odist to the parent, per example); 0 = skip
    # baseline settings (path/baselines.py, pruning.py, lora.py); stored with a run only when its op reads them
    ewc_lambda: float = 5000.0  # ewc: weight of (1/2)·Σ F_i (w_i - w*_i)^2 (paper: 5,000)
    fisher_samples: int = 500  # ewc: examples per earlier task for its diagonal Fisher (paper: 500)
    prune_rate: float = 0.2  # lottery: fraction of the remaining prunable weights removed per round (paper: 20 %)
    rewind_step: int = 0  # lottery: rewind survivors to the start node's ancestor at this step of its first run (0 = the initialisation)
    lora_r: int = 16  # lora: adapter rank (issue 5: 16; paper: 1-256)
    lora_alpha: float | None = None  # lora: scale numerator; None = 2·lora_r, as in the paper
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value"])  # lora: module names (suffixes) that get adapters
    lora_dropout: float = 0.0  # lora: dropout on the adapter input
    lora_train: list[str] = field(default_factory=lambda: ["classifier"])  # lora: modules trained in full beside the adapters (the head)

    def __post_init__(self) -> None:
        from fipgraph.path.objectives import OBJECTIVES
        from fipgraph.path.odist import ODISTS

        where = f"run {self.name!r}"
        _need(self.op in OBJECTIVES, f"{where}: unknown op {self.op!r}; choose one of {sorted(OBJECTIVES)}")
        _need(self.optimizer in OPTIMIZERS, f"{where}: unknown optimizer {self.optimizer!r}; choose one of {list(OPTIMIZERS)}")
        _need(self.odist in ODISTS, f"{where}: unknown odist {self.odist!r}; choose one of {sorted(ODISTS)}")
        _need(self.prune_scope in ("global", "layer"), f"{where}: prune_scope={self.prune_scope!r}; use 'global' or 'layer'")
        _need(self.h_attack in ("fgsm", "noise"), f"{where}: h_attack={self.h_attack!r}; use 'fgsm' or 'noise'")
        _need(0.0 <= self.sparsity < 1.0, f"{where}: sparsity={self.sparsity} is outside [0, 1); give the fraction of zeros, e.g. 0.9")
        _need(self.task >= 1, f"{where}: task={self.task}; tasks are numbered from 1")
        _need(self.lr > 0, f"{where}: lr={self.lr} must be > 0")
        _need(self.lr_schedule in SCHEDULES, f"{where}: unknown lr_schedule {self.lr_schedule!r}; choose one of {list(SCHEDULES)}")
        _need(0 <= self.lr_min <= self.lr, f"{where}: lr_min={self.lr_min} must be in [0, lr={self.lr}]")
        _need((self.lr_schedule == "cyclic") == (self.lr_cycle is not None),
              f"{where}: lr_cycle={self.lr_cycle} with lr_schedule={self.lr_schedule!r}; give lr_cycle (steps per cycle) exactly when the schedule is 'cyclic'")
        _need(self.lr_cycle is None or self.lr_cycle >= 1, f"{where}: lr_cycle={self.lr_cycle} must be >= 1")
        _need(self.lam >= 0, f"{where}: lambda (lam)={self.lam} must be >= 0")
        for key in ("batch_size", "memory_batch_size", "save_every", "eval_batch_size"):
            _need(getattr(self, key) >= 1, f"{where}: {key}={getattr(self, key)} must be >= 1")
        _need(self.probe_size >= 0, f"{where}: probe_size={self.probe_size} must be >= 0 (0 = no edge output_distance)")
        _need(self.eval_every is None or self.eval_every >= 1, f"{where}: eval_every={self.eval_every} must be >= 1")
        _need(self.h_epsilon > 0, f"{where}: h_epsilon={self.h_epsilon} must be > 0")
        _need((self.steps is None) != (self.epochs is None), f"{where}: give exactly one of steps={self.steps} and epochs={self.epochs}")
        _need(self.steps is None or self.steps >= 1, f"{where}: steps={self.steps} must be >= 1")
        _need(self.epochs is None or self.epochs > 0, f"{where}: epochs={self.epochs} must be > 0")
        objective = OBJECTIVES[self.op]
        if objective.uses_memory:
            _need(self.memory_size >= 1, f"{where}: memory_size={self.memory_size}: {self.op} needs a memory buffer; set memory_size >= 1 (paper: 500)")
        if self.op == "continual":
            _need(self.task >= 2, f"{where}: continual on task {self.task} has no earlier task to remember; train task 1 with op='finetune' first")
            _need(self.start is not None, f"{where}: continual needs a start network trained on the earlier tasks; set from = a run name or node id")
        objective.check(self)

    def to_dict(self) -> dict[str, Any]:
        from fipgraph.path.objectives import OBJECTIVES

        out = dataclasses.asdict(self)
        own = set(OBJECTIVES[self.op].options)
        for key in {k for cls in OBJECTIVES.values() for k in cls.options} - own:
            out.pop(key, None)  # another op's setting: not part of this run's identity
        if self.lr_schedule == "constant":  # the default: kept out so runs stored before schedules existed still resume
            for key in ("lr_schedule", "lr_min", "lr_cycle"):
                out.pop(key)
        out["from"] = out.pop("start")
        return out


@dataclass
class BuildConfig:
    name: str = "default"  # prefix of every run name in the store; --run NAME changes it
    data: DataConfig = field(default_factory=DataConfig)  # the task sequence
    model: dict[str, Any] | None = None  # fipgraph.models spec for runs that build a new network; must match a --from node's
    runs: list[RunConfig] = field(default_factory=list)  # executed in order; later runs may start from earlier ones
    eval_all_tasks: bool = False  # evaluate saved nodes on every task, not just those seen so far

    def __post_init__(self) -> None:
        _need(len(self.runs) >= 1, "the config has no [[runs]]; add at least one")
        seen: set[str] = set()
        for run in self.runs:
            _need(run.name not in seen, f"run name {run.name!r} is used twice; names must be unique")
            n = self.data.n_tasks
            _need(n is None or run.task <= n, f"run {run.name!r}: task={run.task} but the data has {n} tasks")
            if isinstance(run.start, str):
                _need(run.start in seen, f"run {run.name!r}: from={run.start!r} is not an earlier run; use one of {sorted(seen)} or a node id")
            seen.add(run.name)

    def run_name(self, run: RunConfig) -> str:
        return f"{self.name}/{run.name}"


def _set(tree: dict, dotted: str, value: Any) -> None:
    """Set ``tree[a][b]... = value`` for "a.b...."; inside [[runs]] a key is a run name or an index."""
    keys = dotted.split(".")
    node: Any = tree
    for k in keys[:-1]:
        if isinstance(node, list):
            match = [r for r in node if isinstance(r, dict) and r.get("name") == k]
            if not match and k.isdigit() and int(k) < len(node):
                match = [node[int(k)]]
            _need(bool(match), f"override {dotted!r}: no run {k!r}; use runs.<name or index>.<key>, "
                               f"names: {[r.get('name') for r in node if isinstance(r, dict)]}")
            node = match[0]
        elif isinstance(node, dict):
            node = node.setdefault(k, {})
        else:
            raise ConfigError(f"override {dotted!r}: {k!r} is inside a plain value, not a table")
    node[keys[-1]] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """key=value strings; values are TOML literals (1e-3, true, [1, 2]) or else plain strings."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        _need(bool(sep and key), f"override {pair!r} is not key=value; e.g. lr=0.01 or runs.task1.steps=50")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A bare run field (lr=0.01) applies to every run; dotted keys address one place."""
    raw = copy.deepcopy(raw)
    run_fields = {f.name for f in dataclasses.fields(RunConfig)} | {"from"}
    for key, value in overrides.items():
        if "." not in key and key in run_fields and key != "name":
            for run in raw.get("runs", []):
                run[key] = value
        else:
            _set(raw, key, value)
    return raw


def build_config(raw: dict[str, Any]) -> BuildConfig:
    """Validate a config dict (TOML layout); [defaults] fill every run's missing keys."""
    raw = copy.deepcopy(raw)
    known = {f.name for f in dataclasses.fields(BuildConfig)} | {"defaults"}
    unknown = set(raw) - known
    _need(not unknown, f"unknown top-level config keys {sorted(unknown)}; allowed: {sorted(known)}")
    defaults = raw.pop("defaults", {})
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    runs = []
    for i, run in enumerate(raw.pop("runs", [])):
        merged = {**defaults, **run}
        if "from" in merged:
            merged["start"] = merged.pop("from")
        if "lambda" in merged:
            merged["lam"] = merged.pop("lambda")
        bad = set(merged) - run_fields
        _need(not bad, f"runs[{i}]: unknown keys {sorted(bad)}; allowed: {sorted(run_fields - {'start'}) + ['from']}")
        _need("name" in merged and "op" in merged, f"runs[{i}] needs a name and an op")
        runs.append(RunConfig(**merged))
    try:
        data = DataConfig(**raw.pop("data", {}))
        return BuildConfig(data=data, runs=runs, **raw)
    except TypeError as exc:
        raise ConfigError(f"bad config: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> BuildConfig:
    """Read a TOML config (None = the embedded default) and apply key=value overrides."""
    if path is None:
        text = resources.files("fipgraph.path").joinpath("default.toml").read_text()
    else:
        p = Path(path)
        _need(p.is_file(), f"config file {str(p)!r} not found; give a TOML path or no argument for the default build")
        text = p.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path or 'default.toml'}: {exc}") from None
    return build_config(apply_overrides(raw, parse_overrides(overrides or [])))


def config_to_dict(config: BuildConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["runs"] = [r.to_dict() for r in config.runs]
    return out
