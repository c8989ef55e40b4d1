"""fipgraph: a graph store and query engine for networks joined by functionally invariant paths."""

from fipgraph.errors import FipgraphError

__version__ = "0.1.0"
__all__ = ["FipgraphError", "Store", "open_store", "walk", "__version__"]


def __getattr__(name: str):
    # The store pulls in torch and zarr (~2 s); `import fipgraph` stays cheap so that commands
    # which only read the catalog (`fipgraph sql`, `info`, `select`) answer at once.
    if name in ("Store", "open_store"):
        from fipgraph import storage

        return getattr(storage, name)
    if name == "walk":  # the engine (and torch) load on first use, like the store
        from fipgraph.path.walk import walk

        return walk
    raise AttributeError(f"module 'fipgraph' has no attribute {name!r}")
