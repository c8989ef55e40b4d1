"""The store: bit-exact round trips, stats against numpy, graph, lossy mode, bad input."""

import json
import math

import numpy as np
import pytest
import torch

import fipgraph
from fipgraph.storage.layout import Layout
from fipgraph.errors import (ArchitectureMismatchError, FormatVersionError, NodeNotFoundError, NonFiniteWeightsError,
                             QueryError, ReadOnlyStoreError, StoreNotFoundError, WriterLockedError)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.uint8,
          torch.bool, torch.complex64]


def all_dtypes_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for dt in DTYPES:
        name = str(dt).removeprefix("torch.")
        if dt.is_floating_point or dt.is_complex:
            out[name] = torch.randn(7, 5, generator=g).to(dt) if not dt.is_complex else torch.randn(6, generator=g, dtype=dt)
        elif dt == torch.bool:
            out[name] = torch.rand(9, generator=g) > 0.5
        else:
            out[name] = torch.randint(0, 100, (11,), generator=g).to(dt)
    out["scalar_counter"] = torch.tensor(seed, dtype=torch.int64)  # like BatchNorm's num_batches_tracked
    out["empty"] = torch.zeros(0, 3)
    out["weird_floats"] = torch.tensor([0.0, -0.0, 1e-45, 3.4e38], dtype=torch.float32)  # -0.0 and denormals keep their bits
    return out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def test_round_trip_is_bit_exact_for_every_dtype_across_keyframes(tmp_path):
    states = [all_dtypes_state(i) for i in range(11)]
    with fipgraph.open_store(tmp_path / "s", keyframe_every=4) as store:
        parent = None
        for s in states:
            parent = store.append(s, parent=parent)
        assert all(same_bits(store.state_dict(i)[k], s[k]) for i, s in enumerate(states) for k in s)
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:
        enc = store.sql("SELECT encoding, chain_depth FROM storage ORDER BY node_id")
        assert list(enc["chain_depth"]) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]  # bounded chains
        assert list(enc["encoding"][:4]) == ["key", "diff", "pred", "pred"]
        for i in [10, 3, 0, 7]:  # cold reads in any order
            got = store.state_dict(i)
            assert list(got) == list(states[i]) and all(same_bits(got[k], states[i][k]) for k in got)


def test_stats_match_numpy(tmp_path):
    torch.manual_seed(0)
    a = {"w": torch.randn(20, 10), "b": torch.zeros(10), "n": torch.tensor(3)}
    b = {"w": a["w"] * 0.5, "b": torch.ones(10), "n": torch.tensor(4)}
    with fipgraph.open_store(tmp_path / "s") as store:
        r = store.append(a)
        c = store.append(b, parent=r, output_distance=0.25)
        d = store.append(a, parent=c)
        nodes = store.sql("SELECT * FROM nodes ORDER BY node_id")
        edges = store.sql("SELECT * FROM edges ORDER BY dst")
    fa = np.concatenate([a["w"].double().numpy().ravel(), a["b"].double().numpy()])
    fb = np.concatenate([b["w"].double().numpy().ravel(), b["b"].double().numpy()])
    dist = np.linalg.norm(fa - fb)
    assert nodes["n_params"].tolist() == [211, 211, 211]
    assert nodes["l2_norm"][0] == pytest.approx(np.linalg.norm(fa), rel=1e-12)
    assert nodes["sparsity"][0] == pytest.approx(10 / 210)  # float params only; the int counter is excluded
    assert edges["distance"].tolist() == pytest.approx([dist, dist], rel=1e-12)
    assert nodes["path_length"].tolist() == pytest.approx([0, dist, 2 * dist], rel=1e-12)
    assert edges["output_distance"][0] == 0.25 and math.isnan(edges["output_distance"][1])
    assert nodes["parent_id"][1] == r and nodes["parent_id"][2] == c and d == 2


