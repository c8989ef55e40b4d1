"""fipgraph.query against independent computations on a small real store (mlp on sklearn digits)."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

import fipgraph
from fipgraph.data import make_tasks
from fipgraph.errors import ConfigError, NodeNotFoundError
from fipgraph.models import build_model
from fipgraph.query import (Ensemble, NotFittedError, WeightPCA, branches, ensemble, evaluate, lineage, load_ensemble,
                            pareto, path_between, perplexity, select)

torch.set_num_threads(1)
SPEC = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16], "n_classes": 10}}


@pytest.fixture(scope="module")
def tasks():
    return make_tasks("digits", split=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], seed=0)


def _train_chain(store, model, task, parent, steps, run, seed):
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    ids = []
    for step, batch in zip(range(steps), task.train_loader(64, seed=seed)):
        loss = F.cross_entropy(model(batch["x"]), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        parent = store.append(model, parent=parent, run=run, op="continual", step=step,
                              metrics={"train": {"loss": loss.item()}}, tags={"seed": seed})
        ids.append(parent)
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory, tasks):
    """24 nodes: a root, a 15-step chain, and a 8-step branch forking at chain node 5."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qstore") / "store"
    st = fipgraph.open_store(path, mode="a")
    model = build_model(SPEC)
    run = st.start_run("walk", "continual", {"lr": 0.2})
    root = st.append(model, run=run, op="base", step=0)
    chain = _train_chain(st, model, tasks[0], root, 15, run, seed=0)
    model.load_state_dict(st.state_dict(chain[4]))
    branch = _train_chain(st, model, tasks[1], chain[4], 8, run, seed=1)
    st.flush()
    rng = np.random.default_rng(0)
    for nid in [root] + chain + branch:  # an H value per node, as the undirected path records it
        st.add_evals(nid, {"": {"H": float(rng.uniform(0, 1))}})
    st.flush()
    st.test_ids = {"root": root, "chain": chain, "branch": branch}
    yield st
    st.close()


def _matrix(store, ids):
    return np.stack([torch.cat([v.reshape(-1).double() for v in store.state_dict(i).values()]).numpy()
                     for i in ids])


# ---------------------------------------------------------------- PCA
@pytest.mark.parametrize("kw", [{"method": "gram"}, {"method": "gram", "max_memory": 1},
                                {"method": "gram", "max_memory": 100_000},  # half in RAM, half spilled
                                {"method": "randomized"}])
def test_pca_matches_sklearn_on_materialised_matrix(store, kw):
    ids = list(store.sql("select node_id from nodes order by node_id")["node_id"])
    X = _matrix(store, ids)
    ref = PCA(3).fit(X)
    pca = WeightPCA(3, progress=False, device="cpu", **kw).fit(store)
    R = ref.transform(X)
    for j in range(3):  # equal up to the sign of each component
        s = np.sign(R[:, j] @ pca.coords_[:, j])
        np.testing.assert_allclose(s * pca.coords_[:, j], R[:, j], atol=1e-4 * np.abs(R).max())
        np.testing.assert_allclose(s * pca.components_[j], ref.components_[j], atol=1e-4)
    np.testing.assert_allclose(pca.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-4)
    np.testing.assert_allclose(pca.mean_, ref.mean_, atol=1e-6)
    np.testing.assert_allclose(np.abs(pca.transform(store)), np.abs(R), atol=1e-4 * np.abs(R).max())
    # coordinates are joinable in SQL
    df = store.sql("select node_id, pca_pc1, pca_pc2, pca_pc3 from wide order by node_id")
    np.testing.assert_allclose(df["pca_pc1"].to_numpy(), pca.coords_[:, 0], rtol=1e-6)


def test_pca_parallel_readers_give_the_same_bits_as_one(store):
    one = WeightPCA(3, method="gram", n_readers=1, record=False, progress=False, device="cpu").fit(store)
    two = WeightPCA(3, method="gram", n_readers=2, record=False, progress=False, device="cpu").fit(store)
    np.testing.assert_array_equal(one.coords_, two.coords_)
    np.testing.assert_array_equal(one.components_, two.components_)


