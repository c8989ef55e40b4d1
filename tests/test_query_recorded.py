"""Queries default to the [data] the chosen nodes' runs were built with; --data/--split/--seed override it."""

from __future__ import annotations

import pytest
import torch

import fipgraph
from fipgraph.cli import main
from fipgraph.errors import ConfigError
from fipgraph.query import evaluate, spectrum
from fipgraph.query.recorded import data_settings, recorded_data

torch.set_num_threads(1)
TINY = ["runs.task1.steps=10", "runs.continual.steps=5", "runs.finetune.steps=10", "save_every=5", "lr=0.05",
        "--no-progress"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The default build (fipgraph build, no config), and beside it a build on another data split seed."""
    path = tmp_path_factory.mktemp("recorded") / "store"
    assert main(["build", "--store", str(path), *TINY]) == 0
    assert main(["build", "--store", str(path), "--run", "other", "data.seed=1", *TINY]) == 0
    return str(path)


def _column(out: str, i: int = 1) -> list[float]:
    """Column i of the node rows `fipgraph evaluate` printed."""
    return [float(r.split()[i]) for r in out.splitlines() if r.split() and r.split()[0].isdigit()]


def _nodes(st, build: str) -> list[int]:
    return st.sql("select node_id from nodes join runs using (run_id) where name like ? order by node_id",
                  [f"{build}/%"])["node_id"].tolist()


def _stored(st, nodes: list[int], task: str, metric: str = "accuracy") -> tuple[list[float], list[int]]:
    df = st.sql(f"select node_id, value from evals where dataset = '{task}' and metric = '{metric}' and node_id in "
                f"({','.join(map(str, nodes))}) order by node_id")
    return df["value"].tolist(), df["node_id"].tolist()


def test_evaluate_task2_scores_the_builds_own_task2(store, capsys):
    with fipgraph.open_store(store, "r") as st:
        default = _nodes(st, "default")
        built, built_nodes = _stored(st, default, "task2")  # what the build recorded on its task 2
        loss, _ = _stored(st, default, "task2", "loss")
    nodes = ",".join(map(str, built_nodes))
    assert main(["evaluate", "--store", store, "--nodes", nodes, "--task", "task2", "--recompute", "--no-record",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert _column(out) == pytest.approx(built, abs=1e-6) and max(built) > 0.1
    assert _column(out, 2) == pytest.approx(loss, rel=1e-5)
    # the same source named again keeps the recorded split; another seed is another test split
    assert main(["evaluate", "--store", store, "--nodes", nodes, "--data", "digits", "--seed", "1", "--task", "task2",
                 "--recompute", "--no-record", "--device", "cpu"]) == 0
    assert _column(capsys.readouterr().out, 2) != pytest.approx(loss, rel=1e-3)  # (digits' split is stratified:
    # its accuracies can agree)


def test_nodes_of_builds_on_different_data_ask_for_data(store, capsys):
    assert main(["evaluate", "--store", store, "--task", "task1", "--no-record", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "different data" in err and "default/" in err and "other/" in err and "--data" in err
    split = "[[0,1,2,3,4],[5,6,7,8,9]]"
    assert main(["evaluate", "--store", store, "--data", "digits", "--split", split, "--task", "task1",
                 "--max-batches", "1", "--no-record", "--device", "cpu"]) == 0


def test_python_queries_take_the_same_default(store):
    with fipgraph.open_store(store, "r") as st:
        default = _nodes(st, "default")
        assert recorded_data(st, default) == {"source": "digits", "split": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]],
                                              "seed": 0, "head": "single", "kwargs": {}}
        assert data_settings(st, default, source="mnist")["split"] is None  # another source: its own split
        with pytest.raises(ConfigError, match="different data"):
            recorded_data(st, None)
        built, nodes = _stored(st, default, "task1")
        df = evaluate(st, nodes, recompute=True, record=False, progress=False, device="cpu")
        assert list(df.columns) == ["task1_accuracy", "task1_loss", "task2_accuracy", "task2_loss"]
        assert df["task1_accuracy"].tolist() == pytest.approx(built, abs=1e-6)
        one = evaluate(st, nodes, "task1", recompute=True, record=False, progress=False, device="cpu")
        assert one["accuracy"].tolist() == pytest.approx(built, abs=1e-6)
        assert spectrum(st, nodes[-1], k=2, n_examples=8, record=False, device="cpu")["dataset"] == "task1"


def test_nodes_walked_from_python_objects_ask_for_their_data(tmp_path):
    from fipgraph.models import build_model
    from fipgraph.query.recorded import recorded_tasks

    with fipgraph.open_store(tmp_path / "s", mode="a") as st:
        run = st.start_run("walked", "finetune", {"data": {"source": "python", "data": "SourceTask(...)"}})
        node = st.append(build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [4]}}), run=run, step=0)
        with pytest.raises(ConfigError, match="walked from Python objects.*pass --data"):
            recorded_tasks(st, [node])
        tasks = recorded_tasks(st, [node], source="digits", split=[[0, 1], [2, 3]])
        assert [t.classes for t in tasks] == [[0, 1], [2, 3]]


def test_recorded_data_that_cannot_be_remade_says_where_it_came_from(tmp_path):
    from fipgraph.models import build_model
    from fipgraph.query.recorded import recorded_tasks

    with fipgraph.open_store(tmp_path / "s", mode="a") as st:
        run = st.start_run("loop", "finetune", {"data": {"source": "imagenet", "seed": 3}})
        node = st.append(build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [4]}}), run=run, step=0)
        with pytest.raises(ConfigError, match="runs recorded \\(source='imagenet'.*seed=3.*unknown data source.*--data"):
            recorded_tasks(st, [node])
