"""FipgraphCallback for the HF Trainer: its checkpoints as nodes, bit for bit, with metrics and arguments."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from safetensors.torch import load_file  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

import fipgraph  # noqa: E402
from fipgraph.errors import FipgraphError  # noqa: E402
from fipgraph.integrations.transformers import FipgraphCallback  # noqa: E402


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


def token_data(n=32, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (n, length), generator=g)
    labels = (ids[:, 0] > 32).long()  # learnable from the first token
    return [{"input_ids": i, "attention_mask": torch.ones(length, dtype=torch.long), "labels": y}
            for i, y in zip(ids, labels)]


def trainer_args(out, **kw):
    base = dict(output_dir=str(out), max_steps=20, per_device_train_batch_size=8, learning_rate=1e-3,
                logging_steps=5, report_to="none", use_cpu=True, save_steps=5, disable_tqdm=True, seed=0,
                hub_token="hf_secret_never_stored")
    return TrainingArguments(**{**base, **kw})


def test_twenty_steps_with_save_steps_5_give_four_nodes_equal_to_the_checkpoint_files(tmp_path):
    data = token_data()
    args = trainer_args(tmp_path / "out", eval_strategy="steps", eval_steps=10)
    with fipgraph.open_store(tmp_path / "s") as store:
        callback = FipgraphCallback(store, run="bert")
        Trainer(model=tiny_bert(), args=args, train_dataset=data, eval_dataset=data[:8],
                callbacks=[callback]).train()
        nodes = store.sql("SELECT node_id, parent_id, step FROM nodes ORDER BY node_id")
        run = store.find_run("bert")
        evals = store.sql("SELECT n.step, e.dataset, e.metric FROM evals e JOIN nodes n USING (node_id)")
        states = {int(s): store.state_dict(int(n)) for n, s in zip(nodes["node_id"], nodes["step"])}
    assert sorted(states) == [5, 10, 15, 20]
    assert nodes["parent_id"].tolist()[1:] == nodes["node_id"].tolist()[:-1]
    for step, state in states.items():
        saved = load_file(tmp_path / "out" / f"checkpoint-{step}" / "model.safetensors")
        assert sorted(saved) == sorted(state)
        assert all(torch.equal(saved[k], state[k]) for k in saved), f"checkpoint-{step} differs"
    assert not torch.equal(states[5]["classifier.weight"], states[20]["classifier.weight"])
    assert run["status"] == "finished" and run["op"] == "hf_trainer"
    assert run["config"]["training_args"]["save_steps"] == 5
    assert "hf_secret_never_stored" not in str(run["config"]) and "hub_token" not in run["config"]["training_args"]
    got = set(map(tuple, evals.values.tolist()))
    assert {(5, "", "loss"), (10, "eval", "loss"), (20, "eval", "loss"), (20, "", "train_runtime")} <= got
    assert (5, "eval", "loss") not in got  # evaluation ran at steps 10 and 20 only


def test_every_n_steps_records_without_trainer_checkpoints_and_only_on_process_zero(tmp_path, monkeypatch):
    args = trainer_args(tmp_path / "out", max_steps=6, save_strategy="no")
    with fipgraph.open_store(tmp_path / "s") as store:
        Trainer(model=tiny_bert(), args=args, train_dataset=token_data(),
                callbacks=[FipgraphCallback(store, every=3)]).train()
        assert store.sql("SELECT step FROM nodes ORDER BY step")["step"].tolist() == [3, 6]
        trainer = Trainer(model=tiny_bert(), args=trainer_args(tmp_path / "out7", max_steps=7, save_strategy="no"),
                          train_dataset=token_data(), callbacks=[FipgraphCallback(store, every=3, run="seven")])
        trainer.train()  # 7 steps, every 3: the final network is a node too
        last = store.sql("SELECT node_id, step FROM nodes JOIN runs USING (run_id) WHERE runs.name = 'seven' ORDER BY step")
        assert last["step"].tolist() == [3, 6, 7]
        final = store.state_dict(int(last["node_id"].iloc[-1]))
        assert all(torch.equal(v, final[k]) for k, v in trainer.model.state_dict().items() if k in final)
        assert store.find_run("out")["status"] == "finished"  # named after output_dir when run is not given
        assert not list((tmp_path / "out").glob("checkpoint-*"))
    monkeypatch.setattr(Trainer, "is_world_process_zero", lambda self: False)  # what a rank > 0 sees
    Trainer(model=tiny_bert(), args=args, train_dataset=token_data(),
            callbacks=[FipgraphCallback(tmp_path / "s2", every=3)]).train()
    assert not (tmp_path / "s2").exists()  # a store given by path is not even opened on other ranks
    monkeypatch.undo()
    Trainer(model=tiny_bert(), args=args, train_dataset=token_data(),
            callbacks=[FipgraphCallback(tmp_path / "s2", every=3, run="by-path")]).train()
    with fipgraph.open_store(tmp_path / "s2") as store:  # the callback closed it: the lock is free again
        assert store.find_run("by-path")["status"] == "finished" and len(store) == 2


class Crash(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise RuntimeError("diverged at step 4")


def test_a_crashed_training_fails_its_run_and_the_nodes_before_stay(tmp_path):
    """The Trainer has no exception event: the store's with-block ends the run that was still recording."""
    args = trainer_args(tmp_path / "out", max_steps=8, save_strategy="no")
    with pytest.raises(RuntimeError, match="diverged at step 4"):
        with fipgraph.open_store(tmp_path / "s") as store:
            Trainer(model=tiny_bert(), args=args, train_dataset=token_data(),
                    callbacks=[FipgraphCallback(store, every=3, run="crash"), Crash()]).train()
    with fipgraph.open_store(tmp_path / "s", mode="r") as store:
        run = store.find_run("crash")
        assert run["status"] == "failed" and "diverged at step 4" in run["error"]
        assert store.sql("SELECT step FROM nodes")["step"].tolist() == [3]


