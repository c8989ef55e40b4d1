"""One scorer for build time and query time: a per_task build re-evaluated by `fipgraph evaluate`
must record exactly what the build recorded (it once scored every output unit and overwrote them)."""

import pytest
import torch

import fipgraph
from fipgraph.cli import main
from fipgraph.data import make_tasks
from fipgraph.errors import ConfigError
from fipgraph.models import model_from_node
from fipgraph.query import evaluate

torch.set_num_threads(1)
SPLIT = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
CONFIG = """
name = "pt"
eval_all_tasks = true
[data]
source = "digits"
split = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
head = "per_task"
[model]
name = "mlp"
kwargs = { in_features = 64, hidden = [16], n_classes = 10 }
[defaults]
optimizer = "adam"
lr = 0.01
batch_size = 32
save_every = 10
[[runs]]
name = "task1"
op = "finetune"
task = 1
steps = 20
[[runs]]
name = "task2"
op = "finetune"
from = "task1"
task = 2
steps = 20
"""


@pytest.fixture(scope="module")
def per_task_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("pertask")
    (root / "pt.toml").write_text(CONFIG)
    store = root / "store"
    assert main(["build", str(root / "pt.toml"), "--store", str(store), "--no-progress"]) == 0
    return store


def _evals(store, dataset):
    with fipgraph.open_store(store, mode="r") as st:
        df = st.sql("select node_id, value from evals where dataset = ? and metric = 'accuracy' "
                    "order by node_id, created_at", [dataset])
    out = {}
    for nid, v in zip(df["node_id"], df["value"]):
        out.setdefault(int(nid), []).append(float(v))
    return out


def test_recompute_on_a_per_task_build_records_what_the_build_recorded(per_task_store, capsys):
    built = _evals(per_task_store, "task2")
    assert len(built) >= 3 and all(len(v) == 1 for v in built.values())
    assert main(["evaluate", "--store", str(per_task_store), "--split", str(SPLIT).replace(" ", ""),
                 "--recompute", "--device", "cpu"]) == 0
    assert "recorded in" in capsys.readouterr().err
    after = _evals(per_task_store, "task2")
    for nid, values in built.items():
        assert after[nid] == [values[0], values[0]], nid  # recomputed == built, bit for bit
    # an independent oracle: task 2's labels 0..4 are scored on output units 5..9 only
    task2 = make_tasks("digits", split=SPLIT, seed=0, head="per_task")[1]
    nid = max(built)
    with fipgraph.open_store(per_task_store, mode="r") as st:
        model = model_from_node(st, nid).eval()
    with torch.no_grad():
        logits = model(task2.test["x"])[:, 5:10]
    assert after[nid][-1] == pytest.approx(float((logits.argmax(1) == task2.test["labels"]).float().mean()))
    assert task2.label_offset == 5 and int(task2.test["labels"].max()) == 4


def test_a_task_of_the_other_head_layout_is_refused(per_task_store):
    single = make_tasks("digits", split=SPLIT, seed=0, head="single")[1]
    with fipgraph.open_store(per_task_store, mode="r") as st, pytest.raises(ConfigError, match="per_task"):
        evaluate(st, None, single, recompute=True, record=False, progress=False, device="cpu")
