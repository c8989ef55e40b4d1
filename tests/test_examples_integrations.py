"""examples/hf_trainer.py and examples/lightning_module.py run as written, in seconds."""

import importlib.util
from pathlib import Path

import pytest

import fipgraph

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hf_trainer_example_records_and_a_second_run_continues_the_chain(tmp_path):
    pytest.importorskip("accelerate")
    example = load("hf_trainer")
    first = example.main(["--store", str(tmp_path / "s"), "--steps", "4", "--every", "2"])
    both = example.main(["--store", str(tmp_path / "s"), "--steps", "4", "--every", "2"])
    assert len(first) == 2 and both[:2] == first and len(both) == 4
    with fipgraph.open_store(tmp_path / "s", "r") as store:
        nodes = store.sql("SELECT parent_id, step FROM nodes ORDER BY node_id")
        assert nodes["parent_id"].tolist()[1:] == both[:-1]  # resume=True chained the second train onto the first
        assert store.find_run("hf-bert")["status"] == "finished"


def test_lightning_example_records_nodes_with_validation_metrics(tmp_path):
    pytest.importorskip("lightning")
    nodes = load("lightning_module").main(["--store", str(tmp_path / "s"), "--steps", "4", "--every", "2"])
    assert len(nodes) == 2
    with fipgraph.open_store(tmp_path / "s", "r") as store:
        wide = store.sql("SELECT step, val_acc FROM wide ORDER BY step")
    assert wide["step"].tolist() == [2, 4] and wide["val_acc"].between(0, 1).all()


def test_own_model_example_records_a_loop_then_walks_continual_from_its_last_node(tmp_path):
    walk = load("own_model").main(["--store", str(tmp_path / "s"), "--steps", "60"])
    assert walk.status == "finished" and walk.evaluations["task1"]["accuracy"] > 0.8
    with fipgraph.open_store(tmp_path / "s", "r") as store:
        loop = store.find_run("task1-loop")
        assert loop["status"] == "finished"
        first = store.node(walk.nodes[0])
        assert store.node(first["parent_id"])["run_id"] == loop["run_id"]  # the walk starts at the loop's last node
    again = load("own_model").main(["--store", str(tmp_path / "s"), "--steps", "60"])
    assert again.steps_done == 0 and again.last_node == walk.last_node  # a rerun finds both done
