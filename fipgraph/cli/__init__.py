"""The ``fipgraph`` command: a thin layer over library functions.

Each command module exposes ``register(subparsers)``; it adds its sub-commands and sets
``func(args) -> int`` on them. Adding a command means adding one module to COMMAND_MODULES.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fipgraph.errors import FipgraphError

COMMAND_MODULES = [
    "fipgraph.cli.store_cmds",  # info, sql, check, export, import
    "fipgraph.cli.build_cmd",  # build
    "fipgraph.cli.query_cmds",  # pca, perplexity, evaluate, select, ensemble, spectrum, plot
    "fipgraph.cli.ui_cmd",  # ui
    "fipgraph.cli.zoo_cmds",  # merge, soup, export-zoo
    "fipgraph.cli.remote_cmds",  # store push, store pull
]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fipgraph", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FipgraphError, FileNotFoundError) as exc:
        print(f"fipgraph {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fipgraph {args.command}: interrupted", file=sys.stderr)
        return 130


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default="store",
                        help="store directory or URL such as s3://bucket/prefix (credentials from the AWS_* "
                             "environment; see docs/storage-remote.md) (default: ./store)")
