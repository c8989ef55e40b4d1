"""Chunk files written and read without zarr's pipeline are exactly zarr's: zarr reads ours, we read zarr's,
multi-chunk rows round-trip, stored_bytes is the files' size, and a damaged header is refused."""

import numpy as np
import pytest
import torch
import zarr

import fipgraph
from fipgraph.storage import weights
from fipgraph.storage.weights import WeightArrays


def residual_like(n: int, seed: int) -> np.ndarray:
    """Zig-zag residual-like words: small integers, mostly zero high bytes (what the store compresses)."""
    return np.random.default_rng(seed).geometric(1e-4, size=n).astype(np.uint32)


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(weights, "MAX_CHUNK_WORDS", 4096)  # a 40960-word row (160 KB: chunks of its own) is 10 chunks of 4096


def test_direct_writes_read_back_through_zarr_and_zarr_writes_read_back_direct(tmp_path, small_chunks):
    arrays = WeightArrays(tmp_path / "w", read_only=False)
    rows = [residual_like(40960, s) for s in range(3)]
    arrays.write_rows("a", "float32", 0, rows[0][None])  # creates the array; one-row chunks: direct
    assert arrays.is_direct("a", "float32")
    arrays.write_slice("a", "float32", 1, 0, rows[1][:8192], 40960)  # two chunks at a time, in parallel
    for lo in range(8192, 40960, 8192):
        arrays.write_slice("a", "float32", 1, lo, rows[1][lo:lo + 8192], 40960)
    plain = zarr.open_array(zarr.storage.LocalStore(tmp_path / "w"), path="a/float32", mode="r+")
    plain[2] = rows[2]  # zarr's own write of row 2
    assert plain.chunks == (1, 4096)
    for r in range(3):
        assert np.array_equal(plain[r], rows[r])  # zarr decodes the direct writes
        assert np.array_equal(arrays.read_row("a", r, {"float32": (np.uint32, 40960)})["float32"], rows[r])
    assert np.array_equal(arrays.read_words("a", "float32", 2, 5000, 13000), rows[2][5000:13000])
    assert np.array_equal(arrays.read_words("a", "float32", 1, 4095, 4097), rows[1][4095:4097])


def test_stored_bytes_are_the_chunk_files_and_reads_are_bit_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    w, states = torch.randn(300, 300, generator=g), []
    for _ in range(4):
        w = w - 1e-3 * torch.randn(300, 300, generator=g)
        states.append({"w": w.clone()})
    with fipgraph.open_store(tmp_path / "s") as store:
        parent = None
        for s in states:
            parent = store.append(s, parent=parent)
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:
        st = store.sql("SELECT node_id, row, stored_bytes FROM storage ORDER BY node_id")
        arch = store._info(0).arch_id
        assert store.weights.is_direct(arch, "float32")
        for nid, row, nbytes in st.itertuples(index=False):
            files = store.weights.row_files(arch, "float32", int(row))
            assert nbytes == sum(f.stat().st_size for f in files) > 0
            assert torch.equal(store.state_dict(nid)["w"].view(torch.int32), states[nid]["w"].view(torch.int32))
        assert st["stored_bytes"].iloc[1:].max() < 0.8 * 300 * 300 * 4  # residual rows compress


def test_a_chunk_whose_header_does_not_match_its_length_is_refused(tmp_path):
    arrays = WeightArrays(tmp_path / "w", read_only=False)
    row = residual_like(100_000, 0)
    arrays.write_rows("a", "uint32", 0, row[None])
    f = arrays.row_files("a", "uint32", 0)[0]
    f.write_bytes(f.read_bytes() + b"extra")  # still decompresses, but it is not the frame that was written
    with pytest.raises(ValueError, match="Blosc header says"):
        arrays.read_row("a", 0, {"uint32": (np.uint32, 100_000)})
    f.write_bytes(b"\x02")  # shorter than a header
    with pytest.raises(ValueError, match="truncated or not a chunk"):
        arrays.read_words("a", "uint32", 0, 0, 10)


def test_rows_that_share_chunks_keep_going_through_zarr(tmp_path):
    arrays = WeightArrays(tmp_path / "w", read_only=False)
    arrays.write_rows("a", "float32", 0, np.arange(6, dtype=np.uint32).reshape(2, 3))
    assert not arrays.is_direct("a", "float32") and arrays.direct("a", "float32") is None
    assert arrays.read_row("a", 1, {"float32": (np.uint32, 3)})["float32"].tolist() == [3, 4, 5]
