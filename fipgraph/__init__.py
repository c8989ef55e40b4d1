"""fipgraph: a graph store and query engine for networks joined by functionally invariant paths."""

from fipgraph.errors import FipgraphError
from fipgraph.storage import Store, open_store

__version__ = "0.1.0"
__all__ = ["FipgraphError", "Store", "open_store", "__version__"]
