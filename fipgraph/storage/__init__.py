"""Persistence: weights in Zarr, metrics and lineage in DuckDB, the graph built from both.

``Store`` and ``open_store`` load on first use (PEP 562): importing a light submodule such as
``fipgraph.storage.catalog`` or ``fipgraph.storage.lock`` then costs no torch, zarr or networkx import.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fipgraph.storage.store import Store, open_store

__all__ = ["Store", "open_store"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fipgraph.storage import store

        return getattr(store, name)
    raise AttributeError(f"module 'fipgraph.storage' has no attribute {name!r}")
