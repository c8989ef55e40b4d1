"""TOML builds on the user's own code: [data] source = "package.module:function", fipgraph.data /
fipgraph.models entry points, and bad paths that fail before anything is written."""

from __future__ import annotations

import pytest
import torch

import fipgraph
from fipgraph.cli import main
from fipgraph.data import known_sources, make_tasks
from fipgraph.errors import ConfigError
from fipgraph.models import build_model, model_from_node
from fipgraph.path import build, load_config
from fipgraph.query import evaluate
from fipgraph.query.scoring import score_batches
from tests.owncode.data import parity_tasks, tensor_pairs

torch.set_num_threads(1)

OWN = """
name = "own"
[data]
source = "tests.owncode.data:parity_tasks"
seed = 1
kwargs = { scale = 2.0 }
[model]
name = "tests.owncode.models:small_classifier"
kwargs = { hidden = 8 }
[defaults]
device = "cpu"
lr = 0.01
save_every = 10
[[runs]]
name = "even"
op = "finetune"
task = 1
steps = 20
[[runs]]
name = "odd"
op = "continual"
from = "even"
task = 2
steps = 10
memory_size = 50
"""


def _config(tmp_path, text: str = OWN) -> str:
    path = tmp_path / "own.toml"
    path.write_text(text)
    return str(path)


def test_toml_build_on_own_model_and_data_function(tmp_path):
    result = build(load_config(_config(tmp_path)), tmp_path / "s", progress=False)
    assert result.status == "finished" and [r.name for r in result.runs] == ["own/even", "own/odd"]
    with fipgraph.open_store(tmp_path / "s", "r") as st:
        last = result.runs[0].last_node
        assert st.arch_spec(last)["model"]["name"] == "tests.owncode.models:small_classifier"
        stored = st.sql("select value from evals where node_id = ? and dataset = 'task1' and metric = 'accuracy'",
                        [last])["value"][0]
        model = model_from_node(st, last)
    # the function got seed 1 and scale 2.0: scoring the node on that very task reproduces the build's number
    task = parity_tasks(seed=1, scale=2.0)[0]
    assert score_batches(model, task.test_loader())["accuracy"] == pytest.approx(stored)
    assert score_batches(model, parity_tasks(seed=0, scale=2.0)[0].test_loader())["accuracy"] != pytest.approx(stored)
    # queries remake the same data from the recorded [data]: the user's function, its seed and kwargs
    with fipgraph.open_store(tmp_path / "s", "r") as st:
        df = evaluate(st, [last], "task1", recompute=True, record=False, progress=False, device="cpu")
    assert df["accuracy"].tolist() == pytest.approx([stored])


def test_entry_points_of_an_installed_package_are_found(tmp_path, monkeypatch):
    dist = tmp_path / "site" / "ownpkg-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ownpkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fipgraph.data]\nparity = tests.owncode.data:parity_tasks\n\n"
                                           "[fipgraph.models]\nsmall = tests.owncode.models:small_classifier\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert "parity" in known_sources()
    tasks = make_tasks("parity", seed=0)
    assert [t.classes for t in tasks] == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    assert build_model({"name": "small", "kwargs": {"hidden": 5}}).head.in_features == 5
    config = load_config(_config(tmp_path), ['data.source="parity"', 'model.name="small"'])
    assert config.data.source == "parity" and config.data.split is None


@pytest.mark.parametrize("overrides, words", [
    (['data.source="tests.owncode.nope:tasks"'], ["tests.owncode.nope:tasks", "No module named 'tests.owncode.nope'"]),
    (['data.source="tests.owncode.data:nope"'], ["tests.owncode.data:nope", "has no attribute 'nope'"]),
    (['data.source="tests.owncode.data:fixed_tasks"', "data.kwargs={}"], ["data.seed=1", "takes no 'seed'"]),
    (['data.kwargs={ shade = 1 }'], ["takes no argument ['shade']", "scale"]),
])
def test_a_bad_data_source_fails_before_the_store_is_made(tmp_path, capsys, overrides, words):
    store = tmp_path / "s"
    assert main(["build", _config(tmp_path), *overrides, "--store", str(store), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not store.exists()


def test_a_function_returning_no_task_list_fails_before_any_step(tmp_path):
    config = load_config(_config(tmp_path), ['data.source="tests.owncode.data:not_a_list"', "data.seed=0",
                                             "data.kwargs={}"])
    with pytest.raises(ConfigError, match="returned a dict; return a non-empty list"):
        build(config, tmp_path / "s", progress=False)
    with fipgraph.open_store(tmp_path / "s", "r") as st:
        assert int(st.sql("select count(*) as n from nodes")["n"][0]) == 0


def test_train_test_pairs_become_tasks_through_the_adapters():
    (task,) = make_tasks("tests.owncode.data:tensor_pairs")
    assert task.name == "task1" and len(list(task.test_loader(100))) == 4  # 360 held-out examples
    batch = next(iter(task.test_loader(8)))
    assert batch["x"].shape == (8, 64) and batch["labels"].tolist() == tensor_pairs()[0][1][1][:8].tolist()
