"""Unit tests of fipgraph.path: odist, projection, frozen reference, step, config validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

torch.set_num_threads(1)

from fipgraph.errors import ConfigError  # noqa: E402
from fipgraph.models import build_model, forward_logits  # noqa: E402
from fipgraph.path import FrozenReference, fip_loss, fip_step, get_odist  # noqa: E402
from fipgraph.path.config import build_config, load_config, parse_overrides  # noqa: E402
from fipgraph.path.engine.memory import cat_batches  # noqa: E402
from fipgraph.path.ops import OBJECTIVES, register_objective  # noqa: E402
from fipgraph.path.ops.sparsity import magnitude_masks, prunable_names  # noqa: E402


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model({"name": "mlp", "kwargs": {"in_features": 8, "hidden": [16], "n_classes": 4}})


def _batch(n: int = 12, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.rand(n, 8, generator=g), "labels": torch.randint(0, 4, (n,), generator=g)}


# -- odist ---------------------------------------------------------------------------------------
def test_bhattacharyya_is_the_authors_formula():
    z, zr = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]), torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    p, q = z.softmax(-1), zr.softmax(-1)
    eps = max(1e-10, 1e-3 * float(q.min()))
    want = -sum(math.log(sum(math.sqrt(float(p[b, k] * q[b, k]) + eps) for k in range(3))) for b in range(2))
    assert float(get_odist("bhattacharyya")(z, zr)) == pytest.approx(want, rel=1e-5)
    assert want > 0.05  # the two batches really differ


@pytest.mark.parametrize("name", ["bhattacharyya", "l2", "kl"])
def test_odist_small_at_equal_outputs_and_grows(name):
    z = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    same = float(get_odist(name)(z, z.clone()))
    near = float(get_odist(name)(z + 0.1, z.clone() + torch.tensor([0.3, 0, 0, 0, 0])))
    far = float(get_odist(name)(z + torch.tensor([3.0, 0, 0, 0, 0]), z.clone()))
    assert abs(same) < 1e-2 and 0 < near < far


def test_unknown_odist_names_the_choices():
    with pytest.raises(ConfigError, match="cosine.*bhattacharyya"):
        get_odist("cosine")


# -- the frozen reference -----------------------------------------------------------------------
def test_reference_with_grad_is_refused():
    """Structural guard: logits that carry a graph are the live network, and odist refuses them."""
    model, batch = _mlp(), _batch()
    live, _ = forward_logits(model, batch)
    with pytest.raises(ValueError, match="live network"):
        get_odist("bhattacharyya")(live, live)


def test_frozen_reference_survives_changes_to_the_live_model():
    model, memory = _mlp(), _batch(40)
    ref = FrozenReference.take(model, memory, batch_size=16)
    before = ref.logits.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(ref.logits, before) and not ref.logits.requires_grad
    assert not torch.allclose(forward_logits(model, memory)[0], before)


def test_live_reference_silences_the_constraint_frozen_one_does_not():
    """The authors' notebook bug: with reference == live network, odist has zero gradient forever."""
    model, memory, task = _mlp(), _batch(40), _batch(40, seed=7)
    odist = get_odist("bhattacharyya")
    frozen = FrozenReference.take(model, memory)
    at_start = [g.abs().max() for g in torch.autograd.grad(odist(forward_logits(model, memory)[0], frozen.logits),
                                                           list(model.parameters()))]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(20):  # move the network with task loss only
        opt.zero_grad()
        nn.functional.cross_entropy(*forward_logits(model, task)).backward()
        opt.step()
    grads = torch.autograd.grad(odist(forward_logits(model, memory)[0], frozen.logits), list(model.parameters()))
    assert max(float(g.abs().max()) for g in grads) > 100 * max(float(g) for g in at_start)
    with torch.no_grad():
        live_ref = forward_logits(model, memory)[0]  # "reference" re-taken from the live network
    live_grads = torch.autograd.grad(odist(forward_logits(model, memory)[0], live_ref), list(model.parameters()))
    # eps inside the sqrt leaves a small residue; the frozen gradient is still > 100x larger
    assert max(float(g.abs().max()) for g in live_grads) < 1e-2 * max(float(g.abs().max()) for g in grads)


