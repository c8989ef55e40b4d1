"""The UI's JSON API without a browser: graph layouts, node panel, selection, ensembles, errors."""

import shlex
import shutil
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from safetensors.torch import load_file

import fipgraph
from fipgraph.cli import main
from fipgraph.data import make_tasks
from fipgraph.models import build_model
from fipgraph.query import WeightPCA, pareto, select
from fipgraph.ui import reader as reader_mod
from fipgraph.ui.app import create_app
from fipgraph.ui.layout import PcaPlacer, branch_lanes, depths
from fipgraph.ui.reader import StoreView, _even_sample

torch.set_num_threads(1)


def _train(st, model, task, run, parent, steps, first_step=0):
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    ids = []
    for step, batch in zip(range(steps), task.train_loader(32)):
        F.cross_entropy(model(batch["x"]), batch["labels"]).backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            acc = (model(task.test["x"]).argmax(1) == task.test["labels"]).float().mean().item()
        parent = st.append(model, parent=parent, run=run, step=first_step + step, metrics={"task1": {"accuracy": acc}},
                           tags={"note": f"step {first_step + step}"})
        ids.append(parent)
    return ids


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """Run `base` (nodes 0-4), then two branches from node 4: `fip` (5-8) and `ft` (9-11)."""
    path = tmp_path_factory.mktemp("ui") / "store"
    task = make_tasks("digits", split=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], seed=0)[0]
    torch.manual_seed(0)
    spec = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16], "n_classes": 10}}
    model = build_model(spec)
    with fipgraph.open_store(path, mode="a") as st:
        base = _train(st, model, task, st.start_run("base", "finetune", {}), None, 5)
        fork = {k: v.clone() for k, v in model.state_dict().items()}
        _train(st, model, task, st.start_run("fip", "continual", {}), base[-1], 4, first_step=5)
        model.load_state_dict(fork)
        _train(st, model, task, st.start_run("ft", "finetune", {}), base[-1], 3, first_step=5)
        st.add_evals(7, {"": {"H": 0.5}})
        st.add_ensemble("pair", [6, 10], {"strategy": "manual"})
    return path


@pytest.fixture(scope="module")
def view(store_path):
    v = StoreView(store_path)
    yield v
    v.close()


@pytest.fixture(scope="module")
def client(view):
    return TestClient(create_app(view), base_url="http://127.0.0.1")


def _graph(client, layout, color=None, want=None, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        g = client.get("/api/graph", params={"layout": layout, **({"color": color} if color else {})}).json()
        if want is None or g["layout"] == want or time.monotonic() > deadline:
            return g
        time.sleep(0.2)


def test_meta_lists_metrics_runs_and_defaults(client):
    m = client.get("/api/meta").json()
    assert m["n_nodes"] == 12 and m["n_ensembles"] == 1
    assert "task1_accuracy" in m["metrics"] and "H" in m["metrics"] and "node_id" not in m["metrics"]
    assert m["default_color"] == "task1_accuracy"
    assert [r["name"] for r in m["runs"]] == ["base", "fip", "ft"]


def test_lineage_layout_parents_hops_and_lanes(client, store_path):
    g = _graph(client, "lineage", "task1_accuracy")
    assert g["layout"] == "lineage" and g["n_nodes"] == g["n_drawn"] == 12 and g["id"] == list(range(12))
    with fipgraph.open_store(store_path, "r") as st:
        wide = st.sql("SELECT node_id, parent_id, task1_accuracy, step FROM wide ORDER BY node_id")
    parents = [g["id"][p] if p >= 0 else None for p in g["parent"]]
    assert parents == [None if p != p else int(p) for p in wide["parent_id"]]
    assert g["x"] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 5, 6, 7]  # hops from the root
    assert g["y"] == [0] * 5 + [-1] * 4 + [-2] * 3  # base, then each branch on its own row
    assert [g["runs"][r] for r in g["run"]] == ["base"] * 5 + ["fip"] * 4 + ["ft"] * 3
    assert [g["ops"][o] for o in g["op"]] == ["finetune"] * 5 + ["continual"] * 4 + ["finetune"] * 3
    assert g["step"] == wide["step"].tolist()
    np.testing.assert_allclose(g["color"]["values"], wide["task1_accuracy"], rtol=1e-6)


