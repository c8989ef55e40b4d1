"""The paper's baselines as build ops on digits: ewc, replay, oneshot_prune, lottery, lora (tiny BERT)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
EXAMPLES = str(Path(__file__).parents[1] / "examples")

import fipgraph  # noqa: E402
from fipgraph.data.task import Task  # noqa: E402
from fipgraph.errors import ConfigError  # noqa: E402
from fipgraph.path import build, load_config  # noqa: E402
build_mod = importlib.import_module("fipgraph.path.build")  # the module (the package re-exports the function)
from fipgraph.path.ops.ancestry import task_end_nodes  # noqa: E402
from fipgraph.path.config.schema import build_config  # noqa: E402
from fipgraph.path.ops.lottery import lottery_levels  # noqa: E402
from fipgraph.path.ops.sparsity import magnitude_masks  # noqa: E402

PRUNABLE = ["body.1.weight", "head.weight"]  # the digits MLP's Linear weights


def _last(result) -> dict[str, int]:
    return {r.name.split("/")[1]: r.last_node for r in result.runs}


def _acc(store, node: int) -> dict[str, float]:
    df = store.sql("SELECT dataset, value FROM evals WHERE node_id = ? AND metric = 'accuracy'", [node])
    return dict(zip(df["dataset"], df["value"]))


# -- continual baselines ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def class_split(tmp_path_factory):
    """digits {0-4} -> {5-9}, one head (the paper's protocol), every baseline from one task-1 node."""
    d = tmp_path_factory.mktemp("cl")
    result = build(load_config(EXAMPLES + "/digits_baselines.toml", ["runs.continual.steps=10"]), d, progress=False)
    assert result.status == "finished"
    return d, _last(result)


def test_replay_keeps_task1_where_finetune_forgets(class_split):
    d, last = class_split
    with fipgraph.open_store(d, "r") as s:
        ft, rp, t1 = _acc(s, last["finetune"]), _acc(s, last["replay"]), _acc(s, last["task1"])
        parents = s.sql("SELECT r.name, min(n.parent_id) AS p FROM nodes n JOIN runs r USING (run_id) GROUP BY r.name")
    assert t1["task1"] > 0.95
    assert ft["task1"] < 0.1 and ft["task2"] > 0.9  # plain fine-tuning forgets completely on one head
    assert rp["task1"] > 0.9 and rp["task2"] > 0.85  # the same 500-example buffer FIP uses keeps task 1
    # all branches hang off the same task-1 node
    p = parents.set_index("name")["p"]
    assert {int(p[f"baselines/{r}"]) for r in ("continual", "finetune", "ewc", "replay")} == {last["task1"]}


def test_replay_uses_the_continual_memory_and_no_odist(class_split):
    d, _ = class_split
    with fipgraph.open_store(d, "r") as s:
        cfg = s.find_run("baselines/replay")["config"]["run"]
        ewc_cfg = s.find_run("baselines/ewc")["config"]["run"]
        ft_cfg = s.find_run("baselines/finetune")["config"]["run"]
    assert cfg["memory_size"] == 500 and cfg["op"] == "replay"
    assert ewc_cfg["ewc_lambda"] == 5000.0 and ewc_cfg["fisher_samples"] == 500
    assert "ewc_lambda" not in ft_cfg and "lora_r" not in ft_cfg  # other ops' settings stay out of a run's identity


@pytest.fixture(scope="module")
def permuted(tmp_path_factory):
    """Permuted digits (same 10 classes, shuffled pixels): the setting EWC was designed for."""
    d = tmp_path_factory.mktemp("perm")
    over = ['data.split="permuted:2"', "runs.continual.steps=10", "runs.replay.steps=10"]
    result = build(load_config(EXAMPLES + "/digits_baselines.toml", over), d, progress=False)
    return d, _last(result)


def test_ewc_keeps_task1_clearly_above_finetune(permuted):
    d, last = permuted
    with fipgraph.open_store(d, "r") as s:
        ft, ewc = _acc(s, last["finetune"]), _acc(s, last["ewc"])
    assert ft["task1"] < 0.8  # fine-tuning on permuted pixels overwrites task 1 ...
    assert ewc["task1"] > ft["task1"] + 0.15 and ewc["task1"] > 0.88  # ... EWC (λ = 5000) holds it
    assert ewc["task2"] > 0.45  # and still learns task 2 (slowly: λ = 5000 is stiff for this small MLP)


def test_ewc_with_lambda_zero_is_exactly_finetune(tmp_path):
    over = ['data.split="permuted:2"', "runs.task1.steps=60", "runs.continual.steps=1", "runs.replay.steps=1",
            "runs.finetune.steps=40", "runs.ewc.steps=40", "runs.ewc.ewc_lambda=0", "runs.ewc.fisher_samples=8"]
    last = _last(build(load_config(EXAMPLES + "/digits_baselines.toml", over), tmp_path, progress=False))
    with fipgraph.open_store(tmp_path, "r") as s:
        a, b = s.state_dict(last["finetune"]), s.state_dict(last["ewc"])
    assert all(torch.equal(a[k], b[k]) for k in a)  # the penalty is the only difference between the two


def test_ewc_anchors_each_task_at_its_own_end_node(tmp_path):
    """Three tasks: task 1's Fisher/anchor comes from task 1's last node, not from the task-2 node."""
    cfg = build_config({
        "name": "chain", "data": {"split": [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]},
        "model": {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [32], "n_classes": 10}},
        "defaults": {"steps": 20, "save_every": 10, "fisher_samples": 16},
        "runs": [{"name": "t1", "op": "finetune", "task": 1},
                 {"name": "t2", "op": "ewc", "task": 2, "from": "t1"},
                 {"name": "t3", "op": "ewc", "task": 3, "from": "t2"}]})
    last = _last(build(cfg, tmp_path, progress=False))
    with fipgraph.open_store(tmp_path, "r") as s:
        assert task_end_nodes(s, last["t3"], [1, 2, 3]) == {1: last["t1"], 2: last["t2"], 3: last["t3"]}


