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


def lineage(store, node: int, every_parent: bool = False) -> list[int]:
    """`node`, its parent, grandparent, ... up to the root, following primary parents (`nodes.parent_id`).
    With `every_parent`, every ancestor instead (a merge has several parents): breadth-first, nearest first,
    each once."""
    g = store.graph()
    _check(g, node)
    out, seen = [node], {node}
    for n in out:  # grows while iterating: a breadth-first walk up the parents
        for p in g.nodes[n]["parents"][: None if every_parent else 1]:
            if p not in seen and p in g:
                seen.add(p)
                out.append(p)
    return out


def branches(store) -> list[list[int]]:
    """The lineage cut at every fork and every merge: each branch is a chain of nodes that starts at a root,
    at a child of a node with several children or at a node with several parents, and ends at a leaf or
    before the next fork or merge."""
    g = store.graph()

    def starts_branch(n: int) -> bool:
        return g.in_degree(n) != 1 or g.out_degree(next(iter(g.predecessors(n)))) > 1

    out = []
    for s in sorted(n for n in g if starts_branch(n)):
        chain = [s]
        while g.out_degree(chain[-1]) == 1 and not starts_branch(nxt := next(iter(g.successors(chain[-1])))):
            chain.append(nxt)
        out.append(chain)
    return out


def roots(store) -> list[int]:
    g = store.graph()
    return sorted(n for n in g if g.in_degree(n) == 0)
