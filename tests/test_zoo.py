"""Weight-space datasets: to_dataset (lazy, DataLoader workers) and export_zoo (Model Zoos layout, Parquet),
each loaded back and compared bit for bit (weights) and exactly (metrics, lineage)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fipgraph
from fipgraph.data import make_tasks
from fipgraph.errors import ConfigError
from fipgraph.models import build_model
from fipgraph.query import export_zoo, merge, to_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Run "walk": root 0 and nodes 1-5 (SGD on digits, each with train loss and H); node 6 merges 5 and 3;
    node 7 is another architecture."""
    path = tmp_path_factory.mktemp("zoo") / "store"
    task = make_tasks("digits", split=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], seed=0)[0]
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16], "n_classes": 10}})
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    st = fipgraph.open_store(path)
    run = st.start_run("walk", "continual", {"lr": 0.2})
    parent = st.append(model, run=run, step=0, metrics={"": {"H": 0.5}})
    for step, batch in zip(range(1, 6), task.train_loader(64)):
        loss = F.cross_entropy(model(batch["x"]), batch["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad()
        parent = st.append(model, parent=parent, run=run, step=step,
                           metrics={"train": {"loss": loss.item()}, "": {"H": 1.0 / step}})
    merge(st, [5, 3], "linear", weights=[0.25, 0.75])
    st.append({"w": torch.arange(4.0)})
    st.flush()
    yield st
    st.close()


def _flat(st, node):
    return torch.cat([v.reshape(-1) for v in st.state_dict(node).values()])


def _wide(st, node):
    row = st.sql("SELECT * FROM wide WHERE node_id = ?", [node]).iloc[0]
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float, np.number)) and k not in
            ("node_id", "parent_id", "run_id", "step") and not (isinstance(v, float) and math.isnan(v))}


def test_dataset_items_are_the_stored_weights_metrics_and_lineage(store):
    ds = to_dataset(store, where="arch_id = (SELECT arch_id FROM nodes WHERE node_id = 0)")
    assert len(ds) == 7 and ds.node_ids == list(range(7))
    item = ds[6]
    assert item["node_id"] == 6 and item["parent_id"] == 5
    assert torch.equal(item["weights"], _flat(store, 6))
    name = "body.1.weight"
    start, end, shape = ds.index[name]
    assert (start, end, shape) == (0, 16 * 64, [16, 64]) and list(ds.index) == list(store.state_dict(6))
    assert torch.equal(item["weights"][start:end].reshape(shape), store.state_dict(6)[name])
    got = {m: float(v) for m, v in zip(ds.metric_names, item["metrics"]) if not math.isnan(v)}
    assert got == _wide(store, 6)
    assert ds.lineage(6)["parents"] == [5, 3] and ds.lineage(6)["parent_weights"] == [0.25, 0.75]
    assert ds.lineage(2)["run"] == "walk" and ds.lineage(2)["step"] == 2 and ds.lineage(0)["parents"] == []
    per_layer = to_dataset(store, nodes=[1, 2], flatten=False, params=[name])
    assert list(per_layer[1]["weights"]) == [name] and torch.equal(per_layer[1]["weights"][name],
                                                                   store.state_dict(2)[name])


def test_dataset_feeds_a_dataloader_with_workers(store):
    ds = to_dataset(store, nodes=range(7))
    # forkserver: under pytest a forked worker hung in torch's fd tensor sharing (the default fork: next test)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, timeout=60,
                                         multiprocessing_context="forkserver")
    batches = list(loader)
    assert [b["node_id"].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    weights = torch.cat([b["weights"] for b in batches])
    assert torch.equal(weights, torch.stack([_flat(store, n) for n in range(7)]))
    assert torch.equal(torch.cat([b["parent_id"] for b in batches]), torch.tensor([-1, 0, 1, 2, 3, 4, 5]))


def test_default_fork_workers_outside_pytest(store, tmp_path):
    """The DataLoader's default context (fork on Linux) from a plain script, as docs/merges-and-datasets.md shows.
    (Inside pytest a forked worker hung in torch's file-descriptor tensor sharing, hence forkserver above.)"""
    import subprocess
    import sys

    script = tmp_path / "load.py"
    script.write_text(
        "import torch, fipgraph\n"
        "from fipgraph.query import to_dataset\n"
        f"with fipgraph.open_store({str(store.root)!r}, mode='r') as st:\n"
        "    ds = to_dataset(st, nodes=range(7))\n"
        "    w = torch.cat([b['weights'] for b in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2,\n"
        "                                                                    timeout=120)])\n"
        "    torch.save(w, 'w.pt')\n")
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, check=True, timeout=300)
    assert torch.equal(torch.load(tmp_path / "w.pt"), torch.stack([_flat(store, n) for n in range(7)]))


