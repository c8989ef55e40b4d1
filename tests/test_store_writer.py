"""The writer as one primitive: failures surface as WriterError on the next call, on flush and at
exit; flush never waits forever; the producer blocks on a bounded queue and the build log says so;
ensemble results have their own table, and old stores migrate on open."""

import logging
import subprocess
import sys
import threading
import time

import duckdb
import pytest
import torch

import fipgraph
from fipgraph.errors import FipgraphError, WriterError
from fipgraph.storage import writer as writer_module


def boom(*_args, **_kwargs):
    raise OSError("disk full (injected)")


def test_commit_failure_surfaces_on_next_append_and_on_flush_with_its_cause(tmp_path):
    store = fipgraph.open_store(tmp_path / "s")
    first = store.append({"w": torch.ones(4)})
    store.flush()
    store.catalog.commit = boom
    store.append({"w": torch.zeros(4)}, parent=first)
    with pytest.raises(WriterError, match="disk full") as err:
        store.flush()
    assert isinstance(err.value.__cause__, OSError) and isinstance(err.value, RuntimeError)
    with pytest.raises(WriterError, match="Reopen the store"):
        store.append({"w": torch.zeros(4)}, parent=first)
    with pytest.raises(WriterError):
        store.close()  # the final commit is reported, not swallowed
    with fipgraph.open_store(tmp_path / "s", mode="r") as back:
        assert back.sql("SELECT node_id FROM nodes")["node_id"].tolist() == [first]


def test_weight_write_failure_surfaces_too(tmp_path):
    with pytest.raises(WriterError, match="disk full"):
        with fipgraph.open_store(tmp_path / "s") as store:
            store.weights.write_rows = boom
            store.append({"w": torch.ones(4)})
            store.flush()


def test_flush_notices_a_dead_writer_thread_and_honours_its_timeout(tmp_path):
    with fipgraph.open_store(tmp_path / "s") as store:
        slow = threading.Event()
        write = store._writer._write_weights
        store._writer._write_weights = lambda jobs: (slow.wait(10), write(jobs))
        store.append({"w": torch.ones(4)})
        t0 = time.monotonic()
        with pytest.raises(WriterError, match="within 0.3 s"):
            store.flush(timeout=0.3)
        assert time.monotonic() - t0 < 2
        slow.set()
        store.flush(timeout=10)  # the queue was kept: it commits once the writer catches up
        assert len(store.sql("SELECT * FROM nodes")) == 1
        w = store._writer
        w.stop()
        w._stopping = False  # as if the thread had ended on its own, without recording an error
        t0 = time.monotonic()
        with pytest.raises(WriterError, match="thread is gone"):
            store.flush()
        assert time.monotonic() - t0 < 2
        store._writer = None  # nothing left to close


def test_producer_blocks_on_a_byte_bounded_queue_and_the_build_log_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(writer_module, "STALL_REPORT_EVERY", 0.2)
    node_bytes = 64 * 1024 * 4
    peak = []
    with fipgraph.open_store(tmp_path / "s", max_pending_bytes=2 * node_bytes) as store:
        write = store._writer._write_weights

        def slow_write(jobs):
            peak.append(store._writer._pending_bytes)
            time.sleep(0.05)
            write(jobs)

        store._writer._write_weights = slow_write
        parent = None
        with caplog.at_level(logging.WARNING, logger="fipgraph.build.store"):
            t0 = time.monotonic()
            for i in range(12):
                parent = store.append({"w": torch.full((64 * 1024,), float(i))}, parent=parent)
            appended = time.monotonic() - t0
        assert max(peak) <= 2 * node_bytes  # never more queued than the bound
        # the producer waited for the writer: 12 unblocked appends take ~5 ms, 12 nodes at 50 ms per write batch
        # of at most two nodes ~0.3 s (0.27 s once on a loaded machine: the bound is three batches)
        assert appended > 0.15
        assert store._writer.stalled_seconds > 0.2
        assert any("saving is the bottleneck" in r.getMessage() for r in caplog.records)
        store.flush()
        assert [float(store.state_dict(n)["w"][0]) for n in range(12)] == [float(i) for i in range(12)]


EXIT_SCRIPT = """
import sys, torch, fipgraph
store = fipgraph.open_store(sys.argv[1])
store.append({"w": torch.ones(4)})
store.flush()
def boom(*a, **k):
    raise OSError("disk full (injected)")
store.catalog.commit = boom
store.append({"w": torch.zeros(4)}, parent=0)
# no close(): the atexit hook makes the final commit, which fails
"""