def test_step_does_one_forward_on_task_plus_memory():
    model, task, memory = _mlp(), _batch(8), _batch(24, seed=3)
    ref = FrozenReference.take(model, memory)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    run = build_config({"model": {"name": "mlp"}, "runs": [{"name": "r", "op": "continual", "task": 2, "from": 0}],
                        "data": {"split": [[0, 1], [2, 3]]}}).runs[0]
    obj = OBJECTIVES["continual"](run, model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w0 = [p.detach().clone() for p in model.parameters()]
    out = fip_step(model, opt, obj, get_odist("bhattacharyya"), 1.0, task, memory, ref.logits)
    assert calls == [32]  # 8 task + 24 memory examples, one pass
    assert set(out.terms) == {"L", "odist"} and out.terms["L"] > 0.5
    assert abs(out.terms["odist"]) < 0.1  # at the start the network equals its reference (eps leaves ~-1e-3 per example)
    assert any(not torch.equal(a, b) for a, b in zip(w0, model.parameters()))
    # lambda weighs L: S = odist + lam * L
    s = fip_loss(model, obj, get_odist("bhattacharyya"), 3.0, task, memory, ref.logits)
    assert float(s.loss.detach()) == pytest.approx(s.terms["odist"] + 3.0 * s.terms["L"], rel=1e-5)


# -- sparsity -----------------------------------------------------------------------------------
def test_prunable_are_weight_matrices_only():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 3), nn.LayerNorm(3))
    model.attn = nn.MultiheadAttention(8, 2)
    names = prunable_names(model)
    assert set(names) == {"0.weight", "3.weight", "attn.in_proj_weight", "attn.out_proj.weight"}
    assert prunable_names(model, ["*.bias"]) == [n for n, _ in model.named_parameters() if n.endswith(".bias")]


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("p", [0.0, 0.37, 0.9, 0.995])
def test_projection_zeroes_exactly_round_p_n(scope, p):
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(7, 13, generator=g), torch.randn(5, generator=g) * 10, torch.randn(3, 3, 3, generator=g)]
    masks = magnitude_masks(ts, p, scope)
    n = sum(t.numel() for t in ts)
    assert sum(int((~m).sum()) for m in masks) == round(p * n)
    if scope == "global" and 0 < p:  # every kept magnitude >= every pruned one
        kept = torch.cat([t[m].abs() for t, m in zip(ts, masks)])
        pruned = torch.cat([t[~m].abs() for t, m in zip(ts, masks)])
        assert float(kept.min()) >= float(pruned.max())
    if scope == "layer" and p == 0.9:
        assert all(abs(int((~m).sum()) - 0.9 * t.numel()) <= 1 for t, m in zip(ts, masks))


# -- config -------------------------------------------------------------------------------------
def _cfg(**run):
    return {"model": {"name": "mlp"}, "runs": [{"name": "r", "op": "finetune", **run}]}


@pytest.mark.parametrize("run, match", [
    ({"op": "prune"}, "unknown op 'prune'.*continual"),
    ({"op": "sparsify", "sparsity": 1.0}, r"sparsity=1.0 is outside \[0, 1\)"),
    ({"op": "sparsify", "sparsity": -0.1}, r"sparsity=-0.1"),
    ({"op": "continual", "task": 2, "from": 3, "memory_size": 0}, "memory_size=0.*needs a memory buffer"),
    ({"op": "continual", "task": 1, "from": 3}, "no earlier task"),
    ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
    ({"odist": "cos"}, "unknown odist 'cos'"),
    ({"steps": 10, "epochs": 2}, "exactly one of steps"),
    ({"task": 3}, "task=3 but the data has 2 tasks"),
    ({"from": "later"}, "not an earlier run"),
    ({"lr": 0}, "lr=0 must be > 0"),
    ({"colour": "red"}, "unknown keys.*colour"),
])
def test_bad_run_configs_name_value_and_fix(run, match):
    with pytest.raises(ConfigError, match=match):
        build_config(_cfg(**run))


def test_default_config_and_overrides():
    cfg = load_config(None, ["lr=0.01", "runs.continual.steps=7", "data.seed=3", "name=\"x\""])
    assert [r.name for r in cfg.runs] == ["task1", "continual", "finetune"]
    assert all(r.lr == 0.01 for r in cfg.runs)
    assert [r.steps for r in cfg.runs] == [300, 7, 300] and cfg.data.seed == 3 and cfg.name == "x"
    assert cfg.runs[1].start == "task1" and cfg.runs[1].op == "continual" and cfg.runs[1].task == 2
    assert parse_overrides(["a=[1, 2]", "b=hello", "c=true"]) == {"a": [1, 2], "b": "hello", "c": True}
    assert load_config(None, ["runs.2.steps=9"]).runs[2].steps == 9
    with pytest.raises(ConfigError, match="no run 'nosuch'.*task1"):
        load_config(None, ["runs.nosuch.lr=1"])
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["=3"])


def test_objective_registry_rejects_a_second_registration():
    with pytest.raises(ValueError, match="registered twice"):
        register_objective("continual")(type("Again", (OBJECTIVES["continual"],), {}))
    assert set(OBJECTIVES) >= {"continual", "sparsify", "undirected", "finetune"}


def test_cat_batches_pads_text_to_one_length():
    a = {"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": torch.zeros(2, 3, dtype=torch.long)}
    b = {"input_ids": torch.ones(1, 5, dtype=torch.long), "labels": torch.zeros(1, 5, dtype=torch.long)}
    out = cat_batches([a, b])
    assert out["input_ids"].shape == (3, 5) and int(out["labels"][0, 3]) == -100 and int(out["input_ids"][0, 4]) == 0


def test_chained_sources_config_one_task_per_source(tmp_path):
    base = {"data": {"source": ["digits", "digits"]}, "model": {"name": "mlp", "kwargs": {"n_classes": 20}},
            "runs": [{"name": "a", "op": "finetune", "task": 2}]}
    cfg = build_config(base)
    assert cfg.data.split is None and cfg.data.n_tasks == 2
    with pytest.raises(ConfigError, match="remove split"):
        build_config({**base, "data": {"source": ["digits", "digits"], "split": "classes:5"}})
    with pytest.raises(ConfigError, match="task=3 but the data has 2 tasks"):
        build_config({**base, "runs": [{"name": "a", "op": "finetune", "task": 3}]})