def test_metrics_runs_and_wide_view(tmp_path):
    with fipgraph.open_store(tmp_path / "s") as store:
        run = store.start_run("cl", "continual", {"lr": 0.01, "tasks": [[0, 1], [2, 3]]})
        n = store.append({"w": torch.ones(3)}, run=run, op="continual", step=5,
                         metrics={"task1": {"accuracy": 0.9, "loss": 0.3}, "sparsity_target": 0.5}, tags={"k": [1, 2]})
        store.add_evals(n, {"task2": {"accuracy": 0.8}})
        store.add_evals(n, {"task1": {"accuracy": 0.95}})  # a later evaluation wins in `wide`
        store.finish_run(run)
        wide = store.sql("SELECT * FROM wide")
        assert wide["task1_accuracy"][0] == 0.95 and wide["task2_accuracy"][0] == 0.8
        assert wide["sparsity_target"][0] == 0.5 and wide["step"][0] == 5
        assert json.loads(wide["tags"][0]) == {"k": [1, 2]}
        found = store.find_run("cl")
        assert found["config"] == {"lr": 0.01, "tasks": [[0, 1], [2, 3]]} and found["status"] == "finished"
        assert store.sql("SELECT count(*) AS c FROM evals")["c"][0] == 5


def test_a_quote_in_the_store_path_reads_through_both_catalog_readers(tmp_path):
    from fipgraph.query.catalog import open_catalog

    root = tmp_path / "bob's store"  # the ATTACH literal must escape it (one helper serves both readers)
    with fipgraph.open_store(root) as store:
        store.append({"w": torch.ones(3)}, metrics={"accuracy": 0.5})
        store.flush()
        assert store.sql("SELECT count(*) AS c FROM nodes")["c"][0] == 1
    with open_catalog(root) as snapshot:
        assert snapshot.rows("SELECT count(*) FROM nodes").rows == [(1,)]


def test_graph_attributes(tmp_path):
    with fipgraph.open_store(tmp_path / "s") as store:
        root = store.append({"w": torch.zeros(4)}, op="init")
        a = store.append({"w": torch.ones(4)}, parent=root, op="continual")
        b = store.append({"w": -torch.ones(4)}, parent=root, op="sparsify")
        g = store.graph()
    assert set(g.edges) == {(root, a), (root, b)}
    assert g.nodes[a]["op"] == "continual" and g.edges[root, b]["distance"] == pytest.approx(2.0)