@pytest.mark.parametrize("run, match", [
    ({"op": "ewc", "task": 1, "from": 0}, "no earlier task"),
    ({"op": "ewc", "task": 2}, "needs a start network"),
    ({"op": "ewc", "task": 2, "from": 0, "ewc_lambda": -1}, "ewc_lambda=-1"),
    ({"op": "ewc", "task": 2, "from": 0, "fisher_samples": 0}, "fisher_samples=0"),
    ({"op": "replay", "task": 1, "from": 0}, "no earlier task"),
    ({"op": "replay", "task": 2, "from": 0, "memory_size": 0}, "memory_size=0"),
    ({"op": "oneshot_prune", "from": 0, "sparsity": 0.0}, "prunes nothing"),
    ({"op": "lottery", "sparsity": 0.5}, "prunes a trained network"),
    ({"op": "lottery", "from": 0, "prune_rate": 1.0}, r"prune_rate=1.0 must be in \(0, 1\)"),
    ({"op": "lora", "from": 0, "lora_r": 0}, "lora_r=0"),
    ({"op": "lora", "from": 0, "lora_targets": []}, "lora_targets is empty"),
])
def test_bad_baseline_configs_name_value_and_fix(run, match):
    with pytest.raises(ConfigError, match=match):
        build_config({"model": {"name": "mlp"}, "data": {"split": [[0, 1], [2, 3]]},
                      "runs": [{"name": "r", **run}]})


# -- pruning baselines --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    d = tmp_path_factory.mktemp("prune")
    over = ["runs.dense.steps=300", "runs.sparsify.steps=5", "runs.oneshot_prune.steps=200",
            "runs.lottery.steps=80", "runs.lottery.sparsity=0.5", "runs.lottery.save_every=20"]
    result = build(load_config(EXAMPLES + "/digits_pruning.toml", over), d, progress=False)
    assert result.status == "finished"
    return d, _last(result)


def _zeros(state: dict) -> dict[str, torch.Tensor]:
    return {k: state[k] == 0 for k in PRUNABLE}


