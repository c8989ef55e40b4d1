"""compressor="lz4" (fast hot chunks) and `fipgraph compact` (zstd at rest): same bits, same bytes as zstd."""

from __future__ import annotations

import torch

import fipgraph
from fipgraph.cli import main
from fipgraph.storage.compact import ZSTD, compact_store, compressor_code
from tests._chains import append_chain


def _chain(store, n: int = 6) -> list[tuple[int, dict]]:
    return append_chain(store, n, big=(400, 300), small=(10, 3))


def _chunks(root):
    return {p.relative_to(root): p.read_bytes() for p in (root / "weights.zarr").rglob("*")
            if p.is_file() and p.name.isdigit()}


def _stored(root) -> list:
    """stored_bytes of the rows with chunks of their own (shared chunks' shares depend on commit timing)."""
    with fipgraph.open_store(root, mode="r") as r:
        return r.sql("SELECT node_id, stored_bytes FROM storage WHERE node_id % 2 = 0 ORDER BY node_id").values.tolist()


def test_lz4_then_compact_equals_zstd(tmp_path, capsys):
    with fipgraph.open_store(tmp_path / "zstd") as store:
        _chain(store)
    with fipgraph.open_store(tmp_path / "lz4", compressor="lz4") as store:
        kept = _chain(store)
    hot = _chunks(tmp_path / "lz4")
    assert {compressor_code(f) for f in hot.values()} == {1, ZSTD}  # own-chunk rows lz4; shared chunks zstd
    assert sum(map(len, hot.values())) > sum(map(len, _chunks(tmp_path / "zstd").values()))
    with fipgraph.open_store(tmp_path / "lz4", mode="r") as reader:  # hot chunks read bit-exact
        assert all(torch.equal(reader.state_dict(n)[k], v) for n, sd in kept for k, v in sd.items())
    assert main(["compact", "--store", str(tmp_path / "lz4")]) == 0
    assert "chunk files recompressed" in capsys.readouterr().out
    assert _chunks(tmp_path / "lz4") == _chunks(tmp_path / "zstd")  # byte for byte what zstd would have written
    assert _stored(tmp_path / "lz4") == _stored(tmp_path / "zstd")  # stored_bytes brought up to date
    with fipgraph.open_store(tmp_path / "lz4", mode="r") as reader:
        assert all(torch.equal(reader.state_dict(n)[k], v) for n, sd in kept for k, v in sd.items())
    assert compact_store(tmp_path / "lz4").files == 0  # nothing left to do
    with fipgraph.open_store(tmp_path / "lz4") as store:  # the store goes on (zstd unless lz4 is asked for)
        store.append(torch.nn.Linear(400, 300))
    assert main(["check", "--store", str(tmp_path / "lz4")]) == 0


def test_bad_compressor_is_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="compressor='snappy'; choose 'zstd'"):
        fipgraph.open_store(tmp_path / "s", compressor="snappy")
    assert not (tmp_path / "s").exists()
