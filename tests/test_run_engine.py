"""The run engine (issue 9): config typing, op settings, resume identity, seeds, epochs, Ctrl-C in every
phase, devices and precision on the CPU. Small real builds on sklearn digits."""

from __future__ import annotations

import ast
import importlib
import math
import signal
import tomllib
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
ROOT = Path(__file__).parents[1]

import fipgraph  # noqa: E402
from fipgraph.cli import main  # noqa: E402
from fipgraph.data.seeds import derive_seed  # noqa: E402
from fipgraph.errors import ConfigError  # noqa: E402
from fipgraph.path import build, load_config  # noqa: E402
from fipgraph.path.config.schema import build_config  # noqa: E402
from fipgraph.path.engine import recipe as walk_mod  # noqa: E402
build_mod = importlib.import_module("fipgraph.path.build")  # the module (the package re-exports the function)
from fipgraph.path.config.schema import identity_diff  # noqa: E402
from fipgraph.path.ops import OBJECTIVES  # noqa: E402
from fipgraph.path.ops.sparsify import SparsifyConfig  # noqa: E402

SHORT = ["runs.task1.steps=20", "runs.continual.steps=20", "runs.finetune.steps=10", "save_every=10", "probe_size=8"]


def _weights(store_dir, node: int) -> dict:
    with fipgraph.open_store(store_dir, "r") as s:
        return s.state_dict(node)


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# -- config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, key, shown, expected", [
    ("lr=0.o1", "lr", "'0.o1'", "a number"),
    ("lr=true", "lr", "True", "a number"),
    ("steps=abc", "steps", "'abc'", "an integer"),
    ("runs.continual.memory_size=1.5", "memory_size", "1.5", "an integer"),
    ("runs.continual.prunable=\"fc*\"", "prunable", "'fc*'", "a list of strings"),
    ("data.seed=\"x\"", "seed", "'x'", "an integer"),
])
def test_bad_typed_override_names_key_value_and_type(override, key, shown, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert f"{key}={shown}" in msg and expected in msg and "e.g." in msg


def test_bad_typed_override_on_the_command_line_exits_2_without_a_traceback(tmp_path, capsys):
    assert main(["build", "--store", str(tmp_path / "s"), "--no-progress", "lr=0.o1"]) == 2
    err = capsys.readouterr().err
    assert "lr='0.o1'" in err and "expected a number" in err and "Traceback" not in err
    assert not (tmp_path / "s" / "build.log").exists()  # nothing ran


def test_each_op_owns_a_registered_config_dataclass():
    cfg = load_config(ROOT / "examples" / "sparsify.toml")
    sparse = next(r for r in cfg.runs if r.op == "sparsify")
    assert isinstance(sparse.options, SparsifyConfig) and OBJECTIVES["sparsify"].Config is SparsifyConfig
    assert not hasattr(sparse, "sparsity") and not hasattr(sparse, "h_epsilon")  # shared RunConfig has no op fields
    assert sparse.to_dict()["sparsity"] == sparse.options.sparsity  # stored flat, as before
    with pytest.raises(ConfigError, match=r"run 'task1': \['sparsity'\] are settings of other ops.*'finetune'"):
        load_config(None, ["runs.task1.sparsity=0.5"])
    with pytest.raises(ConfigError, match="no run has an op with that setting.*sparsify"):
        load_config(None, ["sparsity=0.5"])  # bare op setting: applies to the runs of ops that have it
    with pytest.raises(ConfigError, match=r"run 's': h_epsilon=0 must be > 0"):
        build_config({"runs": [{"name": "s", "op": "undirected", "h_epsilon": 0}]})
    both = load_config(ROOT / "examples" / "sparsify.toml", ["sparsity=0.5"])
    assert [r.options.sparsity for r in both.runs if r.op == "sparsify"] == [0.5]


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.toml")))
def test_every_example_config_still_loads(example):
    assert load_config(ROOT / "examples" / example).runs


def test_epochs_can_be_used_and_count_passes_over_the_task(tmp_path):
    cfg = load_config(None, ["runs.task1.epochs=0.5", "runs.continual.steps=2", "runs.finetune.steps=2", "save_every=100"])
    assert cfg.runs[0].steps is None and cfg.runs[0].epochs == 0.5
    assert load_config(None, ["epochs=1"]).runs[1].steps is None  # a bare override replaces every run's steps
    result = build(cfg, tmp_path, max_steps=None, progress=False)
    with fipgraph.open_store(tmp_path, "r") as s:
        last = int(s.sql("SELECT max(step) AS m FROM nodes WHERE run_id = 0")["m"][0])
    task = fipgraph.data.make_tasks("digits", split=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])[0]
    assert result.status == "finished" and last == math.ceil(0.5 * len(task.train_loader(32)))


