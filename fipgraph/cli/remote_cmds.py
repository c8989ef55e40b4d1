"""`fipgraph store push|pull`: copy a whole store between a folder and object storage, bit for bit.

Credentials and endpoint come from the standard environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, AWS_REGION); see docs/storage-remote.md.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="copy a store to or from object storage (push, pull)")
    actions = p.add_subparsers(dest="action", required=True)
    push = actions.add_parser("push", help="copy a local store to a URL (e.g. s3://bucket/prefix)")
    push.add_argument("source", help="folder of the local store")
    push.add_argument("url", help="destination URL, an empty prefix (s3://bucket/prefix)")
    push.set_defaults(func=cmd_copy)
    pull = actions.add_parser("pull", help="copy a store at a URL into a local folder")
    pull.add_argument("url", help="source URL (s3://bucket/prefix)")
    pull.add_argument("dest", help="destination folder (new or empty)")
    pull.set_defaults(func=cmd_copy)


def cmd_copy(args) -> int:
    from fipgraph.storage.copy import copy_store

    source, dest = (args.source, args.url) if args.action == "push" else (args.url, args.dest)
    report = copy_store(source, dest)
    print(f"copied {report.files} files ({report.bytes:,} bytes) from {source} to {dest}")
    return 0
