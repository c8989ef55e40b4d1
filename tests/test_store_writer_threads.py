"""writer_threads: large lossless rows encoded and written on a pool give the same store as one thread."""

from __future__ import annotations

import pytest
import torch

import fipgraph
from fipgraph.errors import WriterError


def _chain(store, n: int, seed: int = 0) -> list[tuple[int, dict]]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(400, 300)  # 481 KB rows: one chunk file each, so they go to the pool
    out, parent = [], None
    for i in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3 * torch.randn_like(p))
        if i == n // 2:  # a branch off an older node: its parent comes from the writer's recent rows or disk
            parent = out[n // 4][0]
        parent = store.append(model, parent=parent, step=i)
        out.append((parent, {k: v.clone() for k, v in model.state_dict().items()}))
    return out


COLUMNS = "node_id, parent_id, l2_norm, sparsity, path_length"


def test_threads_give_the_same_store(tmp_path):
    stores = {}
    for threads in (1, 3):
        with fipgraph.open_store(tmp_path / str(threads), writer_threads=threads, keyframe_every=8) as store:
            kept = _chain(store, 40)
            stores[threads] = (store.sql(f"SELECT {COLUMNS} FROM nodes ORDER BY node_id"),
                               store.sql("SELECT node_id, checksum, encoding, stored_bytes FROM storage ORDER BY node_id"),
                               store.sql("SELECT * FROM edges ORDER BY dst"))
        with fipgraph.open_store(tmp_path / str(threads), mode="r") as reader:
            for node, state in kept:
                got = reader.state_dict(node)
                assert all(torch.equal(got[k], v) for k, v in state.items())
    for one, many in zip(stores[1], stores[3]):
        assert one.equals(many)  # bit-identical rows, norms, distances, path lengths, bytes
    files = lambda d: {p.relative_to(d): p.read_bytes() for p in (d / "weights.zarr").rglob("*") if p.is_file()}  # noqa: E731
    assert files(tmp_path / "1") == files(tmp_path / "3")


def test_bad_writer_threads_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="writer_threads=0 must be an integer >= 1"):
        fipgraph.open_store(tmp_path / "s", writer_threads=0)
    with fipgraph.open_store(tmp_path / "s") as store:  # the lock was let go
        assert len(store) == 0


def test_a_failing_pool_task_surfaces_as_writer_error(tmp_path, monkeypatch):
    store = fipgraph.open_store(tmp_path / "s", writer_threads=2)
    try:
        def broken(*args, **kwargs):
            raise OSError("disk full (injected)")

        monkeypatch.setattr(store.weights, "write_rows", broken)
        store.append(torch.nn.Linear(400, 300))
        with pytest.raises(WriterError, match="disk full"):
            store.flush()
    finally:
        with pytest.raises(WriterError):
            store.close()
    with fipgraph.open_store(tmp_path / "s", mode="r") as reader:
        assert len(reader) == 0  # nothing committed


def test_a_pool_thread_that_finishes_first_loses_nothing(tmp_path, monkeypatch):
    """A pooled node's thread may write it (and drop its rows) before the writer thread goes on: run every
    pooled task at once, inside submit, to make that order certain (it once failed 1 CI run in ~10)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    def submit_now(self, fn, *args, **kwargs):
        done = Future()
        done.set_result(fn(*args, **kwargs))
        return done

    monkeypatch.setattr(ThreadPoolExecutor, "submit", submit_now)
    with fipgraph.open_store(tmp_path / "s", writer_threads=3, keyframe_every=8) as store:
        kept = _chain(store, 12)
    with fipgraph.open_store(tmp_path / "s", mode="r") as reader:
        for node, state in kept:
            assert all(torch.equal(reader.state_dict(node)[k], v) for k, v in state.items()), node