def test_requires_python_agrees_with_tomllib():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"].replace(" ", "") == ">=3.11"  # tomllib is standard library from 3.11


def test_no_function_in_the_run_engine_is_over_60_lines():
    long = []
    for f in (ROOT / "fipgraph" / "path").glob("*.py"):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60:
                long.append(f"{f.name}:{n.name}")
    assert long == []


# -- resume identity and seeds --------------------------------------------------------------------
def test_resume_identity_compares_explicit_keys_with_defaults_for_missing_ones():
    cfg = load_config(None)
    run = cfg.runs[2]  # finetune
    resolved = build_mod.resolved_config(cfg, build_mod.Plan(run, "default/finetune", {"name": "mlp"}, "task1"), 4)
    stored = {**resolved, "run": dict(resolved["run"])}
    # a store written before this change: other ops' settings inside, no precision/device keys
    stored["run"].update(sparsity=0.9, prune_scope="global", tolerance=1e-3, h_attack="fgsm", h_epsilon=0.1)
    for key in ("precision", "device"):
        stored["run"].pop(key)
    assert identity_diff(stored, resolved, run) == []
    moved = {**stored, "run": {**stored["run"], "device": "cuda:3"}}  # a run may resume on another device
    assert identity_diff(moved, resolved, run) == []
    changed = {**stored, "run": {**stored["run"], "lr": 0.5, "precision": "bf16"}}
    assert identity_diff(changed, resolved, run) == ["run.lr", "run.precision"]


def test_sparsify_runs_stored_before_the_schedules_resume_under_the_old_behaviour():
    cfg = load_config(None, ['runs.continual.op="sparsify"', "runs.continual.steps=20"])
    run = cfg.runs[1]
    resolved = build_mod.resolved_config(cfg, build_mod.Plan(run, "default/continual", {"name": "mlp"}, "task1"), 4)
    stored = {**resolved, "run": {k: v for k, v in resolved["run"].items()
                                  if k not in ("sparsity_schedule", "lambda_schedule", "recovery_steps")}}
    assert identity_diff(stored, resolved, run) == ["run.sparsity_schedule", "run.lambda_schedule",
                                                    "run.recovery_steps"]  # new defaults: not the stored walk
    pinned = load_config(None, ['runs.continual.op="sparsify"', "runs.continual.steps=20",
                                'sparsity_schedule="constant"', 'lambda_schedule="constant"', "recovery_steps=0"])
    again = build_mod.resolved_config(pinned, build_mod.Plan(pinned.runs[1], "default/continual", {"name": "mlp"},
                                                              "task1"), 4)
    assert identity_diff(stored, again, pinned.runs[1]) == []


def test_derive_seed_keeps_the_formulas_stored_runs_were_built_with():
    assert derive_seed(3, "init") == 3 and derive_seed(3, "probe") == 3
    assert derive_seed(3, "memory", 2) == 3002 and derive_seed(3, "fisher", 1) == 3001
    assert derive_seed(3, "epoch", 4) == 3004 and derive_seed(3, "mask", 1) == 7
    assert derive_seed(3, "step", 5) == 3 * 1_000_003 + 5 == derive_seed(3, "shuffle", 5)
    assert derive_seed(3, "robustness", 5) == 8 and derive_seed(3, "permutation", 2) == 30_023
    with pytest.raises(ValueError, match="unknown seed purpose 'dropout'"):
        derive_seed(0, "dropout", 1)


