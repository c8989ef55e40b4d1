"""``fipgraph ui``: a read-only web app over a store (graph, node details, SQL console, selection, ensembles)."""

from fipgraph.ui.server import serve

__all__ = ["serve"]
