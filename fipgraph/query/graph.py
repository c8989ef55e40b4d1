"""Graph questions over the stored networks (NetworkX, no weights read)."""

from __future__ import annotations

import networkx as nx

from fipgraph.errors import ConfigError, NodeNotFoundError


def _check(g: nx.DiGraph, *nodes: int) -> None:
    for n in nodes:
        if n not in g:
            raise NodeNotFoundError(f"node {n} is not in the store's graph ({g.number_of_nodes()} nodes); "
                                    "list ids with `fipgraph sql \"select node_id from nodes\"`")


def path_between(store, a: int, b: int, weight: str = "distance") -> tuple[list[int], float]:
    """Shortest path from `a` to `b` along edges in either direction, and its length (sum of the
    edges' `weight`: Euclidean weight distance by default, or "output_distance")."""
    g = store.graph()
    _check(g, a, b)
    und = g.to_undirected(as_view=True)
    try:
        nodes = nx.shortest_path(und, a, b, weight=lambda u, v, d: d.get(weight) or 0.0)
    except nx.NetworkXNoPath:
        raise ConfigError(f"nodes {a} and {b} are in different trees (no chain of parent links joins "
                          "them); pick nodes that share a root (see lineage())") from None
    length = sum(float(und.edges[u, v].get(weight) or 0.0) for u, v in zip(nodes, nodes[1:]))
    return nodes, length


def lineage(store, node: int) -> list[int]:
    """`node`, its parent, grandparent, ... up to the root."""
    g = store.graph()
    _check(g, node)
    out = [node]
    while True:
        parents = list(g.predecessors(out[-1]))
        if not parents:
            return out
        out.append(parents[0])


def branches(store) -> list[list[int]]:
    """The tree cut at every fork: each branch is a chain of nodes that starts at a root or at a
    child of a node with several children, and ends at a leaf or at the next fork."""
    g = store.graph()
    starts = [n for n in g if g.in_degree(n) == 0 or g.out_degree(next(iter(g.predecessors(n)))) > 1]
    out = []
    for s in sorted(starts):
        chain = [s]
        while g.out_degree(chain[-1]) == 1:
            chain.append(next(iter(g.successors(chain[-1]))))
        out.append(chain)
    return out


def roots(store) -> list[int]:
    g = store.graph()
    return sorted(n for n in g if g.in_degree(n) == 0)
