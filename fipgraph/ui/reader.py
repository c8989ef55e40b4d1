"""What the browser asks of a store, answered from a read-only Store (never the writer lock).

Each answer comes from one SQL query where it must be consistent (the graph payload reads ids,
parents, coordinates and colours in one statement), so a build committing in between cannot
give the page a parent that is not in its node list.
"""

from __future__ import annotations

import json
import math
import shlex
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fipgraph.errors import ConfigError, NodeNotFoundError
from fipgraph.storage.remote import as_location, is_url
from fipgraph.storage import open_store
from fipgraph.storage.sql import decode_tags, quote_ident
from fipgraph.ui.console import SqlConsole, jsonable
from fipgraph.ui.layout import PcaPlacer, lineage_layout, place_at_ancestors

# canvas drawing of 100k nodes takes ~0.2 s here; beyond this many the page gets an even sample
DRAW_MAX_NODES = 250_000
# points per metric curve in the node panel; a run longer than this is thinned (the node kept)
CURVE_MAX_POINTS = 2000
PCA_X, PCA_Y = "pca_pc1", "pca_pc2"  # what `fipgraph pca` records (dataset "pca")
NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL")
NOT_A_METRIC = {"node_id", "parent_id", "run_id"}


def rounded(values: np.ndarray, digits: int = 6) -> list:
    """Floats cut to `digits` significant digits of the column's largest value (enough for a screen,
    a third of the JSON), NaN as null."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    decimals = digits - int(math.floor(math.log10(scale))) - 1 if scale > 0 else digits
    out = np.round(values, max(0, min(decimals, 15))).tolist()
    if finite.size == values.size:
        return out
    return [v if v == v and v not in (math.inf, -math.inf) else None for v in out]


class StoreView:
    """A read-only view of one store for the web app: graph, nodes, SQL, selection, ensembles."""

    def __init__(self, path: str | Path) -> None:
        self.path = as_location(path)  # a URL (s3://...) stays a string
        self.store = open_store(self.path, mode="r")  # raises StoreNotFoundError: creates nothing
        self.console = SqlConsole(self.store, self.version)
        self.pca = PcaPlacer(lambda: open_store(self.path, mode="r"))
        self._runs: dict[int, str] = {}
        self._graph_cache: dict[tuple, bytes] = {}
        self._cache_lock = threading.Lock()
        # warm up before the first page asks: the catalog copy, and the PCA fit when none is recorded
        self._warmer = threading.Thread(target=self._warm, daemon=True, name="ui-warm")
        self._warmer.start()

    def _warm(self) -> None:
        try:
            self.graph_json("pca", self.meta()["default_color"])  # what the page asks for first
        except Exception:  # noqa: BLE001 - a failure here shows again, with its message, on the first request
            pass

    def graph_json(self, layout: str = "pca", color: str | None = None) -> bytes:
        """graph() as JSON bytes, kept until the store changes (100k nodes: ~0.4 s to make, 4 MB)."""
        key = (self.version(), layout, color)
        with self._cache_lock:
            if key in self._graph_cache:
                return self._graph_cache[key]
        payload = self.graph(layout, color)
        data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        with self._cache_lock:
            # the version read before the query: a commit during it only makes the entry stale sooner
            self._graph_cache = {k: v for k, v in self._graph_cache.items() if k[0] == key[0]}
            self._graph_cache[key] = data
        return data

    def close(self) -> None:
        """Let the background threads finish (they read the store), then close it."""
        self.pca.close()
        self._warmer.join(10.0)
        self.store.close()

    # -- change detection -------------------------------------------------------------------
    def version(self) -> str:
        """Changes with every commit to the catalog (its files' size and mtime) and every PCA fit."""
        parts = ["-" if st is None else ".".join(map(str, st)) if isinstance(st, tuple) else str(st)
                 for st in self.store.catalog.version()]  # on a bucket: the published snapshot's ETag
        return "-".join(parts) + f"-{self.pca.generation}"

    # -- metadata ---------------------------------------------------------------------------
    def columns(self) -> dict[str, str]:
        """{column: DuckDB type} of the wide view (one column per evaluation)."""
        df = self.store.sql("SELECT column_name, data_type FROM information_schema.columns "
                            "WHERE table_name = 'wide' ORDER BY ordinal_position")
        return dict(zip(df["column_name"], df["data_type"]))

    def metric_columns(self, columns: dict[str, str] | None = None) -> list[str]:
        """Numeric columns of the wide view that can colour the graph or constrain a selection."""
        columns = self.columns() if columns is None else columns
        return [c for c, t in columns.items() if c not in NOT_A_METRIC and str(t).upper().startswith(NUMERIC_TYPES)]

    def meta(self) -> dict:
        """Store path, counts, colourable columns, runs and ops, and the default colour."""
        columns = self.columns()
        metrics = self.metric_columns(columns)
        preferred = [c for c in metrics if c.endswith("_accuracy")] or [c for c in metrics if c == "l2_norm"]
        counts = self.store.sql("SELECT (SELECT count(*) FROM nodes) AS n, (SELECT count(*) FROM ensembles) AS e")
        runs = self.store.sql("SELECT run_id, name, op, status FROM runs ORDER BY run_id")
        return {"store": str(self.path) if is_url(self.path) else str(self.path.resolve()), "version": self.version(), "n_nodes": int(counts["n"][0]),
                "n_ensembles": int(counts["e"][0]), "metrics": metrics, "columns": list(columns),
                "default_color": preferred[0] if preferred else None,
                "runs": [jsonable(r) for r in runs.to_dict("records")]}

    def check_metric(self, name: str) -> str:
        metrics = self.metric_columns()
        if name not in metrics:
            raise ConfigError(f"unknown metric column {name!r}; numeric columns of the wide view: {metrics}")
        return name

    # -- the graph --------------------------------------------------------------------------
    def graph(self, layout: str = "pca", color: str | None = None) -> dict:
        """Every node's drawing position, parent, run, op, step and colour value (columnar arrays)."""
        if layout not in ("pca", "lineage"):
            raise ConfigError(f"layout={layout!r}; use 'pca' or 'lineage'")
        cols = self.columns()
        extra = []
        has_pca = PCA_X in cols and PCA_Y in cols
        if has_pca:
            extra += [f"{quote_ident(PCA_X)} AS _px", f"{quote_ident(PCA_Y)} AS _py"]
        if color:
            extra.append(f"{quote_ident(self.check_metric(color))} AS _color")
        version = self.version()
        # a node appended without an op takes its run's (shapes are drawn by op)
        df = self.store.sql("SELECT w.node_id, w.parent_id, w.run_id, coalesce(w.op, r.op) AS op, w.step, w.arch_id,"
                            " w.n_params"
                            + "".join(", " + e for e in extra)
                            + " FROM wide w LEFT JOIN runs r USING (run_id) ORDER BY w.node_id")
        ids = df["node_id"].to_numpy(np.int64)
        parent = _parent_index(ids, df["parent_id"].to_numpy(np.float64))
        x, y, used, note, axes = self._positions(layout, df, ids, parent, has_pca)
        keep = np.arange(len(ids))
        if len(ids) > DRAW_MAX_NODES:
            keep, parent = _even_sample(parent, DRAW_MAX_NODES)
        run_ids = df["run_id"].to_numpy(np.float64)
        run_codes, run_values = _codes(np.where(np.isnan(run_ids), -1, run_ids).astype(np.int64)[keep])
        op_codes, op_values = _codes(df["op"].fillna("(none)").to_numpy(object)[keep])
        payload = {
            "version": version, "n_nodes": int(len(ids)), "n_drawn": int(len(keep)), "layout": used,
            "layout_requested": layout, "layout_note": note, "axes": axes,
            "id": ids[keep].tolist(), "x": rounded(x[keep]), "y": rounded(y[keep]), "parent": parent.tolist(),
            "run": run_codes, "runs": [self._run_name(r) for r in run_values], "op": op_codes,
            "ops": [str(o) for o in op_values], "step": _ints_or_none(df["step"].to_numpy(np.float64)[keep]),
            "color": None, "merge_edges": self._merge_edges(ids[keep]),
        }
        if color:
            payload["color"] = {"name": color, "values": rounded(df["_color"].to_numpy(np.float64)[keep], 7)}
        return payload

    def _merge_edges(self, drawn: np.ndarray) -> list[list[int]]:
        """[child, parent] row indices into the drawn nodes for each parent after the first (a merge's
        other edges; `parent` holds the primary one). Pairs with an undrawn end are left out."""
        df = self.store.sql("SELECT node_id, parent_id FROM node_parents WHERE position > 0 ORDER BY node_id")
        if df.empty:
            return []
        child = _parent_index(drawn, df["node_id"].to_numpy(np.float64))
        parent = _parent_index(drawn, df["parent_id"].to_numpy(np.float64))
        ok = (child >= 0) & (parent >= 0)
        return np.stack([child[ok], parent[ok]], 1).tolist()

    def _positions(self, layout, df, ids, parent, has_pca):
        if layout == "pca":
            if has_pca and df["_px"].notna().sum() >= 2:
                x, y = df["_px"].to_numpy(np.float64).copy(), df["_py"].to_numpy(np.float64).copy()
                moved = int(place_at_ancestors(x, y, parent).sum())
                note = "recorded PCA coordinates (pca_pc1, pca_pc2)"
                if moved:
                    note += (f"; {moved} newer node(s) have none yet and sit at their nearest placed ancestor — "
                             f"run `fipgraph pca --store {shlex.quote(str(self.path))}` to place them")
                return x, y, "pca", note + _unplaced(x), ["PC1", "PC2"]
            self.pca.start(ids.tolist(), df["arch_id"].tolist(), df["n_params"].fillna(0).tolist())
            self.pca.wait()
            if self.pca.estimator is not None:
                self.pca.extend(self.store, ids.tolist())
                xy = np.array([self.pca.coords.get(int(n), (np.nan, np.nan)) for n in ids], np.float64).reshape(-1, 2)
                x, y = xy[:, 0].copy(), xy[:, 1].copy()
                place_at_ancestors(x, y, parent)
                ratio = self.pca.estimator.explained_variance_ratio_
                return x, y, "pca", self.pca.status() + _unplaced(x), [f"PC1 ({ratio[0]:.0%} of variance)",
                                                                    f"PC2 ({ratio[1]:.0%})"]
            x, y = lineage_layout(parent)
            return x, y, "lineage", self.pca.status(), ["hops from the root", "branch"]
        x, y = lineage_layout(parent)
        return x, y, "lineage", "x: hops from the root; y: one row per branch (a chain cut at each fork)", \
            ["hops from the root", "branch"]

    def _run_name(self, run_id: int) -> str:
        if run_id < 0:
            return "(no run)"
        if run_id not in self._runs:  # a run started since the last look
            df = self.store.sql("SELECT run_id, name FROM runs")
            self._runs = dict(zip(df["run_id"].astype(int), df["name"]))
        return str(self._runs.get(run_id, f"run {run_id}"))

    # -- one node ---------------------------------------------------------------------------
    def node(self, node_id: int) -> dict:
        """A node's properties, metrics, tags, parents (several for a merge, with their weights) and children,
        its run's curves, and its export command."""
        row = self.store.sql("SELECT * FROM wide WHERE node_id = ?", [int(node_id)])
        if row.empty:
            n = int(self.store.sql("SELECT count(*) AS n FROM nodes")["n"][0])
            raise NodeNotFoundError(f"no node {node_id} in {self.path} ({n} nodes); click one on the graph")
        rec = row.iloc[0].to_dict()
        # the nodes row through Arrow: integer columns with NULLs (parent_id) stay integers
        props = self.store.catalog.query_arrow("SELECT * FROM nodes WHERE node_id = ?", [int(node_id)]).to_pylist()[0]
        metrics = {c: jsonable(v) for c, v in rec.items() if c not in props and _present(v)}
        props = {c: jsonable(v) for c, v in props.items() if c != "tags"}
        tags = decode_tags(rec.get("tags")) or None
        children = self.store.sql("SELECT node_id FROM nodes WHERE parent_id = ? UNION SELECT node_id FROM "
                                  "node_parents WHERE parent_id = ? ORDER BY node_id", [int(node_id)] * 2)
        parents = self.store.sql("SELECT parent_id, weight FROM node_parents WHERE node_id = ? ORDER BY position",
                                 [int(node_id)])
        run = None
        if _present(rec.get("run_id")):
            runs = self.store.sql("SELECT run_id, name, op, status FROM runs WHERE run_id = ?", [int(rec["run_id"])])
            run = jsonable(runs.iloc[0].to_dict()) if len(runs) else None
        out = f"node{int(node_id)}"
        return {
            "node": props, "metrics": metrics, "tags": jsonable(tags), "run": run,
            "parent": props.get("parent_id"), "children": [int(c) for c in children["node_id"]],
            "parents": [{"id": int(p), "weight": jsonable(w)} for p, w in zip(parents["parent_id"], parents["weight"])]
            or ([{"id": props["parent_id"], "weight": None}] if props.get("parent_id") is not None else []),
            "curves": self._curves(rec, [c for c in metrics if not c.startswith("pca_")]),
            "export_command": f"fipgraph export {int(node_id)} --store {shlex.quote(str(self.path) if is_url(self.path) else str(self.path.resolve()))} "
                              f"--out {out}",
        }

    def _curves(self, rec: dict, metrics: list[str]) -> dict | None:
        """The node's run: each metric by step, thinned to CURVE_MAX_POINTS with the node itself kept."""
        if not metrics or not _present(rec.get("run_id")):
            return None
        sel = ", ".join(quote_ident(m) for m in metrics)
        df = self.store.sql(f"SELECT node_id, step, {sel} FROM wide WHERE run_id = ? ORDER BY step, node_id",
                            [int(rec["run_id"])])
        if len(df) > CURVE_MAX_POINTS:
            stride = math.ceil(len(df) / CURVE_MAX_POINTS)
            keep = (np.arange(len(df)) % stride == 0) | (df["node_id"].to_numpy() == rec["node_id"])
            df = df[keep]
        series = {m: rounded(df[m].to_numpy(np.float64), 8) for m in metrics}
        return {"x_name": "step", "x": _ints_or_none(df["step"].to_numpy(np.float64)),
                "node_x": _step_of(rec), "series": series}

    # -- selection and ensembles ------------------------------------------------------------
    def select(self, where: list[dict], condition: str | None = None, order_by: str | None = None,
               limit: int | None = None) -> dict:
        """Node ids meeting the constraints (fipgraph.query.select), in order."""
        from fipgraph.query import select

        ids = select(self.store, where=self._where(where, condition), order_by=order_by or None, limit=limit)
        return {"ids": ids, "n": len(ids)}

    def pareto(self, maximize: list[str], minimize: list[str], where: list[dict],
               condition: str | None = None) -> dict:
        """The Pareto front on (maximize, minimize) among nodes meeting the constraints (fipgraph.query.pareto)."""
        from fipgraph.query import pareto

        ids = pareto(self.store, maximize=maximize, minimize=minimize, where=self._where(where, condition))
        return {"ids": ids, "n": len(ids)}

    def _where(self, where: list[dict], condition: str | None) -> str | None:
        """Constraints [{column, op, value}] (and an optional raw SQL condition) as one SQL condition."""
        from fipgraph.query.selection import where_sql

        metrics = self.metric_columns() + [c for c in self.columns() if c in ("op", "run_id", "arch_id")]
        parts = [where_sql({c["column"]: (c["op"], c["value"])}, metrics) for c in where or []]
        if condition and condition.strip():
            if ";" in condition:
                raise ConfigError(f"the condition {condition!r} holds ';': give one SQL condition, no statements")
            parts.append(f"({condition})")
        return " and ".join(parts) if parts else None

    def ensembles(self) -> list[dict]:
        """Recorded ensembles with their member ids and the rule that chose them."""
        df = self.store.sql("SELECT name, members, rule, created_at FROM ensembles ORDER BY created_at, name")
        return [{"name": r["name"], "members": json.loads(r["members"]), "rule": json.loads(r["rule"] or "{}"),
                 "created_at": jsonable(r["created_at"])} for r in df.to_dict("records")]


def _unplaced(x: np.ndarray) -> str:
    n = int(np.isnan(x).sum())
    return (f"; {n} node(s) have no PCA coordinates and no placed ancestor (another architecture?) and are not "
            "drawn: the lineage layout shows every node") if n else ""


def _parent_index(ids: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Each node's parent as a row index into `ids` (sorted), -1 for roots."""
    out = np.full(len(ids), -1, np.int64)
    has = ~np.isnan(parents)
    pos = np.searchsorted(ids, parents[has].astype(np.int64))
    pos = np.clip(pos, 0, max(len(ids) - 1, 0))
    found = ids[pos] == parents[has].astype(np.int64) if len(ids) else np.zeros(0, bool)
    out[np.flatnonzero(has)[found]] = pos[found]
    return out


def _even_sample(parent: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th node, with each kept node's parent replaced by its nearest kept ancestor."""
    stride = math.ceil(len(parent) / limit)
    kept = np.arange(len(parent)) % stride == 0
    nearest = np.full(len(parent), -1, np.int64)  # nearest kept ancestor-or-self, as a row index
    for i, p in enumerate(parent.tolist()):
        nearest[i] = i if kept[i] else (nearest[p] if p >= 0 else -1)
    keep = np.flatnonzero(kept)
    new_pos = np.full(len(parent), -1, np.int64)
    new_pos[keep] = np.arange(len(keep))
    anc = np.where(parent[keep] >= 0, nearest[np.maximum(parent[keep], 0)], -1)
    return keep, np.where(anc >= 0, new_pos[np.maximum(anc, 0)], -1)


def _codes(values: np.ndarray) -> tuple[list[int], list]:
    """Category codes and the sorted categories (pandas hashes: 10x faster than np.unique on strings)."""
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64).tolist(), list(uniques)


def _ints_or_none(values: np.ndarray) -> list:
    return [None if v != v else int(v) for v in values.tolist()]


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _step_of(rec: dict) -> int | None:
    step = rec.get("step")
    return int(step) if _present(step) else None
