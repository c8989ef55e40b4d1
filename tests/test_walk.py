"""fipgraph.walk: FIP walks from Python on the user's own nn.Module and data (DataLoader, Dataset, streams, tensors)."""

import importlib
import os
import signal

import pytest

torch = pytest.importorskip("torch")
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset, TensorDataset  # noqa: E402

import fipgraph  # noqa: E402
from fipgraph.errors import ConfigError, FipgraphError  # noqa: E402
from fipgraph.models import model_from_node  # noqa: E402
from tests.owncode.models import TupleOut, TwoLayer  # noqa: E402

recipe_mod = importlib.import_module("fipgraph.path.engine.recipe")
X, Y = load_digits(return_X_y=True)
X, Y = torch.tensor(X / 16, dtype=torch.float32), torch.tensor(Y)
LOW, HIGH = Y < 5, Y >= 5
TASK1 = (X[LOW][:500], Y[LOW][:500])
TASK2 = (X[HIGH][:500], Y[HIGH][:500])
TESTS = {"task1": (X[LOW][500:], Y[LOW][500:]), "task2": (X[HIGH][500:], Y[HIGH][500:])}
FAST = dict(device="cpu", progress=False, lr=1e-2)


def trained(tmp_path):
    """A task-1 network of the user's own class, walked with finetune into a fresh store."""
    torch.manual_seed(0)
    net = TwoLayer()
    result = fipgraph.walk(net, DataLoader(TensorDataset(*TASK1), batch_size=32), op="finetune", store=tmp_path / "s",
                           steps=40, save_every=20, test=TESTS, model_kwargs={}, **FAST)
    return net, result


def state(store, node):
    return store.state_dict(node)


def test_a_class_defined_here_walks_from_a_dataloader_of_tuples_and_leaves_the_users_model_alone(tmp_path):
    class Mine(nn.Module):  # registered nowhere, defined in the test
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x):
            return self.net(x)

    torch.manual_seed(0)
    net = Mine()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = fipgraph.walk(net, DataLoader(TensorDataset(*TASK1), batch_size=32, shuffle=True), op="finetune",
                           store=tmp_path / "s", steps=30, save_every=10, test={"task1": TESTS["task1"]}, **FAST)
    assert result.status == "finished" and result.steps_done == 30 and len(result.nodes) == 4  # steps 0, 10, 20, 30
    assert result.evaluations["task1"]["accuracy"] > 0.8  # it learned: a 5-class task from chance (0.2)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with fipgraph.open_store(tmp_path / "s", "r") as store:
        first = state(store, result.nodes[0])
        assert all(torch.equal(first[k], before[k]) for k in before)  # step 0 is the model as given
        steps = store.sql("SELECT step, parent_id FROM nodes ORDER BY step")
        assert list(steps["step"]) == [0, 10, 20, 30]
        assert store.arch_spec(result.last_node)["model"]["name"].endswith("<locals>.Mine")


def test_continual_from_a_stored_node_keeps_task1_while_learning_task2(tmp_path):
    net, first = trained(tmp_path)
    result = fipgraph.walk(net, TASK2, memory=TASK1, op="continual", parent=first.last_node, store=tmp_path / "s",
                           steps=150, save_every=50, test=TESTS, **FAST)
    accs = {k: v["accuracy"] for k, v in result.evaluations.items() if "accuracy" in v}
    start = first.evaluations
    assert accs["task2"] > 0.8 > start["task2"]["accuracy"]  # learned the new task from nothing
    assert accs["task1"] > start["task1"]["accuracy"] - 0.1  # and kept the old one
    with fipgraph.open_store(tmp_path / "s", "r") as store:
        assert store.node(result.nodes[0])["parent_id"] == first.last_node
        rebuilt = model_from_node(store, result.last_node)  # model_kwargs={} recorded: rebuildable by class path
    assert type(rebuilt) is TwoLayer


