"""The 'spread' ensemble strategy: farthest-point sampling in weight space among candidates within an accuracy
bound, checked against a numpy oracle on nodes whose weights and accuracies are set by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fipgraph
from fipgraph.cli import main
from fipgraph.errors import ConfigError
from fipgraph.models import build_model
from fipgraph.query import ensemble
from fipgraph.query.ensembles import resolve_h

SPEC = {"name": "mlp", "kwargs": {"in_features": 4, "hidden": [3], "n_classes": 2}}
ACC = [0.95, 0.96, 0.90, 0.955, 0.951, 0.97, 0.962, 0.80, 0.965, 0.958, 0.961, 0.952]


@pytest.fixture(scope="module")
def spread_store(tmp_path_factory):
    """12 nodes of one walk: random weights, accuracies ACC (two of them far below the others)."""
    path = tmp_path_factory.mktemp("spread") / "store"
    torch.manual_seed(0)
    model = build_model(SPEC)
    rng = np.random.default_rng(1)
    vectors, ids = [], []
    with fipgraph.open_store(path, mode="a") as st:
        run = st.start_run("walk", "travel", {})
        parent = None
        for step, acc in enumerate(ACC):
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(torch.as_tensor(rng.normal(0, 3, p.shape), dtype=p.dtype))
            vectors.append(np.concatenate([p.detach().double().numpy().ravel() for p in model.parameters()]))
            parent = st.append(model, parent=parent, run=run, op="travel", step=step)
            st.add_evals(parent, {"task1": {"accuracy": acc}})
            ids.append(parent)
    return path, ids, np.stack(vectors)


def _oracle(vectors: np.ndarray, acc: list[float], k: int, max_drop: float) -> list[int]:
    keep = [i for i, a in enumerate(acc) if a >= max(acc) - max_drop]
    chosen = [int(np.argmax(acc))]
    while len(chosen) < k:
        d = {i: min(np.linalg.norm(vectors[i] - vectors[c]) for c in chosen) for i in keep if i not in chosen}
        chosen.append(max(d, key=d.get))
    return chosen


@pytest.mark.parametrize("k, max_drop", [(4, 0.01), (3, 0.02), (5, 0.2)])
def test_spread_is_farthest_point_sampling_within_the_bound(spread_store, k, max_drop):
    path, ids, vectors = spread_store
    with fipgraph.open_store(path, "r") as st:
        ens = ensemble(st, k, strategy="spread", max_drop=max_drop, record=False)
    expect = [ids[i] for i in _oracle(vectors, ACC, k, max_drop)]
    assert ens.node_ids == expect
    assert ens.node_ids[0] == ids[5]  # the most accurate candidate (0.97) seeds the sampling
    if max_drop < 0.1:  # 0.90 and 0.80 are outside the bound, whatever their distance
        assert ids[2] not in ens.node_ids and ids[7] not in ens.node_ids
    assert ens.rule == {"strategy": "spread", "k": k, "where": None, "metric": "task1_accuracy", "max_drop": max_drop}


def test_spread_spreads_more_than_the_robust_or_top_choice(spread_store):
    path, ids, vectors = spread_store
    with fipgraph.open_store(path, "r") as st:
        spread = ensemble(st, 4, strategy="spread", max_drop=0.02, record=False).node_ids
        top = ensemble(st, 4, strategy="top", metric="task1_accuracy", record=False).node_ids

    def min_gap(members):
        v = vectors[[ids.index(m) for m in members]]
        return min(np.linalg.norm(a - b) for i, a in enumerate(v) for b in v[i + 1:])

    assert min_gap(spread) > min_gap(top)


def test_spread_errors_name_the_value_and_fix(spread_store):
    path, _, _ = spread_store
    with fipgraph.open_store(path, "r") as st:
        with pytest.raises(ConfigError, match=r"k=6 but only 5 of 12 .* raise max_drop"):
            ensemble(st, 6, strategy="spread", max_drop=0.01, record=False)
        with pytest.raises(ConfigError, match="max_drop=-0.5"):
            ensemble(st, 2, strategy="spread", max_drop=-0.5, record=False)
        with pytest.raises(ConfigError, match="no column 'loss'"):
            ensemble(st, 2, strategy="spread", metric="loss", record=False)
        with pytest.raises(ConfigError, match="'spread'"):
            resolve_h(st, "H")  # no H recorded: the message points to the strategies that need none


def test_spread_from_the_cli(spread_store, capsys):
    path, ids, vectors = spread_store
    assert main(["ensemble", "--store", str(path), "-k", "3", "--strategy", "spread", "--max-drop", "0.02",
                 "--name", "sp3"]) == 0
    out = capsys.readouterr().out
    expect = [ids[i] for i in _oracle(vectors, ACC, 3, 0.02)]
    assert f"members: {' '.join(map(str, expect))}" in out
    with fipgraph.open_store(path, "r") as st:
        assert st.ensemble_spec("sp3")["members"] == expect
