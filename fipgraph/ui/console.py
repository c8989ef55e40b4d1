"""The browser's SQL console: user SQL on a locked, in-memory copy of the catalog.

The store's own reader (``store.sql``) runs on a mirror that may attach files, so the console keeps
its own copy: the catalog's tables are copied in (through the store's public reader), then
``enable_external_access`` is switched off and ``lock_configuration`` on. From then on DuckDB itself
refuses ``COPY … TO``, ``ATTACH``, ``read_csv('/etc/passwd')``, ``glob`` and any ``SET`` that would
undo this; only SELECT-like statements are passed to it at all, and the copy is discarded at the
next refresh, so nothing a query does can reach the store.
"""

from __future__ import annotations

import io
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import duckdb
import pandas as pd

from fipgraph.errors import QueryError

# one console query may not stall the page (or the machine) for long; DuckDB stops at interrupt()
QUERY_TIMEOUT_S = 30.0
# rows sent to the page as a table; the CSV download has every row
MAX_TABLE_ROWS = 1000
ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


@dataclass
class Result:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    n_rows: int
    truncated: bool
    seconds: float


def jsonable(value: Any) -> Any:
    """A cell as JSON: NaN/Inf as strings (JSON has none), times as ISO text, bytes as hex."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class SqlConsole:
    """Read-only SQL over a snapshot of a store's catalog, refreshed when the catalog changes.

    ``version`` is a callable returning a token that changes with every commit (the app's file-state
    token); the snapshot is rebuilt lazily, on the first query after it changed.
    """

    def __init__(self, store, version: Callable[[], str], timeout_s: float = QUERY_TIMEOUT_S) -> None:
        self.store = store
        self.version = version
        self.timeout_s = timeout_s
        self._con: duckdb.DuckDBPyConnection | None = None
        self._con_version: str | None = None
        self._lock = threading.Lock()  # one DuckDB connection: one query at a time

    def _snapshot(self) -> duckdb.DuckDBPyConnection:
        version = self.version()
        if self._con is not None and version == self._con_version:
            return self._con
        con = duckdb.connect(":memory:")
        tables = self.store.sql("SELECT table_name FROM duckdb_tables() WHERE NOT internal ORDER BY 1")["table_name"]
        for name in tables:
            # Arrow, not pandas: keeps BIGINT columns with NULLs (parent_id) integers
            frame = self.store.catalog.query_arrow(f'SELECT * FROM "{name}"')
            con.register("_fipgraph_copy", frame)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _fipgraph_copy')
            con.unregister("_fipgraph_copy")
        # order matters: lock_configuration last, so no later statement can turn access back on
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        if self._con is not None:
            self._con.close()
        self._con, self._con_version = con, version
        return con

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The locked connection itself (tests use it to show DuckDB, not our filter, refuses writes)."""
        with self._lock:
            return self._snapshot()

    def _relation(self, sql: str) -> tuple[duckdb.DuckDBPyConnection, duckdb.DuckDBPyRelation]:
        con = self._snapshot()
        try:
            kinds = {s.type for s in con.extract_statements(sql)}
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from None
        if not kinds:
            raise QueryError("the query is empty; type a SELECT statement")
        if not kinds <= ALLOWED:
            raise QueryError(f"the console is read-only: only SELECT and EXPLAIN run here, got "
                             f"{', '.join(sorted(k.name for k in kinds))}")
        return con, con.sql(sql)

    def _timed(self, sql: str, fetch: Callable[[duckdb.DuckDBPyRelation], Any]) -> Any:
        with self._lock:
            con, rel = None, None
            try:
                con, rel = self._relation(sql)
                timer = threading.Timer(self.timeout_s, con.interrupt)
                timer.start()
                try:
                    return fetch(rel) if rel is not None else None
                finally:
                    timer.cancel()
            except duckdb.InterruptException:
                raise QueryError(f"the query ran longer than {self.timeout_s:g} s and was stopped; "
                                 "add a LIMIT or a WHERE clause") from None
            except duckdb.Error as exc:
                raise QueryError(str(exc)) from None

    def run(self, sql: str, max_rows: int = MAX_TABLE_ROWS) -> Result:
        """The first ``max_rows`` rows of the query's result, with its column names and types."""
        start = time.perf_counter()

        def fetch(rel: duckdb.DuckDBPyRelation) -> Result:
            table = rel.limit(max_rows + 1).to_arrow_table()
            n = rel.aggregate("count(*)").fetchall()[0][0] if table.num_rows > max_rows else table.num_rows
            rows = [[jsonable(v) for v in row.values()] for row in table.slice(0, max_rows).to_pylist()]
            return Result(rel.columns, [str(t) for t in rel.types], rows, int(n), table.num_rows > max_rows,
                          time.perf_counter() - start)

        result = self._timed(sql, fetch)
        if result is None:
            return Result([], [], [], 0, False, time.perf_counter() - start)
        return result

    def csv(self, sql: str) -> str:
        """Every row of the query's result as CSV text (header line first)."""
        frame = self._timed(sql, lambda rel: rel.df())
        buf = io.StringIO()
        (frame if frame is not None else pd.DataFrame()).to_csv(buf, index=False)
        return buf.getvalue()
