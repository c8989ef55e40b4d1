"""The UI's SQL console: read-only, no file access, DuckDB's own errors, every row in the CSV."""

import csv
import io
import os

import duckdb
import pytest
import torch

import fipgraph
from fipgraph.errors import QueryError
from fipgraph.ui.console import SqlConsole


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("console") / "store"
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    with fipgraph.open_store(path, mode="a") as st:
        run = st.start_run("walk", "finetune", {})
        parent = None
        for step in range(12):
            with torch.no_grad():
                model.weight.add_(0.01)
            parent = st.append(model, parent=parent, run=run, step=step,
                               metrics={"task1": {"accuracy": step / 11}})
    with fipgraph.open_store(path, mode="r") as st:
        yield st


@pytest.fixture()
def console(store):
    return SqlConsole(store, version=lambda: "fixed")


def _files(path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("sql, words", [
    ("COPY nodes TO '{out}/leak.csv'", "read-only"),
    ("ATTACH '{out}/other.duckdb' AS other", "read-only"),
    ("SELECT * FROM read_csv('/etc/passwd')", "Permission Error"),
    ("SELECT * FROM read_text('/etc/hostname')", "Permission Error"),
    ("SELECT * FROM glob('/etc/*')", "Permission Error"),
    ("SET enable_external_access = true", "read-only"),
    ("INSERT INTO nodes SELECT * FROM nodes", "read-only"),
    ("DELETE FROM evals", "read-only"),
    ("CREATE TABLE x AS SELECT 1", "read-only"),
])
def test_console_cannot_write_attach_or_read_files(console, store, tmp_path, sql, words):
    before = _files(store.root)
    with pytest.raises(QueryError, match=words):
        console.run(sql.format(out=tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing written outside the store...
    assert _files(store.root) == before  # ...nor inside it
    assert console.run("SELECT count(*) AS n FROM nodes").rows == [[12]]


def test_duckdb_itself_refuses_file_access_on_the_console_connection(console, tmp_path):
    # past our statement filter: the connection's own settings must hold (DuckDB raises, not us)
    con = console.connection()
    for sql in (f"COPY nodes TO '{tmp_path}/leak.csv'", f"ATTACH '{tmp_path}/x.duckdb' AS x",
                "SELECT * FROM read_csv('/etc/passwd')"):
        with pytest.raises(duckdb.PermissionException):
            con.execute(sql)
    for sql in ("SET enable_external_access = true", "RESET enable_external_access", "SET lock_configuration = false"):
        with pytest.raises(duckdb.InvalidInputException, match="locked"):
            con.execute(sql)
    assert not os.listdir(tmp_path)


def test_bad_sql_keeps_duckdbs_message(console):
    with pytest.raises(QueryError, match=r'(?s)Parser Error.*"SELEC"'):
        console.run("SELEC node_id FROM nodes")
    with pytest.raises(QueryError, match="Table with name nope does not exist"):
        console.run("SELECT * FROM nope")
    with pytest.raises(QueryError, match="empty"):
        console.run("  ")


def test_rows_types_truncation_and_full_csv(console, store):
    r = console.run("SELECT node_id, parent_id, task1_accuracy FROM wide ORDER BY node_id", max_rows=5)
    assert r.columns == ["node_id", "parent_id", "task1_accuracy"]
    assert r.types == ["BIGINT", "BIGINT", "DOUBLE"]  # parent_id stays an integer despite its NULL
    assert r.n_rows == 12 and r.truncated and len(r.rows) == 5
    assert r.rows[0] == [0, None, 0.0] and r.rows[4] == [4, 3, 4 / 11]  # full float precision
    rows = list(csv.reader(io.StringIO(console.csv("SELECT node_id, parent_id FROM nodes ORDER BY node_id"))))
    assert rows[0] == ["node_id", "parent_id"] and len(rows) == 13
    assert rows[1] == ["0", ""] and rows[12] == ["11", "10"]
    special = console.run("SELECT 'nan'::DOUBLE AS a, 1/0 AS b, TIMESTAMP '2026-01-02 03:04:05' AS t").rows
    assert special == [["nan", "inf", "2026-01-02T03:04:05"]]  # JSON has no NaN/Inf


def test_snapshot_follows_the_store_and_long_queries_stop(store, tmp_path):
    token = ["v1"]
    con = SqlConsole(store, version=lambda: token[0], timeout_s=0.3)
    first = con.connection()
    assert con.connection() is first  # same version: no copy
    token[0] = "v2"
    assert con.connection() is not first
    with pytest.raises(QueryError, match="longer than 0.3 s"):
        con.run("SELECT count(*) FROM range(100000) a, range(100000) b, range(1000) c")
