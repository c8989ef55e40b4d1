"""Nodes with several parents (merges): node_parents rows, an edge per parent, the graph, lineage and old stores."""

import math

import duckdb
import networkx as nx
import numpy as np
import pytest
import torch

import fipgraph
from fipgraph.errors import FipgraphError, NodeNotFoundError
from fipgraph.query import branches, lineage, path_between


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(4, generator=g)}


def _dist(a: dict, b: dict) -> float:
    return math.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a))


@pytest.fixture
def merged(tmp_path):
    """0 -> 1 -> 2 and 0 -> 3; node 4 merges 2 (primary) and 3; node 5 is its child."""
    st = fipgraph.open_store(tmp_path / "s")
    states = [_state(i) for i in range(6)]
    st.append(states[0])
    st.append(states[1], parent=0)
    st.append(states[2], parent=1)
    st.append(states[3], parent=0)
    st.append(states[4], parents={2: 0.25, 3: 0.75}, op="merge")
    st.append(states[5], parent=4)
    st.flush()
    yield st, states
    st.close()


def test_merge_has_a_row_and_an_edge_per_parent(merged):
    st, states = merged
    rows = st.sql("SELECT parent_id, weight, position FROM node_parents WHERE node_id = 4 ORDER BY position")
    assert rows.values.tolist() == [[2, 0.25, 0], [3, 0.75, 1]]
    assert int(st.node(4)["parent_id"]) == 2  # the primary parent
    edges = st.sql("SELECT src, distance FROM edges WHERE dst = 4 ORDER BY src")
    assert edges["src"].tolist() == [2, 3]
    np.testing.assert_allclose(edges["distance"], [_dist(states[4], states[2]), _dist(states[4], states[3])],
                               rtol=1e-12)
    # path length follows the primary parent
    expected = _dist(states[1], states[0]) + _dist(states[2], states[1]) + _dist(states[4], states[2])
    assert st.node(4)["path_length"] == pytest.approx(expected, rel=1e-12)
    # one-parent nodes have no rows: nodes.parent_id says it all
    assert int(st.sql("SELECT count(*) AS n FROM node_parents")["n"][0]) == 2


def test_graph_lineage_and_paths_see_every_parent(merged):
    st, states = merged
    g = st.graph()
    assert g.nodes[4]["parents"] == [2, 3] and g.nodes[5]["parents"] == [4] and g.nodes[0]["parents"] == []
    assert g.edges[3, 4]["merge_weight"] == 0.75 and "merge_weight" not in g.edges[1, 2]
    assert nx.is_directed_acyclic_graph(g)
    assert lineage(st, 5) == [5, 4, 2, 1, 0]
    assert lineage(st, 5, every_parent=True) == [5, 4, 2, 3, 1, 0]
    nodes, length = path_between(st, 3, 5)  # through the merge's second edge, not back through the root
    assert nodes == [3, 4, 5]
    assert length == pytest.approx(_dist(states[4], states[3]) + _dist(states[5], states[4]), rel=1e-12)
    assert branches(st) == [[0], [1, 2], [3], [4, 5]]


@pytest.mark.parametrize("kwargs, message", [
    ({"parents": [0, 0]}, "each parent once"),
    ({"parents": [0, 1], "parent": 1}, "primary parent is the first"),
    ({"parents": {0: 0.5, 1: float("nan")}}, "weights are finite"),
])
def test_bad_parents_write_nothing(tmp_path, kwargs, message):
    with fipgraph.open_store(tmp_path / "s") as st:
        st.append(_state(0))
        st.append(_state(1), parent=0)
        with pytest.raises(FipgraphError, match=message):
            st.append(_state(2), **kwargs)
        with pytest.raises(NodeNotFoundError, match="no node 7"):
            st.append(_state(2), parents=[0, 7])
        assert len(st) == 2 and st.sql("SELECT count(*) AS n FROM node_parents")["n"][0] == 0


def test_store_written_before_node_parents_opens(tmp_path):
    with fipgraph.open_store(tmp_path / "s") as st:
        st.append(_state(0))
        st.append(_state(1), parent=0)
    con = duckdb.connect(str(tmp_path / "s" / "metrics.duckdb"))
    con.execute("DROP TABLE node_parents")  # as a store written before merges existed
    con.close()
    with fipgraph.open_store(tmp_path / "s", mode="r") as st:
        assert st.graph().nodes[1]["parents"] == [0] and lineage(st, 1, every_parent=True) == [1, 0]
    with fipgraph.open_store(tmp_path / "s") as st:  # opened for writing: the table is created
        st.append(_state(2), parents=[0, 1])
        st.flush()
        assert st.sql("SELECT parent_id FROM node_parents ORDER BY position")["parent_id"].tolist() == [0, 1]
