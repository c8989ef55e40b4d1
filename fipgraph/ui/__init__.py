"""``fipgraph ui``: a read-only web app over a store (graph, node details, SQL console, selection, ensembles)."""

from fipgraph.ui.server import UiServer, serve

__all__ = ["UiServer", "serve"]
