"""Helpers shared by the query modules: node lists, flat weight vectors, eval caching."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from fipgraph.errors import ConfigError, NodeNotFoundError
from fipgraph.query.catalog import query_rows
from fipgraph.storage.sql import LAST_NODE_OF_RUN_NAME

if TYPE_CHECKING:  # torch and numpy load only where weights are read: `select` needs neither
    import numpy as np
    import torch


def all_node_ids(store) -> list[int]:
    return [int(n) for n in query_rows(store, "select node_id from nodes order by node_id").column("node_id")]


def resolve_nodes(store, nodes: Iterable[int] | None) -> list[int]:
    """`nodes` as a checked list of ids; None means every committed node."""
    known = all_node_ids(store)
    if nodes is None:
        return known
    if isinstance(nodes, numbers.Integral):
        nodes = [nodes]
    ids = [int(n) for n in nodes]
    missing = sorted(set(ids) - set(known))
    if missing:
        raise NodeNotFoundError(
            f"node(s) {missing[:10]} are not in the store (it has {len(known)} nodes, ids "
            f"{known[0] if known else '-'}..{known[-1] if known else '-'}); list them with "
            "`fipgraph sql \"select node_id from nodes\"`"
        )
    if not ids:
        raise ConfigError("the node list is empty; pass at least one node id (or nodes=None for all)")
    return ids


def check_same_arch(store, ids: Sequence[int]):
    """The single arch_id shared by `ids`; ConfigError naming the groups otherwise."""
    id_list = ",".join(str(int(i)) for i in ids)
    df = store.sql(f"select node_id, arch_id from nodes where node_id in ({id_list})")
    groups = df.groupby("arch_id")["node_id"].apply(list).to_dict()
    if len(groups) > 1:
        shown = {a: [int(n) for n in v[:5]] for a, v in groups.items()}
        raise ConfigError(
            f"nodes of {len(groups)} different architectures in one query (arch_id -> first nodes: "
            f"{shown}); pass nodes of one architecture, e.g. "
            f"nodes=store.sql(\"select node_id from nodes where arch_id = '{next(iter(shown))}'\")"
        )
    return next(iter(groups))


def float_param_names(store, nid: int, params: Sequence[str] | None = None) -> list[str]:
    """Floating-point parameter names of node `nid`, optionally restricted to `params` (names or
    prefixes such as "fc1." )."""
    spec = store.arch_spec(nid)["params"]
    names = [n for n, _shape, dtype in spec if "float" in str(dtype) or "bfloat" in str(dtype)]
    if params is None:
        return names
    chosen = [n for n in names if any(n == p or n.startswith(p) for p in params)]
    unknown = [p for p in params if not any(n == p or n.startswith(p) for n in names)]
    if unknown:
        raise ConfigError(f"params {unknown} match no floating-point parameter; known: {names[:20]}")
    return chosen


def flat_vector(state: dict[str, torch.Tensor], names: Sequence[str]) -> np.ndarray:
    """Concatenate the named tensors into one new float32 vector (the PCA row of a node)."""
    import numpy as np
    import torch

    parts = [state[n].detach().reshape(-1) for n in names]
    out = np.empty(sum(p.numel() for p in parts), np.float32)
    start = 0
    for p in parts:  # numpy copies: torch.cat costs ~10x more here (its intra-op threads wake per call)
        out[start:start + p.numel()] = p.to(torch.float32).cpu().numpy()
        start += p.numel()
    return out


def iter_vectors(store, ids: Sequence[int], names: Sequence[str], prefetch: bool = True) -> Iterator[np.ndarray]:
    """Flat weight vectors of `ids` in order; with `prefetch`, one node is read ahead on a
    worker thread (decompression releases the GIL) while the caller works on the current one."""
    if not prefetch or len(ids) < 2:
        for nid in ids:
            yield flat_vector(store.state_dict(nid), names)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(lambda n: flat_vector(store.state_dict(n), names), ids[0])
        for i in range(len(ids)):
            vec = nxt.result()
            if i + 1 < len(ids):
                nxt = pool.submit(lambda n: flat_vector(store.state_dict(n), names), ids[i + 1])
            yield vec


def cached_evals(store, ids: Sequence[int], dataset: str, metrics: Sequence[str]) -> dict[int, dict]:
    """Latest cached values {node: {metric: value}} for nodes that have all `metrics`."""
    if not ids:
        return {}
    id_list = ",".join(str(int(i)) for i in ids)
    mlist = ",".join(f"'{m}'" for m in metrics)
    ds = dataset.replace("'", "''")
    df = store.sql(
        f"select node_id, metric, value, created_at from evals where node_id in ({id_list}) "
        f"and dataset = '{ds}' and metric in ({mlist}) order by created_at"
    )
    out: dict[int, dict] = {}
    for nid, metric, value in zip(df["node_id"], df["metric"], df["value"]):
        out.setdefault(int(nid), {})[metric] = float(value)  # later rows win
    return {n: v for n, v in out.items() if all(m in v for m in metrics)}


def wide_columns(store) -> list[str]:
    return query_rows(store, "select * from wide limit 0").columns


def check_metric(store, name: str, what: str = "metric") -> None:
    cols = wide_columns(store)
    if name not in cols:
        raise ConfigError(
            f"unknown {what} {name!r}: the wide view has no such column; known columns: {cols}. "
            "Compute it first (e.g. `fipgraph evaluate`) or pick one of those."
        )


def as_list(x: Any) -> list:
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


def node_or_run(store, spec: int | str, what: str = "node") -> int:
    """A node id from an id (int or digits) or a run name (that run's last node)."""
    if isinstance(spec, numbers.Integral) or str(spec).strip().isdigit():
        return resolve_nodes(store, [int(spec)])[0]
    rows = query_rows(store, LAST_NODE_OF_RUN_NAME, [str(spec)])  # the node the build reports as the run's last
    if not rows.rows:
        runs = query_rows(store, "select name from runs order by run_id").column("name")
        raise ConfigError(f"{what} {spec!r} is neither a node id nor the name of a run with nodes; "
                          f"runs: {runs[:20]}")
    return int(rows.rows[0][0])
