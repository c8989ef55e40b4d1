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
    assert main(["pca", *s, "-n", "2"]) == 0
    assert "explained variance ratio" in capsys.readouterr().out
    assert main(["evaluate", *s, "--split", SPLIT, "--task", "0"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["perplexity", *s, "--split", SPLIT, "--task", "task1", "--nodes", "0-2"]) == 0
    assert main(["select", *s, "--where", 'task1_accuracy >= 0', "--order-by=-H", "--limit", "3"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1 2 3"  # H = 1/step
    assert main(["select", *s, "--maximize", "task1_accuracy", "--minimize", "H"]) == 0
    assert main(["ensemble", *s, "-k", "2", "--name", "e2", "--export", str(tmp_path / "ens")]) == 0
    assert "members: 7 6" in capsys.readouterr().out  # robust = lowest H
    assert (tmp_path / "ens" / "ensemble.safetensors").exists()
    assert main(["spectrum", *s, "--node", "3", "-k", "5", "--n-examples", "16"]) == 0
    assert "eigenvalues" in capsys.readouterr().out
    out = tmp_path / "g.png"
    assert main(["plot", "graph", *s, "--color", "task1_accuracy", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", "run", *s, "--run", "walk", "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").stat().st_size > 1000


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