def test_replicas_walk_batched_from_one_stored_node_and_equal_walks_of_each_seed(tmp_path, caplog):
    caplog.set_level("INFO", logger="fipgraph.build")
    net, first = trained(tmp_path)
    common = dict(op="undirected", parent=first.last_node, steps=12, save_every=4, test=TESTS, **FAST)
    walks = fipgraph.walk(net, TASK1, store=tmp_path / "s", run="ens", replicas=3, seed=5, **common)
    assert "3 replicas walk batched" in caplog.text
    assert [w.run for w in walks] == ["ens/s5", "ens/s6", "ens/s7"] and {w.status for w in walks} == {"finished"}
    assert all(len(w.nodes) == 3 and w.evaluations["task1"]["accuracy"] > 0.8 for w in walks)  # steps 4, 8, 12
    alone = fipgraph.walk(net, TASK1, store=tmp_path / "s", run="alone", seed=6, **common)  # the oracle
    with fipgraph.open_store(tmp_path / "s", "r") as store:
        assert all(store.node(w.nodes[0])["parent_id"] == first.last_node for w in walks)  # all from the given node
        last = [store.state_dict(w.last_node) for w in walks]
        oracle = store.state_dict(alone.last_node)
    rel = max(float((last[1][k] - oracle[k]).norm() / oracle[k].norm()) for k in oracle)
    assert rel <= 1e-5, rel  # batched (vmap) sums in another order than one walk: float rounding only
    spread = float((last[0]["head.weight"] - last[2]["head.weight"]).norm() / last[0]["head.weight"].norm())
    assert spread > 1e-3  # each seed walked its own way (a broken stacking would copy one walk)
    with pytest.raises(ConfigError, match="replicas=0"):
        fipgraph.walk(net, TASK1, store=tmp_path / "s", replicas=0, **common)


def test_replicas_with_a_forward_of_your_own_walk_one_at_a_time(tmp_path, caplog):
    caplog.set_level("INFO", logger="fipgraph.build")
    walks = fipgraph.walk(TupleOut(), TASK1, op="finetune", store=tmp_path / "s", steps=4, save_every=2, replicas=2,
                          forward=lambda m, b: m(b["x"])[0], **FAST)
    assert len(walks) == 2 and {w.status for w in walks} == {"finished"}
    assert "walk one at a time: a forward or loss of your own" in caplog.text


class Stream(IterableDataset):
    """Yields dict examples one by one and counts them: a stream must be read, never materialised."""

    def __init__(self, n=10_000):
        self.n, self.pulled = n, 0

    def __iter__(self):
        for i in range(self.n):
            self.pulled += 1
            yield {"x": X[i % 1000], "label": Y[i % 1000]}


def test_an_iterable_dataset_is_streamed_and_its_memory_is_its_first_examples(tmp_path):
    stream = Stream()
    torch.manual_seed(0)
    result = fipgraph.walk(TwoLayer(), stream, op="undirected", store=tmp_path / "s", steps=5, save_every=5,
                           memory_size=64, probe_size=0, **FAST)
    assert result.status == "finished" and len(result.nodes) == 2
    assert stream.pulled < 500  # 64 memory examples and a check, not 10,000
    with pytest.raises(ConfigError, match="epochs=1.0 over a stream.*steps="):
        fipgraph.walk(TwoLayer(), Stream(), op="finetune", store=tmp_path / "t", epochs=1.0, **FAST)


def test_hf_datasets_dicts_and_a_ddp_style_wrapper(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"x": X[:300].numpy(), "label": Y[:300].numpy()})

    class DataParallel(nn.Module):  # what DDP looks like to a state dict: every key under module.
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x)

    result = fipgraph.walk(DataParallel(TwoLayer()), ds, op="finetune", store=tmp_path / "s", steps=4, save_every=2,
                           test={"digits": {"x": X[300:400], "labels": Y[300:400]}}, **FAST)
    assert result.evaluations["digits"]["accuracy"] >= 0
    with fipgraph.open_store(tmp_path / "s", "r") as store:
        assert sorted(state(store, result.last_node)) == sorted(TwoLayer().state_dict())


def test_forward_and_loss_callables_for_a_model_that_returns_a_tuple(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(FipgraphError, match="returned a tuple.*forward="):
        fipgraph.walk(TupleOut(), TASK1, op="finetune", store=tmp_path / "s", steps=2, **FAST)
    assert not (tmp_path / "s").exists()  # refused before the store was opened
    seen = []

    def loss(logits, labels):
        seen.append(logits.shape)
        return nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)

    result = fipgraph.walk(TupleOut(), TASK1, op="finetune", store=tmp_path / "s", steps=4, save_every=2,
                           forward=lambda model, batch: model(batch["x"])[0], loss=loss, **FAST)
    assert result.status == "finished" and len(seen) >= 4 and seen[-1][-1] == 10


