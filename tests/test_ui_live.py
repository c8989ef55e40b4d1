"""`fipgraph ui` beside a running build, and the command's own errors and warnings."""

import socket
import subprocess
import sys
import time

import pytest
import torch
from fastapi.testclient import TestClient

import fipgraph
from fipgraph.cli import main
from fipgraph.ui import server as server_mod
from fipgraph.ui.app import create_app
from fipgraph.ui.reader import StoreView

# a few seconds of build, so that several commits land while the UI reads (they may be up to 2 s apart when
# commits are costly, e.g. on a loaded machine)
BUILD = ["runs.task1.steps=300", "runs.continual.steps=300", "runs.finetune.steps=300", "save_every=5"]


def test_a_build_runs_while_the_ui_reads_and_new_nodes_show(tmp_path):
    store = tmp_path / "store"
    build = subprocess.Popen([sys.executable, "-m", "fipgraph", "build", "--store", str(store), "--no-progress", *BUILD],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (store / "fipgraph.json").exists():
        assert build.poll() is None and time.monotonic() < deadline, build.communicate()
        time.sleep(0.05)
    view = StoreView(store)
    try:
        client = TestClient(create_app(view), base_url="http://127.0.0.1")
        counts, versions = [], set()
        while build.poll() is None:  # read much more often than a page would
            color = client.get("/api/meta").json()["default_color"]  # none until the first evaluation
            for layout in ("lineage", "pca"):
                g = client.get("/api/graph", params={"layout": layout, **({"color": color} if color else {})}).json()
                assert len(g["id"]) == g["n_nodes"] and all(p < i for i, p in enumerate(g["parent"])), g
                counts.append(g["n_nodes"])
            versions.add(client.get("/api/version").json()["version"])
            assert client.post("/api/sql", json={"sql": "SELECT count(*) FROM nodes"}).status_code == 200
            if counts[-1]:
                assert client.get(f"/api/node/{counts[-1] - 1}").status_code == 200
            time.sleep(0.2)  # a page polls every 2 s; leave the build some of the 2 cores
        out, err = build.communicate()
        assert build.returncode == 0, err  # the build was never blocked or broken
        with fipgraph.open_store(store, mode="r") as st:
            final = len(st)
        assert counts == sorted(counts) and len(set(counts)) >= 3, counts  # new nodes appeared while it ran
        assert len(versions) >= 3
        assert client.get("/api/graph", params={"layout": "lineage"}).json()["n_nodes"] == final
        # the UI never takes the writer lock: a writer can open the store while it is still serving
        with fipgraph.open_store(store, mode="a") as st:
            st.add_evals(0, {"late": {"accuracy": 1.0}})
        assert "late_accuracy" in client.get("/api/meta").json()["metrics"]
    finally:
        view.close()
        if build.poll() is None:
            build.kill()


@pytest.fixture()
def small_store(tmp_path):
    path = tmp_path / "small"
    with fipgraph.open_store(path, mode="a") as st:
        a = st.append(torch.nn.Linear(3, 2), step=0)
        st.append(torch.nn.Linear(3, 2), parent=a, step=1)
    return path


def test_ui_on_a_missing_store_fails_and_creates_nothing(tmp_path, capsys):
    assert main(["ui", "--store", str(tmp_path / "typo")]) == 2
    err = capsys.readouterr().err
    assert "fipgraph ui: error:" in err and "typo is not a fipgraph store" in err
    assert not (tmp_path / "typo").exists()


def test_a_taken_port_names_the_port_and_the_fix(small_store, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["ui", "--store", str(small_store), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_loopback_by_default_and_a_warning_otherwise(small_store, monkeypatch, capsys):
    real_bind = server_mod.bind
    monkeypatch.setattr(server_mod, "bind", lambda host, port: real_bind("127.0.0.1", 0))  # never open a real port
    monkeypatch.setattr(server_mod.UiServer, "run", lambda self: (self.sock.close(), self.view.close()))
    assert main(["ui", "--store", str(small_store), "--port", "0"]) == 0
    out, err = capsys.readouterr()
    assert "http://127.0.0.1:" in out and "warning" not in err
    assert main(["ui", "--store", str(small_store), "--host", "0.0.0.0"]) == 0
    assert "warning: listening on 0.0.0.0, not loopback" in capsys.readouterr().err
    assert server_mod.is_loopback("127.0.0.1") and server_mod.is_loopback("localhost")
    assert server_mod.is_loopback("::1") and server_mod.is_loopback("127.0.0.2")
    assert not server_mod.is_loopback("0.0.0.0") and not server_mod.is_loopback("192.168.1.10")