def test_oneshot_prune_is_the_magnitude_projection_kept_through_finetuning(pruned):
    d, last = pruned
    with fipgraph.open_store(d, "r") as s:
        dense = s.state_dict(last["dense"])
        nodes = s.sql("SELECT n.node_id, n.step, w.task1_accuracy AS acc, w.prunable_sparsity AS sp FROM nodes n "
                      "JOIN runs r USING (run_id) LEFT JOIN wide w USING (node_id) WHERE r.name = 'pruning/oneshot_prune' "
                      "ORDER BY n.step")
        states = [s.state_dict(int(n)) for n in nodes["node_id"]]
        dense_acc = _acc(s, last["dense"])["task1"]
    n = sum(dense[k].numel() for k in PRUNABLE)
    expected = magnitude_masks([dense[k] for k in PRUNABLE], 0.9, "global")  # the same projection sparsify uses
    for st in states:  # every node of the fine-tuning, first to last: exactly the projection's zeros
        z = _zeros(st)
        assert all(torch.equal(z[k], ~m) for k, m in zip(PRUNABLE, expected))
    assert int(nodes["node_id"].iloc[-1]) == last["oneshot_prune"]
    assert nodes["sp"].iloc[-1] == pytest.approx(round(0.9 * n) / n, abs=0)
    assert float(sum((states[-1][k] - states[0][k]).abs().sum() for k in PRUNABLE)) > 1.0  # it did fine-tune
    assert nodes["acc"].iloc[-1] > 0.88 and nodes["acc"].iloc[-1] > dense_acc - 0.05


def test_lottery_stores_one_node_per_round_at_the_right_sparsity(pruned):
    d, last = pruned
    with fipgraph.open_store(d, "r") as s:
        rounds = s.sql("SELECT n.node_id, n.step, n.tags, w.task1_accuracy AS acc, w.prunable_sparsity AS sp "
                       "FROM nodes n JOIN runs r USING (run_id) JOIN wide w USING (node_id) "
                       "WHERE r.name = 'pruning/lottery' AND n.tags LIKE '%lottery_round%' ORDER BY n.step")
        init = s.sql("SELECT node_id FROM nodes n JOIN runs r USING (run_id) WHERE r.name = 'pruning/dense' AND step = 0")
        states = [s.state_dict(int(i)) for i in rounds["node_id"]]
        dense = s.state_dict(last["dense"])
    n = sum(dense[k].numel() for k in PRUNABLE)
    levels = lottery_levels(0.5, 0.2)
    assert levels == pytest.approx([0.2, 0.36, 0.488, 0.5])
    tags = [json.loads(t) for t in rounds["tags"]]
    assert [t["lottery_round"] for t in tags] == [1, 2, 3, 4] and list(rounds["step"]) == [80, 160, 240, 320]
    assert list(rounds["sp"]) == [round(p * n) / n for p in levels]  # exact counts, last clipped to the target
    assert int(rounds["node_id"].iloc[-1]) == last["lottery"]
    assert {t["rewind_node"] for t in tags} == {int(init["node_id"][0])}  # rewound to the initialisation
    # round 1 prunes by the dense network's magnitudes; every later round keeps the earlier zeros
    first = magnitude_masks([dense[k] for k in PRUNABLE], 0.2, "global")
    assert all(torch.equal(_zeros(states[0])[k], ~m) for k, m in zip(PRUNABLE, first))
    for a, b in zip(states, states[1:]):
        assert all(bool((_zeros(b)[k] | ~_zeros(a)[k]).all()) for k in PRUNABLE)
    assert (rounds["acc"] > 0.8).all()


def test_lottery_rewinds_survivors_to_the_initial_weights(tmp_path):
    """With a vanishing learning rate a round's node is the initialisation times the round's mask."""
    over = ["runs.dense.steps=100", "runs.sparsify.steps=1", "runs.oneshot_prune.steps=1",
            "runs.lottery.steps=1", "runs.lottery.sparsity=0.36", "runs.lottery.lr=1e-12"]
    last = _last(build(load_config(EXAMPLES + "/digits_pruning.toml", over), tmp_path, progress=False))
    with fipgraph.open_store(tmp_path, "r") as s:
        init = s.state_dict(int(s.sql("SELECT node_id FROM nodes WHERE op = 'finetune' AND step = 0")["node_id"][0]))
        end = s.state_dict(last["lottery"])
    for k in PRUNABLE:
        kept = end[k] != 0
        assert torch.allclose(end[k][kept], init[k][kept], atol=1e-6)
    assert sum(int((end[k] == 0).sum()) for k in PRUNABLE) == round(0.36 * sum(init[k].numel() for k in PRUNABLE))