# -- Ctrl-C in every phase ------------------------------------------------------------------------
def _sigint_on_call(monkeypatch, module, name, on_call: int):
    """Replace module.name by a wrapper that delivers a real SIGINT on call number ``on_call``."""
    real, calls = getattr(module, name), {"n": 0}

    def wrapper(*a, **k):
        calls["n"] += 1
        if calls["n"] == on_call:
            signal.raise_signal(signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapper)
    return real


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    result = build(load_config(None, SHORT), d, progress=False)
    return d, result


@pytest.mark.parametrize("module, name, on_call", [
    (build_mod, "build_model", 1),  # the build's checks load the model
    (walk_mod, "build_model", 1),  # the first run builds its network
    (walk_mod, "model_from_node", 1),  # the second run loads its start node
    (walk_mod, "evaluate_tasks", 2),  # an evaluation in the first run's loop
    (walk_mod, "evaluate_tasks", 3),  # the evaluation of the first run's last node
    (walk_mod.FrozenReference, "take", 1),  # the continual run's memory reference
])
def test_ctrl_c_in_any_phase_stops_cleanly_and_the_rerun_matches(tmp_path, monkeypatch, uninterrupted, module, name, on_call):
    _sigint_on_call(monkeypatch, module, name, on_call)
    first = build(load_config(None, SHORT), tmp_path, progress=False)
    assert first.status == "interrupted"
    assert not first.runs or first.runs[-1].stop_reason == "interrupt"
    monkeypatch.undo()
    second = build(load_config(None, SHORT), tmp_path, progress=False)
    full_dir, full = uninterrupted
    assert second.status == "finished"
    with fipgraph.open_store(tmp_path, "r") as s:
        assert s.sql("SELECT run_id, step FROM nodes GROUP BY run_id, step HAVING count(*) > 1").empty
        unevaluated = s.sql("SELECT n.node_id FROM nodes n JOIN runs r USING (run_id) WHERE n.step = "
                            "(SELECT max(step) FROM nodes m WHERE m.run_id = n.run_id) AND n.node_id NOT IN "
                            "(SELECT node_id FROM evals)")
        assert unevaluated.empty  # every run's last node has its evaluation, also when one was abandoned
    for a, b in zip(full.runs, second.runs):
        assert _same(_weights(full_dir, a.last_node), _weights(tmp_path, b.last_node)), a.name


def test_ctrl_c_in_the_final_save_of_sparsify_finishes_on_rerun(tmp_path, monkeypatch):
    overrides = ["runs.dense.steps=30", "runs.sparsify.steps=30", "runs.undirected.steps=4", "save_every=10"]
    cfg = str(ROOT / "examples" / "sparsify.toml")
    real = _sigint_on_call(monkeypatch, walk_mod, "evaluate_tasks", 8)  # dense: 4 evals, sparsify: 3 + final projection
    first = build(load_config(cfg, overrides), tmp_path, progress=False)
    assert first.status == "interrupted" and first.runs[-1].name == "sparse/sparsify"
    monkeypatch.setattr(walk_mod, "evaluate_tasks", real)
    second = build(load_config(cfg, overrides), tmp_path, progress=False)
    assert second.status == "finished"
    with fipgraph.open_store(tmp_path, "r") as s:
        final = s.sql("SELECT node_id, tags FROM nodes WHERE tags LIKE '%final_projection%'")
        assert len(final) == 1
        evals = s.sql("SELECT count(*) AS n FROM evals WHERE node_id = ?", [int(final["node_id"][0])])
        assert int(evals["n"][0]) > 0


