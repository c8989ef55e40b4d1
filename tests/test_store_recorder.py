"""store.recorder: any training loop as an ordinary run (chained nodes, evals, status, resume, bad input)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits

import fipgraph
from fipgraph.errors import FipgraphError, NodeNotFoundError, ReadOnlyStoreError
from fipgraph.models import model_from_node
from tests.owncode.models import TwoLayer


def _digits(n=256):
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:n] / 16.0, dtype=torch.float32), torch.tensor(y[:n])


def _train(model, steps, lr=0.5):
    x, y = _digits()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return loss.item()


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_plain_loop_is_recorded_as_an_ordinary_run(tmp_path):
    torch.manual_seed(0)
    model, copies, losses = TwoLayer(hidden=8), [], []
    with fipgraph.open_store(tmp_path / "s") as store:
        with store.recorder(run="plain", config={"lr": 0.5}, model_kwargs={"hidden": 8}) as rec:
            for step in (5, 10, 15):
                losses.append(_train(model, 5))
                rec.save(model, step=step, metrics={"loss": losses[-1]})
                copies.append(_snapshot(model))  # the next steps change the weights while the writer works
            rec.add_evals({"test": {"accuracy": 0.75}})
        nodes = store.sql("SELECT node_id, parent_id, step, op FROM nodes ORDER BY node_id")
        run = store.find_run("plain")
        evals = store.sql("SELECT node_id, dataset, metric, value FROM evals ORDER BY node_id, metric")
        states = [store.state_dict(n) for n in rec.nodes]
        rebuilt = model_from_node(store, rec.nodes[-1])
    assert nodes["step"].tolist() == [5, 10, 15] and set(nodes["op"]) == {"record"}
    assert nodes["parent_id"].tolist()[1:] == nodes["node_id"].tolist()[:-1]  # a chain
    assert run["status"] == "finished" and run["config"] == {"lr": 0.5} and run["finished_at"] is not None
    assert evals[evals.metric == "loss"]["value"].tolist() == pytest.approx(losses)
    assert evals[evals.metric == "accuracy"][["node_id", "dataset"]].values.tolist() == [[rec.nodes[-1], "test"]]
    for state, copy in zip(states, copies):
        assert all(torch.equal(state[k], v) for k, v in copy.items())
    assert type(rebuilt) is TwoLayer and torch.equal(rebuilt.head.weight, model.head.weight)
    assert losses[-1] < losses[0]  # it did train: the nodes differ


def test_an_exception_marks_the_run_failed_keeps_its_nodes_and_is_reraised(tmp_path):
    model = TwoLayer(hidden=4)
    with fipgraph.open_store(tmp_path / "s") as store:
        with pytest.raises(RuntimeError, match="diverged"):
            with store.recorder(run="boom") as rec:
                rec.save(model)
                rec.save(model)
                raise RuntimeError("loss diverged at step 2")
        run = store.find_run("boom")
        steps = store.sql("SELECT step FROM nodes ORDER BY node_id")["step"].tolist()
    assert run["status"] == "failed" and run["error"] == "RuntimeError: loss diverged at step 2"
    assert steps == [0, 1]  # default steps count from 0


def test_a_run_whose_block_never_ended_is_not_left_running(tmp_path):
    """A framework without an exception hook (the HF Trainer) enters a recorder and never exits it on a crash."""
    model = TwoLayer(hidden=4)
    store = fipgraph.open_store(tmp_path / "s")
    rec = store.recorder(run="open").__enter__()
    rec.save(model)
    store.close()  # the script ended (or the exit hook closed the store) with the run still recording
    with fipgraph.open_store(tmp_path / "s") as store:
        assert store.find_run("open")["status"] == "interrupted"
        with store.recorder(run="open", resume=True) as again:  # continues its chain
            assert again.save(model) == 1 and again.last_step == 1
        with pytest.raises(ValueError, match="bad batch"):
            with store:  # the store's own with-block saw the error: that is why the run ended
                store.recorder(run="raised").__enter__().save(model)
                raise ValueError("bad batch")
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:
        assert store.find_run("open")["status"] == "finished"
        raised = store.find_run("raised")
        assert raised["status"] == "failed" and raised["error"] == "ValueError: bad batch"


def test_a_finished_name_is_refused_unless_resumed_which_continues_its_chain(tmp_path):
    model = TwoLayer(hidden=4)
    with fipgraph.open_store(tmp_path / "s") as store:
        with store.recorder(run="r") as rec:
            first = rec.save(model, step=10)
        with pytest.raises(FipgraphError, match="run named 'r' already exists.*status finished.*resume=True"):
            store.recorder(run="r")
        assert len(store) == 1 and len(store.sql("SELECT * FROM runs")) == 1  # nothing written
        with store.recorder(run="r", resume=True) as rec:
            second = rec.save(model)
        row = store.sql("SELECT parent_id, step, run_id FROM nodes WHERE node_id = ?", [second])
        assert (int(row["parent_id"][0]), int(row["step"][0])) == (first, 11)
        assert store.find_run("r")["status"] == "finished" and len(store.sql("SELECT * FROM runs")) == 1


def test_parent_starts_the_chain_at_any_stored_node(tmp_path):
    model = TwoLayer(hidden=4)
    with fipgraph.open_store(tmp_path / "s") as store:
        base = store.append(model, step=0)
        with store.recorder(run="child", parent=base) as rec:
            node = rec.save(model, step=1)
        assert int(store.node(node)["parent_id"]) == base
        with pytest.raises(FipgraphError, match="parent=.*only applies to a new run's first node"):
            store.recorder(run="child", parent=base, resume=True)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"run": ""}, FipgraphError, "non-empty name"),
    ({"run": "x", "config": [1, 2]}, FipgraphError, "config must be a dict"),
    ({"run": "x", "parent": 99}, NodeNotFoundError, "no node 99"),
    ({"run": "x", "model_kwargs": {"act": torch.nn.ReLU()}}, FipgraphError, r"model_kwargs\['act'\].*JSON"),
])
def test_bad_arguments_fail_before_anything_is_written(tmp_path, kwargs, error, match):
    with fipgraph.open_store(tmp_path / "s") as store:
        with pytest.raises(error, match=match):
            store.recorder(**kwargs)
        assert store.sql("SELECT count(*) AS n FROM runs")["n"][0] == 0


def test_bad_saves_name_the_value_and_the_fix(tmp_path):
    model = TwoLayer(hidden=4)
    with fipgraph.open_store(tmp_path / "s") as store:
        rec = store.recorder(run="x")
        with pytest.raises(FipgraphError, match="outside its with-block"):
            rec.save(model)
        with rec:
            with pytest.raises(FipgraphError, match="step must be an integer >= 0.*got -1"):
                rec.save(model, step=-1)
            with pytest.raises(FipgraphError, match="no node yet"):
                rec.add_evals({"loss": 1.0})
        assert len(store) == 0
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        fipgraph.open_store(tmp_path / "s", "r").recorder(run="y")


def test_a_killed_training_loses_no_committed_node_and_resumes(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, torch, fipgraph
        from tests.owncode.models import TwoLayer
        store = fipgraph.open_store({str(tmp_path / "s")!r})
        rec = store.recorder(run="killed").__enter__()
        for step in range(3):
            rec.save(TwoLayer(hidden=4), step=step)
        store.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    root = str(Path(__file__).resolve().parent.parent)  # where `tests.owncode` imports from
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode == -9
    with fipgraph.open_store(tmp_path / "s") as store:
        assert store.find_run("killed")["status"] == "running"
        with store.recorder(run="killed", resume=True) as rec:
            node = rec.save(TwoLayer(hidden=4))
        assert store.sql("SELECT step FROM nodes ORDER BY node_id")["step"].tolist() == [0, 1, 2, 3]
        assert int(store.node(node)["parent_id"]) == 2
