"""Errors raised by fipgraph.

Each subclasses a builtin too (as zarr-python does), so callers can catch either
``fipgraph.errors.NodeNotFoundError`` or plain ``KeyError``.
"""


class FipgraphError(Exception):
    """Base class of every error fipgraph raises on purpose."""


class StoreNotFoundError(FipgraphError, FileNotFoundError):
    """The path is not a fipgraph store."""


class FormatVersionError(FipgraphError, RuntimeError):
    """The store was written by a newer fipgraph."""


class ReadOnlyStoreError(FipgraphError, PermissionError):
    """A write was attempted through a store opened with mode='r'."""


class WriterLockedError(FipgraphError, RuntimeError):
    """Another process holds the store's single-writer lock."""


class NodeNotFoundError(FipgraphError, KeyError):
    """No committed node has this id."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0]) if self.args else ""


class ArchitectureMismatchError(FipgraphError, ValueError):
    """Parameter names, shapes or dtypes differ from the expected architecture."""


class NonFiniteWeightsError(FipgraphError, ValueError):
    """Weights contain NaN or Inf."""


class ConfigError(FipgraphError, ValueError):
    """A build, query or model configuration is invalid."""


class QueryError(FipgraphError, ValueError):
    """SQL that DuckDB could not run (DuckDB's own message is kept)."""
