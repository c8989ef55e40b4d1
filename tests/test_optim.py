"""Optimizers and learning-rate schedules of a run (fipgraph/path/engine/optim.py), on real digits builds."""

from __future__ import annotations

import math

import pytest
import torch

torch.set_num_threads(1)

import fipgraph  # noqa: E402
from fipgraph.errors import ConfigError  # noqa: E402
from fipgraph.path import build, load_config  # noqa: E402
from fipgraph.path.config.schema import RunConfig  # noqa: E402
from fipgraph.path.engine.optim import lr_at  # noqa: E402

SHORT = ["runs.task1.steps=30", "runs.continual.steps=6", "runs.finetune.steps=3", "save_every=1"]


def test_fixed_step_moves_the_weights_exactly_lr_per_step(tmp_path):
    cfg = load_config(None, SHORT + ['runs.continual.optimizer="fixed_step"', "runs.continual.lr=0.05"])
    build(cfg, tmp_path, progress=False)
    with fipgraph.open_store(tmp_path, "r") as store:
        d = store.sql("SELECT e.distance FROM edges e JOIN nodes n ON n.node_id = e.dst JOIN runs r USING (run_id) "
                      "WHERE r.name = 'default/continual' ORDER BY n.step")["distance"]
        adam = store.sql("SELECT e.distance FROM edges e JOIN nodes n ON n.node_id = e.dst JOIN runs r USING (run_id) "
                         "WHERE r.name = 'default/finetune' ORDER BY n.step")["distance"]
    assert len(d) == 6
    assert d.tolist() == pytest.approx([0.05] * 6, rel=1e-4)  # Adam's steps have no fixed length
    assert not adam.tolist() == pytest.approx([adam[0]] * len(adam), rel=1e-2)


def test_schedules_follow_the_cosine_and_restart_each_cycle():
    cyc = RunConfig(name="c", op="finetune", lr=0.1, lr_min=0.01, lr_schedule="cyclic", lr_cycle=4)
    rates = [lr_at(cyc, s, 12) for s in range(1, 13)]
    assert rates[3] == pytest.approx(0.01) and rates[7] == pytest.approx(0.01) and rates[11] == pytest.approx(0.01)
    assert rates[4] == pytest.approx(rates[0]) and rates[0] == pytest.approx(0.01 + 0.045 * (1 + math.cos(math.pi / 4)))
    assert rates[0] > rates[1] > rates[2] > rates[3]
    cos = RunConfig(name="c", op="finetune", lr=0.1, lr_schedule="cosine")
    assert lr_at(cos, 5, 10) == pytest.approx(0.05) and lr_at(cos, 10, 10) == pytest.approx(0.0)
    assert lr_at(RunConfig(name="c", op="finetune", lr=0.1), 7, 10) == 0.1


def test_cyclic_run_resumes_bit_exact_and_uses_the_schedule(tmp_path):
    overrides = SHORT + ['runs.finetune.lr_schedule="cyclic"', "runs.finetune.lr_cycle=2", "runs.finetune.steps=8",
                         "runs.finetune.lr=0.01", "runs.finetune.lr_min=0.0"]
    full = build(load_config(None, overrides), tmp_path / "a", progress=False)
    part = build(load_config(None, overrides), tmp_path / "b", max_steps=30 + 6 + 3, progress=False)
    assert part.status == "interrupted"
    rest = build(load_config(None, overrides), tmp_path / "b", progress=False)
    with fipgraph.open_store(tmp_path / "a", "r") as a, fipgraph.open_store(tmp_path / "b", "r") as b:
        sa, sb = a.state_dict(full.runs[-1].last_node), b.state_dict(rest.runs[-1].last_node)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        d = a.sql("SELECT e.distance FROM edges e JOIN nodes n ON n.node_id = e.dst JOIN runs r USING (run_id) "
                  "WHERE r.name = 'default/finetune' ORDER BY n.step")["distance"].tolist()
    # the last step of each 2-step cycle runs at lr_min = 0: the weights do not move (Adam's moments aside, lr scales all)
    assert d[1] == d[3] == d[5] == d[7] == 0.0 and min(d[0], d[2], d[4], d[6]) > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"lr_cycle": 5}, "lr_cycle=5 with lr_schedule='constant'"),
    ({"lr_schedule": "cyclic"}, "give lr_cycle"),
    ({"lr_schedule": "step"}, "unknown lr_schedule 'step'"),
    ({"lr_min": 0.5, "lr_schedule": "cosine"}, "lr_min=0.5 must be in"),
])
def test_bad_schedules_name_the_setting(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        RunConfig(name="r", op="finetune", lr=0.1, **kwargs)


def test_default_schedule_is_not_part_of_a_runs_identity():
    assert "lr_schedule" not in RunConfig(name="r", op="finetune").to_dict()  # stores built before schedules still resume
    assert RunConfig(name="r", op="finetune", lr_schedule="cosine").to_dict()["lr_schedule"] == "cosine"