def test_pca_one_pass_sketch_is_exact_at_full_rank_and_close_below(store):
    ids = list(store.sql("select node_id from nodes order by node_id")["node_id"])
    X = _matrix(store, ids)
    ref = PCA(2).fit(X)
    R = ref.transform(X)
    full = WeightPCA(2, method="sketch", n_oversamples=len(ids), record=False, progress=False, device="cpu").fit(store)
    small = WeightPCA(2, method="sketch", record=False, progress=False, device="cpu").fit(store)  # rank 12 of 23
    for j in range(2):
        s = np.sign(R[:, j] @ full.coords_[:, j])
        np.testing.assert_allclose(s * full.coords_[:, j], R[:, j], atol=1e-4 * np.abs(R).max())
        np.testing.assert_allclose(s * full.components_[j], ref.components_[j], atol=1e-4)
        # below full rank the sketch is approximate (measured: correlations 0.9994 and 0.9999)
        assert abs(np.corrcoef(small.coords_[:, j], R[:, j])[0, 1]) > 0.999
    np.testing.assert_allclose(full.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-4)
    np.testing.assert_allclose(full.mean_, ref.mean_, atol=1e-6)
    assert full.method_ == "sketch"


def test_pca_params_subset_and_unfitted(store):
    with pytest.raises(NotFittedError, match="fit"):
        WeightPCA().transform(np.zeros((1, 3)))
    ids = list(store.sql("select node_id from nodes order by node_id")["node_id"])
    pca = WeightPCA(2, params=["net.0."] if "net.0.weight" in store.state_dict(0) else None,
                    record=False, progress=False).fit(store)
    assert pca.coords_.shape == (len(ids), 2)
    assert pca.explained_variance_ratio_[0] >= pca.explained_variance_ratio_[1] > 0


def test_pca_bad_queries(store, tmp_path):
    with pytest.raises(ConfigError, match="n_components=99"):
        WeightPCA(99, progress=False, device="cpu").fit(store)
    with pytest.raises(NodeNotFoundError, match="12345"):
        WeightPCA(2, nodes=[0, 12345]).fit(store)
    with pytest.raises(ConfigError, match="params"):
        WeightPCA(2, params=["nope."]).fit(store)
    with fipgraph.open_store(tmp_path / "mixed", mode="a") as st:
        st.append(build_model(SPEC))
        st.append(build_model(SPEC))
        st.append(build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [8], "n_classes": 10}}))
        st.flush()
        with pytest.raises(ConfigError, match="different architectures"):
            WeightPCA(2).fit(st)


