"""The store CLI, called as a user would: fipgraph.cli.main([...])."""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import fipgraph
from fipgraph.cli import main


@pytest.fixture()
def store_path(tmp_path):
    path = tmp_path / "s"
    with fipgraph.open_store(path) as store:
        run = store.start_run("demo", "finetune", {"lr": 0.1})
        parent = None
        for i in range(4):
            parent = store.append({"w": torch.full((3, 2), float(i)), "b": torch.zeros(2)}, parent=parent, run=run,
                                  op="finetune", step=i, metrics={"task1": {"accuracy": i / 4}})
    return path


def test_sql_formats(store_path, tmp_path, capsys):
    q = "SELECT node_id, task1_accuracy FROM wide ORDER BY node_id"
    assert main(["sql", q, "--store", str(store_path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == ["node_id,task1_accuracy", "0,0.0", "1,0.25"]
    assert main(["sql", q, "--store", str(store_path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[3] == {"node_id": 3, "task1_accuracy": 0.75}
    out = tmp_path / "r.parquet"
    assert main(["sql", q, "--store", str(store_path), "--format", "parquet", "--out", str(out)]) == 0
    assert pd.read_parquet(out)["task1_accuracy"].tolist() == [0.0, 0.25, 0.5, 0.75]


def test_bad_sql_prints_duckdb_message_and_exits_2(store_path, capsys):
    assert main(["sql", "SELECT nope FROM nodes", "--store", str(store_path)]) == 2
    err = capsys.readouterr().err
    assert "Binder Error" in err and "nope" in err and "Traceback" not in err
    assert main(["info", "--store", str(store_path / "missing")]) == 2
    assert "not a fipgraph store" in capsys.readouterr().err


def test_info(store_path, capsys):
    assert main(["info", "--store", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert "nodes        4" in out and "demo" in out


def test_export_then_import_round_trip(store_path, tmp_path, capsys):
    assert main(["export", "2", "--store", str(store_path), "--out", str(tmp_path / "ex")]) == 0
    meta = json.loads((tmp_path / "ex" / "fipgraph.json").read_text())
    assert meta["node_id"] == 2 and meta["parent_id"] == 1 and meta["run_id"] == 0
    ckpts = tmp_path / "ckpts"
    for step in (10, 2):  # natural order: checkpoint-2 before checkpoint-10
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        save_file({"w": torch.full((3, 2), float(step)), "b": torch.ones(2)}, ckpts / f"checkpoint-{step}" / "model.safetensors")
    assert main(["import", str(ckpts), "--store", str(store_path), "--parent", "3", "--run", "imported"]) == 0
    with fipgraph.open_store(store_path, mode="r") as store:
        rows = store.sql("SELECT node_id, parent_id, op FROM nodes WHERE op = 'import' ORDER BY node_id")
        assert rows.values.tolist() == [[4, 3, "import"], [5, 4, "import"]]
        assert store.state_dict(4)["w"][0, 0].item() == 2.0 and store.state_dict(5)["w"][0, 0].item() == 10.0


def test_export_transformers_model_keeps_lineage_in_config(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    with fipgraph.open_store(tmp_path / "s") as store:
        root = store.append(model)
        with torch.no_grad():
            model.classifier.weight.mul_(2)
        child = store.append(model, parent=root)
    assert main(["export", str(child), "--store", str(tmp_path / "s"), "--out", str(tmp_path / "hf")]) == 0
    loaded = BertForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert loaded.config.fipgraph["node_id"] == child and loaded.config.fipgraph["parent_id"] == root
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)