def test_failed_final_commit_at_exit_is_reported(tmp_path):
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(tmp_path / "s")], capture_output=True, text=True,
                          timeout=120)
    assert "final commit of store" in proc.stderr and "disk full" in proc.stderr


def test_ensemble_evals_table_and_migration_of_old_stores(tmp_path):
    with fipgraph.open_store(tmp_path / "s") as store:
        a = store.append({"w": torch.ones(3)})
        b = store.append({"w": torch.zeros(3)}, parent=a)
        store.add_ensemble("pair", [a, b])
        store.add_ensemble_evals("pair", {"digits": {"accuracy": 0.9}})
        with pytest.raises(FipgraphError, match="no ensemble named 'nope'"):
            store.add_ensemble_evals("nope", {"accuracy": 1.0})
        got = store.sql("SELECT name, dataset, metric, value FROM ensemble_evals")
        assert got.values.tolist() == [["pair", "digits", "accuracy", 0.9]]
        assert store.sql("SELECT count(*) AS n FROM evals")["n"][0] == 0  # not an eval of a member
        store.add_evals(a, {"ensemble:pair": {"robust_accuracy": 0.5}})  # the old convention still lands there too
        assert len(store.sql("SELECT * FROM ensemble_evals WHERE metric = 'robust_accuracy'")) == 1
    # an old store: the table did not exist and ensemble results were evals of the first member
    con = duckdb.connect(str(tmp_path / "s" / "metrics.duckdb"))
    con.execute("DROP TABLE ensemble_evals")
    con.close()
    for _ in range(2):  # migration is idempotent
        with fipgraph.open_store(tmp_path / "s") as store:
            got = store.sql("SELECT name, dataset, metric, value FROM ensemble_evals")
            assert got.values.tolist() == [["pair", "", "robust_accuracy", 0.5]]


FORGOTTEN_CLOSE = """
import sys, torch, fipgraph
store = fipgraph.open_store(sys.argv[1])
for i in range(5):
    store.append({"w": torch.full((100000,), float(i))})
# no close() and no flush(): the exit hook must commit all five before zarr's thread pool shuts down
"""


def test_forgotten_close_still_commits_every_queued_node_at_exit(tmp_path):
    # before this was fixed, exit hooks ran after concurrent.futures' shutdown: every zarr write failed
    # and the failure was swallowed, so all 5 nodes were silently lost
    proc = subprocess.run([sys.executable, "-c", FORGOTTEN_CLOSE, str(tmp_path / "s")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "failed" not in proc.stderr, proc.stderr
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:
        assert [float(store.state_dict(n)["w"][0]) for n in range(len(store))] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_durable_fsyncs_every_chunk_file_before_the_commit(tmp_path, monkeypatch):
    import os as os_module

    events = []
    real_fsync = os_module.fsync
    monkeypatch.setattr(os_module, "fsync", lambda fd: (events.append(os_module.readlink(f"/proc/self/fd/{fd}")),
                                                        real_fsync(fd))[1])
    with fipgraph.open_store(tmp_path / "s", durable=True, commit_interval=30) as store:  # one batch
        commit = store.catalog.write
        store.catalog.write = lambda fn: (events.append("COMMIT"), commit(fn))[1]
        a = store.append({"w": torch.randn(70_000)})
        store.append({"w": torch.randn(70_000)}, parent=a)
        store.flush()
        files = [f for n in (0, 1) for f in store.weights.row_files(store._info(n).arch_id, "float32", store._info(n).row)]
    first_commit = events.index("COMMIT")
    assert all(str(f) in events[:first_commit] for f in files)  # chunks on disk before the commit point
    assert str(tmp_path / "s" / "metrics.duckdb") in events[first_commit:]  # and the catalog after it


class Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_optimizer_state_lives_where_the_store_says_and_loads_without_running_code(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    with fipgraph.open_store(tmp_path / "s") as store:
        path = store.files.save_optimizer_state(0, 7, opt.state_dict())
        assert path == tmp_path / "s" / "optim" / "run-0.pt" and store.files.build_log == tmp_path / "s" / "build.log"
        saved = store.files.load_optimizer_state(0)
        assert saved["node"] == 7
        fresh = torch.optim.Adam(model.parameters())
        fresh.load_state_dict(saved["state"])
        assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
        assert store.files.load_optimizer_state(1) is None
        torch.save({"node": 7, "state": Evil()}, path)  # a tampered file
        with pytest.raises(FipgraphError, match="cannot be loaded safely"):
            store.files.load_optimizer_state(0)
        store.files.drop_optimizer_state(0)
        assert not path.exists()
