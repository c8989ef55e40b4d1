"""End-to-end CLI of the zoo commands: `fipgraph merge` (and the store they write), on sklearn digits."""

import pytest
import torch
import torch.nn.functional as F

import fipgraph
from fipgraph.cli import main
from fipgraph.data import make_tasks
from fipgraph.models import build_model
from fipgraph.query import evaluate

torch.set_num_threads(1)
SPLIT = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
DATA = {"source": "digits", "split": SPLIT, "seed": 0, "head": "single"}  # as a build records [data]


def _train(st, model, task, run, parent, steps, seed):
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for step, batch in zip(range(steps), task.train_loader(64, seed=seed)):
        F.cross_entropy(model(batch["x"]), batch["labels"]).backward()
        opt.step()
        opt.zero_grad()
        parent = st.append(model, parent=parent, run=run, step=step)
    return parent


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """Root 0, then two 4-step branches from it: task1 (nodes 1-4) and task2 (nodes 5-8)."""
    path = tmp_path_factory.mktemp("zoo") / "store"
    tasks = make_tasks("digits", split=SPLIT, seed=0)
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16], "n_classes": 10}})
    root_state = {k: v.clone() for k, v in model.state_dict().items()}
    with fipgraph.open_store(path) as st:
        run = st.start_run("walk", "continual", {"data": DATA})
        root = st.append(model, run=run, step=0)
        _train(st, model, tasks[0], run, root, 4, seed=0)
        model.load_state_dict(root_state)
        _train(st, model, tasks[1], run, root, 4, seed=1)
    return str(path)