def test_bad_input_is_refused_with_the_fix_and_nothing_written(tmp_path):
    path = tmp_path / "s"
    with pytest.raises(FipgraphError, match="no labels.*forward="):
        fipgraph.walk(TwoLayer(), TensorDataset(X[:100]), op="finetune", store=path, steps=2, **FAST)
    with pytest.raises(ConfigError, match="has no settings.*'sparsity_typo'"):
        fipgraph.walk(TwoLayer(), TASK1, op="sparsify", store=path, sparsity_typo=0.5, **FAST)
    with pytest.raises(ConfigError, match="unknown op 'walk'"):
        fipgraph.walk(TwoLayer(), TASK1, op="walk", store=path, **FAST)
    with pytest.raises(ConfigError, match="memory="):
        fipgraph.walk(TwoLayer(), TASK2, op="continual", store=path, **FAST)
    assert not path.exists()
    fipgraph.open_store(path, "a").close()
    with fipgraph.open_store(path, "r") as ro, pytest.raises(FipgraphError, match="read-only.*mode='a'"):
        fipgraph.walk(TwoLayer(), TASK1, op="finetune", store=ro, steps=2, **FAST)
    with fipgraph.open_store(path, "r") as store:
        assert int(store.sql("SELECT count(*) AS n FROM nodes")["n"][0]) == 0
        assert int(store.sql("SELECT count(*) AS n FROM runs")["n"][0]) == 0


def sigint_on_call(monkeypatch, on_call):
    """Deliver a real SIGINT from inside the walk's step number ``on_call`` (the handler saves and stops)."""
    real, calls = recipe_mod.fip_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == on_call:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(recipe_mod, "fip_step", step)


def test_a_real_sigint_saves_and_stops_and_the_same_call_resumes_bit_exact(tmp_path, monkeypatch):
    args = dict(op="continual", memory=TASK1, steps=30, save_every=10, optimizer="adam", **FAST)
    torch.manual_seed(0)
    net = TwoLayer()
    whole = fipgraph.walk(net, DataLoader(TensorDataset(*TASK2), batch_size=16, shuffle=True), store=tmp_path / "a", **args)
    with monkeypatch.context() as m:
        sigint_on_call(m, 13)
        cut = fipgraph.walk(net, DataLoader(TensorDataset(*TASK2), batch_size=16, shuffle=True), store=tmp_path / "b", **args)
    assert cut.status == "interrupted" and cut.steps_done == 13
    again = fipgraph.walk(net, DataLoader(TensorDataset(*TASK2), batch_size=16, shuffle=True), store=tmp_path / "b", **args)
    assert again.status == "finished" and again.steps_done == 17
    with fipgraph.open_store(tmp_path / "a", "r") as a, fipgraph.open_store(tmp_path / "b", "r") as b:
        wa, wb = state(a, whole.last_node), state(b, again.last_node)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)  # Adam moments and batch order restored exactly
        assert list(b.sql("SELECT step FROM nodes ORDER BY step")["step"]) == [0, 10, 13, 20, 30]
    done = fipgraph.walk(net, DataLoader(TensorDataset(*TASK2), batch_size=16), store=tmp_path / "b", **args)
    assert done.status == "finished" and done.steps_done == 0 and done.last_node == again.last_node


def test_hf_models_read_their_logits_and_a_causal_lm_learns_its_own_inputs(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    lm = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 50, (64, 12))
    texts = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}  # no labels: a causal LM predicts its inputs
    result = fipgraph.walk(lm, texts, op="sparsify", store=tmp_path / "s", steps=3, save_every=3, sparsity=0.3,
                           memory_size=16, test={"held": {k: v[:8] for k, v in texts.items()}}, **FAST)
    assert result.status == "finished"
    assert 0 < result.evaluations["held"]["loss"] < 10
    with fipgraph.open_store(tmp_path / "s", "r") as store:
        spec = store.arch_spec(result.last_node)["model"]
        assert spec["name"] == "hf" and spec["kwargs"]["hf_class"] == "GPT2LMHeadModel"
        assert type(model_from_node(store, result.last_node)).__name__ == "GPT2LMHeadModel"
