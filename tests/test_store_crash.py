"""Crash safety and concurrency: SIGKILL a writer at random moments; read while it writes."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import fipgraph
from fipgraph.storage.check import check_store

sys.path.insert(0, str(Path(__file__).parent))
from _store_writer import weights  # noqa: E402

WRITER = str(Path(__file__).parent / "_store_writer.py")


def spawn_writer(path, n, delay=0.0):
    proc = subprocess.Popen([sys.executable, WRITER, str(path), str(n), str(delay)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def verify_every_node(path) -> int:
    with fipgraph.open_store(path, mode="r") as store:
        rows = store.sql("SELECT node_id, parent_id, tags FROM nodes ORDER BY node_id")
        assert rows["node_id"].tolist() == list(range(len(rows)))  # only whole nodes, no gaps
        for node_id, seed in zip(rows["node_id"], rows["tags"].map(lambda t: __import__("json").loads(t)["seed"])):
            expect, got = weights(seed), store.state_dict(int(node_id))
            assert all(torch.equal(got[k], expect[k]) for k in expect), f"node {node_id} differs"
        evals = store.sql("SELECT count(*) AS c FROM evals")["c"][0]
        assert evals == len(rows)  # a node's evals commit with it, never apart
    return len(rows)


def committed_count(path) -> int:
    with fipgraph.open_store(path, mode="r") as store:
        return int(store.sql("SELECT count(*) AS c FROM nodes")["c"][0])


def wait_for_commit(path, more_than: int, timeout: float = 120.0) -> int:
    """Poll as a reader until the writer has committed past ``more_than`` nodes (load-independent)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        n = committed_count(path)
        if n > more_than:
            return n
        time.sleep(0.05)
    raise AssertionError(f"the writer committed nothing past {more_than} nodes in {timeout} s")


def test_sigkill_at_random_moments_loses_no_committed_node(tmp_path):
    path = tmp_path / "s"
    rng = random.Random(0)
    before = 0
    for i in range(20):
        # 20 ms between appends: a commit still lands every ~20 ms, but the store stays small enough that
        # verifying every node bit for bit after each of the 20 kills stays cheap
        proc = spawn_writer(path, 100_000, delay=0.02)
        # even rounds: kill at a random moment after the writer's first commit (so mid-build on any machine
        # load); odd rounds: a random moment early on, possibly before any commit
        seen = wait_for_commit(path, before) if i % 2 == 0 else before
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        count = verify_every_node(path)
        assert count >= seen  # every node a reader saw committed survived the kill
        assert check_store(path, progress=False).bad_nodes == []
        with fipgraph.open_store(path) as store:  # and the store accepts appends again
            parent = int(store.sql("SELECT max(node_id) AS m FROM nodes")["m"].fillna(-1)[0])
            n = store.append(weights(len(store)), parent=None if parent < 0 else parent,
                             tags={"seed": len(store)}, metrics={"x": 0.0})
        with fipgraph.open_store(path, mode="r") as store:  # the appended node reads back (the next round verifies all)
            assert len(store) == n + 1 and torch.equal(store.state_dict(n)["w"], weights(n)["w"])
        before = n + 1
    assert verify_every_node(path) == before >= 20 + 10  # the writers committed nodes of their own (>= 1 in each even round), not only the test's appends
    repaired = check_store(path, repair=True, progress=False)
    assert repaired.ok and check_store(path, progress=False).orphans == []


def test_reader_sees_committed_nodes_while_writer_appends(tmp_path):
    path = tmp_path / "s"
    fipgraph.open_store(path).close()
    proc = spawn_writer(path, 150, delay=0.03)  # 4.5 s of appends: a reader slowed by a loaded machine still sees several counts
    seen = []
    with fipgraph.open_store(path, mode="r") as reader:
        while proc.poll() is None or not seen or seen[-1] < 150:
            count = int(reader.sql("SELECT count(*) AS c FROM nodes")["c"][0])
            seen.append(count)
            if count:  # the newest committed node reads back whole, mid-build
                last = count - 1
                assert torch.equal(reader.state_dict(last)["w"], weights(last)["w"])
            if proc.poll() is not None and count == 150:
                break
    assert proc.wait() == 0
    assert seen == sorted(seen) and seen[-1] == 150
    assert len(set(seen)) > 3  # it really read while nodes were arriving
    assert verify_every_node(path) == 150


def test_check_finds_orphans_and_corruption(tmp_path):
    path = tmp_path / "s"
    with fipgraph.open_store(path) as store:
        parent = None
        for i in range(5):
            parent = store.append(weights(i), parent=parent, tags={"seed": i})
        arch = store.sql("SELECT arch_id FROM archs")["arch_id"][0]
    orphan = path / "weights.zarr" / arch / "float32" / "c" / "9" / "0"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a killed writer")
    temp = path / "weights.zarr" / arch / "float32" / "c" / "0" / "0.1234.partial"  # rows 0-15 share chunk 0
    temp.write_bytes(b"x")
    report = check_store(path, progress=False)
    assert not report.ok and sorted(report.orphans) == sorted([orphan, temp]) and report.bad_nodes == []
    from fipgraph.cli import main

    assert main(["check", "--store", str(path)]) == 1
    assert main(["check", "--store", str(path), "--repair"]) == 0
    assert not orphan.exists() and not temp.exists()
    assert main(["check", "--store", str(path)]) == 0
    chunk = path / "weights.zarr" / arch / "float32" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    report = check_store(path, progress=False)
    # one shared chunk, and each row decodes from the last: every node is damaged or depends on a damaged one
    assert report.unreadable == [0, 1, 2, 3, 4] and report.bad_nodes and not report.ok