def test_merge_cli_stores_an_evaluated_node(store_path, capsys):
    assert main(["merge", "4", "8", "--store", store_path, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("node 9: linear merge of [4, 8]") and "task1: accuracy" in out
    assert main(["merge", "4", "8", "--method", "ties", "--base", "0", "--density", "0.5", "--weights", "0.7,0.3",
                 "--data", "digits", "--split", str(SPLIT).replace(" ", ""), "--task", "1",
                 "--store", store_path, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("node 10: ties merge of [4, 8] over base 0")
    assert main(["merge", "9", "3", "--store", store_path, "--device", "cpu"]) == 0  # a merge of a merge
    assert "task2: accuracy" in capsys.readouterr().out  # scored on the data of the build it descends from
    tasks = make_tasks("digits", split=SPLIT, seed=0)
    with fipgraph.open_store(store_path, mode="r") as st:
        assert st.graph().nodes[9]["parents"] == [4, 8] and st.node(10)["op"] == "merge"
        for node, task_names in ((9, ["task1", "task2"]), (10, ["task2"])):
            stored = st.sql("SELECT dataset, metric, value FROM evals WHERE node_id = ?", [node])
            assert sorted(set(stored["dataset"])) == task_names
            for task in tasks:
                if task.name in task_names:
                    fresh = evaluate(st, [node], task, record=False, recompute=True, progress=False, device="cpu")
                    got = stored[stored["dataset"] == task.name].set_index("metric")["value"]
                    assert got["accuracy"] == fresh.loc[node, "accuracy"] and got["loss"] == pytest.approx(
                        fresh.loc[node, "loss"], rel=1e-9)
        # the uniform merge is the mean of its parents, to float32 rounding
        a, b, m = st.state_dict(4), st.state_dict(8), st.state_dict(9)
        for k in m:
            torch.testing.assert_close(m[k], (a[k] + b[k]) / 2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("argv, words", [
    (["merge", "4", "99"], "node(s) [99] are not in the store"),
    (["merge", "4", "8", "--method", "task_arithmetic", "--base", "5"], "base node 5 is not an ancestor"),
    (["merge", "4", "8", "--weights", "1"], "one finite number per node"),
])
def test_bad_merges_exit_2_and_write_nothing(store_path, capsys, argv, words):
    with fipgraph.open_store(store_path, mode="r") as st:
        before = len(st)
    assert main([*argv, "--store", store_path, "--device", "cpu"]) == 2
    assert words in capsys.readouterr().err
    with fipgraph.open_store(store_path, mode="r") as st:
        assert len(st) == before


def test_export_zoo_cli(store_path, tmp_path, capsys):
    import datasets

    out = tmp_path / "pq"
    assert main(["export-zoo", "--store", store_path, "--out", str(out), "--format", "parquet",
                 "--where", "step >= 2", "--params", "body.1."]) == 0
    assert "exported to" in capsys.readouterr().out
    ds = datasets.load_dataset("parquet", data_files=str(out / "zoo.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    with fipgraph.open_store(store_path, mode="r") as st:
        assert ds["node_id"] == st.sql("SELECT node_id FROM nodes WHERE step >= 2 ORDER BY node_id")["node_id"].tolist()
        names = [n for n in st.state_dict(3) if n.startswith("body.1.")]
        assert names and ds[0]["weights"] == torch.cat([st.state_dict(3)[n].reshape(-1) for n in names]).tolist()
    assert main(["export-zoo", "--store", store_path, "--out", str(tmp_path / "mz"), "--nodes", "0-2"]) == 0
    assert sorted(p.name for p in (tmp_path / "mz" / "walk").iterdir()) == [
        "checkpoint_000000", "checkpoint_000001", "checkpoint_000002", "params.json", "result.json"]
    assert main(["export-zoo", "--store", store_path, "--out", str(tmp_path / "mz")]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_soups_uniform_and_greedy(store_path, capsys):
    from fipgraph.query import merge, soup
    from fipgraph.query.soups import held_out_split

    tasks = make_tasks("digits", split=SPLIT, seed=0)
    with fipgraph.open_store(store_path, mode="r") as st:
        uniform = soup(st, [1, 2, 3, 4], data=tasks, record=False, device="cpu")
        mean = {k: torch.stack([st.state_dict(n)[k] for n in (1, 2, 3, 4)]).mean(0) for k in uniform.state}
        for k, v in uniform.state.items():
            torch.testing.assert_close(v, mean[k], rtol=1e-6, atol=1e-7)
        # greedy, replayed independently: rank by held-out accuracy, keep a node if the mean does not get worse
        held = held_out_split(tasks[0])
        candidates = [2, 3, 4, 6, 7, 8]
        alone = evaluate(st, candidates, held, record=False, progress=False, device="cpu")["accuracy"].to_dict()
        order = sorted(candidates, key=lambda n: -alone[n])
        model = build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16], "n_classes": 10}}).eval()

        def acc(members):
            model.load_state_dict(merge(st, members, "linear", record=False).state if len(members) > 1
                                  else st.state_dict(members[0]))
            with torch.no_grad():
                return (model(held.test["x"]).argmax(1) == held.test["labels"]).float().mean().item()

        kept, best = [order[0]], alone[order[0]]
        for n in order[1:]:
            if (a := acc(kept + [n])) >= best:
                kept, best = kept + [n], a
        greedy = soup(st, candidates, method="greedy", data=tasks, record=False, device="cpu")
        assert greedy.nodes == kept and greedy.tags["soup"]["order"] == order
        assert greedy.tags["soup"]["held_out_accuracy"] == pytest.approx(best, abs=1e-12)
        assert 1 < len(kept) < len(candidates) or kept == order[:len(kept)]
    assert main(["soup", "--store", store_path, "--method", "greedy", "--nodes", "2-4,6-8", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"greedy soup of {len(kept)} of 6 networks: {kept}" in out and "task2: accuracy" in out
    with fipgraph.open_store(store_path, mode="r") as st:
        last = int(st.sql("SELECT max(node_id) AS n FROM nodes")["n"][0])
        assert st.graph().nodes[last]["parents"] == kept and st.node(last)["op"] == "merge"
