"""The catalog's shared SQL pieces, each rule in one place: identifier quoting, a run's last node, node tags.

Used by the Store's named reads (what the run engine asks, ``fipgraph.storage.protocol``) and by the
readers (``fipgraph.query``, ``fipgraph.ui``), which may hold a Store or a catalog snapshot.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple


class NodeAt(NamedTuple):
    """A node with its step and decoded tags (a tuple, so ``node, step, tags = ...`` works)."""

    node_id: int
    step: int
    tags: dict


def quote_ident(name: str) -> str:
    """A column or table name as a DuckDB identifier (any characters, e.g. a metric ``task1/acc "raw"``)."""
    return '"' + name.replace('"', '""') + '"'


# A run's last node is the one furthest along its walk: the largest step, the latest id among equal steps
# (and for nodes without a step). Not the largest id alone: ids count arrival at the store, and a node
# appended to a run later (a manual append, a recorder's late save) need not be further along; the
# engine resumes from this node and `fipgraph build` reports it, so a run name must mean the same node.
_LAST_NODE = ("SELECT n.node_id, n.step, n.tags FROM nodes n JOIN runs r USING (run_id) WHERE r.{key} = ? "
              "ORDER BY n.step DESC NULLS LAST, n.node_id DESC LIMIT 1")
LAST_NODE_OF_RUN_ID = _LAST_NODE.format(key="run_id")
LAST_NODE_OF_RUN_NAME = _LAST_NODE.format(key="name")

# The first node (by step) of a run whose tags hold ``tag: true``; DuckDB reads the JSON, so the rule does
# not depend on how the tags were spelled (json.dumps' separators, key order).
FIRST_TAGGED = ("SELECT node_id, step, tags FROM nodes WHERE run_id = ? AND (tags ->> ?) = 'true' "
                "ORDER BY step, node_id LIMIT 1")


def tag_path(tag: str) -> str:
    """The JSON path of a top-level tag (quoted: a tag name may hold dots or spaces)."""
    return "$." + json.dumps(tag)


def decode_tags(raw: Any) -> dict:
    """A nodes.tags value as a dict: DuckDB hands JSON over as text; NULL, '' and non-objects give {}."""
    if isinstance(raw, (str, bytes)):
        raw = json.loads(raw) if raw else None
    return raw if isinstance(raw, dict) else {}