def test_pca_layout_is_the_stores_weight_pca(client, store_path):
    g = _graph(client, "pca", want="pca")
    assert g["layout"] == "pca" and "own PCA of 12 nodes" in g["layout_note"], g["layout_note"]
    with fipgraph.open_store(store_path, "r") as st:
        expected = WeightPCA(2, record=False, progress=False).fit(st).coords_
    np.testing.assert_allclose(np.c_[g["x"], g["y"]], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_recorded_pca_is_used_and_new_nodes_sit_at_their_ancestor(store_path, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(store_path, path)
    with fipgraph.open_store(path, mode="a") as st:
        coords = WeightPCA(2, progress=False).fit(st).coords_  # records pca_pc1 / pca_pc2
        st.append(st.state_dict(11), parent=11, step=99)  # node 12: no coordinates yet
        st.append(torch.nn.Linear(2, 2), step=0)  # node 13: another network, no coordinates, no ancestor
    v = StoreView(path)
    try:
        g = TestClient(create_app(v), base_url="http://127.0.0.1").get("/api/graph").json()
    finally:
        v.close()
    assert g["layout"] == "pca" and g["layout_note"].startswith("recorded PCA coordinates")
    assert "1 newer node(s)" in g["layout_note"] and "fipgraph pca --store" in g["layout_note"]
    np.testing.assert_allclose(np.c_[g["x"][:12], g["y"][:12]], coords, rtol=1e-5, atol=1e-6)
    assert (g["x"][12], g["y"][12]) == (g["x"][11], g["y"][11])
    assert g["x"][13] is None and "1 node(s) have no PCA coordinates and no placed ancestor" in g["layout_note"]


def test_node_panel(client, store_path, tmp_path, monkeypatch):
    d = client.get("/api/node/4").json()
    with fipgraph.open_store(store_path, "r") as st:
        acc = float(st.sql("SELECT task1_accuracy FROM wide WHERE node_id = 4")["task1_accuracy"][0])
        weights = st.state_dict(4)
    assert d["node"]["node_id"] == 4 and d["node"]["parent_id"] == 3 and d["node"]["op"] is None  # as stored
    assert d["run"]["op"] == "finetune"
    assert d["metrics"]["task1_accuracy"] == acc  # full precision
    assert d["parent"] == 3 and d["children"] == [5, 9] and d["run"]["name"] == "base"
    assert d["tags"] == {"note": "step 4"}
    assert d["curves"]["x"] == [0, 1, 2, 3, 4] and d["curves"]["node_x"] == 4
    assert len(d["curves"]["series"]["task1_accuracy"]) == 5
    assert client.get("/api/node/7").json()["metrics"]["H"] == 0.5
    assert client.get("/api/node/0").json()["parent"] is None
    # the export command shown is one that works, from any directory
    cmd = shlex.split(d["export_command"])
    assert cmd[:3] == ["fipgraph", "export", "4"]
    monkeypatch.chdir(tmp_path)
    assert main(cmd[1:]) == 0
    exported = load_file(next((tmp_path / "node4").glob("*.safetensors")))
    assert all(torch.equal(exported[k], weights[k]) for k in weights)


def test_select_pareto_and_ensembles_match_the_query_api(client, store_path):
    body = {"where": [{"column": "task1_accuracy", "op": ">=", "value": 0.3}], "order_by": "-task1_accuracy"}
    got = client.post("/api/select", json=body).json()
    with fipgraph.open_store(store_path, "r") as st:
        want = select(st, where={"task1_accuracy": (">=", 0.3)}, order_by="-task1_accuracy")
        front = pareto(st, maximize=["task1_accuracy"], minimize=["step"], where="run_id = 2")
    assert got == {"ids": want, "n": len(want)} and 0 < len(want) < 12
    got = client.post("/api/pareto", json={"maximize": ["task1_accuracy"], "minimize": ["step"],
                                           "condition": "run_id = 2"}).json()
    assert got["ids"] == front and got["n"] >= 1
    assert client.get("/api/ensembles").json()[0] | {"created_at": None} == {
        "name": "pair", "members": [6, 10], "rule": {"strategy": "manual"}, "created_at": None}


def test_sql_endpoint_and_csv(client):
    r = client.post("/api/sql", json={"sql": "SELECT node_id, step FROM nodes WHERE run_id = 2 ORDER BY node_id"}).json()
    assert r["columns"] == ["node_id", "step"] and r["rows"] == [[9, 5], [10, 6], [11, 7]] and r["n_rows"] == 3
    text = client.get("/api/sql.csv", params={"sql": "SELECT node_id FROM nodes ORDER BY node_id"})
    assert text.headers["content-type"].startswith("text/csv") and "attachment" in text.headers["content-disposition"]
    assert text.text.split() == ["node_id", *map(str, range(12))]


@pytest.mark.parametrize("method, url, body, status, words", [
    ("get", "/api/node/999", None, 404, "no node 999"),
    ("get", "/api/graph?color=nope", None, 400, "unknown metric column 'nope'"),
    ("get", "/api/graph?layout=tsne", None, 400, "layout='tsne'"),
    ("post", "/api/sql", {"sql": "SELEC 1"}, 400, "Parser Error"),
    ("post", "/api/sql", {"sql": "DROP TABLE nodes"}, 400, "read-only"),
    ("post", "/api/select", {"where": [{"column": "nope", "op": ">=", "value": 1}]}, 400, "unknown metric/column 'nope'"),
    ("post", "/api/select", {"where": [{"column": "step", "op": "~", "value": 1}]}, 400, "unknown operator '~'"),
    ("post", "/api/select", {"condition": "true; DROP TABLE nodes"}, 400, "holds ';'"),
    ("post", "/api/pareto", {}, 400, "at least one objective"),
])
def test_bad_requests_get_a_clear_message(client, method, url, body, status, words):
    res = getattr(client, method)(url, **({"json": body} if body is not None else {}))
    assert res.status_code == status and words in res.json()["error"], res.text


def test_other_host_names_are_refused(view):
    # a web page that rebinds its DNS name to 127.0.0.1 sends its own Host header (DNS rebinding)
    assert TestClient(create_app(view), base_url="http://attacker.example").get("/api/meta").status_code == 400
    assert TestClient(create_app(view), base_url="http://localhost:8765").get("/api/meta").status_code == 200


def test_page_and_assets_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas id=\"graph\"" in page.text
    for name in ("app.js", "graph.js", "raster.js", "charts.js", "style.css"):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and len(asset.content) > 500, name
    assert "http" not in "".join(l for l in page.text.splitlines() if "src=" in l or "href=" in l)  # no CDN


def test_large_stores_are_sampled_evenly_for_drawing(view, monkeypatch):
    keep, parent = _even_sample(np.array([-1, 0, 1, 2, 3, 4, 5, 6, 7, 8]), 5)
    assert keep.tolist() == [0, 2, 4, 6, 8] and parent.tolist() == [-1, 0, 1, 2, 3]
    monkeypatch.setattr(reader_mod, "DRAW_MAX_NODES", 4)
    g = view.graph("lineage")
    assert g["n_nodes"] == 12 and g["n_drawn"] == len(g["id"]) == 4 and g["id"] == [0, 3, 6, 9]
    assert g["parent"] == [-1, 0, 1, 1]  # 9 forks from 4, whose nearest drawn ancestor is 3


def test_layout_helpers():
    parent = np.array([-1, 0, 1, 1, 3, -1, 5])
    assert depths(parent).tolist() == [0, 1, 2, 2, 3, 0, 1]
    assert branch_lanes(parent).tolist() == [0, 0, 1, 2, 2, 3, 3]


def test_pca_placer_refits_as_a_build_grows_and_places_newcomers(store_path):
    placer = PcaPlacer(lambda: fipgraph.open_store(store_path, mode="r"))
    arch = ["a"] * 12
    placer.start([0], arch[:1])
    assert placer._thread is None and "at least 2 nodes" in placer.status()  # not sticky: the store may grow
    placer.start([0, 1, 2], arch[:3])
    placer.wait(60)
    assert placer.estimator.nodes_ == [0, 1, 2] and placer.generation == 1
    placer.start(list(range(5)), arch[:5])  # fewer than twice the fitted nodes: no refit
    assert placer._thread.is_alive() is False and placer.estimator.nodes_ == [0, 1, 2]
    placer.start(list(range(6)), arch[:6])  # doubled: refit on all six
    placer.wait(0)
    placer._thread.join(60)
    assert placer.estimator.nodes_ == list(range(6)) and sorted(placer.coords) == list(range(6))
    with fipgraph.open_store(store_path, mode="r") as st:
        placer.extend(st, list(range(12)))
        np.testing.assert_allclose(placer.coords[11], placer.estimator.transform(st, nodes=[11])[0], rtol=1e-6)
    assert sorted(placer.coords) == list(range(12))
    placer.start(list(range(12)), ["a"] * 11 + ["b"])  # two architectures: no refit, the fitted basis stays
    assert placer.error is None and placer.estimator.nodes_ == list(range(6))
    fresh = PcaPlacer(lambda: fipgraph.open_store(store_path, mode="r"))
    fresh.start(list(range(12)), ["a"] * 11 + ["b"])
    assert fresh._thread is None and "several architectures" in fresh.status()


def test_pca_placer_leaves_stores_of_large_models_to_recorded_pca(store_path):
    """Nodes × parameters over max_weights: no fit (it would read every weight of every node for minutes);
    the status says how to record coordinates instead. A basis fitted while the store was small is kept."""
    big = PcaPlacer(lambda: fipgraph.open_store(store_path, mode="r"), max_weights=1000)
    big.start([0, 1, 2], ["a"] * 3, [400] * 3)  # 1,200 weights
    assert big._thread is None and big.estimator is None
    assert "too many weights" in big.status() and "fipgraph pca --store" in big.status() and "1,200" in big.status()
    grown = PcaPlacer(lambda: fipgraph.open_store(store_path, mode="r"), max_weights=1000)
    grown.start([0, 1], ["a"] * 2, [400] * 2)
    grown.wait(60)
    assert grown.estimator.nodes_ == [0, 1]
    grown.start(list(range(6)), ["a"] * 6, [400] * 6)  # doubled, but too big to refit: the basis stays
    assert grown._thread.is_alive() is False and grown.error is None and grown.estimator.nodes_ == [0, 1]


def test_closing_the_view_waits_for_its_background_threads(store_path, monkeypatch):
    """Shutting the UI down waits for the PCA fit and the warm-up (they read the store) before the
    store closes, starts no new fit, and a fit cut short by the shutdown is not reported as a crash."""
    crashes = []
    monkeypatch.setattr("threading.excepthook", lambda args: crashes.append(args.exc_value))
    view = StoreView(store_path)
    fit = view.pca._thread
    view.close()
    assert not view._warmer.is_alive() and (fit is None or not fit.is_alive())
    view.pca.start(list(range(12)), ["a"] * 12)
    assert view.pca._thread is fit  # closed: no new fit

    def shut_down_mid_fit():  # what interpreter shutdown does to a fit still reading
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    placer = PcaPlacer(shut_down_mid_fit)
    placer._closing.set()
    placer._fit([0, 1, 2])  # swallowed: the UI is closing
    live = PcaPlacer(shut_down_mid_fit)
    with pytest.raises(RuntimeError):
        live._fit([0, 1, 2])  # a real failure while open still surfaces
    assert crashes == []


def test_a_merge_shows_every_parent(tmp_path):
    """A node with two parents: both edges in the graph payload, both parents (with weights) in its panel."""
    path = tmp_path / "merged"
    with fipgraph.open_store(path) as st:
        states = [{"w": torch.full((3,), float(i))} for i in range(4)]
        st.append(states[0])
        st.append(states[1], parent=0)
        st.append(states[2], parent=0)
        st.append(states[3], parents={1: 0.4, 2: 0.6}, op="merge")
    v = StoreView(path)
    try:
        c = TestClient(create_app(v), base_url="http://127.0.0.1")
        g = c.get("/api/graph", params={"layout": "lineage"}).json()
        i = g["id"].index(3)
        assert g["id"][g["parent"][i]] == 1  # the primary parent
        assert [[g["id"][a], g["id"][b]] for a, b in g["merge_edges"]] == [[3, 2]]
        d = c.get("/api/node/3").json()
        assert d["parents"] == [{"id": 1, "weight": 0.4}, {"id": 2, "weight": 0.6}] and d["parent"] == 1
        assert c.get("/api/node/2").json()["children"] == [3]
        assert c.get("/api/node/1").json()["parents"] == [{"id": 0, "weight": None}]
    finally:
        v.close()
