"""A 100k-node graph loads from the catalog alone, never touching weights."""

import datetime as dt

import pandas as pd
import pytest

import fipgraph
from fipgraph.storage.weights import WeightArrays


def test_graph_of_100k_nodes_reads_no_weights(tmp_path, monkeypatch):
    path = tmp_path / "s"
    fipgraph.open_store(path).close()
    n = 100_000
    nodes = pd.DataFrame({
        "node_id": range(n), "parent_id": [None] + [i // 2 for i in range(1, n)], "run_id": 0, "op": "undirected",
        "step": range(n), "created_at": dt.datetime(2026, 1, 1), "arch_id": "a", "n_params": 10,
        "l2_norm": 1.0, "sparsity": [i / n for i in range(n)], "path_length": 0.0, "tags": None})
    edges = pd.DataFrame({"src": nodes["parent_id"][1:].astype(int), "dst": range(1, n), "distance": 0.5,
                          "output_distance": None})
    import duckdb

    con = duckdb.connect(str(path / "metrics.duckdb"))
    con.register("nodes_df", nodes)
    con.register("edges_df", edges)
    con.execute("INSERT INTO nodes SELECT * FROM nodes_df")
    con.execute("INSERT INTO edges SELECT * FROM edges_df")
    con.close()

    def no_weights(*a, **k):
        raise AssertionError("graph() must not read weights")

    monkeypatch.setattr(WeightArrays, "read_row", no_weights)
    with fipgraph.open_store(path, mode="r") as store:
        g = store.graph()
        assert g.number_of_nodes() == n and g.number_of_edges() == n - 1
        assert g.nodes[99_999]["sparsity"] == pytest.approx(0.99999)
        assert list(g.predecessors(99_999)) == [49_999]
        assert store.sql("SELECT count(*) AS c FROM nodes WHERE sparsity >= 0.5")["c"][0] == 50_000


def test_rows_read_from_chunk_files_match_zarr(tmp_path):
    """Reads bypass zarr's async machinery for fipgraph's own arrays (bytes + blosc) and give exactly
    what zarr reads; arrays with other codecs are read through zarr."""
    import json

    import numpy as np
    import torch

    from fipgraph.storage.weights import ArrayMeta

    torch.manual_seed(0)
    with fipgraph.open_store(tmp_path / "s", mode="a") as st:
        parent = None
        for i in range(7):  # rows of one shared chunk and of the next
            parent = st.append({"w": torch.randn(300, 7), "b": torch.arange(5)}, parent=parent)
    wa = WeightArrays(tmp_path / "s" / "weights.zarr", read_only=True)
    (arch,) = [p.name for p in wa.path.iterdir() if p.is_dir()]
    for name in ("float32", "int64"):
        assert wa.meta(arch, name).direct
        for row in range(7):
            direct = wa.read_row(arch, row, {name: (None, wa.meta(arch, name).n_words)})[name]
            np.testing.assert_array_equal(direct, wa.array(arch, name)[row])
            assert direct.flags.writeable  # decoding works in place
    meta = json.loads((wa.path / arch / "float32" / "zarr.json").read_text())
    meta["codecs"].insert(0, {"name": "transpose", "configuration": {"order": [1, 0]}})
    assert not ArrayMeta.parse(meta).direct
