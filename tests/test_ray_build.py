"""--executor ray: same store as a local build, retried workers, failed runs, sql while it runs, bad input.

One local Ray session (2 CPUs, as CI) is shared by the module: Ray starts in seconds, not per test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

import fipgraph  # noqa: E402
from _ray_session import ray_session  # noqa: E402,F401 (the module's Ray session)
from fipgraph.errors import ConfigError  # noqa: E402
from fipgraph.path import build, load_config  # noqa: E402
from fipgraph.scale.ray_executor import build_ray, writer_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["memory_size=50", "memory_batch_size=16", "probe_size=8", "save_every=5"]
FOUR_RUNS = """
name = "four"
[data]
source = "digits"
[model]
name = "mlp"
kwargs = { in_features = 64, hidden = [32], n_classes = 10 }
[defaults]
steps = 20
[[runs]]
name = "task1"
op = "finetune"
[[runs]]
name = "other_seed"
op = "finetune"
seed = 1
[[runs]]
name = "continual"
op = "continual"
from = "task1"
task = 2
[[runs]]
name = "finetune"
op = "finetune"
from = "task1"
task = 2
"""


def _config(tmp_path: Path, text: str = FOUR_RUNS, overrides: list[str] | None = None):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, SMALL + (overrides or []))


def _nodes(store_dir: Path) -> list[tuple]:
    """(run name, step, parent's run name, parent's step, tensors) per node, in (run, step) order."""
    with fipgraph.open_store(store_dir, mode="r") as store:
        df = store.sql("SELECT n.node_id, r.name, n.step, p.step AS pstep, pr.name AS pname FROM nodes n "
                       "JOIN runs r USING (run_id) LEFT JOIN nodes p ON p.node_id = n.parent_id "
                       "LEFT JOIN runs pr ON pr.run_id = p.run_id ORDER BY r.name, n.step")
        return [(name, int(step), pname, None if pstep != pstep else int(pstep), store.state_dict(int(nid)))
                for nid, name, step, pstep, pname in df.itertuples(index=False)]


def _assert_same_nodes(a: Path, b: Path) -> None:
    left, right = _nodes(a), _nodes(b)
    assert [n[:4] for n in left] == [n[:4] for n in right]  # names, steps and lineage across runs
    for x, y in zip(left, right):
        assert x[4].keys() == y[4].keys()
        for key in x[4]:
            assert torch.equal(x[4][key], y[4][key]), (x[:2], key)  # bit-exact


def test_four_run_build_equals_local_build(tmp_path):
    config = _config(tmp_path)
    local = build(config, tmp_path / "local", progress=False)
    remote = build_ray(config, tmp_path / "ray")
    assert local.status == remote.status == "finished" and remote.failed == {}
    _assert_same_nodes(tmp_path / "local", tmp_path / "ray")
    nodes = _nodes(tmp_path / "ray")
    # the task-2 runs start from task1's last node, which another worker committed
    assert [n[2:4] for n in nodes if n[0] == "four/continual"][0] == ("four/task1", 20)
    assert {r.name for r in remote.runs} == {"four/task1", "four/other_seed", "four/continual", "four/finetune"}
    assert remote.accuracy == local.accuracy
    # rerun: every run is already finished, nothing is added
    again = build_ray(config, tmp_path / "ray")
    assert again.status == "finished" and len(_nodes(tmp_path / "ray")) == len(nodes)


def _in_thread(fn, *args, **kwargs):
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # surfaced by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _who(store_dir: Path, timeout: float = 60) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        try:
            return ray.get(ray.get_actor(writer_name(store_dir)).who.remote())
        except ValueError:  # not started yet
            time.sleep(0.05)
    raise AssertionError("the writer actor never started")


def _count(store_dir: Path, run: str) -> int:
    try:
        with fipgraph.open_store(store_dir, mode="r") as store:
            return int(store.sql("SELECT count(*) AS n FROM nodes JOIN runs USING (run_id) WHERE name = ?", [run])["n"][0])
    except Exception:  # the store may not exist yet
        return 0


def test_killed_worker_is_retried_without_lost_or_duplicated_nodes(tmp_path):
    # long enough (a few seconds) that the kill lands mid-run: the driver's commits may be up to
    # MAX_COMMIT_INTERVAL apart, so 5 visible nodes can lag the worker by a second or two
    text = FOUR_RUNS.split("[[runs]]")[0] + '[[runs]]\nname = "long"\nop = "finetune"\nsteps = 1600\n'
    config = _config(tmp_path, text)
    local = build(config, tmp_path / "local", progress=False)
    thread, box = _in_thread(build_ray, config, tmp_path / "ray")
    while "long" not in {k.split("/")[-1] for k in _who(tmp_path / "ray")}:
        time.sleep(0.05)
    first = _who(tmp_path / "ray")["four/long"]["pid"]
    while _count(tmp_path / "ray", "four/long") < 5:
        time.sleep(0.05)
    os.kill(first, signal.SIGKILL)  # mid-run: Ray retries the task on a fresh worker
    seen_during = _count(tmp_path / "ray", "four/long")
    thread.join(300)
    assert "error" not in box, box.get("error")
    assert box["result"].status == "finished"
    log = (tmp_path / "ray" / "build.log").read_text()
    pids = [int(line.split("worker pid ")[1].split()[0]) for line in log.splitlines() if "run four/long on worker pid" in line]
    assert pids[0] == first and len(pids) >= 2 and pids[-1] != first, pids  # it ran again elsewhere
    assert 5 <= seen_during < 1600 // 5 + 1  # killed mid-run: neither before a node nor after the last one
    with fipgraph.open_store(tmp_path / "ray", mode="r") as store:
        dup = store.sql("SELECT run_id, step, count(*) AS n FROM nodes GROUP BY run_id, step HAVING n > 1")
        assert dup.empty, dup
    _assert_same_nodes(tmp_path / "local", tmp_path / "ray")  # steps 0..400 every 5, weights bit-exact
    assert local.status == "finished"


def test_failed_run_is_marked_and_the_others_go_on(tmp_path):
    text = FOUR_RUNS.split("[[runs]]")[0] + ('[[runs]]\nname = "diverges"\nop = "finetune"\noptimizer = "sgd"\nlr = 1e30\n'
                                             '[[runs]]\nname = "after"\nop = "finetune"\nfrom = "diverges"\n'
                                             '[[runs]]\nname = "fine"\nop = "finetune"\n')
    config = _config(tmp_path, text)
    result = build_ray(config, tmp_path / "ray")
    assert result.status == "failed" and [r.name for r in result.runs] == ["four/fine"]
    assert "NonFiniteWeightsError" in result.failed["four/diverges"]  # the error, as the writer raised it
    assert "'diverges' did not finish" in result.failed["four/after"]
    with fipgraph.open_store(tmp_path / "ray", mode="r") as store:
        status = dict(store.sql("SELECT name, status FROM runs").values.tolist())
        error = store.sql("SELECT error FROM runs WHERE name = 'four/diverges'")["error"][0]
        fine = store.sql("SELECT count(*) AS n FROM nodes JOIN runs USING (run_id) WHERE name = 'four/fine'")["n"][0]
    assert status == {"four/fine": "finished", "four/diverges": "failed"} and fine == 5  # steps 0, 5, .., 20
    assert error == result.failed["four/diverges"] and "NonFiniteWeightsError" in error  # why, in the catalog


def test_sql_during_a_ray_build_sees_nodes_of_more_than_one_worker(tmp_path):
    text = FOUR_RUNS.split("[[runs]]")[0] + ('[[runs]]\nname = "a"\nop = "finetune"\nsteps = 300\n'
                                             '[[runs]]\nname = "b"\nop = "finetune"\nsteps = 300\nseed = 1\n')
    config = _config(tmp_path, text)
    store_dir = tmp_path / "ray"
    thread, box = _in_thread(build_ray, config, store_dir)
    query = "SELECT r.name, count(*) AS n FROM nodes JOIN runs r USING (run_id) GROUP BY r.name ORDER BY r.name"
    seen, end = {}, time.time() + 120
    while time.time() < end and thread.is_alive():
        out = subprocess.run([sys.executable, "-m", "fipgraph", "sql", "--store", str(store_dir), "--format", "json", query],
                             capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if out.returncode == 0:
            seen = {row["name"]: row["n"] for row in json.loads(out.stdout)}
            if len(seen) == 2 and min(seen.values()) >= 2:
                break
    assert thread.is_alive(), "the build ended before sql saw both runs; make the runs longer"
    who = _who(store_dir)
    assert set(seen) == {"four/a", "four/b"}
    assert who["four/a"]["pid"] != who["four/b"]["pid"]  # two worker processes, one store
    thread.join(300)
    assert box["result"].status == "finished"


def test_bad_input_fails_before_any_run(tmp_path):
    config = _config(tmp_path, overrides=["runs.continual.num_gpus=1"])
    with pytest.raises(ConfigError, match=r"four/continual.*num_gpus=1.*no Ray node"):
        build_ray(config, tmp_path / "gpu")
    with fipgraph.open_store(tmp_path / "gpu", mode="r") as store:
        assert store.sql("SELECT count(*) AS n FROM runs")["n"][0] == 0
    t0 = time.time()
    cmd = [sys.executable, "-m", "fipgraph", "build", "--executor", "ray", "--address", "ray://127.0.0.1:9",
           "--store", str(tmp_path / "addr")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode != 0 and time.time() - t0 < 30
    assert "ray://127.0.0.1:9" in out.stderr and "ray start --head" in out.stderr
    assert not (tmp_path / "addr").exists()
    assert "Traceback" not in out.stderr


def test_killed_driver_rerun_resumes_the_whole_build(tmp_path):
    """A driver on this module's cluster (--address HOST:PORT), SIGKILLed mid-build; the same build again finishes it."""
    config_path = tmp_path / "config.toml"
    config_path.write_text(FOUR_RUNS.replace("steps = 20", "steps = 150"))
    store_dir = tmp_path / "ray"
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "fipgraph", "build", str(config_path), *SMALL, "--executor", "ray",
           "--address", address, "--store", str(store_dir), "--no-progress"]
    driver = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + 240
    while _count(store_dir, "four/task1") < 8 and time.time() < end and driver.poll() is None:
        time.sleep(0.1)
    driver.kill()  # SIGKILL: no clean-up runs; its writer actor and tasks die with its job
    driver.wait()
    before = sum(_count(store_dir, f"four/{r}") for r in ("task1", "other_seed", "continual", "finetune"))
    assert 8 <= before < 4 * 31, before  # killed mid-build
    result = build_ray(load_config(config_path, SMALL), store_dir)
    assert result.status == "finished"
    with fipgraph.open_store(store_dir, mode="r") as store:
        counts = dict(store.sql("SELECT r.name, count(DISTINCT n.step) AS s FROM nodes n JOIN runs r USING (run_id) "
                                "GROUP BY r.name").values.tolist())
        dup = store.sql("SELECT run_id, step FROM nodes GROUP BY run_id, step HAVING count(*) > 1")
    assert dup.empty and len(_nodes(store_dir)) == 4 * 31 - 2  # task-2 runs start at task1's node: no step 0
    assert counts == {"four/task1": 31, "four/other_seed": 31, "four/continual": 30, "four/finetune": 30}