def test_dataset_refuses_mixed_architectures_and_empty_selections(store):
    with pytest.raises(ConfigError, match="different architectures"):
        to_dataset(store)
    with pytest.raises(ConfigError, match="no node meets"):
        to_dataset(store, where="H > 100")


def test_modelzoo_export_loads_back_exactly(store, tmp_path):
    out = export_zoo(store, tmp_path / "zoo", "modelzoo")
    lines = [json.loads(x) for x in (out / "walk" / "result.json").read_text().splitlines()]
    assert [r["node_id"] for r in lines] == [r["training_iteration"] for r in lines] == list(range(6))
    assert json.loads((out / "walk" / "params.json").read_text()) == {"lr": 0.2}
    index = json.loads((out / "index_dict.json").read_text())
    assert len(index) == 2  # two architectures
    for rec in lines + [json.loads((out / "node_000006" / "result.json").read_text())]:
        state = torch.load(out / ("walk" if rec["run"] else "node_000006") / rec["checkpoint"] / "checkpoints",
                           weights_only=True)
        stored = store.state_dict(rec["node_id"])
        assert list(state) == list(stored) and all(torch.equal(state[k], stored[k]) for k in stored)
        assert {k: v for k, v in rec.items() if k in _wide(store, rec["node_id"])} == _wide(store, rec["node_id"])
    merged = json.loads((out / "node_000006" / "result.json").read_text())
    assert merged["parents"] == [5, 3] and merged["parent_weights"] == [0.25, 0.75] and merged["op"] == "merge"


@pytest.mark.parametrize("weights", ["list", "safetensors"])
def test_parquet_export_loads_back_exactly_with_datasets(store, tmp_path, weights):
    import datasets
    from safetensors.torch import load_file

    out = export_zoo(store, tmp_path / "pq", "parquet", weights=weights)
    ds = datasets.load_dataset("parquet", data_files=str(out / "zoo.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds["node_id"] == list(range(8))
    index = json.loads((out / "index_dict.json").read_text())
    for row in ds.with_format("numpy"):
        node = int(row["node_id"])
        stored = store.state_dict(node)
        if weights == "list":
            vec = torch.from_numpy(np.asarray(row["weights"]))
            assert vec.dtype == torch.float32 and torch.equal(vec, _flat(store, node))
            for name, s in index[str(row["arch_id"])].items():
                assert torch.equal(vec[s["start"]:s["end"]].reshape(s["shape"]), stored[name])
        else:
            loaded = load_file(out / str(row["weights_file"]))
            assert all(torch.equal(loaded[k], stored[k]) for k in stored)
        wide = _wide(store, node)
        assert {k: float(row[k]) for k in wide} == wide
        assert all(math.isnan(row[k]) for k in ds.column_names if k in ("H", "train_loss") and k not in wide)
    assert ds[6]["parents"] == [5, 3] and ds[6]["parent_weights"] == [0.25, 0.75] and ds[2]["run"] == "walk"


def test_exports_refuse_bad_requests_and_write_nothing(store, tmp_path):
    with pytest.raises(ConfigError, match="use one of \\['modelzoo', 'parquet'\\]"):
        export_zoo(store, tmp_path / "a", "hdf5")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(ConfigError, match="not empty"):
        export_zoo(store, tmp_path / "b", "parquet")
    with pytest.raises(ConfigError, match="match no floating-point parameter"):
        export_zoo(store, tmp_path / "c", "parquet", params=["nope."])
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
