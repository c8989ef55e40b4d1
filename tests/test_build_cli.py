"""`fipgraph build` through fipgraph.cli.main: the default demo, resume, Ctrl-C, bad configs."""

from __future__ import annotations

from pathlib import Path

import os
import signal

import pytest
import torch

torch.set_num_threads(1)
EXAMPLES = str(Path(__file__).parents[1] / "examples")

import fipgraph  # noqa: E402
from fipgraph.cli import main  # noqa: E402
from fipgraph.models import build_model  # noqa: E402
from fipgraph.path.engine import recipe as walk_mod  # noqa: E402


@pytest.fixture(scope="module")
def default_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("default") / "store"
    assert main(["build", "--store", str(d), "--no-progress"]) == 0
    return d


def _acc(store, run: str) -> dict[str, float]:
    df = store.sql("SELECT e.dataset, e.value FROM evals e JOIN nodes n USING (node_id) JOIN runs r USING (run_id) "
                   "WHERE r.name = ? AND e.metric = 'accuracy' AND n.step = (SELECT max(step) FROM nodes m "
                   "WHERE m.run_id = n.run_id)", [run])
    return dict(zip(df["dataset"], df["value"]))


def test_default_build_continual_keeps_task1_finetune_forgets(default_store, capsys):
    with fipgraph.open_store(default_store, "r") as s:
        start, fip, ft = _acc(s, "default/task1"), _acc(s, "default/continual"), _acc(s, "default/finetune")
        runs = s.sql("SELECT name, op, status, config FROM runs ORDER BY run_id")
        parents = s.sql("SELECT r.name, min(n.step) AS s0, arg_min(n.parent_id, n.step) AS p FROM nodes n "
                        "JOIN runs r USING (run_id) GROUP BY r.name").set_index("name")
        task1_last = int(s.sql("SELECT max(node_id) AS n FROM nodes WHERE run_id = 0")["n"][0])
    assert start["task1"] > 0.95
    assert fip["task1"] >= start["task1"] - 0.03 and fip["task2"] >= 0.90  # FIP: learns task 2, keeps task 1
    assert ft["task1"] < 0.5 and ft["task2"] >= 0.90  # plain fine-tuning forgets
    assert list(runs["op"]) == ["finetune", "continual", "finetune"] and set(runs["status"]) == {"finished"}
    assert '"start_node": %d' % task1_last in runs["config"][1]  # the resolved config is stored
    assert parents.loc["default/continual", "p"] == parents.loc["default/finetune", "p"] == task1_last
    assert (default_store / "build.log").read_text().count("finished") >= 3


