"""End-to-end CLI of the query commands: `fipgraph pca/evaluate/perplexity/select/ensemble/spectrum/plot`."""

import pytest
import torch
import torch.nn.functional as F

import fipgraph
from fipgraph.cli import main
from fipgraph.data import make_tasks
from fipgraph.models import build_model

torch.set_num_threads(1)
SPLIT = "[[0,1,2,3,4],[5,6,7,8,9]]"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "store"
    task = make_tasks("digits", split=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], seed=0)[0]
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16], "n_classes": 10}})
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    with fipgraph.open_store(path, mode="a") as st:
        run = st.start_run("walk", "continual", {})
        parent = st.append(model, run=run, step=0)
        for step, batch in zip(range(1, 8), task.train_loader(64)):
            F.cross_entropy(model(batch["x"]), batch["labels"]).backward()
            opt.step()
            opt.zero_grad()
            parent = st.append(model, parent=parent, run=run, step=step)
            st.add_evals(parent, {"": {"H": 1.0 / step}})
    return str(path)


def test_query_commands_end_to_end(store_path, tmp_path, capsys):
    s = ["--store", store_path]
    d = ["--device", "cpu"]
    assert main(["pca", *s, "-n", "2", *d]) == 0
    assert "explained variance ratio" in capsys.readouterr().out
    assert main(["evaluate", *s, "--split", SPLIT, "--task", "0", *d]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["perplexity", *s, "--split", SPLIT, "--task", "task1", "--nodes", "0-2", *d]) == 0
    assert main(["select", *s, "--where", 'task1_accuracy >= 0', "--order-by=-H", "--limit", "3", "--ids"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1 2 3"  # H = 1/step
    assert main(["select", *s, "--maximize", "task1_accuracy", "--minimize", "H"]) == 0
    assert main(["ensemble", *s, "-k", "2", "--name", "e2", "--export", str(tmp_path / "ens"), *d]) == 0
    assert "members: 7 6" in capsys.readouterr().out  # robust = lowest H
    assert (tmp_path / "ens" / "ensemble.safetensors").exists()
    assert main(["spectrum", *s, "--node", "3", "-k", "5", "--n-examples", "16", *d]) == 0
    assert "eigenvalues" in capsys.readouterr().out
    out = tmp_path / "g.png"
    assert main(["plot", "graph", *s, "--color", "task1_accuracy", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", "run", *s, "--run", "walk", "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_select_prints_node_run_step_and_the_columns_it_was_asked_about(store_path, capsys):
    import csv
    import io
    import json

    s = ["--store", store_path, "--where", "task1_accuracy >= 0 and \"H\" < 0.9", "--order-by=-H", "--limit", "3"]
    assert main(["select", *s]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["node", "run", "step", "task1_accuracy", "H"]
    assert [line.split()[:3] for line in lines[1:]] == [["2", "walk", "2"], ["3", "walk", "3"], ["4", "walk", "4"]]
    assert main(["select", *s, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [float(r["H"]) for r in rows] == [1 / 2, 1 / 3, 1 / 4]  # every bit kept
    assert main(["select", "--store", store_path, "--maximize", "task1_accuracy", "--minimize", "H",
                 "--format", "json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert set(front[0]) == {"node", "run", "step", "task1_accuracy", "H"}
    assert all(r["H"] == 1 / r["step"] for r in front)


def test_bad_queries_exit_2_naming_the_value(store_path, capsys):
    s = ["--store", store_path]
    assert main(["select", *s, "--order-by", "nope_metric"]) == 2
    assert "nope_metric" in capsys.readouterr().err
    assert main(["ensemble", *s, "-k", "50"]) == 2
    assert "k=50" in capsys.readouterr().err
    assert main(["evaluate", *s, "--task", "zzz"]) == 2
    assert "zzz" in capsys.readouterr().err
    assert main(["spectrum", *s, "--node", "999"]) == 2
    assert "999" in capsys.readouterr().err


def test_run_series_skips_unevaluated_nodes(store_path):
    from fipgraph.query.plot import run_series

    with fipgraph.open_store(store_path, "r") as store:
        h = run_series(store, "walk", ["H"])["H"]
    assert h["step"].tolist() == list(range(1, 8))  # step 0 has no H: left out, so the line has no gap
    assert h["H"].tolist() == pytest.approx([1.0 / s for s in range(1, 8)])


def test_interpolate_ends_equal_the_nodes_and_the_middle_equals_the_blend(store_path, tmp_path, capsys):
    from fipgraph.query import evaluate, interpolate

    task = make_tasks("digits", split=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], seed=0)[0]
    with fipgraph.open_store(store_path, "r") as st:
        df = interpolate(st, 0, 7, task, points=5, record=False, device="cpu")
        ends = evaluate(st, [0, 7], task, recompute=True, record=False, progress=False, device="cpu")
        mid = build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16], "n_classes": 10}})
        mid.load_state_dict({k: (v + st.state_dict(7)[k]) / 2 for k, v in st.state_dict(0).items()})
    assert df["t"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert df["task1_loss"].iloc[0] == ends.loc[0, "loss"] and df["task1_loss"].iloc[-1] == ends.loc[7, "loss"]
    with torch.no_grad():
        want = float(F.cross_entropy(mid(task.test["x"]), task.test["labels"]))
    assert df["task1_loss"].iloc[2] == pytest.approx(want, rel=1e-5)
    line = 0.5 * (df["task1_loss"].iloc[0] + df["task1_loss"].iloc[-1])
    assert df.attrs["barrier"]["task1_loss"] >= df["task1_loss"].iloc[2] - line - 1e-12
    out = tmp_path / "lmc.png"
    assert main(["interpolate", "0", "7", "--store", store_path, "--split", SPLIT, "--task", "0",
                 "--points", "5", "--device", "cpu", "--out", str(out)]) == 0
    assert "loss barrier" in capsys.readouterr().out and out.read_bytes()[:4] == b"\x89PNG"
    with fipgraph.open_store(store_path, "r") as st:
        rec = st.sql("select metric, value from evals where node_id = 0 and dataset = 'interpolate:7/task1'")
    got = dict(zip(rec["metric"], rec["value"]))
    assert got["loss_t2"] == pytest.approx(df["task1_loss"].iloc[2]) and "accuracy_barrier" in got


def test_a_running_query_never_holds_the_writer_lock(store_path, monkeypatch, capsys):
    """A build must be able to start while `fipgraph evaluate` computes; results are recorded after."""
    from fipgraph.query import evaluation as ev

    opened = []
    real = ev.score_batches

    def score_and_open_a_writer(*args, **kwargs):
        if not opened:  # mid-query: a build takes the writer lock, appends, and lets go
            with fipgraph.open_store(store_path, mode="a") as writer:
                opened.append(writer.sql("select count(*) as n from nodes")["n"][0])
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "score_batches", score_and_open_a_writer)
    assert main(["evaluate", "--store", store_path, "--split", SPLIT, "--task", "0", "--nodes", "1-2",
                 "--recompute", "--device", "cpu"]) == 0
    assert opened == [8]
    assert "recorded in" in capsys.readouterr().err
    with fipgraph.open_store(store_path, mode="a"):  # a build holds the lock for the whole query:
        assert main(["evaluate", "--store", store_path, "--split", SPLIT, "--task", "0", "--nodes", "3",
                     "--recompute", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "accuracy" in captured.out and "not recorded" in captured.err  # scores printed all the same


def test_device_setting_is_checked_before_any_work(store_path, capsys):
    for argv in (["evaluate", "--split", SPLIT, "--task", "0"], ["pca"], ["spectrum", "--node", "1"],
                 ["interpolate", "0", "1", "--split", SPLIT, "--task", "0"]):
        assert main(argv + ["--store", store_path, "--device", "tpu"]) == 2
        assert "unknown device 'tpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["evaluate", "--store", store_path, "--split", SPLIT, "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
