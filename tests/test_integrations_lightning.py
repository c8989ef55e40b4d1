"""FipgraphCallback for Lightning: nodes every N steps equal to Lightning's own checkpoints, metrics, rank zero."""

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")
from sklearn.datasets import load_digits  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import fipgraph  # noqa: E402
from fipgraph.errors import FipgraphError  # noqa: E402
from fipgraph.integrations.lightning import FipgraphCallback  # noqa: E402
from fipgraph.models import model_from_node  # noqa: E402


class LitDigits(L.LightningModule):
    def __init__(self, hidden: int = 16, lr: float = 0.1, fail_at: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def training_step(self, batch, batch_idx):
        if self.global_step == self.hparams.fail_at:
            raise RuntimeError(f"diverged at step {self.global_step}")
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loaders():
    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))
    return DataLoader(data, batch_size=32, shuffle=False), DataLoader(data, batch_size=64)


def fit(root, module, callbacks, steps=20):
    train, val = loaders()
    checkpointing = any(isinstance(c, L.callbacks.ModelCheckpoint) for c in callbacks)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        default_root_dir=root, enable_checkpointing=checkpointing,
                        enable_model_summary=False, val_check_interval=10, limit_val_batches=2,
                        callbacks=callbacks)
    trainer.fit(module, train, val)
    return trainer


def test_twenty_steps_every_5_give_four_nodes_equal_to_lightnings_checkpoints(tmp_path):
    torch.manual_seed(0)
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=5,
                                       save_top_k=-1)
    with fipgraph.open_store(tmp_path / "s") as store:
        fit(tmp_path, LitDigits(hidden=16), [FipgraphCallback(store, every_n_steps=5, run="lit"), ckpt])
        nodes = store.sql("SELECT node_id, parent_id, step FROM nodes ORDER BY node_id")
        evals = store.sql("SELECT n.step, e.metric FROM evals e JOIN nodes n USING (node_id)")
        run = store.find_run("lit")
        states = {int(s): store.state_dict(int(n)) for n, s in zip(nodes["node_id"], nodes["step"])}
        rebuilt = model_from_node(store, int(nodes["node_id"].iloc[-1]))
    assert sorted(states) == [5, 10, 15, 20]
    assert nodes["parent_id"].tolist()[1:] == nodes["node_id"].tolist()[:-1]
    for step, state in states.items():
        saved = torch.load(tmp_path / "ckpt" / f"step={step}.ckpt", weights_only=False)["state_dict"]
        assert sorted(saved) == sorted(state) and all(torch.equal(saved[k], state[k]) for k in saved), step
    assert not torch.equal(states[5]["net.0.weight"], states[20]["net.0.weight"])
    got = set(map(tuple, evals.values.tolist()))
    assert {(5, "loss"), (5, "train_loss"), (10, "val_loss"), (10, "val_acc")} <= got
    assert (5, "val_loss") not in got and (15, "val_acc") not in got  # validation ran at 10 and 20, not before
    assert run["status"] == "finished" and run["config"]["hparams"]["hidden"] == 16
    assert isinstance(rebuilt, LitDigits) and torch.equal(rebuilt.net[2].weight, states[20]["net.2.weight"])


def test_the_final_network_is_a_node_when_steps_are_no_multiple_of_the_interval(tmp_path):
    module = LitDigits()
    with fipgraph.open_store(tmp_path / "s") as store:
        fit(tmp_path, module, [FipgraphCallback(store, every_n_steps=5, run="twelve")], steps=12)
        nodes = store.sql("SELECT node_id, step FROM nodes ORDER BY step")
        assert nodes["step"].tolist() == [5, 10, 12]
        final = store.state_dict(int(nodes["node_id"].iloc[-1]))
        assert all(torch.equal(v, final[k]) for k, v in module.state_dict().items())
        assert store.find_run("twelve")["status"] == "finished"


def test_an_exception_fails_the_run_keeping_its_nodes(tmp_path):
    with fipgraph.open_store(tmp_path / "s") as store:
        with pytest.raises(RuntimeError, match="diverged at step 7"):
            fit(tmp_path, LitDigits(fail_at=7), [FipgraphCallback(store, every_n_steps=5)])
        run = store.find_run("LitDigits")  # named after the module's class when run is not given
        assert run["status"] == "failed" and "diverged at step 7" in run["error"]
        assert store.sql("SELECT step FROM nodes")["step"].tolist() == [5]


def test_only_global_rank_zero_writes_and_bad_settings_name_the_value(tmp_path, monkeypatch):
    with fipgraph.open_store(tmp_path / "s") as store:
        with pytest.raises(FipgraphError, match="every_n_steps must be .* got 0"):
            FipgraphCallback(store, every_n_steps=0)
        monkeypatch.setattr(L.Trainer, "is_global_zero", property(lambda self: False))
        fit(tmp_path, LitDigits(), [FipgraphCallback(store, every_n_steps=5)], steps=10)
        assert len(store) == 0 and store.sql("SELECT count(*) AS n FROM runs")["n"][0] == 0
    fit(tmp_path, LitDigits(), [FipgraphCallback(tmp_path / "s2", every_n_steps=5)], steps=10)
    assert not (tmp_path / "s2").exists()  # a store given by path is opened by global rank zero only
