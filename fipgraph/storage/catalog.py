"""The DuckDB side of the store: lineage, metrics and runs, and the commit point of every node.

DuckDB lets one process open a file read-write *or* many processes open it read-only, never both
at once. So no connection is held: the writer opens the file for one short transaction per batch
of nodes and closes it, and readers open it read-only per query. Whoever finds the file busy waits
a few milliseconds and retries. Readers therefore see every committed node while a build runs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import duckdb

if TYPE_CHECKING:  # pandas loads on first query: the catalog-only CLI commands never import it
    import pandas as pd

from fipgraph.errors import FipgraphError

# every parent of a node that has several (merges, soups), primary first (position 0); nodes.parent_id stays
# that primary parent, so SQL, encodings and stores written before keep working. Added after format 1 shipped:
# created on open for writing, and in a reader's copy of an older catalog (Catalog._mirror_connection).
NODE_PARENTS_TABLE = ("CREATE TABLE IF NOT EXISTS node_parents "
                      "(node_id BIGINT, parent_id BIGINT, weight DOUBLE, position INTEGER)")

SCHEMA = """
CREATE TABLE IF NOT EXISTS archs (arch_id VARCHAR PRIMARY KEY, spec JSON);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY, name VARCHAR UNIQUE, op VARCHAR, config JSON, status VARCHAR,
    started_at TIMESTAMP, finished_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS nodes (
    node_id BIGINT PRIMARY KEY, parent_id BIGINT, run_id INTEGER, op VARCHAR, step BIGINT,
    created_at TIMESTAMP, arch_id VARCHAR, n_params BIGINT, l2_norm DOUBLE, sparsity DOUBLE,
    path_length DOUBLE, tags JSON);