# -- LoRA ---------------------------------------------------------------------------------------
def _text_task(seed: int) -> Task:
    """Synthetic sentences over a 40-token vocabulary: label 1 iff token 7 occurs."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> dict:
        ids = torch.randint(10, 40, (n, 12), generator=g)
        labels = torch.randint(0, 2, (n,), generator=g)
        ids[labels == 1, 3] = 7
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    return Task(name="toy/task1", classes=[0, 1], n_classes=2, label_offset=0, train=split(256), test=split(128))


def test_lora_node_is_the_merged_parent_architecture(tmp_path, monkeypatch):
    monkeypatch.setattr(build_mod, "make_tasks", lambda *a, **k: [_text_task(0)])
    cfg = build_config({
        "name": "lora", "data": {"split": [[0, 1]]},
        "model": {"name": "bert", "kwargs": {"head": "classifier", "vocab_size": 40, "hidden_size": 32,
                                             "num_hidden_layers": 2, "num_attention_heads": 2,
                                             "intermediate_size": 64, "max_position_embeddings": 16}},
        "defaults": {"save_every": 20, "batch_size": 32, "lr": 3e-3, "optimizer": "adamw"},
        "runs": [{"name": "base", "op": "finetune", "steps": 5},
                 {"name": "lora", "op": "lora", "from": "base", "steps": 60, "lora_r": 4}]})
    last = _last(build(cfg, tmp_path, progress=False))
    with fipgraph.open_store(tmp_path, "r") as s:
        parent, merged = s.state_dict(last["base"]), s.state_dict(last["lora"])
        same_arch = s.arch_spec(last["base"]) == s.arch_spec(last["lora"])
        acc = _acc(s, last["lora"])
        model = fipgraph.models.model_from_node(s, last["lora"])
    assert same_arch and set(parent) == set(merged) and type(model).__name__ == "BertForSequenceClassification"
    changed = {k for k in parent if not torch.equal(parent[k], merged[k])}
    targeted = {k for k in parent if k.endswith(("query.weight", "value.weight")) or k.startswith("classifier.")}
    assert changed == targeted  # adapters merged into query/value weights, the head trained; nothing else moved
    for k in (k for k in targeted if k.endswith("query.weight")):  # a low-rank update: rank <= r
        assert int(torch.linalg.matrix_rank(merged[k] - parent[k], atol=1e-5)) <= 4
    assert acc["task1"] > 0.6  # evaluated like every other node (and it learned something)


def test_lora_resume_is_bit_exact_with_its_adapters_and_adam_moments(tmp_path, monkeypatch):
    """The stored node is merged, so a resume needs the adapters saved beside the optimizer state."""
    monkeypatch.setattr(build_mod, "make_tasks", lambda *a, **k: [_text_task(0)])
    raw = {"name": "lora", "data": {"split": [[0, 1]]}, "device": "cpu",
           "model": {"name": "bert", "kwargs": {"head": "classifier", "vocab_size": 40, "hidden_size": 32,
                                                "num_hidden_layers": 1, "num_attention_heads": 2,
                                                "intermediate_size": 64, "max_position_embeddings": 16}},
           "defaults": {"save_every": 5, "batch_size": 32, "lr": 3e-3, "optimizer": "adamw"},
           "runs": [{"name": "base", "op": "finetune", "steps": 3},
                    {"name": "lora", "op": "lora", "from": "base", "steps": 16, "lora_r": 2}]}
    full = _last(build(build_config(raw), tmp_path / "a", progress=False))
    first = build(build_config(raw), tmp_path / "b", max_steps=10, progress=False)  # stops at lora step 7
    assert first.status == "interrupted" and first.runs[-1].name == "lora/lora"
    assert (tmp_path / "b" / "optim" / f"run-{first.runs[-1].run_id}.pt").exists()
    resumed = _last(build(build_config(raw), tmp_path / "b", progress=False))
    with fipgraph.open_store(tmp_path / "a", "r") as a, fipgraph.open_store(tmp_path / "b", "r") as b:
        sa, sb = a.state_dict(full["lora"]), b.state_dict(resumed["lora"])
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
