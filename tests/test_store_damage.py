"""Damaged chunks never hand back wrong weights: every read verifies, check names damaged nodes and
their dependents, and --repair deletes nothing a committed node needs."""

import shutil

import pytest
import torch

import fipgraph
from fipgraph.errors import CorruptNodeError
from fipgraph.storage.check import check_store


def walk(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """A small optimiser-like path: big enough (160 KB rows) that each node has chunk files of its own."""
    g = torch.Generator().manual_seed(seed)
    w, out = torch.randn(200, 200, generator=g), []
    for i in range(n):
        w = w - 0.01 * torch.randn(200, 200, generator=g)
        out.append({"w": w.clone(), "step": torch.tensor(i)})
    return out


def build(path, states, keyframe_every=4):
    with fipgraph.open_store(path, keyframe_every=keyframe_every) as store:
        parent = None
        for s in states:
            parent = store.append(s, parent=parent)


def row_file(path, node_id: int, name: str = "float32"):
    with fipgraph.open_store(path, mode="r") as store:
        info = store._info(node_id)
        files = store.weights.row_files(info.arch_id, name, info.row)
    assert len(files) == 1 and files[0].is_file()
    return files[0]


def flip(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit in the middle of the compressed payload
    f.write_bytes(bytes(data))


def truncate(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def delete(f):
    f.unlink()


def same(a, b):
    return all(torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8)) for k in b)


@pytest.mark.parametrize("damage", [flip, truncate, delete])
def test_damaged_node_raises_and_names_node_array_file_while_others_read_bit_exact(tmp_path, damage):
    states = walk(10)
    build(tmp_path / "s", states, keyframe_every=4)  # chains: 0-3, 4-7, 8-9
    victim = row_file(tmp_path / "s", 5)
    damage(victim)
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:
        with pytest.raises(CorruptNodeError) as err:
            store.state_dict(5)
        msg = str(err.value)
        assert "node 5" in msg and "float32" in msg and str(victim) in msg and "fipgraph check" in msg
        assert err.value.damaged_node == 5 and str(victim) in err.value.files  # with the int64 row: one checksum per node
        for later in (6, 7):  # delta-coded against node 5: never decoded from its bad bits
            with pytest.raises(CorruptNodeError) as err:
                store.state_dict(later)
            assert err.value.node_id == later and err.value.damaged_node == 5
            assert f"node {later} is delta-coded against damaged node 5" in str(err.value)
        for ok in (0, 1, 2, 3, 4, 8, 9):  # other chains and node 5's own ancestors are untouched
            assert same(store.state_dict(ok), states[ok])
    report = check_store(tmp_path / "s", progress=False)
    assert [n for n, _ in report.bad_nodes] == [5] and report.dependents == {5: [6, 7]}
    assert report.unreadable == [5, 6, 7] and not report.ok
    assert "nodes depending on it: 6, 7" in report.summary()


def test_missing_chunk_is_never_read_as_zeros_even_when_zeros_would_match(tmp_path):
    # node 1 equals node 0: its diff row is all zeros, exactly zarr's fill value for a missing chunk
    s = {"w": torch.randn(100, 100)}
    build(tmp_path / "s", [s, s])
    row_file(tmp_path / "s", 1).unlink()
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:
        with pytest.raises(CorruptNodeError, match="is missing"):
            store.state_dict(1)


def test_damaged_keyframe_in_shared_chunks_fails_every_dependent(tmp_path):
    # tiny rows share one chunk file: damaging it must fail every node in it, none silently
    states = [{"w": torch.full((3,), float(i))} for i in range(6)]
    build(tmp_path / "s", states, keyframe_every=3)
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:
        info = store._info(0)
        shared = store.weights.row_files(info.arch_id, "float32", info.row)[0]
    flip(shared)
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:
        for n in range(6):
            try:
                got = store.state_dict(n)
            except CorruptNodeError:
                continue
            assert same(got, states[n])  # a flip that changed nothing decoded may pass, but only bit-exact


def test_repair_deletes_orphans_but_never_a_damaged_or_committed_nodes_chunks(tmp_path):
    states = walk(6)
    build(tmp_path / "s", states, keyframe_every=3)
    truncate(row_file(tmp_path / "s", 4))
    backup = tmp_path / "backup"
    shutil.copytree(tmp_path / "s" / "weights.zarr", backup)
    orphan_dir = row_file(tmp_path / "s", 0).parent.parent / "999"
    orphan_dir.mkdir()
    (orphan_dir / "0").write_bytes(b"stale")  # an uncommitted row's chunk
    before = {p for p in (tmp_path / "s" / "weights.zarr").rglob("*") if p.is_file()}
    report = check_store(tmp_path / "s", repair=True, progress=False)
    after = {p for p in (tmp_path / "s" / "weights.zarr").rglob("*") if p.is_file()}
    assert report.removed == 1 and before - after == {orphan_dir / "0"}
    assert [n for n, _ in report.bad_nodes] == [4] and report.dependents == {4: [5]}
    for f in after:  # every other file, damaged or not, is byte-identical to the backup
        assert f.read_bytes() == (backup / f.relative_to(tmp_path / "s" / "weights.zarr")).read_bytes()