def test_bad_settings_fail_before_any_step(tmp_path):
    with fipgraph.open_store(tmp_path / "s") as store:
        with pytest.raises(FipgraphError, match="every must be 'save'.*got 0"):
            FipgraphCallback(store, every=0)
        trainer = Trainer(model=tiny_bert(), args=trainer_args(tmp_path / "out", save_strategy="no"),
                          train_dataset=token_data(), callbacks=[FipgraphCallback(store)])
        with pytest.raises(FipgraphError, match="save_strategy is 'no'.*every=N"):
            trainer.train()
        assert trainer.state.global_step == 0 and len(store) == 0


def test_a_recorded_run_is_an_ordinary_run_for_select_export_and_model_from_node(tmp_path, capsys):
    from fipgraph.cli import main as cli
    from fipgraph.models import model_from_node

    args = trainer_args(tmp_path / "out", max_steps=6, save_strategy="no", eval_strategy="steps", eval_steps=3)
    with fipgraph.open_store(tmp_path / "s") as store:
        Trainer(model=tiny_bert(), args=args, train_dataset=token_data(), eval_dataset=token_data(8, seed=1),
                callbacks=[FipgraphCallback(store, every=3, run="r")]).train()
        last = store.state_dict(1)
        rebuilt = model_from_node(store, 1)
    assert type(rebuilt) is BertForSequenceClassification
    assert all(torch.equal(v, last[k]) for k, v in rebuilt.state_dict().items())
    capsys.readouterr()
    assert cli(["select", "--store", str(tmp_path / "s"), "--where", "eval_loss < 100 AND step = 6"]) == 0
    printed = capsys.readouterr().out.split()  # bare ids, or a table once select prints one
    assert "1" in printed and "0" not in printed
    assert cli(["export", "--store", str(tmp_path / "s"), "1", "--out", str(tmp_path / "export")]) == 0
    exported = BertForSequenceClassification.from_pretrained(tmp_path / "export")
    assert all(torch.equal(v, last[k]) for k, v in exported.state_dict().items())
