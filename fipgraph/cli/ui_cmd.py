"""``fipgraph ui``: serve a read-only web app over a store."""

from __future__ import annotations

import argparse

from fipgraph.cli import add_store_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="browse a store in a web browser (graph, nodes, SQL, selection, ensembles)",
                       description="Serve a read-only web app over the store and print its URL. "
                                   "A build may write the same store meanwhile; new nodes appear within seconds.")
    add_store_argument(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; others print a warning)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.set_defaults(func=cmd_ui)


def cmd_ui(args) -> int:
    from fipgraph.ui.server import serve  # the web stack loads only for this command

    serve(args.store, host=args.host, port=args.port)
    return 0
