"""Sweeps: one run per combination of the values that reach it, named after them; with and without Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fipgraph
from fipgraph.errors import ConfigError
from fipgraph.path import load_config
from fipgraph.path.config.sweep import parse_sweep

ROOT = Path(__file__).resolve().parents[1]


def _runs(config) -> list[tuple]:
    return [(r.name, r.start, r.seed, r.lam) for r in config.runs]


def test_expansion_names_values_and_lineage():
    config = load_config(None, [], ["seed=0,1", "runs.continual.lam=0.1,1"])
    assert _runs(config) == [
        ("task1[seed=0]", None, 0, 1.0), ("task1[seed=1]", None, 1, 1.0),
        ("continual[seed=0,lam=0.1]", "task1[seed=0]", 0, 0.1), ("continual[seed=0,lam=1]", "task1[seed=0]", 0, 1),
        ("continual[seed=1,lam=0.1]", "task1[seed=1]", 1, 0.1), ("continual[seed=1,lam=1]", "task1[seed=1]", 1, 1),
        ("finetune[seed=0]", "task1[seed=0]", 0, 1.0), ("finetune[seed=1]", "task1[seed=1]", 1, 1.0)]
    # a sweep over a later run's setting shares the one earlier run it starts from
    only = load_config(None, [], ["runs.continual.lam=0.1,1"])
    assert _runs(only) == [("task1", None, 0, 1.0), ("continual[lam=0.1]", "task1", 0, 0.1),
                           ("continual[lam=1]", "task1", 0, 1), ("finetune", "task1", 0, 1.0)]


def test_op_option_reaches_only_that_op_and_table_form(tmp_path):
    config = load_config(ROOT / "examples" / "sparsify.toml", [], ["sparsity=0.5,0.9"])
    names = [r.name for r in config.runs]
    assert names == ["dense", "sparsify[sparsity=0.5]", "sparsify[sparsity=0.9]", "undirected"]
    assert [r.options.sparsity for r in config.runs if r.op == "sparsify"] == [0.5, 0.9]
    text = (ROOT / "examples" / "sparsify.toml").read_text() + '\n[sweep]\nseed = [3, 4]\n'
    (tmp_path / "c.toml").write_text(text)
    table = load_config(tmp_path / "c.toml")
    assert [r.name for r in table.runs][:2] == ["dense[seed=3]", "dense[seed=4]"] and len(table.runs) == 6
    # --sweep replaces the table's values for the same key
    assert [r.seed for r in load_config(tmp_path / "c.toml", [], ["seed=7"]).runs] == [7, 7, 7]


def test_run_of_another_op_follows_its_swept_start(tmp_path):
    """A finetune run from a swept sparsify run is copied per value but keeps its own settings: the
    sparsity it never had must not be applied to it (the lm_submanifold config's Co-then-CL runs)."""
    text = (ROOT / "examples" / "sparsify.toml").read_text()
    text += '\n[[runs]]\nname = "tuned"\nop = "finetune"\nfrom = "sparsify"\nsteps = 3\n'
    (tmp_path / "c.toml").write_text(text)
    config = load_config(tmp_path / "c.toml", [], ["sparsity=0.5,0.9"])
    tuned = [r for r in config.runs if r.op == "finetune" and r.start]
    assert [(r.name, r.start, r.steps) for r in tuned] == [
        ("tuned[sparsity=0.5]", "sparsify[sparsity=0.5]", 3), ("tuned[sparsity=0.9]", "sparsify[sparsity=0.9]", 3)]


def test_parse_values_and_bad_sweeps():
    assert parse_sweep("hidden=[32, 64],[128]") == ("hidden", [[32, 64], [128]])
    assert parse_sweep("optimizer=adam,sgd") == ("optimizer", ["adam", "sgd"])
    for bad, words in [("seed", "key=value1"), ("seed=0,,1", "empty value"), ("seed=1,1", "given twice"),
                       ("data.seed=0,1", "build-wide"), ("runs.nosuch.lr=0.1,1", "no run has this setting")]:
        with pytest.raises(ConfigError, match=words):
            load_config(None, [], [bad])


def test_sweep_build_without_ray(tmp_path):
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "fipgraph", "build", "--store", str(store), "--no-progress", "--sweep", "seed=0,1",
           "runs.task1.steps=3", "runs.continual.steps=2", "runs.finetune.steps=2", "memory_size=20"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    with fipgraph.open_store(store, mode="r") as s:
        runs = s.sql("SELECT name FROM runs ORDER BY run_id")["name"].tolist()
        parent = s.sql("SELECT r.name FROM nodes n JOIN nodes p ON p.node_id = n.parent_id JOIN runs r ON r.run_id = p.run_id "
                       "JOIN runs c ON c.run_id = n.run_id WHERE c.name = 'default/continual[seed=1]' ORDER BY n.step LIMIT 1")
    assert runs == [f"default/{r}[seed={s}]" for r in ("task1", "continual", "finetune") for s in (0, 1)]
    assert parent["name"].tolist() == ["default/task1[seed=1]"]
