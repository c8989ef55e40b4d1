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


def test_json_keeps_every_float_bit_and_csv_json_keep_integers_beside_nulls(store_path, capsys):
    q = "SELECT node_id, parent_id, 1.234e-12 AS tiny, 0.1::DOUBLE + 0.2::DOUBLE AS sum FROM nodes ORDER BY node_id"
    assert main(["sql", q, "--store", str(store_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {"node_id": 0, "parent_id": None, "tiny": 1.234e-12, "sum": 0.1 + 0.2}
    assert rows[2]["parent_id"] == 1 and isinstance(rows[2]["parent_id"], int)
    assert main(["sql", q, "--store", str(store_path), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "0,,1.234e-12,0.30000000000000004"  # NULL empty, no 7.0-style integers
    assert lines[3].split(",")[:2] == ["2", "1"]


def test_catalog_commands_load_no_torch(store_path):
    """sql, info and select answer from the catalog alone, and check reads chunk files with numcodecs:
    importing torch (~2 s), pandas and zarr is what made `fipgraph sql` 15x and `check` 14x slower
    than a bare duckdb process."""
    import subprocess
    import sys

    for argv in (["check"], ["sql", "SELECT count(*) FROM nodes"], ["info"],
                 ["select", "--where", "task1_accuracy > 0.3"], ["select", "--where", "task1_accuracy > 0.3", "--ids"]):
        code = ("import sys; from fipgraph.cli import main; rc = main(%r); "
                "heavy = sorted(m for m in ('torch', 'zarr', 'pandas', 'transformers', 'fastapi', 'uvicorn', 'starlette', 'dash', 'plotly', 'networkx') if m in sys.modules); "
                "print('HEAVY', heavy, rc)") % (argv + ["--store", str(store_path)],)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert "HEAVY [] 0" in out, (argv, out)
    assert "2 3" in out  # the select still answers: accuracies 0.5 and 0.75


def test_sql_refuses_writes_and_leaves_the_store_unchanged(store_path, capsys):
    assert main(["sql", "DELETE FROM nodes", "--store", str(store_path)]) == 2
    assert "read-only" in capsys.readouterr().err
    assert main(["sql", "SELECT count(*) AS n FROM nodes", "--store", str(store_path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "4"


def test_query_on_a_missing_store_says_so_and_creates_nothing(tmp_path, capsys):
    typo = tmp_path / "typo"
    for argv in (["pca"], ["evaluate"], ["sql", "SELECT 1"], ["select"], ["check"], ["export", "0", "--out", str(tmp_path / "o")]):
        assert main(argv + ["--store", str(typo)]) == 2
        assert f"no store at {typo}" in capsys.readouterr().err
        assert not typo.exists()
