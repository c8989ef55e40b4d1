"""Saving a node through host snapshots (issue 9 §2, "saving a node must not stall the device").

On CUDA the copies are non-blocking into pinned buffers behind an event (tests/test_cuda.py). Here the
same code path runs with synchronous copies (``DEFERRED_DEVICES`` extended to the CPU), which checks
what does not depend on the device: a node's bytes are the weights at its step even when the weights
change right after the save, buffers are reused, the queue is bounded, parents chain through nodes not
yet appended, ties survive, a failed append stores nothing after it, and a whole build stores exactly
the nodes of an immediate save."""

from __future__ import annotations

import importlib

import pytest
import torch

torch.set_num_threads(1)

import fipgraph  # noqa: E402
from fipgraph.errors import NonFiniteWeightsError  # noqa: E402
from fipgraph.models import build_model  # noqa: E402
from fipgraph.path import build  # noqa: E402
from fipgraph.path.config.schema import build_config  # noqa: E402
from fipgraph.path.engine.snapshot import PENDING, NodeSaver  # noqa: E402

snapshot_mod = importlib.import_module("fipgraph.path.engine.snapshot")
CPU = torch.device("cpu")
SPEC = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [32], "n_classes": 10}}


@pytest.fixture
def deferred(monkeypatch):
    monkeypatch.setattr(snapshot_mod, "DEFERRED_DEVICES", ("cpu", "cuda"))


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(SPEC)


def _copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _step(model: torch.nn.Module, by: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(by)


def test_a_node_holds_the_weights_at_its_step_not_a_later_one(tmp_path, deferred):
    model = _model()
    with fipgraph.open_store(tmp_path / "s") as store:
        run = store.start_run("w", "finetune", {})
        saver = NodeSaver(store, CPU, depth=2)
        expected = []
        parent = None
        for step in range(1, 4):
            expected.append(_copy(model))
            distance = torch.tensor(0.5 * step)
            assert saver.save(model, parent=parent, distance=distance, distance_per=2, run=run, step=step) is None
            parent = PENDING
            _step(model, 1.0)  # the next optimizer step changes the weights before the node is appended
            assert saver.in_flight <= 2  # bounded: a third save appended the oldest first
        assert saver.in_flight == 2
        last = saver.drain()
        nodes = store.sql("SELECT n.node_id, n.parent_id, n.step, e.output_distance FROM nodes n "
                          "LEFT JOIN edges e ON e.dst = n.node_id ORDER BY n.node_id")
        assert list(nodes["step"]) == [1, 2, 3] and last == int(nodes["node_id"].iloc[-1])
        assert nodes["parent_id"].isna().iloc[0] and list(nodes["parent_id"][1:]) == list(nodes["node_id"][:-1])
        assert nodes["output_distance"].isna().iloc[0]  # a root has no edge
        assert list(nodes["output_distance"][1:]) == pytest.approx([0.5, 0.75])
        for nid, want in zip(nodes["node_id"], expected):
            got = store.state_dict(int(nid))
            assert all(torch.equal(got[k], want[k]) for k in want)
        assert not torch.equal(store.state_dict(int(last))["head.weight"], model.state_dict()["head.weight"])


def test_buffers_are_reused_and_poll_appends_in_order(tmp_path, deferred):
    model = _model()
    with fipgraph.open_store(tmp_path / "s") as store:
        run = store.start_run("w", "finetune", {})
        saver = NodeSaver(store, CPU, depth=2)
        saver.save(model, parent=None, run=run, step=1)
        first = saver._flight[0].buffers
        saver.poll()  # synchronous copies have arrived: appended at once
        assert saver.in_flight == 0 and saver.last_id is not None
        _step(model, 1.0)
        saver.save(model, parent=PENDING, run=run, step=2)
        assert saver._flight[0].buffers is first  # the same host buffers take the next snapshot
        assert first.tensors["head.weight"].data_ptr() != model.head.weight.data_ptr()
        assert saver.drain() == saver.last_id
        got = store.state_dict(saver.last_id)
        assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_tied_weights_share_one_host_buffer_and_stay_tied(tmp_path, deferred):
    model = _model()
    model.extra = torch.nn.Linear(32, 10)
    model.extra.weight = model.head.weight  # tied
    with fipgraph.open_store(tmp_path / "s") as store:
        saver = NodeSaver(store, CPU)
        saver.save(model, parent=None, step=0)
        buffers = saver._flight[0].buffers.tensors
        assert buffers["extra.weight"] is buffers["head.weight"]
        nid = saver.drain()
        got = store.state_dict(nid)
        assert got["extra.weight"].data_ptr() == got["head.weight"].data_ptr()  # reloaded tied
        assert torch.equal(got["extra.weight"], model.head.weight.detach())


def test_a_failed_append_stores_nothing_after_it(tmp_path, deferred):
    model = _model()
    with fipgraph.open_store(tmp_path / "s") as store:
        saver = NodeSaver(store, CPU, depth=3)
        with torch.no_grad():
            model.head.bias[0] = float("nan")
        saver.save(model, parent=None, step=1)
        with torch.no_grad():
            model.head.bias[0] = 0.0
        saver.save(model, parent=PENDING, step=2)  # a child of the node that cannot be stored
        with pytest.raises(NonFiniteWeightsError, match="head.bias"):
            saver.drain()
        assert saver.in_flight == 0 and store.sql("SELECT count(*) AS n FROM nodes")["n"][0] == 0


def test_after_an_error_the_nodes_taken_before_it_are_stored_and_a_second_error_only_logged(tmp_path, deferred,
                                                                                              caplog):
    model = _model()
    with fipgraph.open_store(tmp_path / "s") as store:
        saver = NodeSaver(store, CPU)
        saver.save(model, parent=None, step=1)
        saver.drain_after_error("w")
        assert saver.in_flight == 0 and store.sql("SELECT count(*) AS n FROM nodes")["n"][0] == 1
        with torch.no_grad():
            model.head.bias[0] = float("inf")
        saver.save(model, parent=PENDING, step=2)
        saver.drain_after_error("w")  # does not raise: the walk's own error is the one to report
        assert "w: node(s) taken before the error could not be stored" in caplog.text and saver.in_flight == 0


def test_a_store_that_reads_the_optimizer_at_each_append_is_never_deferred(deferred):
    class RayLike:  # fipgraph.scale.shard.RemoteStore ships the run's current optimizer state with each node
        checkpoint_of = None

    assert NodeSaver(object(), CPU).deferred and not NodeSaver(RayLike(), CPU).deferred


def test_an_immediate_device_appends_at_once(tmp_path):
    model = _model()
    with fipgraph.open_store(tmp_path / "s") as store:
        saver = NodeSaver(store, CPU)
        assert not saver.deferred
        root = saver.save(model, parent=None, step=0)
        nid = saver.save(model, parent=PENDING, distance=torch.tensor(3.0), distance_per=3, step=1)
        assert root is not None and nid == saver.last_id and saver.in_flight == 0
        edge = store.sql("SELECT src, output_distance FROM edges WHERE dst = ?", [nid])
        assert int(edge["src"][0]) == root and float(edge["output_distance"][0]) == pytest.approx(1.0)


def _raw() -> dict:
    return {
        "name": "d",
        "data": {"source": "digits", "split": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]},
        "model": SPEC,
        "defaults": {"save_every": 3, "eval_every": 6, "probe_size": 8, "memory_size": 60, "device": "cpu"},
        "runs": [{"name": "t1", "op": "finetune", "task": 1, "steps": 9},
                 {"name": "c", "op": "continual", "from": "t1", "task": 2, "steps": 9, "replicas": 2}],
    }


