"""Read-only SQL over a store's catalog that loads nothing else: no torch, zarr or pandas.

`fipgraph sql`, `info` and `select` read only the catalog (metrics.duckdb). The full Store
(`fipgraph.storage`) imports torch and zarr to decode weights, ~2 s before the first query; this
snapshot answers in the time of a bare duckdb process. The catalog file is held only while its
tables are copied into an in-memory database, as the Store's own reader does, so a build that
commits meanwhile waits milliseconds, never for the query, and the query cannot change the store.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import duckdb

from fipgraph.errors import QueryError, StoreNotFoundError
from fipgraph.storage.catalog import READ_ONLY_STATEMENTS, attach_read_only  # no torch, zarr or pandas

MARKER = "fipgraph.json"  # written last when a store is created: its presence means "a store is here"
CATALOG = "metrics.duckdb"


def require_store(path: str | Path):
    """The store directory (or URL: a RemotePath) `path`; StoreNotFoundError (and nothing created) when none is there."""
    from fipgraph.storage.remote import resolve  # fsspec loads only for URLs

    root = resolve(path)
    if not (root / MARKER).is_file():
        raise StoreNotFoundError(
            f"no store at {root} (no {MARKER}: not a fipgraph store); pass --store DIR of an existing "
            "store, or create one with `fipgraph build --store DIR`")
    return root


@dataclass
class Rows:
    """A query result as plain Python values: ints stay ints (None for NULL), floats keep every bit."""

    columns: list[str]
    types: list[str]
    rows: list[tuple]

    def column(self, name: str) -> list:
        i = self.columns.index(name)
        return [r[i] for r in self.rows]


class CatalogSnapshot:
    """An in-memory copy of a store's catalog, taken when opened. `.sql()` answers like
    `Store.sql` (a pandas DataFrame); `.rows()` without pandas."""

    def __init__(self, path: str | Path, lock_timeout: float = 60.0) -> None:
        self.root = require_store(path)
        self.mode = "r"
        self._con = duckdb.connect(":memory:")
        with _local_catalog(self.root) as local:
            attach_read_only(self._con, local, timeout=lock_timeout)  # waits out a writer's commit
            try:
                self._con.execute("COPY FROM DATABASE src TO memory")
            finally:
                self._con.execute("DETACH src")

    def _relation(self, query: str, params: list | None = None):
        try:
            kinds = {s.type for s in self._con.extract_statements(query)}
            if not kinds <= READ_ONLY_STATEMENTS:
                raise QueryError(f"only read-only queries (SELECT, EXPLAIN) run here; got "
                                 f"{sorted(k.name for k in kinds)}")
            return self._con.sql(query, params=params)
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from None

    def rows(self, query: str, params: list | None = None) -> Rows:
        """Run read-only SQL; the result as plain Python values."""
        rel = self._relation(query, params)
        if rel is None:
            return Rows([], [], [])
        try:
            return Rows(list(rel.columns), [str(t) for t in rel.types], rel.fetchall())
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from None

    def write_parquet(self, query: str, out: str | Path) -> None:
        """The result of `query` as a Parquet file, column types kept."""
        rel = self._relation(query)
        try:
            rel.write_parquet(str(out))
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from None

    def sql(self, query: str, params: list | None = None):
        """Like Store.sql: a pandas DataFrame (pandas is imported on first use)."""
        rel = self._relation(query, params)
        import pandas as pd

        return pd.DataFrame() if rel is None else rel.to_arrow_table().to_pandas()

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "CatalogSnapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def _local_catalog(root) -> Iterator[Path]:
    """The catalog file of a store folder, or the latest published snapshot of a store on object storage."""
    if isinstance(root, Path):
        yield root / CATALOG
        return
    import tempfile

    from fipgraph.storage.published import fetch_snapshot

    with tempfile.TemporaryDirectory(prefix="fipgraph-sql-") as tmp:
        yield fetch_snapshot(root, Path(tmp))


def open_catalog(path: str | Path) -> CatalogSnapshot:
    """A read-only, in-memory snapshot of the catalog of the store at `path`."""
    return CatalogSnapshot(path)


def query_rows(store: Any, query: str, params: list | None = None) -> Rows:
    """Rows of a read-only query from a CatalogSnapshot (no pandas) or a Store."""
    if isinstance(store, CatalogSnapshot):
        return store.rows(query, params)
    df = store.sql(query, params)
    return Rows([str(c) for c in df.columns], [str(t) for t in df.dtypes],
                list(df.astype(object).where(df.notna(), None).itertuples(index=False, name=None)))
