"""Persistence: weights in Zarr, metrics and lineage in DuckDB, the graph built from both."""

from fipgraph.storage.store import Store, open_store

__all__ = ["Store", "open_store"]
