"""Queries that compute on a read-only store and record their results in one short write.

A query (evaluate, PCA, spectrum, ensembles, ...) may run for minutes. Holding the store's writer
lock that long would stop a build from starting, so query commands open the store read-only and
keep what they would record; `commit()` then takes the writer lock once, writes it all, and lets go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fipgraph.errors import WriterLockedError

WRITE_METHODS = ("add_evals", "add_evals_many", "add_ensemble", "add_ensemble_evals")  # what queries record


class DeferredWrites:
    """A read-only store whose recorded results are held until `commit()`.

    Reads go to `store` (opened with mode="r"); add_evals, add_evals_many, add_ensemble and
    add_ensemble_evals are kept in order; flush() is a no-op, since nothing is written before commit().
    """

    def __init__(self, store: Any) -> None:
        self._store = store
        self._pending: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str) -> Any:
        if name in WRITE_METHODS:
            return lambda *args, **kwargs: self._pending.append((name, args, kwargs))
        return getattr(self._store, name)

    def flush(self) -> None:
        """Nothing to wait for: writes happen in commit()."""

    @property
    def pending(self) -> int:
        return len(self._pending)

    def commit(self, **open_options: Any) -> bool:
        """Write every kept result under the writer lock, held only for the write. False when
        another process (a build) holds the lock: the results are then not recorded."""
        if not self._pending:
            return True
        from fipgraph.storage import open_store

        try:
            writer = open_store(self._store.root, mode="a", **open_options)  # a folder or a bucket (RemotePath)
        except WriterLockedError:
            return False
        with writer:
            for name, args, kwargs in self._pending:
                getattr(writer, name)(*args, **kwargs)
        self._pending.clear()
        return True

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> "DeferredWrites":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