CREATE TABLE IF NOT EXISTS edges (src BIGINT, dst BIGINT, distance DOUBLE, output_distance DOUBLE);
CREATE TABLE IF NOT EXISTS evals (node_id BIGINT, dataset VARCHAR, metric VARCHAR, value DOUBLE, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS ensembles (name VARCHAR PRIMARY KEY, members JSON, rule JSON, created_at TIMESTAMP);
-- where each node's bits live and how to check them; internal, but readable
CREATE TABLE IF NOT EXISTS storage (
    node_id BIGINT PRIMARY KEY, arch_id VARCHAR, row BIGINT, encoding VARCHAR, chain_depth INTEGER,
    checksum VARCHAR, max_abs_error DOUBLE, stored_bytes BIGINT, tolerance DOUBLE, max_error_ratio DOUBLE);
-- added after format 1 shipped (tables created by older versions get them here)
ALTER TABLE storage ADD COLUMN IF NOT EXISTS tolerance DOUBLE;
ALTER TABLE storage ADD COLUMN IF NOT EXISTS max_error_ratio DOUBLE;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS error VARCHAR;  -- why a failed run failed (NULL otherwise)
-- results of an ensemble as a whole (before format 2 they were evals of its first member, dataset 'ensemble:<name>')
CREATE TABLE IF NOT EXISTS ensemble_evals (name VARCHAR, dataset VARCHAR, metric VARCHAR, value DOUBLE, created_at TIMESTAMP);
""" + NODE_PARENTS_TABLE + ";\n"

NODE_COLUMNS = ["node_id", "parent_id", "run_id", "op", "step", "created_at", "arch_id", "n_params",
                "l2_norm", "sparsity", "path_length", "tags"]
STORAGE_COLUMNS = ["node_id", "arch_id", "row", "encoding", "chain_depth", "checksum", "max_abs_error", "stored_bytes",
                   "tolerance", "max_error_ratio"]
EVAL_COLUMNS = ["node_id", "dataset", "metric", "value", "created_at"]
EDGE_COLUMNS = ["src", "dst", "distance", "output_distance"]
RUN_COLUMNS = ["run_id", "name", "op", "config", "status", "started_at", "finished_at"]
ENSEMBLE_COLUMNS = ["name", "members", "rule", "created_at"]
ENSEMBLE_EVAL_COLUMNS = ["name", "dataset", "metric", "value", "created_at"]
NODE_PARENT_COLUMNS = ["node_id", "parent_id", "weight", "position"]


READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def _is_lock_conflict(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def attach_read_only(con: duckdb.DuckDBPyConnection, path: Path, alias: str = "src", timeout: float = 60.0) -> None:
    """ATTACH the catalog file at `path` read-only into `con`, waiting out a writer's short transaction."""
    source = str(path).replace("'", "''")  # a quote in the path must not end the literal
    deadline, delay = time.monotonic() + timeout, 0.002
    while True:
        try:
            con.execute(f"ATTACH '{source}' AS {alias} (READ_ONLY)")
            return
        except duckdb.Error as exc:
            if not _is_lock_conflict(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)


def wide_view_sql(pairs: list[tuple[str, str]]) -> str:
    """One column per (dataset, metric), latest value wins; names are `{dataset}_{metric}`."""
    cols = []
    for dataset, metric in sorted(pairs):
        name = f"{dataset}_{metric}" if dataset else metric
        ds, me = dataset.replace("'", "''"), metric.replace("'", "''")
        ident = name.replace('"', '""')
        cols.append(f"arg_max(e.value, e.created_at) FILTER (WHERE e.dataset = '{ds}' AND e.metric = '{me}') AS \"{ident}\"")
    if not cols:
        return "CREATE OR REPLACE VIEW wide AS SELECT * FROM nodes"
    return (
        "CREATE OR REPLACE VIEW wide AS SELECT n.*, m.* EXCLUDE (node_id) FROM nodes n LEFT JOIN "
        f"(SELECT e.node_id, {', '.join(cols)} FROM evals e GROUP BY e.node_id) m USING (node_id)"
    )


class Catalog:
    """Short-lived DuckDB connections with lock-conflict retry."""

    def __init__(self, path: Path, *, read_only: bool, lock_timeout: float = 60.0, durable: bool = False) -> None:
        self.path = path
        self.durable = durable  # fsync the database files after each commit, before it is reported done
        self.read_only = read_only
        self.lock_timeout = lock_timeout
        self._local = threading.RLock()  # one connection at a time inside this process
        self._mirror: duckdb.DuckDBPyConnection | None = None
        self._mirror_state: tuple | None = None

    @contextmanager
    def connect(self, read_only: bool | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        read_only = self.read_only if read_only is None else read_only
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.002
        with self._local:
            while True:
                try:
                    con = duckdb.connect(str(self.path), read_only=read_only)
                    break
                except duckdb.Error as exc:
                    if not _is_lock_conflict(exc) or time.monotonic() > deadline:
                        if _is_lock_conflict(exc):
                            raise FipgraphError(
                                f"{self.path} stayed locked by another process for {self.lock_timeout:.0f} s: {exc}"
                            ) from exc
                        raise
                    time.sleep(delay)
                    delay = min(delay * 1.5, 0.05)
            try:
                yield con
            finally:
                con.close()

    def create(self) -> None:
        """Create missing tables and migrate older catalogs, in one transaction (idempotent)."""
        def setup(con) -> None:
            con.execute(SCHEMA)
            if not con.execute("SELECT 1 FROM duckdb_views() WHERE view_name = 'wide'").fetchall():
                con.execute(wide_view_sql([]))
            migrate(con)
        self.write(setup)

    def commit(self, batch: Batch) -> None:
        """Write one batch in one transaction (with durable=True: on the disk when this returns)."""
        self.write(lambda con: apply_batch(con, batch))
        if self.durable:
            for p in (self.path, self.path.with_name(self.path.name + ".wal"), self.path.parent):
                if p.exists():
                    fsync_path(p)

    def version(self) -> tuple:
        """Changes with every commit: (size, mtime) of the file and its log; on object storage the snapshot's tag."""
        return self._file_state()

    def _file_state(self) -> tuple:
        return tuple((p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else None
                     for p in (self.path, self.path.with_name(self.path.name + ".wal")))

    def _mirror_connection(self) -> duckdb.DuckDBPyConnection:
        """An in-memory copy of the catalog, refreshed whenever the files change.

        Opening the file costs ~10 ms and holding it open would lock the writer out, so queries
        run on a copy; any commit changes the files' size or mtime, so no committed row is missed.
        """
        state = self._file_state()
        if self._mirror is None or state != self._mirror_state:
            mirror = duckdb.connect(":memory:")
            with self.connect(read_only=True):  # waits out a writer's transaction, then we attach
                pass
            attach_read_only(mirror, self.path, timeout=self.lock_timeout)
            try:
                tables = [r[0] for r in mirror.execute(
                    "SELECT table_name FROM duckdb_tables() WHERE database_name = 'src'").fetchall()]
                for t in tables:
                    mirror.execute(f"CREATE TABLE {t} AS SELECT * FROM src.{t}")
                views = mirror.execute("SELECT sql FROM duckdb_views() WHERE database_name = 'src' AND NOT internal").fetchall()
            finally:
                mirror.execute("DETACH src")
            mirror.execute(NODE_PARENTS_TABLE)  # a catalog written before merges existed: no node has several
            for (view_sql,) in views:
                mirror.execute(view_sql)
            # materialise the wide pivot once per change, not once per query (100k nodes: ~10 ms a query)
            mirror.execute("CREATE TABLE _wide AS SELECT * FROM wide")
            mirror.execute("DROP VIEW wide")
            mirror.execute("ALTER TABLE _wide RENAME TO wide")
            if self._mirror is not None:
                self._mirror.close()
            self._mirror, self._mirror_state = mirror, state
        return self._mirror

    def query(self, sql: str, params: list | None = None) -> "pd.DataFrame":
        """Run read-only SQL (SELECT, EXPLAIN, DESCRIBE...) on the latest committed catalog."""
        import pandas as pd

        table = self.query_arrow(sql, params)
        return pd.DataFrame() if table is None else table.to_pandas()

    def query_arrow(self, sql: str, params: list | None = None):
        """Like query, as a pyarrow Table (None for statements without a result)."""
        with self._local:
            con = self._mirror_connection()
            kinds = {s.type for s in con.extract_statements(sql)}
            if not kinds <= READ_ONLY_STATEMENTS:
                raise duckdb.InvalidInputException(
                    f"only read-only queries (SELECT, EXPLAIN) run through sql(); got {sorted(k.name for k in kinds)}")
            rel = con.sql(sql, params=params)
            # Arrow then pandas is ~10x faster than fetchdf() for small results (measured: 1 vs 10 ms)
            return None if rel is None else rel.to_arrow_table()

    def write(self, fn) -> None:
        """Run fn(con) in one transaction: all of it commits, or none."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                fn(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise


@dataclass
class CatalogOp:
    """One catalog-only change (a run, a status, an ensemble), applied in queue order in its batch."""

    kind: str  # a key of CATALOG_OPS
    args: tuple


def _insert_run(con, row: tuple) -> None:
    insert_frame(con, "runs", RUN_COLUMNS, [row])


def _finish_run(con, run_id: int, status: str, finished_at, error: str | None = None) -> None:
    con.execute("UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE run_id = ?",
                [status, finished_at, error, run_id])


def _set_run_status(con, run_id: int, status: str) -> None:
    con.execute("UPDATE runs SET status = ? WHERE run_id = ?", [status, run_id])


def _insert_ensemble(con, row: tuple) -> None:
    insert_frame(con, "ensembles", ENSEMBLE_COLUMNS, [row])


def _add_stored_bytes(con, rows: list[tuple]) -> None:
    """(bytes to add, arch_id, row): chunks recompressed by `fipgraph compact`."""
    con.executemany("UPDATE storage SET stored_bytes = stored_bytes + ? WHERE arch_id = ? AND row = ?", rows)


CATALOG_OPS = {"insert_run": _insert_run, "finish_run": _finish_run, "set_run_status": _set_run_status,
               "insert_ensemble": _insert_ensemble, "add_stored_bytes": _add_stored_bytes}


@dataclass
class Batch:
    """Everything one commit writes: like MLflow's log_batch, all of it lands in one transaction, or none."""

    ops: list[CatalogOp] = field(default_factory=list)
    archs: list[tuple] = field(default_factory=list)  # (arch_id, spec JSON)
    nodes: list[tuple] = field(default_factory=list)  # NODE_COLUMNS
    edges: list[tuple] = field(default_factory=list)  # EDGE_COLUMNS
    evals: list[tuple] = field(default_factory=list)  # EVAL_COLUMNS
    storage: list[tuple] = field(default_factory=list)  # STORAGE_COLUMNS
    ensemble_evals: list[tuple] = field(default_factory=list)  # ENSEMBLE_EVAL_COLUMNS
    node_parents: list[tuple] = field(default_factory=list)  # NODE_PARENT_COLUMNS
    wide_pairs: list[tuple[str, str]] | None = None  # every (dataset, metric) when the wide view must grow


def apply_batch(con: duckdb.DuckDBPyConnection, batch: Batch) -> None:
    """The SQL of one commit (row-by-row inserts cost 0.8 ms each; a 512-row Arrow insert 1.4 ms in all)."""
    for op in batch.ops:
        CATALOG_OPS[op.kind](con, *op.args)
    for arch_id, spec in batch.archs:
        con.execute("INSERT INTO archs VALUES (?, ?) ON CONFLICT DO NOTHING", [arch_id, spec])
    insert_frame(con, "nodes", NODE_COLUMNS, batch.nodes)
    insert_frame(con, "edges", EDGE_COLUMNS, batch.edges)
    insert_frame(con, "evals", EVAL_COLUMNS, batch.evals)
    insert_frame(con, "storage", STORAGE_COLUMNS, batch.storage)
    insert_frame(con, "ensemble_evals", ENSEMBLE_EVAL_COLUMNS, batch.ensemble_evals)
    insert_frame(con, "node_parents", NODE_PARENT_COLUMNS, batch.node_parents)
    if batch.wide_pairs is not None:
        con.execute(wide_view_sql(batch.wide_pairs))


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Bring an older store's catalog up to date (idempotent): copy ensemble results that older
    versions kept as evals of the first member (dataset 'ensemble:<name>') into ensemble_evals.
    The old rows stay in evals, where older readers look for them."""
    con.execute(
        "INSERT INTO ensemble_evals SELECT substr(e.dataset, 10), '', e.metric, e.value, e.created_at "
        "FROM evals e JOIN ensembles x ON x.name = substr(e.dataset, 10) WHERE e.dataset LIKE 'ensemble:%' "
        "AND NOT EXISTS (SELECT 1 FROM ensemble_evals q WHERE q.name = x.name AND q.metric = e.metric "
        "AND q.created_at = e.created_at)")


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, columns: list[str], rows: list[tuple]) -> None:
    """Insert many rows at once through a pandas frame (one vectorised insert, not one per row)."""
    if rows:
        import pandas as pd

        frame = pd.DataFrame.from_records(rows, columns=columns)
        con.register("_fipgraph_rows", frame)
        try:
            con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM _fipgraph_rows")
        finally:
            con.unregister("_fipgraph_rows")


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def to_json(value) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)
