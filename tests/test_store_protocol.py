"""The store interface the run engine uses (fipgraph.storage.protocol.EngineStore): one conformance suite
that the local Store and a Ray worker's RemoteStore both pass, by real calls (the second through a real
StoreWriter actor)."""

from __future__ import annotations

import pytest
import torch

import fipgraph
from fipgraph.models import build_model
from fipgraph.query._common import node_or_run
from fipgraph.storage.protocol import EngineStore, OptimizerStates
from fipgraph.storage.sql import NodeAt


def _model(value: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "kwargs": {"in_features": 8, "hidden": [4], "n_classes": 3}})
    with torch.no_grad():
        next(model.parameters()).fill_(value)
    return model


def _conformance(store) -> None:
    """What the engine does with a store: a run, nodes with steps and tags, evaluations, optimizer state."""
    assert isinstance(store, EngineStore) and isinstance(store.files, OptimizerStates)
    assert store.find_run("r") is None
    run = store.start_run("r", "sparsify", {"run": {"task": 2}})
    assert store.last_node(run) is None and store.first_tagged(run, "projection") is None
    a = store.append(_model(0.0), run=run, step=0)
    b = store.append(_model(1.0), parent=a, run=run, step=8, tags={"projection": True, "sparsity": 0.5})
    c = store.append(_model(2.0), parent=b, run=run, step=12, tags={"final_projection": True})
    late = store.append(_model(3.0), parent=a, run=run, step=4)  # appended last, but not furthest along
    store.add_evals(c, {"task1": {"accuracy": 0.5}})
    store.flush()
    ids = [int(getattr(store, "resolve", lambda n: n)(n)) for n in (a, b, c, late)]
    assert store.has_evals(c) and not store.has_evals(b)
    assert store.last_node(run) == NodeAt(ids[2], 12, {"final_projection": True})  # by step, not by id
    assert store.first_tagged(run, "projection") == NodeAt(ids[1], 8, {"projection": True, "sparsity": 0.5})
    assert store.node_tags(b) == {"projection": True, "sparsity": 0.5} and store.node_tags(a) == {}
    assert store.node(c)["parent_id"] == ids[1] and store.arch_spec(c)["model"]["name"] == "mlp"
    assert store.run_by_id(run)["config"] == {"run": {"task": 2}} == store.find_run("r")["config"]
    assert store.run_by_id(run + 100) is None
    first = next(iter(_model(0.0).state_dict()))
    assert torch.equal(store.state_dict(c)[first], _model(2.0).state_dict()[first])
    assert torch.equal(store.load_into(_model(9.0), b).state_dict()[first], _model(1.0).state_dict()[first])
    store.files.save_optimizer_state(run, c, {"optimizer": {"step": 12}})
    assert store.files.load_optimizer_state(run)["node"] == ids[2]
    store.files.drop_optimizer_state(run)
    store.set_run_status(run, "interrupted")
    store.finish_run(run, "finished")
    assert store.find_run("r")["status"] == "finished"


def test_the_local_store_satisfies_the_engine_protocol(tmp_path):
    with fipgraph.open_store(tmp_path / "s") as store:
        _conformance(store)
        assert node_or_run(store, "r") == store.last_node(store.find_run("r")["run_id"]).node_id  # one rule


def test_a_ray_workers_remote_store_satisfies_the_engine_protocol(tmp_path):
    ray = pytest.importorskip("ray")
    from fipgraph.scale.remote import RemoteStore
    from fipgraph.scale.shard import StoreWriter

    torch.set_num_threads(1)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        actor = ray.remote(StoreWriter).options(num_cpus=0).remote(str(tmp_path / "s"), False)
        store = RemoteStore(actor, tmp_path / "s", ray.get(actor.register.remote("r", 1, "here")), batch_nodes=2)
        _conformance(store)
        with pytest.raises(AttributeError):  # explicit methods only: nothing else is forwarded
            store.close  # noqa: B018
        ray.get(actor.close.remote())
    finally:
        ray.shutdown()