def _everything(store_dir) -> tuple:
    with fipgraph.open_store(store_dir, "r") as s:
        nodes = s.sql("SELECT n.node_id, n.parent_id, n.step, e.output_distance, r.name FROM nodes n "
                      "JOIN runs r USING (run_id) LEFT JOIN edges e ON e.dst = n.node_id ORDER BY r.name, n.step")
        evals = s.sql("SELECT r.name, n.step, e.dataset, e.metric, e.value FROM evals e JOIN nodes n USING (node_id) "
                      "JOIN runs r USING (run_id) ORDER BY r.name, n.step, e.dataset, e.metric")
        weights = {(name, int(step)): s.state_dict(int(nid)) for nid, step, name in
                   zip(nodes["node_id"], nodes["step"], nodes["name"])}
        by_id = dict(zip(nodes["node_id"], zip(nodes["name"], nodes["step"])))
        edges = sorted((by_id[c], by_id.get(p)) for c, p in zip(nodes["node_id"], nodes["parent_id"]))
    rows = [[name, int(step), None if od != od else od]  # NaN (no edge: a root) != NaN
            for name, step, od in nodes[["name", "step", "output_distance"]].values.tolist()]
    return rows, evals.values.tolist(), weights, edges


def test_a_build_through_snapshots_stores_what_an_immediate_save_stores(tmp_path, monkeypatch):
    now = build(build_config(_raw()), tmp_path / "now", progress=False)
    with monkeypatch.context() as m:
        m.setattr(snapshot_mod, "DEFERRED_DEVICES", ("cpu", "cuda"))
        stopped = build(build_config(_raw()), tmp_path / "later", progress=False, max_steps=13)  # c stops at 4
        assert stopped.status == "interrupted" and stopped.runs[-1].last_node >= 0
        later = build(build_config(_raw()), tmp_path / "later", progress=False)
    assert now.status == later.status == "finished"
    whole = build(build_config(_raw()), tmp_path / "whole", progress=False, max_steps=13)
    whole = build(build_config(_raw()), tmp_path / "whole", progress=False)  # the same stop, saved at once
    a, b = _everything(tmp_path / "whole"), _everything(tmp_path / "later")
    assert a[0] == b[0] and a[1] == b[1] and a[3] == b[3]  # nodes, distances, evals and edges
    assert a[2].keys() == b[2].keys()
    for key in a[2]:
        assert all(torch.equal(a[2][key][k], b[2][key][k]) for k in a[2][key]), key
    assert [r.last_node for r in later.runs] == [r.last_node for r in whole.runs]
