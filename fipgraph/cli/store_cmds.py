"""Store commands: info, sql, check, export, import."""

from __future__ import annotations

import argparse
import sys

from fipgraph.cli import add_store_argument
from fipgraph.storage import open_store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summary of a store: nodes, runs, architectures, bytes")
    add_store_argument(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("sql", help="run read-only SQL over the store's catalog")
    add_store_argument(p)
    p.add_argument("query", help='e.g. "SELECT node_id, sparsity FROM nodes ORDER BY sparsity DESC LIMIT 5"')
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument("--out", help="write to this file instead of stdout (required for parquet)")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("check", help="verify every node's checksum and find orphaned chunks")
    add_store_argument(p)
    p.add_argument("--repair", action="store_true", help="delete orphaned chunks (takes the writer lock)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("export", help="write a node as safetensors (or a transformers folder)")
    add_store_argument(p)
    p.add_argument("node", type=int)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="append safetensors checkpoints as a chain of nodes")
    add_store_argument(p)
    p.add_argument("path", help="a .safetensors file, a folder of them, or a folder of checkpoint folders")
    p.add_argument("--parent", type=int, default=None, help="attach the chain under this node")
    p.add_argument("--run", default=None, help="name of a new run to record the import under")
    p.set_defaults(func=cmd_import)


def cmd_info(args) -> int:
    with open_store(args.store, mode="r") as store:
        counts = store.sql(
            "SELECT (SELECT count(*) FROM nodes) AS nodes, (SELECT count(*) FROM runs) AS runs, "
            "(SELECT count(*) FROM archs) AS architectures, (SELECT count(*) FROM evals) AS evaluations, "
            "(SELECT coalesce(sum(n_params), 0) * 4 FROM nodes) AS raw_float32_bytes, "
            "(SELECT coalesce(sum(stored_bytes), 0) FROM storage) AS stored_bytes").iloc[0]
        print(f"store        {store.root.resolve()}")
        for key, value in counts.items():
            print(f"{key:<12} {int(value):,}")
        if counts["raw_float32_bytes"]:
            print(f"{'ratio':<12} {counts['stored_bytes'] / counts['raw_float32_bytes']:.3f} of raw float32")
        enc = store.sql("SELECT encoding, count(*) AS nodes, max(max_abs_error) AS max_abs_error FROM storage GROUP BY 1 ORDER BY 1")
        if len(enc):
            print("\nencodings\n" + enc.to_string(index=False))
        runs = store.sql("SELECT r.run_id, r.name, r.op, r.status, count(n.node_id) AS nodes FROM runs r "
                         "LEFT JOIN nodes n USING (run_id) GROUP BY ALL ORDER BY r.run_id")
        if len(runs):
            print("\nruns\n" + runs.to_string(index=False))
    return 0


def cmd_sql(args) -> int:
    with open_store(args.store, mode="r") as store:
        df = store.sql(args.query)
    if args.format == "parquet":
        if not args.out:
            print("fipgraph sql: error: --format parquet needs --out FILE", file=sys.stderr)
            return 2
        df.to_parquet(args.out)
        return 0
    text = {"table": lambda: df.to_string(index=False), "csv": lambda: df.to_csv(index=False),
            "json": lambda: df.to_json(orient="records", date_format="iso")}[args.format]()
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text.rstrip("\n"))
    return 0


def cmd_check(args) -> int:
    from fipgraph.storage.check import check_store

    report = check_store(args.store, repair=args.repair)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_export(args) -> int:
    from fipgraph.storage.transfer import export_node

    with open_store(args.store, mode="r") as store:
        out = export_node(store, args.node, args.out)
    print(f"node {args.node} exported to {out}")
    return 0


def cmd_import(args) -> int:
    from fipgraph.storage.transfer import import_checkpoints

    with open_store(args.store, mode="a") as store:
        run = store.start_run(args.run, "import", {"path": args.path}) if args.run else None
        ids = import_checkpoints(store, args.path, parent=args.parent, run=run)
        if run is not None:
            store.finish_run(run)
    print(f"imported {len(ids)} nodes: {ids[0]}..{ids[-1]}" if ids else "nothing imported")
    return 0
