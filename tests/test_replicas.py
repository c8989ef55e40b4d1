"""Replica walks (issue 9 §3): K seeds of one run as one batched computation, each its own stored run.

Oracles: the same walks run one at a time (the plain RunRecipe), a plain run of one seed, and an
uninterrupted batched build for resume. Small real builds on sklearn digits."""

from __future__ import annotations

import importlib
import logging

import pytest
import torch

torch.set_num_threads(1)

import fipgraph  # noqa: E402
from fipgraph.errors import ConfigError  # noqa: E402
from fipgraph.path import ReplicaSettings, build  # noqa: E402
from fipgraph.path.config.schema import build_config  # noqa: E402

replicas_mod = importlib.import_module("fipgraph.path.engine.replicas")
build_mod = importlib.import_module("fipgraph.path.build")  # the module (the package re-exports the function)
REL_TOL = 1e-5  # batched (vmap) matmuls sum in another order than K separate ones: float rounding only


def _raw(replicas=3, op2="continual", steps=12, **extra) -> dict:
    return {
        "name": "r",
        "data": {"source": "digits", "split": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]},
        "model": {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [32], "n_classes": 10}},
        "defaults": {"save_every": 4, "eval_every": 100, "probe_size": 8, "memory_size": 60, "device": "cpu", **extra},
        "runs": [{"name": "t1", "op": "finetune", "task": 1, "steps": steps, "replicas": replicas},
                 {"name": "c", "op": op2, "from": "t1", "task": 2, "steps": steps, "replicas": replicas}],
    }


def _nodes(store_dir) -> dict[tuple[str, int], dict]:
    """{(run name, step): weights} of every stored node."""
    with fipgraph.open_store(store_dir, "r") as s:
        df = s.sql("SELECT n.node_id, n.step, r.name FROM nodes n JOIN runs r USING (run_id)")
        return {(name, int(step)): s.state_dict(int(nid)) for nid, step, name in zip(df["node_id"], df["step"], df["name"])}


def _close(a: dict, b: dict, tol: float = REL_TOL) -> float:
    """Largest relative difference over all tensors (asserts both have the same keys)."""
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in a)


SEQUENTIAL = ReplicaSettings(batch=False)  # the oracle: the same walks one at a time
TWO_GROUPS = ReplicaSettings(groups=2)  # two stacked groups in parallel threads, whatever the machine


# -- config -----------------------------------------------------------------------------------------
def test_replicas_expand_to_runs_named_by_seed_and_chain_replica_to_replica():
    cfg = build_config(_raw() | {"runs": [
        {"name": "t1", "op": "finetune", "task": 1, "seeds": [5, 9]},
        {"name": "c", "op": "continual", "from": "t1", "task": 2, "seeds": [5, 9]}]})
    plans = build_mod.plan_runs(cfg, None, None)
    assert [(p.name, p.run.seed, p.start, p.group) for p in plans] == [
        ("r/t1/s5", 5, None, "t1"), ("r/t1/s9", 9, None, "t1"), ("r/c/s5", 5, "t1/s5", "c"), ("r/c/s9", 9, "t1/s9", "c")]
    # each replica stores the config a plain run of its seed would: no replicas/seeds keys
    assert all("replicas" not in p.run.to_dict() and "seeds" not in p.run.to_dict() for p in plans)