def test_rerun_of_finished_build_adds_nothing(default_store, capsys):
    with fipgraph.open_store(default_store, "r") as s:
        before = int(s.sql("SELECT count(*) AS n FROM nodes")["n"][0])
    assert main(["build", "--store", str(default_store), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "default/continual" in out and "task2" in out and "%" in out  # the accuracy table again
    with fipgraph.open_store(default_store, "r") as s:
        assert int(s.sql("SELECT count(*) AS n FROM nodes")["n"][0]) == before


def test_rerun_with_changed_settings_is_refused_before_any_step(default_store, capsys):
    with fipgraph.open_store(default_store, "r") as s:
        before = int(s.sql("SELECT count(*) AS n FROM nodes")["n"][0])
    assert main(["build", "--store", str(default_store), "--no-progress", "runs.finetune.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "default/finetune" in err and "different config" in err and "--run NEWNAME" in err
    with fipgraph.open_store(default_store, "r") as s:
        assert int(s.sql("SELECT count(*) AS n FROM nodes")["n"][0]) == before


@pytest.mark.parametrize("how, saved", [("signal", 12), ("raise", 10)])
def test_ctrl_c_flushes_marks_interrupted_and_resumes(tmp_path, monkeypatch, capsys, how, saved):
    """A real SIGINT stops between steps and saves that step; a raised KeyboardInterrupt (mid-step)
    keeps only the last saved node. Either way the rerun continues with no step stored twice."""
    d = str(tmp_path / "s")
    args = ["build", "--store", d, "--no-progress", "runs.task1.steps=30", "runs.continual.steps=30",
            "runs.finetune.steps=10", "save_every=5"]
    real, calls = walk_mod.fip_step, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 42:  # step 12 of the continual run
            if how == "raise":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(walk_mod, "fip_step", flaky)
    assert main(args) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    with fipgraph.open_store(d, "r") as s:
        assert list(s.sql("SELECT status FROM runs ORDER BY run_id")["status"]) == ["finished", "interrupted"]
        assert int(s.sql("SELECT max(step) AS m FROM nodes WHERE run_id = 1")["m"][0]) == saved
    monkeypatch.setattr(walk_mod, "fip_step", real)
    assert main(args) == 0
    with fipgraph.open_store(d, "r") as s:
        dup = s.sql("SELECT run_id, step FROM nodes GROUP BY run_id, step HAVING count(*) > 1")
        steps = list(s.sql("SELECT step FROM nodes WHERE run_id = 1 ORDER BY step")["step"])
        assert dup.empty and steps == sorted({5, 10, 15, 20, 25, 30, saved})
        assert set(s.sql("SELECT status FROM runs")["status"]) == {"finished"}


@pytest.mark.parametrize("extra, message", [
    (["runs.continual.op=\"prune\""], "unknown op 'prune'"),
    (["model.name=\"transformer9\""], "unknown model 'transformer9'"),
    (["runs.continual.op=\"sparsify\"", "runs.continual.sparsity=1.5"], r"sparsity=1.5 is outside \[0, 1\)"),
    (["runs.continual.memory_size=0"], "memory_size=0"),
    (["model.kwargs.n_classes=5"], "up to 9.*5 outputs.*n_classes=10"),
    (["data.source=\"nowhere\""], "unknown data source 'nowhere'"),
    (["steps=0"], "steps=0 must be >= 1"),
    (["store.encoding=\"zip\""], r"\[store\] encoding='zip'; choose one of"),
    (["store.tolerance=-1"], r"\[store\] tolerance=-1 must be a positive number"),
    (["store.compress=true"], r"\[store\] has unknown keys \['compress'\]"),
])
def test_bad_configs_exit_2_before_any_step(tmp_path, capsys, extra, message):
    d = tmp_path / "s"
    assert main(["build", "--store", str(d), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    import re
    assert re.search(message, err), err
    if (d / "metrics.duckdb").exists():
        with fipgraph.open_store(d, "r") as s:
            assert int(s.sql("SELECT count(*) AS n FROM nodes")["n"][0]) == 0


def test_from_node_of_another_architecture_is_refused(tmp_path, capsys):
    d = tmp_path / "s"
    with fipgraph.open_store(d, "a") as s:
        nid = s.append(build_model({"name": "cnn5", "kwargs": {"n_classes": 10}}))
    assert main(["build", "--store", str(d), "--no-progress", "--from", str(nid)]) == 2
    err = capsys.readouterr().err
    assert f"node {nid}" in err and "cnn5" in err and "mlp" in err
    with fipgraph.open_store(d, "r") as s:
        assert int(s.sql("SELECT count(*) AS n FROM nodes")["n"][0]) == 1


def test_missing_config_file(tmp_path, capsys):
    assert main(["build", str(tmp_path / "nope.toml"), "--store", str(tmp_path / "s")]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_run_name_and_max_hours(tmp_path, capsys):
    d = str(tmp_path / "s")
    assert main(["build", "--store", d, "--no-progress", "--run", "night", "--max-hours", "1e-9"]) == 0
    assert "rerun the same command to resume" in capsys.readouterr().err
    with fipgraph.open_store(d, "r") as s:
        runs = s.sql("SELECT name, status FROM runs")
        steps = list(s.sql("SELECT step FROM nodes")["step"])
    assert list(runs["name"]) == ["night/task1"] and list(runs["status"]) == ["interrupted"]
    assert steps == [0]  # the deadline had passed before the first step; the start network is stored


def test_per_task_head_slices_logits(tmp_path):
    d = str(tmp_path / "s")
    args = ["build", "--store", d, "--no-progress", "data.head=\"per_task\"", "runs.task1.steps=150",
            "runs.continual.steps=150", "runs.finetune.steps=150", "save_every=50"]
    assert main(args) == 0
    with fipgraph.open_store(d, "r") as s:
        ft = _acc(s, "default/finetune")
    # task 2's labels are 0..4 on output units 5..9; task 1 is scored on units 0..4 only, so
    # fine-tuning task 2 cannot steal task 1's argmax the way it does with one shared head
    assert ft["task2"] > 0.9 and ft["task1"] > 0.3


def test_config_file_with_overrides(tmp_path, capsys):
    d = str(tmp_path / "s")
    # recovery_steps=0: sparsify ends on its projection (at its cap here, step 20) instead of recovering after it
    assert main(["build", "--store", d, "--no-progress", EXAMPLES + "/sparsify.toml", "steps=20", "save_every=10",
                 "recovery_steps=0"]) == 0
    out = capsys.readouterr().out
    assert "sparse/sparsify" in out and "sparse/undirected" in out
    with fipgraph.open_store(d, "r") as s:
        steps = s.sql("SELECT r.name, max(n.step) AS m FROM nodes n JOIN runs r USING (run_id) GROUP BY r.name")
    assert dict(zip(steps["name"], steps["m"])) == {"sparse/dense": 20, "sparse/sparsify": 20, "sparse/undirected": 20}
    assert main(["build", EXAMPLES + "/sparsify.toml", EXAMPLES + "/digits_pruning.toml"]) == 2
    assert "one config file" in capsys.readouterr().err


def test_store_table_writes_bounded_rows_and_keeps_the_sparse_mask(tmp_path, capsys):
    """[store] encoding = "bounded": every row after the keyframe is lossy within its bound, the sparse
    node reads back with exactly its mask, and the walk from it (keep_zeros) keeps those zeros."""
    d = str(tmp_path / "s")
    args = ["build", "--store", d, "--no-progress", EXAMPLES + "/sparsify.toml", "steps=20", "save_every=5",
            "recovery_steps=5", "store.encoding=\"bounded\"", "store.tolerance=0.2", "store.keyframe_every=100",
            "runs.undirected.from=\"sparsify\""]
    assert main(args) == 0, capsys.readouterr().err
    with fipgraph.open_store(d, "r") as s:
        rows = s.sql("SELECT encoding, max_error_ratio FROM storage ORDER BY node_id")
        assert rows["encoding"][0] == "key" and set(rows["encoding"][1:]) <= {"bnd", "bndp"}
        assert (rows["max_error_ratio"][1:] <= 1).all() and (rows["max_error_ratio"][1:] > 0).any()
        last = s.sql("SELECT max(n.node_id) AS n FROM nodes n JOIN runs r USING (run_id) WHERE r.name = ?", ["sparse/sparsify"])
        end = s.sql("SELECT max(n.node_id) AS n FROM nodes n JOIN runs r USING (run_id) WHERE r.name = ?", ["sparse/undirected"])
        sparse, walked = s.state_dict(int(last["n"][0])), s.state_dict(int(end["n"][0]))
        stored = s.sql("SELECT sparsity FROM nodes WHERE node_id = ?", [int(last["n"][0])])["sparsity"][0]
    zeros = {k: v == 0 for k, v in sparse.items() if v.dim() == 2}
    frac = sum(int(z.sum()) for z in zeros.values()) / sum(z.numel() for z in zeros.values())
    assert frac > 0.3 and abs(frac - stored) < 0.05  # the zeros survived the lossy encoding
    assert all(bool((walked[k][z] == 0).all()) for k, z in zeros.items())  # and the walk from it kept them


def test_zeros_stay_zero_through_a_chain_of_walks_from_a_sparse_node(tmp_path, capsys):
    """sparsify -> walk -> walk: the second walk starts from the first walk's node, which is not a sparsify
    node; the first walk's nodes carry the sparse_mask tag, so the second keeps the same zeros (it lost them)."""
    text = open(EXAMPLES + "/sparsify.toml").read().split("[[runs]]")[:3]  # dense, sparsify
    chain = ('[[runs]]\nname = "walk1"\nop = "undirected"\nfrom = "sparsify"\ntask = 1\nlr = 1e-2\nsteps = 10\n\n'
             '[[runs]]\nname = "walk2"\nop = "undirected"\nfrom = "walk1"\ntask = 1\nlr = 1e-2\nsteps = 10\n')
    (tmp_path / "chain.toml").write_text("[[runs]]".join(text) + chain)
    d = str(tmp_path / "s")
    args = ["build", "--store", d, "--no-progress", str(tmp_path / "chain.toml"), "runs.dense.steps=100",
            "runs.sparsify.steps=20", "recovery_steps=0", "save_every=5"]
    assert main(args) == 0, capsys.readouterr().err
    with fipgraph.open_store(d, "r") as s:
        last = s.sql("SELECT r.name, max(n.node_id) AS n FROM nodes n JOIN runs r USING (run_id) GROUP BY r.name")
        last = dict(zip(last["name"], last["n"]))
        sparse, end = s.state_dict(int(last["sparse/sparsify"])), s.state_dict(int(last["sparse/walk2"]))
        tag = s.node_tags(int(last["sparse/walk1"]))["sparse_mask"]
    zeros = {k: v == 0 for k, v in sparse.items() if v.dim() == 2}
    assert sum(int(z.sum()) for z in zeros.values()) / sum(z.numel() for z in zeros.values()) > 0.85
    assert tag["carried"] and abs(tag["sparsity"] - 0.9) < 0.01 and sorted(tag["params"]) == sorted(zeros)
    assert all(bool((end[k][z] == 0).all()) for k, z in zeros.items())  # walk2 kept sparsify's zeros
    assert any(not torch.equal(end[k], sparse[k]) for k in zeros)  # and it did move


def test_store_table_is_refused_by_the_ray_executor(tmp_path, capsys):
    """Ray's writer actor opens the store with the defaults: a [store] table there is an error, not lossless rows."""
    d = tmp_path / "s"
    assert main(["build", "--store", str(d), "--no-progress", "--executor", "ray", "store.encoding=\"bounded\""]) == 2
    err = capsys.readouterr().err
    assert "not supported with --executor ray" in err and "Traceback" not in err
    assert not (d / "weights.zarr").exists()
