"""RemoteStore's asynchronous node shipping against a real StoreWriter actor: pending ids, batches,
back-pressure, optimizer state only with a batch's last node, errors in order, stale workers refused."""

from __future__ import annotations

import pytest
import torch

ray = pytest.importorskip("ray")

import fipgraph  # noqa: E402
from _ray_session import ray_session  # noqa: E402,F401 (the module's Ray session)
from fipgraph.errors import ConfigError, NonFiniteWeightsError  # noqa: E402
from fipgraph.models import build_model  # noqa: E402
from fipgraph.scale.remote import RemoteStore  # noqa: E402
from fipgraph.scale.shard import PendingNode, StaleSenderError, StoreWriter  # noqa: E402


@pytest.fixture
def writer(tmp_path):
    actor = ray.remote(StoreWriter).options(num_cpus=0).remote(str(tmp_path / "store"), False)
    yield actor
    ray.get(actor.close.remote())
    ray.kill(actor)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16], "n_classes": 10}})


def _nudge(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        next(model.parameters()).fill_(value)


def test_nodes_ship_in_batches_with_pending_ids_and_one_optimizer_state_per_batch(writer, tmp_path):
    sender = ray.get(writer.register.remote("r", 1, "here"))
    store = RemoteStore(writer, tmp_path, sender, batch_nodes=3, max_in_flight=1, max_delay=1e9)
    run = store.start_run("r", "finetune", {})
    asked = []
    store.checkpoint_of = lambda step: asked.append(step) or {"optimizer": {"step": step}}
    model, ids, parent = _model(), [], None
    for step in range(7):
        _nudge(model, float(step))  # the model changes right after each append: what was sent must not
        parent = store.append(model, parent=parent, run=run, step=step)
        ids.append(parent)
    assert all(isinstance(i, PendingNode) and i < 0 for i in ids) and len(set(ids)) == 7
    assert asked == [2, 5]  # two full batches sent, each with its last node's state; node 6 still open
    # a pending id works as an SQL parameter (the writer resolves it after the earlier batches)
    df = store.sql("SELECT step FROM nodes WHERE node_id = ?", [ids[6]])
    assert df["step"].tolist() == [6] and asked == [2, 5, 6]  # the call sent the open batch first
    real = [store.resolve(i) for i in ids]
    assert real == list(range(7))
    state = store.files.load_optimizer_state(run)
    assert state == {"node": real[6], "state": {"optimizer": {"step": 6}}}
    store.flush()
    with fipgraph.open_store(tmp_path / "store", mode="r") as local:
        rows = local.sql("SELECT node_id, parent_id, step FROM nodes ORDER BY node_id").values.tolist()
        assert [(int(n), None if p != p else int(p), int(s)) for n, p, s in rows] == \
            [(i, i - 1 if i else None, i) for i in range(7)]
        for i in range(7):  # each node holds the weights of its own step, not of a later one
            assert float(next(iter(local.state_dict(i).values())).flatten()[0]) == float(i)


def test_back_pressure_bounds_unanswered_batches(writer, tmp_path):
    store = RemoteStore(writer, tmp_path, batch_nodes=1, max_in_flight=2)
    model, parent = _model(), None
    for step in range(6):
        parent = store.append(model, parent=parent, step=step)
        assert len(store._in_flight) <= 2
    store.settle()
    assert not store._in_flight and store.resolve(parent) == 5


def test_a_writer_error_surfaces_at_the_next_call_and_later_nodes_are_not_stored(writer, tmp_path):
    store = RemoteStore(writer, tmp_path, batch_nodes=2, max_in_flight=4, max_delay=1e9)
    model = _model()
    first = store.append(model, step=0)
    _nudge(model, float("nan"))
    bad = store.append(model, parent=first, step=1)  # sent now: the error is the writer's, later
    _nudge(model, 1.0)
    store.append(model, parent=bad, step=2)  # its parent was never stored
    with pytest.raises(ray.exceptions.RayTaskError) as err:
        store.sql("SELECT count(*) AS n FROM nodes")
    assert isinstance(err.value.cause, NonFiniteWeightsError)
    assert store.sql("SELECT count(*) AS n FROM nodes")["n"][0] == 1  # only the node before the bad one


def test_a_retried_runs_old_worker_is_refused(writer, tmp_path):
    old = RemoteStore(writer, tmp_path, ray.get(writer.register.remote("r", 1, "here")), batch_nodes=1)
    new = RemoteStore(writer, tmp_path, ray.get(writer.register.remote("r", 2, "here")), batch_nodes=1)
    model = _model()
    old.append(model, step=0)
    with pytest.raises(ray.exceptions.RayTaskError) as err:
        old.settle()
    assert isinstance(err.value.cause, StaleSenderError) and "retried" in str(err.value.cause)
    assert new.resolve(new.append(model, step=0)) == 0  # the retry's node is the first and only one
    assert new.sql("SELECT count(*) AS n FROM nodes")["n"][0] == 1


def test_bad_pipeline_settings_are_refused(writer, tmp_path):
    with pytest.raises(ConfigError, match="batch_nodes"):
        RemoteStore(writer, tmp_path, batch_nodes=0)
