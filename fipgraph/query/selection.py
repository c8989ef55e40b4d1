"""Select stored networks by constraints on the `wide` view, and Pareto fronts.

    select(store, where={"task1_accuracy": (">=", 0.9), "sparsity": (">=", 0.5)},
           order_by="-task1_accuracy", limit=5)
    select(store, where="task1_accuracy >= 0.9 and op = 'sparsify'")     # raw SQL condition
    select(store, where="select node_id from evals where ...")            # raw SQL query
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from typing import Any

from fipgraph.errors import ConfigError, FipgraphError
from fipgraph.query._common import as_list, wide_columns
from fipgraph.query.catalog import Rows, query_rows
from fipgraph.storage.sql import quote_ident

OPS = {">=": ">=", ">": ">", "<=": "<=", "<": "<", "==": "=", "=": "=", "!=": "<>",
       "in": "in", "not in": "not in", "between": "between", "is null": "is null",
       "not null": "is not null"}


def _literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, numbers.Integral):  # numpy's integer and float types register here too
        return str(int(v))
    if isinstance(v, numbers.Real):
        return repr(float(v))
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    raise ConfigError(f"cannot use {v!r} ({type(v).__name__}) in a constraint; use numbers or strings")


def _check_column(name: str, cols: Sequence[str] | None) -> str:
    if cols is not None and name not in cols:
        raise ConfigError(
            f"unknown metric/column {name!r}; the wide view has {list(cols)}. Evaluate it first "
            "(fipgraph evaluate / perplexity / pca) or use one of those names"
        )
    return quote_ident(name)


def where_sql(where: dict | str | None, cols: Sequence[str]) -> str:
    """The SQL condition for the Python constraint form (or a raw condition, passed through)."""
    if where is None:
        return "true"
    if isinstance(where, str):
        return f"({where})"
    if not isinstance(where, dict):
        raise ConfigError(f"where must be a dict {{column: (op, value)}} or an SQL string, got {where!r}")
    parts = []
    for col, cond in where.items():
        ident = _check_column(col, cols)
        is_pair = isinstance(cond, tuple) and len(cond) == 2 and isinstance(cond[0], str)
        op, val = cond if is_pair else ("==", cond)
        if op in ("is null", "not null"):
            parts.append(f"{ident} {OPS[op]}")
        elif op in ("in", "not in"):
            parts.append(f"{ident} {OPS[op]} ({', '.join(_literal(v) for v in as_list(val))})")
        elif op == "between":
            lo, hi = val
            parts.append(f"{ident} between {_literal(lo)} and {_literal(hi)}")
        elif op in OPS:
            parts.append(f"{ident} {OPS[op]} {_literal(val)}")
        else:
            raise ConfigError(f"unknown operator {op!r} for {col!r}; use one of {sorted(OPS)}")
    return " and ".join(parts) or "true"


def order_sql(order_by: str | Sequence[str] | None, cols: Sequence[str]) -> str:
    """'-col' sorts descending; NULLs always last; node_id breaks ties for a stable order."""
    keys = []
    for key in as_list(order_by):
        desc = key.startswith("-")
        name = key[1:] if desc else key
        name, _, direction = name.partition(" ")
        desc = desc or direction.strip().lower() == "desc"
        keys.append(f"{_check_column(name, cols)} {'desc' if desc else 'asc'} nulls last")
    return ", ".join(keys + ["node_id"])


def select_sql(store, where=None, order_by=None, limit: int | None = None, validate: bool = True) -> str:
    """The SQL that `select` runs (useful to inspect or to paste into `fipgraph sql`)."""
    cols = wide_columns(store) if validate else None
    if isinstance(where, str) and where.lstrip().lower().startswith(("select", "with")):
        cond = f"node_id in (select node_id from ({where}))"
    else:
        cond = where_sql(where, cols)
    q = f"select node_id from wide where {cond} order by {order_sql(order_by, cols)}"
    if limit is not None:
        if int(limit) < 0:
            raise ConfigError(f"limit={limit}; use a non-negative number or None")
        q += f" limit {int(limit)}"
    return q


def select(store, where: dict | str | None = None, order_by: str | Sequence[str] | None = None,
           limit: int | None = None, load: bool = False, device: Any = "cpu") -> list:
    """Node ids meeting `where`, sorted by `order_by`; with load=True, the rebuilt models
    (placed on `device`: "cpu", "cuda", "cuda:N", "mps" or "auto")."""
    # validating column names costs a catalog round trip; do it only when the query fails
    try:
        rows = query_rows(store, select_sql(store, where, order_by, limit, validate=False))
    except FipgraphError:
        select_sql(store, where, order_by, limit)  # raises ConfigError naming an unknown column
        raise
    ids = [int(n) for n in rows.column("node_id")]
    if not load:
        return ids
    from fipgraph.device import resolve_device
    from fipgraph.models import model_from_node

    dev = resolve_device(device)
    return [model_from_node(store, n).to(dev) for n in ids]


_STRING = re.compile(r"'(?:[^']|'')*'")  # SQL string literals: their words are values, not columns
_NAME = re.compile(r'"((?:[^"]|"")+)"|\b([A-Za-z_][A-Za-z0-9_]*)\b')
SHOWN = ("node_id", "run_id", "step")  # always in the table (as node, run name, step)


def columns_named(store, *texts: str | Sequence[str] | None) -> list[str]:
    """Wide-view columns that SQL conditions / order keys / objective names mention, in order of appearance."""
    by_lower = {c.lower(): c for c in wide_columns(store)}
    found: list[str] = []
    for text in texts:
        for part in as_list(text):
            for quoted, bare in _NAME.findall(_STRING.sub("", part.lstrip("-"))):
                col = by_lower.get((quoted.replace('""', '"') or bare).lower())
                if col is not None and col not in found and col not in SHOWN:
                    found.append(col)
    return found


def selection_rows(store, ids: Sequence[int], columns: Sequence[str] = ()) -> Rows:
    """node, run (name), step and `columns` of `ids`, in the order of `ids` (catalog only: no torch)."""
    extra = "".join(f", w.{quote_ident(c)}" for c in columns)
    id_list = ",".join(str(int(i)) for i in ids) or "NULL"
    res = query_rows(store, f"select w.node_id as node, r.name as run, w.step{extra} from wide w "
                            f"left join runs r on r.run_id = w.run_id where w.node_id in ({id_list})")
    by_node = {int(row[0]): row for row in res.rows}
    return Rows(res.columns, res.types, [by_node[int(i)] for i in ids])


def pareto(store, maximize: Sequence[str] = (), minimize: Sequence[str] = (),
           where: dict | str | None = None) -> list[int]:
    """Nodes not dominated on (maximize, minimize) among those meeting `where`; nodes lacking a
    value for any objective are left out."""
    maximize, minimize = as_list(maximize), as_list(minimize)
    if not maximize and not minimize:
        raise ConfigError("pareto needs at least one objective: maximize=[...] and/or minimize=[...]")
    import numpy as np

    cols = wide_columns(store)
    objectives = ", ".join(_check_column(c, cols) for c in maximize + minimize)
    res = query_rows(store, f"select node_id, {objectives} from wide where {where_sql(where, cols)} order by node_id")
    kept = [r for r in res.rows if all(v is not None and v == v for v in r[1:])]  # NULL or NaN: left out
    node_ids = [int(r[0]) for r in kept]
    # flip minimised objectives so that "bigger is better" everywhere
    signs = np.array([1.0] * len(maximize) + [-1.0] * len(minimize))
    vals = np.array([r[1:] for r in kept], dtype=float) * signs if kept else np.empty((0, 1))
    order = np.lexsort(vals.T[::-1])[::-1]  # by first objective, best first: dominators come early
    front: list[int] = []
    for i in order:
        if front:
            f = vals[front]
            if ((f >= vals[i]).all(1) & (f > vals[i]).any(1)).any():
                continue
        front.append(i)
    return sorted(node_ids[i] for i in front)
