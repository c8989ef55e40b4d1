"""Bounded memory: state_dict(params=...) streams a few tensors of a node chunk by chunk, verified in
full; the writer keeps recent parents within recent_bytes."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import fipgraph
from fipgraph.errors import ArchitectureMismatchError, CorruptNodeError
from fipgraph.storage import stream, weights


def digits_walk(n: int) -> list[dict[str, torch.Tensor]]:
    """An MLP on sklearn digits trained by Adam; one state dict per step (float32 layers, an int64 counter)."""
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x[:256] / 16, dtype=torch.float32), torch.tensor(y[:256])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.ReLU(), torch.nn.Linear(300, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    out = []
    for i in range(n):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state["step"] = torch.tensor(i)
        out.append(state)
    return out


@pytest.fixture
def small_chunks(monkeypatch):
    # 4096-word chunks: the 19k-word float32 row spans 5 chunks, the last one short
    monkeypatch.setattr(weights, "MAX_CHUNK_WORDS", 4096)


def build(path, states, **options):
    with fipgraph.open_store(path, keyframe_every=4, **options) as store:
        parent, ids = None, []
        for s in states:
            parent = store.append(s, parent=parent)
            ids.append(parent)
    return ids


def test_streamed_params_equal_whole_node_bit_for_bit(tmp_path, small_chunks, monkeypatch):
    states = digits_walk(7)  # chains key, diff, pred, pred | key, diff, pred
    ids = build(tmp_path / "s", states)
    names = ["2.bias", "0.weight", "step"]
    calls = []
    real = stream.read_tensors
    monkeypatch.setattr(stream, "read_tensors", lambda *a: calls.append(a[2]) or real(*a))
    with fipgraph.open_store(tmp_path / "s", mode="r", cache_bytes=1) as store:  # every node "too large"
        for nid, state in zip(ids, states):
            got = store.state_dict(nid, params=names)
            assert list(got) == names
            for n in names:
                assert got[n].dtype == state[n].dtype and got[n].shape == state[n].shape
                assert torch.equal(got[n].view(-1).view(torch.uint8) if got[n].dim() else got[n],
                                   state[n].view(-1).view(torch.uint8) if state[n].dim() else state[n])
    assert calls == ids  # every read went through the streaming path
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:  # small node: the cached whole-row path
        got = store.state_dict(ids[5], params=["0.bias"])
        assert torch.equal(got["0.bias"], states[5]["0.bias"])


def test_streamed_read_of_damaged_chain_raises(tmp_path, small_chunks):
    states = digits_walk(5)  # nodes 0-3 one chain, node 4 the next keyframe (in other chunk files)
    ids = build(tmp_path / "s", states)
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:
        info = store._info(ids[0])
        files = store.weights.row_files(info.arch_id, "float32", info.row)
    assert len(files) > 1
    data = bytearray(files[-1].read_bytes())  # a chunk the asked-for tensor (first in the row) does not touch
    data[len(data) // 2] ^= 0xFF
    files[-1].write_bytes(bytes(data))
    with fipgraph.open_store(tmp_path / "s", mode="r", cache_bytes=1) as store:
        with pytest.raises(CorruptNodeError) as err:
            store.state_dict(ids[2], params=["0.weight"])  # node 2 is delta-coded against damaged node 0
        assert err.value.damaged_node == ids[0] and err.value.node_id == ids[2]
        assert torch.equal(store.state_dict(ids[4], params=["0.weight"])["0.weight"], states[4]["0.weight"])


def test_unknown_param_names_the_value(tmp_path):
    ids = build(tmp_path / "s", digits_walk(2))
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:
        with pytest.raises(ArchitectureMismatchError, match="nope"):
            store.state_dict(ids[1], params=["nope"])
        with pytest.raises(TypeError, match=r"\['0.bias'\]"):
            store.state_dict(ids[1], params="0.bias")


def test_writer_keeps_recent_parents_within_bytes(tmp_path):
    states = digits_walk(6)
    row_bytes = sum(t.numel() * t.element_size() for t in states[0].values())
    with fipgraph.open_store(tmp_path / "s", recent_bytes=row_bytes) as store:
        parent = None
        for s in states:
            parent = store.append(s, parent=parent)
            store.flush()
            recent = store._writer._recent
            assert len(recent) == 1  # bound of one row: parent and grandparent do not fit, only the parent stays
            assert store._writer._recent_size == sum(a.nbytes for r in recent.values() for a in r.values())
        branch = store.append(states[0], parent=1)  # node 1 was evicted: re-read from disk
        store.flush()
        assert torch.equal(store.state_dict(branch)["0.weight"], states[0]["0.weight"])
        encodings = list(store.sql("SELECT encoding FROM storage ORDER BY node_id")["encoding"])
    assert encodings[:6] == ["key"] + ["diff"] * 5  # no row needs its grandparent
    with fipgraph.open_store(tmp_path / "u", recent_bytes=2 * row_bytes) as store:  # both fit: predicted rows
        parent = None
        for s in states:
            parent = store.append(s, parent=parent)
            store.flush()
            assert len(store._writer._recent) <= 2
        encodings = list(store.sql("SELECT encoding FROM storage ORDER BY node_id")["encoding"])
        assert encodings == ["key", "diff"] + ["pred"] * 4
        assert all(torch.equal(store.state_dict(n)["0.weight"], st["0.weight"]) for n, st in enumerate(states))
    with fipgraph.open_store(tmp_path / "t") as store:  # default: up to 4 recent nodes of this size
        parent = None
        for s in states:
            parent = store.append(s, parent=parent)
        store.flush()
        assert len(store._writer._recent) == 4
        np.testing.assert_array_equal(store._writer._recent[parent]["float32"].view(np.float32)[:10],
                                      states[-1]["0.weight"].reshape(-1)[:10].numpy())


def test_reading_a_chain_in_order_decodes_one_row_per_node_even_when_rows_exceed_the_cache(tmp_path):
    states = digits_walk(8)
    ids = build(tmp_path / "s", states)  # keyframe_every=4: two chains key, diff, pred, pred
    with fipgraph.open_store(tmp_path / "s", mode="r", cache_bytes=1) as store:
        decoded = []
        real = store._reader._decode_row
        store._reader._decode_row = lambda wanted, nid, *a: decoded.append(nid) or real(wanted, nid, *a)
        for nid, state in zip(ids, states):
            assert torch.equal(store.state_dict(nid)["2.weight"], state["2.weight"])
        assert decoded == ids  # no chain decoded twice
        assert len(store._reader._cache) == 2  # over the 1-byte bound: only parent and grandparent stay


def test_large_rows_written_chunk_by_chunk_equal_whole_row_writes(tmp_path, small_chunks, monkeypatch):
    from fipgraph.storage import encoder, writer

    monkeypatch.setattr(weights, "SMALL_CHUNK_BYTES", 1)  # a chunk row per node, as large nodes have
    states = digits_walk(6)
    build(tmp_path / "whole", states)
    monkeypatch.setattr(encoder, "STREAM_BYTES", 0)  # every node takes the streamed path
    calls = []
    real = writer.Writer._start_streamed
    monkeypatch.setattr(writer.Writer, "_start_streamed", lambda self, job, *a: calls.append(job.node_id) or real(self, job, *a))
    ids = build(tmp_path / "streamed", states)
    assert calls == ids
    query = "SELECT node_id, encoding, checksum FROM storage ORDER BY node_id"
    size = "SELECT stored_bytes FROM storage ORDER BY node_id"
    with fipgraph.open_store(tmp_path / "whole", mode="r") as a, fipgraph.open_store(tmp_path / "streamed", mode="r") as b:
        assert a.sql(query).to_dict("list") == b.sql(query).to_dict("list")  # the same bits
        whole, streamed = a.sql(size)["stored_bytes"], b.sql(size)["stored_bytes"]
        # the same compressed bytes in all (a batched run shares its growth evenly, up to rounding;
        # the streamed path measures each node's own chunks)
        assert abs(int(whole.sum()) - int(streamed.sum())) < len(ids) and (streamed > 0).all()
        for nid, state in zip(ids, states):
            assert all(torch.equal(b.state_dict(nid)[k], v) for k, v in state.items())
