"""Store commands: info, sql, check, compact, export, import.

`info` and `sql` read a snapshot of the catalog only (fipgraph.query.catalog): no torch, zarr or
pandas is imported, so they answer in about the time of a bare duckdb process.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import decimal
import io
import json
import math
import sys
from pathlib import Path

from fipgraph.cli import add_store_argument
from fipgraph.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summary of a store: nodes, runs, architectures, bytes")
    add_store_argument(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("sql", help="run read-only SQL over the store's catalog")
    add_store_argument(p)
    p.add_argument("query", help='e.g. "SELECT node_id, sparsity FROM nodes ORDER BY sparsity DESC LIMIT 5"')
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table",
                   help="csv/json keep every float bit and integer columns as integers (NULL: empty / null)")
    p.add_argument("--out", help="write to this file instead of stdout (required for parquet)")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("check", help="verify every node's checksum and find orphaned chunks")
    add_store_argument(p)
    p.add_argument("--repair", action="store_true", help="delete orphaned chunks (takes the writer lock)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("compact", help="recompress chunks written with compressor='lz4' with zstd (takes the "
                       "writer lock)")
    add_store_argument(p)
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("export", help="write a node as safetensors (or a transformers folder)")
    add_store_argument(p)
    p.add_argument("node", type=int)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", help="tokenizer to write beside a transformers model (a name such as "
                   "'smollm2' or a folder); default: the one the node's model or build recorded")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="append safetensors checkpoints as a chain of nodes")
    add_store_argument(p)
    p.add_argument("path", help="a .safetensors file, a folder of them, or a folder of checkpoint folders")
    p.add_argument("--parent", type=int, default=None, help="attach the chain under this node")
    p.add_argument("--run", default=None, help="name of a new run to record the import under")
    p.set_defaults(func=cmd_import)


def cmd_info(args) -> int:
    from fipgraph.query.catalog import open_catalog

    with open_catalog(args.store) as cat:
        counts = cat.rows(
            "SELECT (SELECT count(*) FROM nodes) AS nodes, (SELECT count(*) FROM runs) AS runs, "
            "(SELECT count(*) FROM archs) AS architectures, (SELECT count(*) FROM evals) AS evaluations, "
            "(SELECT coalesce(sum(n_params), 0) * 4 FROM nodes) AS raw_float32_bytes, "
            "(SELECT coalesce(sum(stored_bytes), 0) FROM storage) AS stored_bytes")
        enc = cat.rows("SELECT encoding, count(*) AS nodes, max(max_abs_error) AS max_abs_error FROM storage "
                       "GROUP BY 1 ORDER BY 1")
        runs = cat.rows("SELECT r.run_id, r.name, r.op, r.status, count(n.node_id) AS nodes FROM runs r "
                        "LEFT JOIN nodes n USING (run_id) GROUP BY ALL ORDER BY r.run_id")
    values = dict(zip(counts.columns, counts.rows[0]))
    print(f"store        {args.store if '://' in args.store else Path(args.store).resolve()}")
    for key, value in values.items():
        print(f"{key:<12} {int(value):,}")
    if values["raw_float32_bytes"]:
        print(f"{'ratio':<12} {values['stored_bytes'] / values['raw_float32_bytes']:.3f} of raw float32")
    if enc.rows:
        print("\nencodings\n" + format_table(enc.columns, enc.rows))
    if runs.rows:
        print("\nruns\n" + format_table(runs.columns, runs.rows))
    return 0


def cmd_sql(args) -> int:
    from fipgraph.query.catalog import open_catalog

    if args.format == "parquet" and not args.out:
        raise ConfigError("--format parquet needs --out FILE")
    with open_catalog(args.store) as cat:
        if args.format == "parquet":
            cat.write_parquet(args.query, args.out)
            return 0
        res = cat.rows(args.query)
    text = {"table": format_table, "csv": format_csv, "json": format_json}[args.format](res.columns, res.rows)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text.rstrip("\n"))
    return 0


def _plain(value):
    """A JSON-ready value: every float bit kept (json writes repr), NaN/Inf as null, times as ISO text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (bool, int, str)) else str(value)


def format_json(columns: list[str], rows: list[tuple]) -> str:
    """Records, one object per row; integers stay integers even beside NULLs."""
    return json.dumps([{c: _plain(v) for c, v in zip(columns, row)} for row in rows])


def format_csv(columns: list[str], rows: list[tuple]) -> str:
    """CSV with a header; NULL is empty, floats are written with every bit (shortest repr)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else
                         v.isoformat() if isinstance(v, (dt.datetime, dt.date)) else v for v in row])
    return buf.getvalue()


def format_table(columns: list[str], rows: list[tuple]) -> str:
    """Aligned columns for reading (floats to 6 significant digits); numbers right-aligned."""
    def cell(v) -> str:
        if v is None:
            return "NULL"
        if isinstance(v, float):
            return f"{v:.6g}"
        return v.isoformat(sep=" ") if isinstance(v, dt.datetime) else str(v)

    cells = [[cell(v) for v in row] for row in rows]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(columns))]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(list(columns))] + [line(r) for r in cells])


def cmd_check(args) -> int:
    from fipgraph.storage.check import check_store

    report = check_store(args.store, repair=args.repair)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_compact(args) -> int:
    from fipgraph.query.catalog import require_store
    from fipgraph.storage.compact import compact_store

    require_store(args.store)  # never creates a store
    r = compact_store(args.store)
    print(f"{r.files} chunk files recompressed with zstd: {r.bytes_before:,} -> {r.bytes_after:,} bytes")
    return 0


def cmd_export(args) -> int:
    from fipgraph.query.catalog import require_store
    from fipgraph.query.text import save_tokenizer
    from fipgraph.storage import open_store
    from fipgraph.storage.transfer import export_node

    require_store(args.store)
    with open_store(args.store, mode="r") as store:
        out = export_node(store, args.node, args.out)
        tokenizer = save_tokenizer(store, args.node, out, args.tokenizer)
        is_hf = (store.arch_spec(args.node).get("model") or {}).get("name") == "hf"
    print(f"node {args.node} exported to {out}")
    if tokenizer is not None:
        print(f"tokenizer {tokenizer!r} written beside it (AutoTokenizer.from_pretrained({str(out)!r}))")
    elif is_hf:
        print(f"note: node {args.node} records no tokenizer; pass --tokenizer NAME_OR_FOLDER to write one",
              file=sys.stderr)
    return 0


def cmd_import(args) -> int:
    from fipgraph.storage import open_store
    from fipgraph.storage.transfer import import_checkpoints

    with open_store(args.store, mode="a") as store:
        run = store.start_run(args.run, "import", {"path": args.path}) if args.run else None
        ids = import_checkpoints(store, args.path, parent=args.parent, run=run)
        if run is not None:
            store.finish_run(run)
    print(f"imported {len(ids)} nodes: {ids[0]}..{ids[-1]}" if ids else "nothing imported")
    return 0
