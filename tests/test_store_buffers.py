"""Reused snapshot buffers never leak one node's bits into another: branches off nodes whose buffers were
retired within the same batch, keyframes written from their snapshot, all read back bit-exact."""

import numpy as np
import torch

import fipgraph
from fipgraph.storage.buffers import BufferPool


def states(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w, out = torch.randn(300, 300, generator=g), []  # 360 KB rows: written as soon as encoded, pooled
    for _ in range(n):
        w = w - 1e-3 * torch.randn(300, 300, generator=g)
        out.append({"w": w.clone()})
    return out


def test_branches_off_retired_nodes_in_one_batch_read_back_bit_exact(tmp_path):
    s = states(12)
    row = 300 * 300 * 4
    # recent_bytes of one row: every node but the newest two is retired as soon as the next arrives
    with fipgraph.open_store(tmp_path / "s", recent_bytes=row, keyframe_every=5, commit_interval=5.0) as store:
        writer, given, in_use = store._writer, [], []
        real_give = writer.buffers.give

        def checked_give(arrays):  # a buffer handed back must be unreachable from anything the writer may read
            arrays = list(arrays)
            live = [a for rows in [*writer._unwritten.values(), *writer._recent.values()] for a in rows.values()]
            in_use.extend(a for a in arrays if any(a is b for b in live))
            given.extend(arrays)
            real_give(arrays)

        writer.buffers.give = checked_give
        ids, parent = [], None
        for i in range(8):
            parent = store.append(s[i], parent=parent)
            ids.append(parent)
        # parents retired earlier in the same batch: their buffers may only be reused after it
        ids.append(store.append(s[8], parent=ids[1]))
        ids.append(store.append(s[9], parent=ids[0]))
        ids.append(store.append(s[10], parent=ids[-1]))
        store.flush()
        assert len(given) >= 6 and not in_use  # snapshots really are handed back, none still readable...
        ids.append(store.append(s[11], parent=ids[-1]))  # ...and refilled by the next append
        store.flush()
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:
        for nid, state in zip(ids, s):
            assert torch.equal(store.state_dict(nid)["w"].view(torch.int32), state["w"].view(torch.int32))


def test_pool_keeps_only_own_arrays_within_its_bounds():
    pool = BufferPool(max_idle_bytes=3 * 4000)
    a, b, c, d = (pool.take(np.uint32, 1000) for _ in range(4))
    pool.give([a, b, c, d, np.arange(10)[2:]])  # a view is never pooled (its base owns the memory)
    assert sum(len(v) for v in pool._idle.values()) == 3  # the byte bound
    got = pool.take(np.uint32, 1000)
    assert any(got is x for x in (a, b, c)) and pool.take(np.uint64, 1000).dtype == np.uint64
