"""Builds on a CUDA device: build → store → evaluate, bf16 autocast, host snapshots of the weights
(blocking ones for queries, and the pinned non-blocking ones a walk saves its nodes through).

Skipped where ``torch.cuda.is_available()`` is false (CI, this project's CPU machine). Run on a GPU
machine with ``python -m pytest -q -m cuda tests/test_cuda.py``.
"""

from __future__ import annotations

import importlib
import time

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]

import fipgraph  # noqa: E402
from fipgraph.device import host_state_dict  # noqa: E402
from fipgraph.path import build, load_config  # noqa: E402
from fipgraph.path.engine.evaluate import evaluate_tasks  # noqa: E402
from fipgraph.path.engine.snapshot import PENDING, NodeSaver  # noqa: E402

build_mod = importlib.import_module("fipgraph.path.build")
SHORT = ["runs.task1.steps=60", "runs.continual.steps=40", "runs.finetune.steps=20", "save_every=10"]


def _build(tmp_path, name: str, *extra: str):
    result = build(load_config(None, SHORT + list(extra)), tmp_path / name, progress=False)
    assert result.status == "finished"
    return result


def test_build_on_cuda_stores_host_weights_and_evaluates(tmp_path):
    gpu = _build(tmp_path, "gpu", 'device="cuda"')
    cpu = _build(tmp_path, "cpu", 'device="cpu"')
    assert "device cuda:" in (tmp_path / "gpu" / "build.log").read_text()
    with fipgraph.open_store(tmp_path / "gpu", "r") as s:
        weights = s.state_dict(gpu.runs[0].last_node)
        model = fipgraph.models.model_from_node(s, gpu.runs[0].last_node).cuda()
        stored_acc = build_mod.last_accuracies(s, gpu.runs[0].last_node)
    with fipgraph.open_store(tmp_path / "cpu", "r") as s:
        cpu_weights = s.state_dict(cpu.runs[0].last_node)
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in weights.values())
    # same seeds and batches; CUDA kernels differ from CPU ones only in rounding
    assert max(float((weights[k] - cpu_weights[k]).abs().max()) for k in weights) < 0.05
    tasks = fipgraph.data.make_tasks("digits", split=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    again = evaluate_tasks(model, {"task1": tasks[0]}, "single")  # evaluation on the device
    assert again["task1"]["accuracy"] == pytest.approx(stored_acc["task1"], abs=0.01)
    assert stored_acc["task1"] > 0.8


def test_bf16_autocast_on_cuda_keeps_fp32_master_weights(tmp_path):
    bf16 = _build(tmp_path, "bf16", 'device="cuda"', 'precision="bf16"')
    fp32 = _build(tmp_path, "fp32", 'device="cuda"')
    with fipgraph.open_store(tmp_path / "bf16", "r") as a, fipgraph.open_store(tmp_path / "fp32", "r") as b:
        wa, wb = a.state_dict(bf16.runs[0].last_node), b.state_dict(fp32.runs[0].last_node)
        acc = build_mod.last_accuracies(a, bf16.runs[0].last_node)
    assert all(v.dtype == torch.float32 for v in wa.values())
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)  # the forward really ran in bf16
    assert acc["task1"] > 0.8


def test_fp16_uses_a_grad_scaler_and_resumes(tmp_path):
    first = build(load_config(None, SHORT + ['device="cuda"', 'precision="fp16"']), tmp_path / "s",
                  max_steps=70, progress=False)
    assert first.status == "interrupted"
    saved = torch.load(tmp_path / "s" / "optim" / f"run-{first.runs[-1].run_id}.pt", weights_only=True)
    assert saved["state"]["scaler"] is not None and saved["state"]["scaler"]["scale"] > 0
    assert build(load_config(None, SHORT + ['device="cuda"', 'precision="fp16"']), tmp_path / "s",
                 progress=False).status == "finished"


def test_host_snapshot_is_an_exact_cpu_copy_with_the_spec():
    model = fipgraph.models.build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [32], "n_classes": 10}})
    model = model.cuda()
    host = host_state_dict(model)
    assert host.fipgraph_spec == model.fipgraph_spec
    for name, tensor in model.state_dict().items():
        assert host[name].device.type == "cpu" and torch.equal(host[name], tensor.cpu())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # later steps on the device do not reach the snapshot
    assert not torch.equal(next(iter(host.values())), next(model.parameters()).cpu())


def test_saving_a_node_does_not_wait_for_the_device_and_keeps_the_weights_at_its_step(tmp_path):
    model = fipgraph.models.build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [32], "n_classes": 10}})
    model = model.cuda()
    device = next(model.parameters()).device
    with fipgraph.open_store(tmp_path / "s") as store:
        saver = NodeSaver(store, device)
        assert saver.deferred
        expected = {k: v.clone() for k, v in model.state_dict().items()}  # queued before the device's long work
        torch.cuda._sleep(int(2e9))  # about a second of device work queued ahead of the snapshot's copies
        t0 = time.perf_counter()
        assert saver.save(model, parent=None, step=1) is None
        took = time.perf_counter() - t0
        job = saver._flight[0]
        assert not job.event.query()  # the copies wait behind the device's queue; the host did not
        assert all(t.is_pinned() for t in job.buffers.tensors.values())
        with torch.no_grad():  # the next step, queued behind the copies
            for p in model.parameters():
                p.add_(1.0)
        saver.poll()  # never waits: the node is still on its way
        assert saver.in_flight == 1
        first = saver.drain()
        got = store.state_dict(first)
        assert all(torch.equal(got[k], expected[k].cpu()) for k in expected)  # not the later step's weights
        assert took < 0.5, took
        buffers = job.buffers
        saver.save(model, parent=PENDING, step=2)
        assert saver._flight[0].buffers is buffers  # pinned buffers are reused, not allocated per save
        second = saver.drain()
        assert store.node(second)["parent_id"] == first
        got = store.state_dict(second)
        assert all(torch.equal(got[k], v.cpu()) for k, v in model.state_dict().items())


def test_a_cuda_build_saving_every_step_stores_consecutive_steps(tmp_path):
    result = _build(tmp_path, "every", 'device="cuda"', "save_every=1")
    with fipgraph.open_store(tmp_path / "every", "r") as s:
        steps = s.sql("SELECT step FROM nodes WHERE run_id = ? ORDER BY step", [result.runs[0].run_id])["step"]
        first, last = s.state_dict(int(s.sql("SELECT node_id FROM nodes WHERE run_id = ? AND step = 1",
                                             [result.runs[0].run_id])["node_id"][0])), s.state_dict(result.runs[0].last_node)
    assert list(steps) == list(range(0, 61))  # every step, each once, in order
    assert any(not torch.equal(first[k], last[k]) for k in first)