@pytest.mark.parametrize("runs, message", [
    ([{"name": "t1", "op": "finetune", "replicas": 0}], "replicas=0 must be >= 1"),
    ([{"name": "t1", "op": "finetune", "replicas": 3, "seeds": [1, 2]}], "replicas=3 but seeds=[1, 2]"),
    ([{"name": "t1", "op": "finetune", "seeds": [1, 1]}], "distinct seeds"),
    ([{"name": "t1", "op": "finetune", "replicas": "two"}], "replicas='two'"),
])
def test_bad_replica_settings_name_the_value_and_the_fix(runs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_config(_raw() | {"runs": runs})


def test_a_run_from_a_replicated_run_needs_the_same_seeds(tmp_path):
    raw = _raw()
    raw["runs"][1]["replicas"] = 2
    with pytest.raises(ConfigError, match=r"from='t1' has replicas with seeds \[0, 1, 2\].*set seeds = \[0, 1, 2\]"):
        build(build_config(raw), tmp_path / "s", progress=False)


# -- batched = separate ----------------------------------------------------------------------------
def test_batched_replicas_equal_separate_walks_and_a_plain_run_of_that_seed(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fipgraph.build")
    batched = build(build_config(_raw()), tmp_path / "b", progress=False)
    assert batched.status == "finished" and "3 replicas walk batched" in caplog.text
    separate = build(build_config(_raw()), tmp_path / "s", progress=False, replica_settings=SEQUENTIAL)
    assert [r.name for r in batched.runs] == [r.name for r in separate.runs] == [
        f"r/{run}/s{s}" for run in ("t1", "c") for s in range(3)]
    b, s = _nodes(tmp_path / "b"), _nodes(tmp_path / "s")
    assert set(b) == set(s) and len(b) == 3 * 4 + 3 * 3  # t1: steps 0 (a new network), 4, 8, 12; c: 4, 8, 12
    worst = max(_close(b[key], s[key]) for key in b)
    assert worst <= REL_TOL, worst
    # and the walks did move, differently per seed (a broken stacking would copy one walk K times)
    assert _close(b[("r/t1/s0", 12)], b[("r/t1/s0", 0)]) > 1e-2
    assert _close(b[("r/c/s1", 12)], b[("r/c/s2", 12)]) > 1e-2
    plain = _raw()
    plain["runs"] = [{"name": "t1/s1", "op": "finetune", "task": 1, "steps": 12, "seed": 1}]
    build(build_config(plain), tmp_path / "p", progress=False)
    p = _nodes(tmp_path / "p")
    assert max(_close(b[("r/t1/s1", step)], p[("r/t1/s1", step)]) for step in (0, 4, 8, 12)) <= REL_TOL
    with fipgraph.open_store(tmp_path / "b", "r") as store:  # every replica's last node evaluated, edges per run
        evals = store.sql("SELECT r.name, count(*) AS n FROM evals e JOIN nodes n USING (node_id) "
                          "JOIN runs r USING (run_id) WHERE n.step = 12 AND e.metric = 'accuracy' GROUP BY r.name")
        assert len(evals) == 6 and (evals["n"] >= 1).all()
        parents = store.sql("SELECT n.parent_id, p.run_id AS prun, n.run_id FROM nodes n JOIN nodes p "
                            "ON n.parent_id = p.node_id")
        c_first = store.sql("SELECT r.name, p.name AS pname FROM nodes n JOIN runs r USING (run_id) "
                            "JOIN nodes pn ON n.parent_id = pn.node_id JOIN runs p ON pn.run_id = p.run_id "
                            "WHERE n.step = 4 AND r.name LIKE 'r/c/%'")
    assert (parents["prun"] == parents["run_id"]).sum() == len(parents) - 3  # only c's first nodes cross runs
    assert sorted(zip(c_first["name"], c_first["pname"])) == [(f"r/c/s{s}", f"r/t1/s{s}") for s in range(3)]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_other_elementwise_optimizers_batch_too(tmp_path, optimizer):
    raw = _raw(replicas=2, steps=8, optimizer=optimizer, weight_decay=0.01, lr_schedule="cosine")
    build(build_config(raw), tmp_path / "b", progress=False)
    build(build_config(raw), tmp_path / "s", progress=False, replica_settings=SEQUENTIAL)
    b, s = _nodes(tmp_path / "b"), _nodes(tmp_path / "s")
    assert set(b) == set(s) and max(_close(b[k], s[k]) for k in b) <= REL_TOL


# -- resume ----------------------------------------------------------------------------------------
def test_batched_replicas_resume_bit_for_bit(tmp_path):
    whole = build(build_config(_raw()), tmp_path / "w", progress=False)
    first = build(build_config(_raw()), tmp_path / "r", progress=False, max_steps=7)  # t1 at step 7 of 12
    assert first.status == "interrupted" and {r.status for r in first.runs} == {"interrupted"}
    assert [r.steps_done for r in first.runs] == [7, 7, 7]
    second = build(build_config(_raw()), tmp_path / "r", progress=False)
    assert second.status == "finished" == whole.status
    w, r = _nodes(tmp_path / "w"), _nodes(tmp_path / "r")
    assert set(r) - set(w) == {(f"r/t1/s{s}", 7) for s in range(3)}  # the stop's own nodes
    for key in w:
        assert all(torch.equal(w[key][k], r[key][k]) for k in w[key]), key


def test_replicas_at_different_steps_resume_one_at_a_time_then_batch_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fipgraph.build")
    build(build_config(_raw()), tmp_path / "w", progress=False)
    whole = _nodes(tmp_path / "w")
    # the first invocation walks s0 to its end, then stops in s1 (max_steps counts every walk)
    first = build(build_config(_raw()), tmp_path / "r", progress=False, max_steps=17, replica_settings=SEQUENTIAL)
    assert [r.status for r in first.runs] == ["finished", "interrupted"]
    caplog.clear()
    build(build_config(_raw()), tmp_path / "r", progress=False)  # s1 at step 5, s2 new: different steps
    assert "t1: 2 replicas walk one at a time: the walks are at different steps [5, 0]" in caplog.text
    assert "c: 3 replicas walk batched" in caplog.text
    r = _nodes(tmp_path / "r")
    assert max(_close(r[key], whole[key]) for key in whole) <= REL_TOL


# -- fallback --------------------------------------------------------------------------------------
def test_an_op_that_cannot_batch_walks_one_at_a_time_and_says_why(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fipgraph.build")
    raw = _raw(replicas=2, steps=6)
    raw["runs"][1].update(op="sparsify", sparsity=0.5)
    result = build(build_config(raw), tmp_path / "s", progress=False)
    assert result.status == "finished" and [r.name for r in result.runs][2:] == ["r/c/s0", "r/c/s1"]
    assert "2 replicas walk one at a time: op 'sparsify' acts on each network between steps" in caplog.text
    assert "t1: 2 replicas walk batched" in caplog.text


def test_batched_cpu_walks_take_one_group_per_core_only_while_the_machine_is_idle(monkeypatch):
    cores = len(replicas_mod.os.sched_getaffinity(0))
    monkeypatch.setattr(replicas_mod.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert replicas_mod.cpu_plan(8, 1) == ((min(8, cores), 1) if cores >= 2 else (1, 1))
    assert replicas_mod.cpu_plan(1, 1) == (1, 1)
    lenet300, small_mlp = 6.0 * 266_610 * 64, 6.0 * 9_610 * 32  # step_flops at the benchmark's batch sizes
    assert replicas_mod.cpu_plan(8, 1, lenet300) == ((min(8, cores), 1) if cores >= 2 else (1, 1))
    assert replicas_mod.cpu_plan(8, 1, small_mlp) == (1, 1)  # mostly Python: the groups would take turns
    monkeypatch.setattr(replicas_mod.os, "getloadavg", lambda: (cores + 5.0, 0.0, 0.0))
    assert replicas_mod.cpu_plan(8, 1) == (1, 1)  # time-sliced threads wait for each other: keep the build's one
    assert replicas_mod.cpu_plan(8, 1, settings=ReplicaSettings(threads=2)) == (1, 2)
    two = ReplicaSettings(groups=2)
    assert replicas_mod.cpu_plan(8, 4, settings=two) == (2, 1) and replicas_mod.cpu_plan(1, 1, settings=two) == (1, 1)
    with pytest.raises(ConfigError, match=r"ReplicaSettings.threads = 0: use a whole number >= 1"):
        ReplicaSettings(threads=0)


@pytest.mark.parametrize("groups, fast, fused, odist", [(2, True, True, "bhattacharyya"), (1, False, False, "bhattacharyya"),
                                                      (3, False, True, "l2")])
def test_groups_in_parallel_threads_and_both_forwards_match_separate_walks(tmp_path, monkeypatch, caplog, groups, fast,
                                                                           fused, odist):
    caplog.set_level(logging.INFO, logger="fipgraph.build")
    raw = _raw(replicas=3, steps=8, odist=odist)
    build(build_config(raw), tmp_path / "s", progress=False, replica_settings=SEQUENTIAL)
    settings = ReplicaSettings(groups=groups, fast_mlp=fast, fused_loss=fused)
    calls = []
    real = replicas_mod.fused_terms
    monkeypatch.setattr(replicas_mod, "fused_terms", lambda *a: calls.append(1) or real(*a))
    build(build_config(raw), tmp_path / "b", progress=False, replica_settings=settings)
    kind = "batched matmuls" if fast else "vmap over stacked weights"
    assert f"3 replicas walk batched ({kind}; {groups} group(s) in parallel, 1 thread(s) each)" in caplog.text
    b, s = _nodes(tmp_path / "b"), _nodes(tmp_path / "s")
    assert set(b) == set(s) and len(b) == 3 * 3 + 3 * 2
    assert max(_close(b[k], s[k]) for k in b) <= REL_TOL
    assert _close(b[("r/c/s0", 8)], b[("r/c/s2", 8)]) > 1e-2  # each group steps its own walks
    assert bool(calls) == fused  # the one-computation S(w) of finetune and continual ran (or was switched off)


@pytest.mark.parametrize("name", ["bhattacharyya", "l2", "kl"])
def test_batched_odists_equal_the_single_forms_walk_by_walk(name):
    from fipgraph.path.ops.odist import BATCHED_ODISTS, get_odist

    gen = torch.Generator().manual_seed(0)
    logits, ref = torch.randn(4, 16, 10, generator=gen), torch.randn(4, 16, 10, generator=gen) * 3
    ref[1] = logits[1]  # a walk still at its reference
    got = BATCHED_ODISTS[name](logits, ref)
    want = torch.stack([get_odist(name)(logits[k], ref[k]) for k in range(4)])
    assert got.shape == (4,) and torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got, want)
    # kl is not in the build test above: at the start (p = q) its gradient is rounding noise that Adam
    # scales up, so batched and separate walks differ by ~8e-5 after 8 steps on every path, vmap included


def test_groups_in_parallel_threads_resume_bit_for_bit(tmp_path):
    build(build_config(_raw()), tmp_path / "w", progress=False, replica_settings=TWO_GROUPS)
    first = build(build_config(_raw()), tmp_path / "r", progress=False, max_steps=7, replica_settings=TWO_GROUPS)
    assert [r.steps_done for r in first.runs] == [7, 7, 7]  # --max-steps counts a step of all groups once
    build(build_config(_raw()), tmp_path / "r", progress=False, replica_settings=TWO_GROUPS)
    w, r = _nodes(tmp_path / "w"), _nodes(tmp_path / "r")
    for key in w:
        assert all(torch.equal(w[key][k], r[key][k]) for k in w[key]), key


# -- groups stepping freely in parallel threads ----------------------------------------------------
def test_free_running_groups_agree_on_one_step_to_stop_at():
    from fipgraph.path.engine.interrupt import GroupStop, StopSignal
    from fipgraph.path.engine.recipe import Limits

    stop = StopSignal()
    halt = GroupStop(2, 0, 10, Limits(), stop)
    assert all(halt.begin(0) for _ in range(5)) and all(halt.begin(1) for _ in range(2))  # groups at 5 and 2
    stop.requested = True  # a Ctrl-C while group 0 is three steps ahead: group 1 catches up, then both stop
    assert [halt.begin(1) for _ in range(4)] == [True, True, True, False] and not halt.begin(0)
    assert halt.begun == [5, 5] and halt.reason == "interrupt"
    capped = GroupStop(2, 4, 10, Limits(max_steps=3), StopSignal())  # --max-steps 3 from step 4
    assert sum(capped.begin(0) for _ in range(6)) == 3 == sum(capped.begin(1) for _ in range(6))
    assert capped.begun == [7, 7] and capped.reason == "limit"
    whole = GroupStop(2, 8, 10, Limits(max_steps=5), StopSignal())  # the budget outlasts the walk
    assert sum(whole.begin(1) for _ in range(6)) == 2 == sum(whole.begin(0) for _ in range(6))
    assert whole.reason is None
    fresh = GroupStop(2, 0, 10, Limits(), StopSignal())
    fresh.abort()  # an error in one group: no group takes another step
    assert not fresh.begin(0) and not fresh.begin(1)


def test_a_stop_seen_by_one_group_stops_every_walk_at_one_step_and_resumes_batched(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="fipgraph.build")
    raw = _raw(steps=12)
    build(build_config(raw), tmp_path / "w", progress=False, replica_settings=TWO_GROUPS)
    real = replicas_mod.StackedWalks.step
    worker = []

    def step(group, streams):  # a Ctrl-C lands while the worker thread's group (s2 alone) is at step 5
        out = real(group, streams)
        if group.recipes[0].name.endswith("/s2") and group.recipes[0].step == 5:
            worker.append(replicas_mod.threading.current_thread().name)
            group.recipes[0].stop.requested = True
        return out

    monkeypatch.setattr(replicas_mod.StackedWalks, "step", step)
    first = build(build_config(raw), tmp_path / "r", progress=False, replica_settings=TWO_GROUPS)
    monkeypatch.setattr(replicas_mod.StackedWalks, "step", real)
    assert worker and worker[0].startswith("fipgraph-replicas")  # the group of s2 steps in the pool's thread
    assert first.status == "interrupted" and [r.status for r in first.runs] == ["interrupted"] * 3
    with fipgraph.open_store(tmp_path / "r", "r") as s:
        last = s.sql("SELECT r.name, max(n.step) AS step FROM nodes n JOIN runs r USING (run_id) GROUP BY r.name")
    assert sorted(last["step"]) == [int(last["step"][0])] * 3 and int(last["step"][0]) >= 5  # one step for all
    caplog.clear()
    build(build_config(raw), tmp_path / "r", progress=False, replica_settings=TWO_GROUPS)
    assert "t1: 3 replicas walk batched" in caplog.text  # resumed together, not one at a time
    w, r = _nodes(tmp_path / "w"), _nodes(tmp_path / "r")
    for key in w:
        assert all(torch.equal(w[key][k], r[key][k]) for k in w[key]), key


def test_a_ctrl_c_during_an_evaluation_in_a_group_thread_only_requests_the_stop():
    import signal
    import threading

    from fipgraph.path.engine.interrupt import StopSignal

    stop, inside, release = StopSignal(), threading.Event(), threading.Event()

    def evaluate_in_group_thread():
        with stop.immediate():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=evaluate_in_group_thread)
    thread.start()
    inside.wait(10)
    stop._handle(signal.SIGINT, None)  # runs on the main thread, as Python's handlers do: no raise here
    release.set()
    thread.join()
    assert stop.requested
    fresh = StopSignal()
    with fresh.immediate(), pytest.raises(KeyboardInterrupt):  # the main thread's own evaluation is abandoned
        fresh._handle(signal.SIGINT, None)


@pytest.mark.parametrize("bias", [True, False])
def test_stacked_linear_gives_autograds_gradients_in_the_weights_own_layout(bias):
    from fipgraph.path.engine.stacked import StackedLinear

    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 7, generator=gen, requires_grad=True)
    w = torch.randn(3, 4, 7, generator=gen, requires_grad=True)
    b = torch.randn(3, 4, generator=gen, requires_grad=True) if bias else None
    upstream = torch.randn(3, 5, 4, generator=gen)
    want = torch.stack([h[k] @ w[k].T + (b[k] if bias else 0) for k in range(3)])  # K separate layers
    got = StackedLinear.apply(h, w, b)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    inputs = [h, w] + ([b] if bias else [])
    want_grads = torch.autograd.grad(want, inputs, upstream)
    got_grads = torch.autograd.grad(got, inputs, upstream)
    for g, e in zip(got_grads, want_grads):
        assert torch.allclose(g, e, rtol=1e-5, atol=1e-6) and g.is_contiguous()
    x = torch.randn(3, 5, 7, generator=gen)  # a first layer's input needs no gradient: none is computed
    (out,) = torch.autograd.grad(StackedLinear.apply(x, w, b).sum(), [w])
    assert torch.allclose(out, upstream.new_ones(3, 5, 4).transpose(1, 2) @ x)


def test_an_error_in_a_group_thread_reaches_the_build_and_stops_the_other_groups(tmp_path, monkeypatch):
    real, taken = replicas_mod.StackedWalks.step, []

    def step(group, streams):
        if group.recipes[0].name.endswith("/s2") and group.recipes[0].step == 3:
            raise RuntimeError("boom in the worker's group")
        taken.append(group.recipes[0].step)
        return real(group, streams)

    monkeypatch.setattr(replicas_mod.StackedWalks, "step", step)
    with pytest.raises(RuntimeError, match="boom in the worker's group"):
        build(build_config(_raw(steps=400)), tmp_path / "s", progress=False, replica_settings=TWO_GROUPS)
    assert max(taken) < 399  # the build thread's group stopped soon after, not at the end of its walk
    with fipgraph.open_store(tmp_path / "s", "r") as s:  # the nodes saved before the error are stored
        steps = s.sql("SELECT r.name, n.step FROM nodes n JOIN runs r USING (run_id)")
    assert sorted(steps[steps["step"] == 0]["name"]) == [f"r/t1/s{k}" for k in range(3)]