# ---------------------------------------------------------------- evaluate / perplexity
def test_evaluate_and_perplexity_equal_direct_computation(store, tasks):
    node = store.test_ids["chain"][-1]
    df = evaluate(store, [0, node], tasks[0], progress=False, device="cpu")
    model = build_model(SPEC)
    model.load_state_dict(store.state_dict(node))
    x, y = tasks[0].test["x"], tasks[0].test["labels"]
    with torch.no_grad():
        logits = model(x)
    assert df.loc[node, "loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert df.loc[node, "accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    pp = perplexity(store, [node], tasks[0], progress=False, device="cpu")
    assert pp.loc[node, "perplexity"] == pytest.approx(float(torch.exp(F.cross_entropy(logits, y))), rel=1e-5)
    col = f"{tasks[0].name}_accuracy"
    cached = store.sql(f'select "{col}" from wide where node_id = {node}')[col][0]
    assert cached == pytest.approx(df.loc[node, "accuracy"])


def test_evaluate_uses_cache_and_one_model_instance(store, tasks, monkeypatch):
    node = store.test_ids["chain"][3]
    evaluate(store, [node], tasks[1], progress=False, device="cpu")
    calls = []
    monkeypatch.setattr(store, "load_into", lambda m, n: calls.append((id(m), n)) or m)
    evaluate(store, [node], tasks[1], progress=False, device="cpu")
    assert calls == []  # cached
    evaluate(store, store.test_ids["branch"][:3], tasks[1], progress=False, device="cpu", recompute=True, record=False)
    assert len(calls) == 3 and len({m for m, _ in calls}) == 1  # one module, weights swapped in


# ---------------------------------------------------------------- select / pareto
def test_select_equals_filtering_sql_by_hand(store, tasks):
    evaluate(store, None, tasks[0], progress=False, device="cpu")
    col = f"{tasks[0].name}_accuracy"
    wide = store.sql("select * from wide")
    thr = float(np.median(wide[col]))
    expect = wide[(wide[col] >= thr) & (wide["H"] < 0.7)].sort_values([col, "node_id"], ascending=[False, True])
    got = select(store, where={col: (">=", thr), "H": ("<", 0.7)}, order_by="-" + col)
    assert got == [int(n) for n in expect["node_id"]] and len(got) > 2
    assert select(store, where={col: (">=", thr), "H": ("<", 0.7)}, order_by="-" + col, limit=2) == got[:2]
    assert select(store, where=f'"{col}" >= {thr!r} and "H" < 0.7', order_by="-" + col) == got
    assert select(store, where={"step": ("in", [1, 2])}) == sorted(
        int(n) for n in wide[wide["step"].isin([1, 2])]["node_id"])
    models = select(store, where={"node_id": 3}, load=True)
    assert torch.equal(models[0].state_dict()["net.0.weight"] if "net.0.weight" in models[0].state_dict()
                       else next(iter(models[0].state_dict().values())), next(iter(store.state_dict(3).values())))


def test_pareto_front_by_hand(store, tasks):
    evaluate(store, None, tasks[0], progress=False, device="cpu")
    col = f"{tasks[0].name}_accuracy"
    wide = store.sql(f'select node_id, "{col}" as a, "H" as h from wide').dropna()
    front = pareto(store, maximize=[col], minimize=["H"])
    expect = [int(r.node_id) for r in wide.itertuples()
              if not ((wide.a >= r.a) & (wide.h <= r.h) & ((wide.a > r.a) | (wide.h < r.h))).any()]
    assert front == sorted(expect) and front


def test_select_bad_queries(store):
    with pytest.raises(ConfigError, match="nope_accuracy"):
        select(store, where={"nope_accuracy": (">=", 0.9)})
    with pytest.raises(ConfigError, match="operator"):
        select(store, where={"sparsity": ("~", 0.9)})
    with pytest.raises(ConfigError, match="nope"):
        select(store, order_by="-nope")


# ---------------------------------------------------------------- ensembles
def test_ensemble_prediction_is_sum_of_member_softmax(store, tasks):
    ens = ensemble(store, 4, strategy="robust", name="robust4", device="cpu")
    h = store.sql('select node_id from wide order by "H", node_id limit 4')["node_id"].tolist()
    assert ens.node_ids == h
    x = tasks[0].test["x"][:32]
    expect = 0
    for nid in h:
        m = build_model(SPEC)
        m.load_state_dict(store.state_dict(nid))
        expect = expect + torch.softmax(m(x), -1)
    with torch.no_grad():
        torch.testing.assert_close(ens(x), expect)
    rec = store.ensemble_spec("robust4")
    assert rec["members"] == h and rec["rule"]["strategy"] == "robust"
    assert store.sql("SELECT name FROM ensembles")["name"].tolist() == ["robust4"]
    again = load_ensemble(store, "robust4")
    with torch.no_grad():
        torch.testing.assert_close(again(x), expect)


def test_ensemble_strategies_and_errors(store, tasks, tmp_path):
    evaluate(store, None, tasks[0], progress=False, device="cpu")
    col = f"{tasks[0].name}_accuracy"
    top = ensemble(store, 3, strategy="top", metric=col, record=False, device="cpu")
    assert top.node_ids == select(store, order_by="-" + col, limit=3)
    div = ensemble(store, 3, strategy="diverse", query=tasks[0], record=False, device="cpu")
    assert len(set(div.node_ids)) == 3
    far = ensemble(store, 3, strategy="diverse", where={"run_id": ("not null", None)}, record=False, device="cpu")
    assert far.node_ids[0] == 0 and len(set(far.node_ids)) == 3
    assert isinstance(far, Ensemble) and far.export(str(tmp_path / "ex")).endswith("ex")
    with pytest.raises(ConfigError, match="k=999"):
        ensemble(store, 999, strategy="robust", record=False, device="cpu")
    with pytest.raises(ConfigError, match="nope"):
        ensemble(store, 2, strategy="top", metric="nope", record=False, device="cpu")
    with pytest.raises(ConfigError, match="strategy"):
        ensemble(store, 2, strategy="magic", record=False, device="cpu")


# ---------------------------------------------------------------- graph
def test_graph_questions(store):
    ids = store.test_ids
    a, b = ids["chain"][-1], ids["branch"][-1]
    nodes, length = path_between(store, a, b)
    assert nodes[0] == a and nodes[-1] == b and ids["chain"][4] in nodes
    edges = store.sql("select * from edges")
    d = {(int(s), int(t)): x for s, t, x in zip(edges.src, edges.dst, edges.distance)}
    assert length == pytest.approx(sum(d.get((u, v), d.get((v, u))) for u, v in zip(nodes, nodes[1:])))
    assert lineage(store, b) == list(reversed([ids["root"]] + ids["chain"][:5] + ids["branch"]))
    br = branches(store)
    assert [ids["root"]] + ids["chain"][:5] in br and ids["branch"] in br and ids["chain"][5:] in br
    with pytest.raises(NodeNotFoundError, match="777"):
        lineage(store, 777)



def test_robust_ensemble_finds_h_recorded_per_task(store):
    from fipgraph.query.ensembles import resolve_h

    assert resolve_h(store, "H") == "H"
    store.add_evals(0, {"taskx": {"Hx": 0.1}})
    store.add_evals(1, {"taskx": {"Hx": 0.05}})
    assert resolve_h(store, "Hx") == "taskx_Hx"  # the path records H as {task}_H
    assert ensemble(store, 1, strategy="robust", h_metric="Hx", record=False).node_ids == [1]
    store.add_evals(0, {"tasky": {"Hx": 0.2}})
    with pytest.raises(ConfigError, match="several"):
        resolve_h(store, "Hx")


def test_pca_names_a_node_with_nan_weights(tmp_path):
    from fipgraph.errors import NonFiniteWeightsError

    with fipgraph.open_store(tmp_path / "nan", mode="a") as st:
        st.append({"w": torch.ones(5)})
        st.append({"w": torch.zeros(5)})
        st.flush()
        real = st.state_dict
        st.state_dict = lambda n: {"w": torch.full((5,), float("nan"))} if n == 1 else real(n)
        for method in ("gram", "randomized"):
            with pytest.raises(NonFiniteWeightsError, match="node 1"):
                WeightPCA(1, method=method, record=False, progress=False, device="cpu").fit(st)


# ---------------------------------------------------------------- robustness of a recorded ensemble
def test_ensemble_robustness_transfer_joint_recorded(tmp_path, tasks):
    """PGD transfer from a surrogate node, white-box per member and joint, diversity, coherence of an
    ensemble read from the store; each number against a direct computation, and read back by SQL."""
    from fipgraph.cli import main
    from fipgraph.query.robustness import _LogMean, accuracy, coherence, pgd_examples, representation_diversity

    st = fipgraph.open_store(tmp_path / "rob", mode="a")
    run = st.start_run("walk", "continual", {})
    nets = {}
    for seed in (1, 2, 3, 4):  # three members and a surrogate, trained from different seeds
        torch.manual_seed(seed)
        model = build_model(SPEC)
        ids = _train_chain(st, model, tasks[0], None, 40, run, seed=seed)
        nets[ids[-1]] = model
    st.flush()
    *members, sur = list(nets)
    st.add_ensemble("three", members, {"strategy": "by hand"})
    st.flush()
    x, y = tasks[0].test["x"][:80], tasks[0].test["labels"][:80]
    kw = dict(n_classes=10, eps=0.3, max_iter=5, clip=(0.0, 1.0))
    res = fipgraph.query.robustness.ensemble_robustness(st, "three", x, y, surrogate=sur, joint_n=40,
                                                        whitebox_members=True, device="cpu", **kw)
    ens = Ensemble([nets[m] for m in members], members)
    x_adv = pgd_examples(nets[sur], x, y, **kw)
    assert res["pgd_transfer_ensemble"] == pytest.approx(accuracy(ens, x_adv, y))
    assert res["pgd_surrogate_self"] == pytest.approx(accuracy(nets[sur], x_adv, y))
    assert res["pgd_surrogate_self"] < accuracy(nets[sur], x, y) - 0.2  # the attack works on its own network
    joint = pgd_examples(_LogMean(ens), x[:40], y[:40], **kw)
    assert res["pgd_joint_ensemble"] == pytest.approx(accuracy(ens, joint, y[:40]))
    assert res["pgd_joint_ensemble"] < res["clean_ensemble_joint_inputs"]
    wb = [pgd_examples(nets[m], x, y, **kw) for m in members]
    assert res["pgd_whitebox_member_ensemble_mean"] == pytest.approx(np.mean([accuracy(ens, a, y) for a in wb]))
    assert res["pgd_whitebox_member_min"] == pytest.approx(min(accuracy(nets[m], a, y) for m, a in zip(members, wb)))
    div = representation_diversity([nets[m] for m in members], x)
    assert res["diversity_mean"] == pytest.approx(np.mean(list(div.values())))
    assert res["coherence"] == pytest.approx(coherence([nets[m] for m in members], nets[sur], x, y)["coherence"])
    back = st.sql("select metric, value from ensemble_evals where name = 'three'")
    assert dict(zip(back["metric"], back["value"]))["pgd_transfer_ensemble"] == pytest.approx(res["pgd_transfer_ensemble"])
    with pytest.raises(ConfigError, match="member"):
        fipgraph.query.robustness.ensemble_robustness(st, "three", x, y, surrogate=members[1], device="cpu", **kw)
    st.close()
    # the CLI: same ensemble, surrogate by node id, reads the same numbers back
    assert main(["robustness", "--store", str(tmp_path / "rob"), "--ensemble", "three", "--surrogate", str(sur),
                 "--eps", "0.3", "--max-iter", "5", "--clip", "0", "1", "-n", "80", "--joint-n", "0",
                 "--data", "digits", "--split", "[[0,1,2,3,4],[5,6,7,8,9]]", "--task", "0", "--device", "cpu"]) == 0
    with fipgraph.open_store(tmp_path / "rob", mode="r") as st:
        back = st.sql("select metric, value from ensemble_evals where name = 'three' order by created_at")
    assert back[back.metric == "pgd_transfer_ensemble"]["value"].iloc[-1] == pytest.approx(res["pgd_transfer_ensemble"])


def test_every_query_export_stays_the_function_after_its_module_loads():
    import importlib
    import pkgutil
    import types

    import fipgraph.query as query

    modules = {m.name for m in pkgutil.iter_modules(query.__path__)}
    assert not modules & set(query.__all__)  # no module named like a function it exports
    for name in modules:
        importlib.import_module(f"fipgraph.query.{name}")
    for name in query.__all__:
        assert not isinstance(getattr(query, name), types.ModuleType), name
    assert query.select.__module__ == "fipgraph.query.selection" and callable(query.evaluate)
