"""Wanda and per-row pruning (path/ops/saliency.py, sparsity.select_masks), checked against numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

torch.set_num_threads(1)

import fipgraph  # noqa: E402
from fipgraph.data import make_tasks  # noqa: E402
from fipgraph.data.seeds import derive_seed  # noqa: E402
from fipgraph.errors import ConfigError  # noqa: E402
from fipgraph.models import build_model  # noqa: E402
from fipgraph.path import build, load_config  # noqa: E402
from fipgraph.path.config.schema import build_config  # noqa: E402
from fipgraph.path.ops.saliency import input_norms, resolve_saliency  # noqa: E402
from fipgraph.path.ops.sparsity import magnitude_masks  # noqa: E402

EXAMPLES = str(Path(__file__).parents[1] / "examples")
PRUNABLE = ["body.1.weight", "head.weight"]


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [32], "n_classes": 10}})


def numpy_wanda_keep(state: dict, x: np.ndarray, p: float) -> dict[str, np.ndarray]:
    """Independent oracle: forward in numpy, ‖X_j‖₂ per input feature, |W|·‖X‖, drop round(p·cols) per row."""
    w1, b1, w2 = (state[k].double().numpy() for k in ("body.1.weight", "body.1.bias", "head.weight"))
    x = x.reshape(len(x), -1).astype(np.float64)
    hidden = np.maximum(x @ w1.T + b1, 0.0)
    keep = {}
    for name, w, inp in (("body.1.weight", w1, x), ("head.weight", w2, hidden)):
        score = np.abs(w) * np.sqrt((inp ** 2).sum(0))[None, :]
        k = round(p * w.shape[1])
        m = np.ones_like(w, dtype=bool)
        np.put_along_axis(m, np.argsort(score, axis=1, kind="stable")[:, :k], False, axis=1)
        keep[name] = m
    return keep


def test_wanda_row_masks_equal_a_numpy_computation():
    model = _mlp()
    x = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    batches = [{"x": x[:25], "labels": torch.zeros(25, dtype=torch.long)},
               {"x": x[25:], "labels": torch.zeros(15, dtype=torch.long)}]  # norms accumulate over batches
    params = dict(model.named_parameters())
    norms = input_norms(model, PRUNABLE, batches)
    masks = magnitude_masks([params[n] for n in PRUNABLE], 0.5, "row", norms)
    oracle = numpy_wanda_keep({k: v.detach() for k, v in model.state_dict().items()}, x.numpy(), 0.5)
    for name, m in zip(PRUNABLE, masks):
        assert np.array_equal(m.numpy(), oracle[name]), name
    magnitude = magnitude_masks([params[n] for n in PRUNABLE], 0.5, "row")
    assert not all(torch.equal(a, b) for a, b in zip(masks, magnitude))  # the norms changed the choice


@pytest.mark.parametrize("p", [0.3, 0.5, 0.77])
def test_row_scope_prunes_exactly_p_of_every_row(p):
    w = [torch.randn(7, 13), torch.randn(5, 2, 3, 3)]  # a conv weight is ranked per output channel
    for t, m in zip(w, magnitude_masks(w, p, "row")):
        zeros = (~m).reshape(t.shape[0], -1).sum(1)
        assert zeros.tolist() == [round(p * m[0].numel())] * t.shape[0]
        # the pruned entries of each row are its smallest
        flat, keep = t.abs().reshape(t.shape[0], -1), m.reshape(t.shape[0], -1)
        assert all(flat[r][~keep[r]].max() <= flat[r][keep[r]].min() for r in range(t.shape[0]))


def test_auto_is_wanda_per_row_for_transformers_and_global_magnitude_otherwise():
    llama = build_model({"name": "llama", "kwargs": {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 1,
                                                     "num_attention_heads": 2, "intermediate_size": 32}})
    assert resolve_saliency("auto", "auto", llama, "t") == ("wanda", "row")
    assert resolve_saliency("auto", "auto", _mlp(), "t") == ("magnitude", "global")
    assert resolve_saliency("magnitude", "layer", llama, "t") == ("magnitude", "layer")


@pytest.mark.parametrize("key,value,match", [("saliency", "wandaa", "saliency='wandaa'; use one of"),
                                             ("prune_scope", "rows", "prune_scope='rows'; use one of"),
                                             ("calibration_size", 0, "calibration_size=0 must be >= 1")])
def test_bad_saliency_settings_name_value_and_fix(key, value, match):
    with pytest.raises(ConfigError, match=match):
        build_config({"model": {"name": "mlp"}, "runs": [{"name": "r", "op": "oneshot_prune", "from": 0, key: value}]})


def test_oneshot_wanda_without_retraining_is_the_calibrated_projection(tmp_path):
    """The build's pruned node = numpy Wanda on the dense node, with norms over the first calibration_size memory examples."""
    over = ["runs.dense.steps=40", "runs.oneshot_prune.retrain=false", 'runs.oneshot_prune.saliency="wanda"',
            'runs.oneshot_prune.prune_scope="row"', "runs.oneshot_prune.sparsity=0.5",
            "runs.oneshot_prune.calibration_size=64", "runs.oneshot_prune.memory_size=64"]
    cfg = load_config(EXAMPLES + "/digits_pruning.toml", over)
    cfg.runs = [r for r in cfg.runs if r.name in ("dense", "oneshot_prune")]
    build(cfg, tmp_path, progress=False)
    with fipgraph.open_store(tmp_path, "r") as s:
        rows = s.sql("SELECT n.node_id, r.name, n.step, n.tags FROM nodes n JOIN runs r USING (run_id) ORDER BY n.node_id")
        dense = s.state_dict(int(rows[rows["name"] == "pruning/dense"]["node_id"].iloc[-1]))
        pruned_rows = rows[rows["name"] == "pruning/oneshot_prune"]
        assert len(pruned_rows) == 1 and '"saliency": "wanda"' in pruned_rows["tags"].iloc[0]
        pruned = s.state_dict(int(pruned_rows["node_id"].iloc[0]))
    task = make_tasks("digits", [list(range(10))], seed=0)[0]
    calib = task.sample(64, seed=derive_seed(0, "memory", 1))["x"].numpy()
    oracle = numpy_wanda_keep(dense, calib, 0.5)
    for name in PRUNABLE:
        assert np.array_equal((pruned[name] != 0).numpy(), oracle[name]), name
        assert torch.equal(pruned[name][pruned[name] != 0], dense[name][pruned[name] != 0])  # no weight update


def test_pruning_runs_stored_before_saliency_resume_only_when_pinned_to_global_magnitude():
    import importlib

    from fipgraph.path.config.schema import identity_diff

    build_mod = importlib.import_module("fipgraph.path.build")

    def resolved(over):
        cfg = load_config(None, ['runs.continual.op="oneshot_prune"', "runs.continual.from=0", *over])
        plan = build_mod.Plan(cfg.runs[1], "default/continual", {"name": "mlp"}, 0)
        return cfg.runs[1], build_mod.resolved_config(cfg, plan, 0)

    run, new = resolved([])
    stored = {**new, "run": {k: v for k, v in new["run"].items() if k not in ("saliency", "calibration_size")}}
    stored["run"]["prune_scope"] = "global"  # what such a run stored: global magnitude, no saliency key
    assert identity_diff(stored, new, run) == ["run.prune_scope", "run.saliency"]  # "auto" is not the stored walk
    run, pinned = resolved(['saliency="magnitude"', 'prune_scope="global"'])
    assert identity_diff(stored, pinned, run) == []
