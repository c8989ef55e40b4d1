"""End-to-end builds on digits: sparsify, undirected, live-reference guard, bit-exact resume."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
EXAMPLES = str(Path(__file__).parents[1] / "examples")

import fipgraph  # noqa: E402
from fipgraph.models import forward_logits  # noqa: E402
from fipgraph.path import build, load_config  # noqa: E402
from fipgraph.path.engine import recipe as walk_mod  # noqa: E402
from fipgraph.path.engine.memory import FrozenReference  # noqa: E402
from fipgraph.path.ops.sparsity import prunable_names  # noqa: E402
from fipgraph.path.engine.recipe import LiveReferenceError  # noqa: E402


def _state_distance(a: dict, b: dict) -> float:
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a) ** 0.5)


@pytest.fixture(scope="module")
def sparse_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("sparse")
    result = build(load_config(EXAMPLES + "/sparsify.toml", ["runs.dense.steps=400", "runs.sparsify.steps=600",
                                                          "runs.undirected.steps=600"]), d, progress=False)
    assert result.status == "finished"
    return d, {r.name.split("/")[1]: r.last_node for r in result.runs}


def test_sparsify_ends_exactly_at_target_with_bounded_loss(sparse_store):
    d, last = sparse_store
    with fipgraph.open_store(d, "r") as s:
        final = s.node(last["sparsify"])
        model = fipgraph.models.model_from_node(s, last["sparsify"])
        acc = s.sql("SELECT node_id, task1_accuracy AS acc, prunable_sparsity FROM wide WHERE node_id IN (?, ?)",
                    [last["dense"], last["sparsify"]]).set_index("node_id")
        runs = s.sql("SELECT name, config FROM runs")
    names = prunable_names(model)
    assert names == ["body.1.weight", "head.weight"]  # Linear weights; biases are not prunable
    params = dict(model.named_parameters())
    n = sum(params[k].numel() for k in names)
    assert sum(int((params[k] == 0).sum()) for k in names) == round(0.9 * n)
    assert all(int((p == 0).sum()) == 0 for k, p in params.items() if k.endswith("bias"))
    assert final["op"] == "sparsify" and '"final_projection": true' in final["tags"] and "body.1.weight" in final["tags"]
    assert acc.loc[last["sparsify"], "prunable_sparsity"] == pytest.approx(round(0.9 * n) / n)
    dense, sparse = acc.loc[last["dense"], "acc"], acc.loc[last["sparsify"], "acc"]
    assert dense > 0.93 and sparse >= dense - 0.03
    assert '"sparsity": 0.9' in runs.set_index("name").loc["sparse/sparsify", "config"]


def test_finetune_from_sparse_node_keeps_its_zeros(sparse_store, tmp_path):
    d, last = sparse_store
    cfg = load_config(None, ["runs.task1.steps=30", "runs.task1.save_every=30"])
    cfg.runs = cfg.runs[:1]
    cfg.model = None
    result = build(cfg, d, start=last["sparsify"], progress=False)
    with fipgraph.open_store(d, "r") as s:
        before, after = s.state_dict(last["sparsify"]), s.state_dict(result.runs[0].last_node)
    assert _state_distance(before, after) > 0.1  # it trained ...
    for k in ("body.1.weight", "head.weight"):  # ... but every pruned weight is still exactly zero
        assert torch.equal(after[k][before[k] == 0], torch.zeros(int((before[k] == 0).sum())))


def test_undirected_travels_far_with_small_output_change(sparse_store):
    d, last = sparse_store
    with fipgraph.open_store(d, "r") as s:
        start, end = s.state_dict(last["dense"]), s.state_dict(last["undirected"])
        edges = s.sql("SELECT e.output_distance FROM edges e JOIN nodes n ON e.dst = n.node_id WHERE n.op = 'undirected'")
        w = s.sql("SELECT node_id, task1_accuracy AS acc, task1_H AS h FROM wide WHERE op = 'undirected' "
                  "OR node_id = ? ORDER BY node_id", [last["dense"]]).set_index("node_id")
    moved = _state_distance(start, end)
    norm = float(sum((v.double() ** 2).sum() for v in start.values()) ** 0.5)
    assert moved > 0.25 * norm  # far in weight space ...
    assert float(edges["output_distance"].max()) < 0.05  # ... with small output motion per edge
    assert w.loc[last["undirected"], "acc"] >= w.loc[last["dense"], "acc"] - 0.02
    h = w.drop(last["dense"])["h"]
    assert h.notna().all() and (h > 0).all()  # H recorded at every saved node of the walk


def test_live_reference_is_caught(tmp_path, monkeypatch):
    """A reference that follows the live network (the authors' notebook bug) stops the run."""

    class LiveReference(FrozenReference):
        @classmethod
        def take(cls, model, memory, batch_size=256):
            ref = super().take(model, memory, batch_size)
            ref.model = model  # keep the live network ...
            return ref

        def sample(self, n, generator):
            batch, _ = super().sample(n, generator)
            with torch.no_grad():
                return batch, forward_logits(self.model, batch)[0]  # ... and compare with it

    monkeypatch.setattr(walk_mod, "FrozenReference", LiveReference)
    cfg = load_config(None, ["runs.task1.steps=20", "runs.continual.steps=20", "runs.finetune.steps=5"])
    with pytest.raises(LiveReferenceError, match="frozen copy"):
        build(cfg, tmp_path, progress=False)


def test_stop_and_resume_is_bit_exact_with_no_duplicate_steps(tmp_path):
    overrides = ["runs.task1.steps=40", "runs.continual.steps=40", "runs.finetune.steps=20", "save_every=10"]
    full = build(load_config(None, overrides), tmp_path / "a", progress=False)
    first = build(load_config(None, overrides), tmp_path / "b", max_steps=57, progress=False)
    assert first.status == "interrupted" and first.runs[-1].name == "default/continual"
    second = build(load_config(None, overrides), tmp_path / "b", progress=False)
    assert second.status == "finished" and [r.steps_done for r in second.runs] == [0, 23, 20]
    with fipgraph.open_store(tmp_path / "a", "r") as a, fipgraph.open_store(tmp_path / "b", "r") as b:
        dup = b.sql("SELECT run_id, step, count(*) AS n FROM nodes GROUP BY run_id, step HAVING n > 1")
        steps = b.sql("SELECT r.name, list(n.step ORDER BY n.step) AS steps FROM nodes n JOIN runs r USING (run_id) "
                      "GROUP BY r.name").set_index("name")["steps"]
        status = set(b.sql("SELECT status FROM runs")["status"])
        for ra, rb in zip(full.runs, second.runs):  # same weights as the run that was never stopped
            sa, sb = a.state_dict(ra.last_node), b.state_dict(rb.last_node)
            assert all(torch.equal(sa[k], sb[k]) for k in sa), ra.name
    assert dup.empty and status == {"finished"}
    assert list(steps["default/continual"]) == [10, 17, 20, 30, 40]  # stopped at 17, saved, resumed
    assert list(steps["default/task1"]) == [0, 10, 20, 30, 40]


def test_last_node_is_evaluated_when_steps_are_not_a_multiple_of_save_every(tmp_path):
    overrides = ["runs.task1.steps=25", "runs.continual.steps=13", "runs.finetune.steps=7", "save_every=10"]
    result = build(load_config(None, overrides), tmp_path, progress=False)
    with fipgraph.open_store(tmp_path, "r") as store:
        last = store.sql("SELECT node_id, step, task1_accuracy FROM wide WHERE node_id IN "
                         f"({', '.join(str(r.last_node) for r in result.runs)}) ORDER BY node_id")
    assert last["step"].tolist() == [25, 13, 7]
    assert last["task1_accuracy"].notna().all()  # was missing: the final save did not evaluate


def _llama(hidden: int) -> dict:
    return {"name": "llama", "kwargs": {"vocab_size": 64, "hidden_size": hidden, "num_hidden_layers": 1,
                                        "num_attention_heads": 2, "intermediate_size": 32}}


@pytest.mark.parametrize("config_hidden, accepted", [(16, True), (32, False)])
def test_a_run_from_a_stored_hf_node_is_checked_by_layout_not_by_spec_name(config_hidden, accepted):
    """A pretrained LM (e.g. smollm2) is stored under its expanded "hf" spec, so `from = <node id>` with the
    config's [model] naming it must compare what the two build, not their names (issue 14: co_cl_30)."""
    from fipgraph.errors import ConfigError
    from fipgraph.models import build_model
    from fipgraph.models.hf import hf_spec
    from fipgraph.path.config.schema import build_config

    build_mod = importlib.import_module("fipgraph.path.build")  # the module: fipgraph.path.build is the function

    stored = hf_spec(build_model(_llama(16)))

    class NodeStore:  # what plan_runs asks of a store: the start node's model spec
        def arch_spec(self, node_id):
            return {"model": stored}

    cfg = build_config({"name": "lm", "data": {"source": "digits"}, "model": _llama(config_hidden),
                        "defaults": {"device": "cpu"}, "runs": [{"name": "b", "op": "finetune", "from": 7, "steps": 2}]})
    (plan,) = build_mod.plan_runs(cfg, NodeStore(), None)
    assert plan.spec == stored and plan.expect["kwargs"]["hidden_size"] == config_hidden
    if accepted:
        build_mod.check_plan(plan, [], "single", {})
    else:
        with pytest.raises(ConfigError, match="node 7 is a"):
            build_mod.check_plan(plan, [], "single", {})