def test_lossy_int8_records_its_error_bound(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(300, 200)
    path = [w + 0.01 * i * torch.randn(300, 200) for i in range(6)]
    with fipgraph.open_store(tmp_path / "s", encoding="int8") as store:
        parent = None
        for p in path:
            parent = store.append({"w": p, "steps": torch.tensor(7)}, parent=parent)
        info = store.sql("SELECT encoding, max_abs_error FROM storage ORDER BY node_id")
        got = [store.state_dict(i) for i in range(len(path))]
    assert info["encoding"].tolist() == ["key"] + ["q8"] * 5
    assert info["max_abs_error"][0] == 0.0 and (info["max_abs_error"][1:] > 0).all()
    for i, p in enumerate(path):
        err = (got[i]["w"] - p).abs().max().item()
        assert err == pytest.approx(info["max_abs_error"][i], abs=1e-7)
        assert err <= 0.01  # deltas of std ~0.05 quantised to 1/127 of each block's max
        assert got[i]["steps"].item() == 7  # integer buffers stay exact


def test_arch_mismatch_is_refused_and_nothing_is_stored(tmp_path):
    with fipgraph.open_store(tmp_path / "s") as store:
        root = store.append({"w": torch.ones(4, 3), "b": torch.ones(3)})
        with pytest.raises(ArchitectureMismatchError, match=r"'w' is \[4, 2\] float32, expected \[4, 3\] float32"):
            store.append({"w": torch.ones(4, 2), "b": torch.ones(3)}, parent=root)
        with pytest.raises(ArchitectureMismatchError, match="missing"):
            store.append({"w": torch.ones(4, 3)}, parent=root)
        with pytest.raises(ArchitectureMismatchError, match="float64"):
            store.append({"w": torch.ones(4, 3, dtype=torch.float64), "b": torch.ones(3)}, parent=root)
        # safetensors-style key order is the same architecture
        child = store.append({"b": torch.zeros(3), "w": torch.zeros(4, 3)}, parent=root)
        assert list(store.state_dict(child)) == ["w", "b"]
        assert store.sql("SELECT count(*) AS c FROM nodes")["c"][0] == 2
        assert len(store.sql("SELECT * FROM archs")) == 1


def test_nonfinite_weights_refused_unless_allowed(tmp_path):
    with fipgraph.open_store(tmp_path / "s") as store:
        bad = {"w": torch.tensor([1.0, float("nan"), float("inf")])}
        with pytest.raises(NonFiniteWeightsError, match="'w' has 2 NaN/Inf"):
            store.append(bad)
        assert len(store) == 0 and store.sql("SELECT count(*) AS c FROM nodes")["c"][0] == 0
        n = store.append(bad, allow_nonfinite=True)
        assert torch.isnan(store.state_dict(n)["w"][1])


def test_bad_ids_paths_versions_and_sql(tmp_path):
    with pytest.raises(StoreNotFoundError, match="not a fipgraph store"):
        fipgraph.open_store(tmp_path / "missing", mode="r")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.csv").write_text("x")
    with pytest.raises(StoreNotFoundError, match="not empty"):
        fipgraph.open_store(tmp_path / "junk")
    assert sorted(p.name for p in (tmp_path / "junk").iterdir()) == ["data.csv", "writer.lock"]
    with fipgraph.open_store(tmp_path / "s") as store:
        store.append({"w": torch.ones(2)})
        with pytest.raises(NodeNotFoundError, match="no node 7"):
            store.state_dict(7)
        with pytest.raises(NodeNotFoundError):
            store.append({"w": torch.ones(2)}, parent=99)
        with pytest.raises(KeyError):  # the errors subclass builtins
            store.state_dict(-1)
        with pytest.raises(QueryError, match="syntax error"):
            store.sql("SELEC * FROM nodes")
        with pytest.raises(QueryError):  # users' SQL runs read-only
            store.sql("DROP TABLE nodes")
        with pytest.raises(ValueError, match="mode"):
            fipgraph.open_store(tmp_path / "s", mode="w")
    marker = tmp_path / "s" / "fipgraph.json"
    marker.write_text(json.dumps({"format": "fipgraph-store", "format_version": 99}))
    with pytest.raises(FormatVersionError, match="format 99"):
        fipgraph.open_store(tmp_path / "s", mode="r")


def test_read_only_and_single_writer(tmp_path):
    with fipgraph.open_store(tmp_path / "s") as store:
        store.append({"w": torch.ones(2)})
        store.flush()  # committed: now visible to other readers
        with pytest.raises(WriterLockedError, match=r"pid \d+"):
            fipgraph.open_store(tmp_path / "s")
        with fipgraph.open_store(tmp_path / "s", mode="r") as reader:  # readers work beside the writer
            assert len(reader.sql("SELECT * FROM nodes")) == 1
            with pytest.raises(ReadOnlyStoreError, match="mode='a'"):
                reader.append({"w": torch.ones(2)})
            with pytest.raises(ReadOnlyStoreError):
                reader.add_evals(0, {"a": 1.0})
    with fipgraph.open_store(tmp_path / "s") as store:  # the lock is released on close
        assert len(store) == 1


def test_load_into_module(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model.train()(torch.randn(8, 4))
    with fipgraph.open_store(tmp_path / "s") as store:
        n = store.append(model)
        fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
        store.load_into(fresh, n)
        with pytest.raises(ArchitectureMismatchError):
            store.load_into(torch.nn.Linear(4, 2), n)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert fresh[1].num_batches_tracked.item() == 1


def test_interrupted_creation_is_recreated(tmp_path):
    path = tmp_path / "s"
    with fipgraph.open_store(path) as store:
        store.append({"w": torch.ones(2)})
    (path / "fipgraph.json").unlink()  # as if killed before the marker, the last step of creation, was written
    with fipgraph.open_store(path) as store:
        assert len(store) == 0
        store.append({"w": torch.ones(2)})
    with fipgraph.open_store(path, mode="r") as store:
        assert len(store.sql("SELECT * FROM nodes")) == 1


def test_ensembles_and_batched_evals(tmp_path):
    with fipgraph.open_store(tmp_path / "s") as store:
        ids = [store.append({"w": torch.full((2,), float(i))}) for i in range(3)]
        store.add_evals_many({n: {"pca": {"pc1": float(n), "pc2": -float(n)}} for n in ids})
        store.add_ensemble("pair", ids[:2], {"strategy": "top", "k": 2})
        with pytest.raises(fipgraph.FipgraphError, match="already exists"):
            store.add_ensemble("pair", ids[1:])
        with pytest.raises(NodeNotFoundError):
            store.add_ensemble("ghost", [99])
        assert store.ensemble_spec("pair")["members"] == ids[:2]
        assert store.sql("SELECT pca_pc2 FROM wide ORDER BY node_id")["pca_pc2"].tolist() == [0.0, -1.0, -2.0]
        with pytest.raises(fipgraph.FipgraphError, match="recorded: \\['pair'\\]"):
            store.ensemble_spec("nope")


def test_unknown_row_encoding_is_refused_not_guessed(tmp_path):
    from fipgraph.storage import codec
    from fipgraph.storage.layout import Layout

    state = {"w": torch.ones(3)}
    layout = Layout.of(state)
    with pytest.raises(FormatVersionError, match="'xor'"):
        codec.decode_step(layout, layout.pack(state), layout.pack(state), None, "xor")


class TiedLM(torch.nn.Module):
    """Input embedding and output layer share one weight, as in SmolLM2 and Llama."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, 50, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_are_stored_counted_and_measured_once_and_reload_tied(tmp_path):
    torch.manual_seed(0)
    a, b = TiedLM(), TiedLM()
    unique = 50 * 8 + 8 + 8
    with fipgraph.open_store(tmp_path / "s") as store:
        na = store.append(a)
        nb = store.append(b, parent=na)
        nodes = store.sql("SELECT n_params, l2_norm FROM nodes ORDER BY node_id")
        dist = store.sql("SELECT distance FROM edges")["distance"][0]
    flat = lambda m: torch.cat([m.embed.weight.reshape(-1), m.norm.weight, m.norm.bias]).detach().double()  # noqa: E731
    assert nodes["n_params"].tolist() == [unique, unique]  # not 50*8 more for the tied head
    assert nodes["l2_norm"][0] == pytest.approx(float(flat(a).norm()), rel=1e-12)
    assert dist == pytest.approx(float((flat(a) - flat(b)).norm()), rel=1e-12)
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:
        got = store.state_dict(nb)
        assert list(got) == list(b.state_dict())  # same names, same order
        assert got["head.weight"] is got["embed.weight"] and same_bits(got["embed.weight"], b.embed.weight.detach())
        fresh = store.load_into(TiedLM(), nb)
        assert fresh.head.weight is fresh.embed.weight and torch.equal(fresh.head.weight, b.embed.weight)
    # a store written before ties were recognised holds the head as a copy: it still loads, and a chain
    # continues on the old (untied) architecture
    untied = TiedLM()
    untied.head.weight = torch.nn.Parameter(untied.embed.weight.detach().clone())
    with fipgraph.open_store(tmp_path / "old") as store:
        old = store.append(untied)
        assert store.sql("SELECT n_params FROM nodes")["n_params"][0] == unique + 50 * 8
        child = store.append(b, parent=old)
        assert store.sql("SELECT count(DISTINCT arch_id) AS n FROM nodes")["n"][0] == 1
        fresh = store.load_into(TiedLM(), old)
        assert fresh.head.weight is fresh.embed.weight and torch.equal(fresh.embed.weight, untied.embed.weight)
        assert same_bits(store.state_dict(child)["head.weight"], b.embed.weight.detach())
        with pytest.raises(ArchitectureMismatchError, match="tied differently"):
            Layout.of(b.state_dict()).check_matches(Layout.of(untied.state_dict()), "an untied model")