# -- devices and precision on the CPU -------------------------------------------------------------
ALL_OPS = {
    "name": "ops", "device": "cpu", "data": {"split": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]},
    "model": {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [32], "n_classes": 10}},
    "defaults": {"steps": 6, "save_every": 3, "memory_size": 40, "memory_batch_size": 16, "probe_size": 8,
                 "device": "cpu"},
    "runs": [{"name": "task1", "op": "finetune", "steps": 30},
             {"name": "continual", "op": "continual", "from": "task1", "task": 2},
             {"name": "finetune", "op": "finetune", "from": "task1", "task": 2},
             {"name": "sparsify", "op": "sparsify", "from": "task1", "sparsity": 0.5},
             {"name": "undirected", "op": "undirected", "from": "task1", "h_attack": "noise"},
             {"name": "ewc", "op": "ewc", "from": "task1", "task": 2, "fisher_samples": 8},
             {"name": "replay", "op": "replay", "from": "task1", "task": 2},
             {"name": "oneshot", "op": "oneshot_prune", "from": "task1", "task": 2, "sparsity": 0.5},
             {"name": "lottery", "op": "lottery", "from": "task1", "sparsity": 0.36, "steps": 3}],
}


def test_every_op_runs_with_device_cpu_passed_explicitly(tmp_path):
    result = build(build_config(ALL_OPS), tmp_path, progress=False)
    assert result.status == "finished" and len(result.runs) == len(ALL_OPS["runs"])
    with fipgraph.open_store(tmp_path, "r") as s:
        configs = {r["name"]: s.find_run(f"ops/{r['name']}")["config"]["run"] for r in ALL_OPS["runs"]}
        h = s.sql("SELECT count(*) AS n FROM evals WHERE metric = 'H'")
    assert all(c["device"] == "cpu" and c["precision"] == "fp32" for c in configs.values())
    assert int(h["n"][0]) > 0  # undirected's own per-node metric, from its objective
    assert "device cpu (asked: cpu)" in (tmp_path / "build.log").read_text()


def test_auto_device_is_logged(tmp_path):
    build(load_config(None, SHORT[:1] + ["runs.continual.steps=1", "runs.finetune.steps=1"]), tmp_path, progress=False)
    picked = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert "(asked: auto)" in (tmp_path / "build.log").read_text() and f"device {picked}" in (tmp_path / "build.log").read_text()


def test_bf16_build_on_cpu_autocasts_and_stores_fp32_weights(tmp_path, uninterrupted):
    result = build(load_config(None, SHORT + ["precision=\"bf16\"", "device=\"cpu\""]), tmp_path, progress=False)
    full_dir, full = uninterrupted
    assert result.status == "finished"
    bf16 = _weights(tmp_path, result.runs[0].last_node)
    fp32 = _weights(full_dir, full.runs[0].last_node)
    assert all(v.dtype == torch.float32 for v in bf16.values())  # master weights stay fp32
    assert not _same(bf16, fp32)  # the steps really ran in bf16
    diff = max(float((bf16[k] - fp32[k]).abs().max()) for k in bf16)
    assert diff < 0.05  # ... and stay close to the fp32 path over 20 steps
    acc = build_mod.last_accuracies
    with fipgraph.open_store(tmp_path, "r") as s:
        assert acc(s, result.runs[0].last_node)["task1"] > 0.6


@pytest.mark.parametrize("flags, message", [
    (["--device", "cuda:7"], "cuda:7"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--precision", "fp16", "--device", "cpu"], "fp16"),
])
def test_bad_device_or_precision_fails_before_the_first_step(tmp_path, capsys, flags, message):
    if "cuda" in flags and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert main(["build", "--store", str(tmp_path / "s"), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if (tmp_path / "s" / "fipgraph.json").exists():  # a misspelt device fails even before the store opens
        with fipgraph.open_store(tmp_path / "s", "r") as s:
            assert int(s.sql("SELECT count(*) AS n FROM nodes")["n"][0]) == 0


def test_device_flag_reaches_every_run(tmp_path):
    assert main(["build", "--store", str(tmp_path), "--no-progress", "--device", "cpu", "--precision", "bf16",
                 "runs.task1.steps=2", "runs.continual.steps=2", "runs.finetune.steps=2"]) == 0
    with fipgraph.open_store(tmp_path, "r") as s:
        runs = [s.find_run(f"default/{n}")["config"]["run"] for n in ("task1", "continual", "finetune")]
    assert [(r["device"], r["precision"]) for r in runs] == [("cpu", "bf16")] * 3
