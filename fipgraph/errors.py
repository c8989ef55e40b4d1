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


class CorruptNodeError(FipgraphError, OSError):
    """A node's stored chunks are damaged (missing, truncated or changed): its weights cannot be trusted.

    ``node_id`` is the node that was asked for; ``damaged_node`` the node whose own chunks failed
    verification (the same node, or an ancestor it is delta-coded against); ``files`` the chunk files.
    """

    def __init__(self, message: str, *, node_id: int, damaged_node: int, arrays: list[str], files: list[str],
                 reason: str = "") -> None:
        super().__init__(message)
        self.node_id, self.damaged_node, self.arrays, self.files = node_id, damaged_node, arrays, files
        self.reason = reason  # what failed: a missing file, a decompression error, a checksum mismatch

    def __str__(self) -> str:  # OSError formats a one-argument message as is; keep it explicit
        return str(self.args[0])


class WriterError(FipgraphError, RuntimeError):
    """The store's background writer failed; nodes queued after the failure were not saved."""


def need(ok: bool, msg: str) -> None:
    """Raise ``ConfigError(msg)`` unless ``ok``: the one guard config checks use (msg names key, value, fix)."""
    if not ok:
        raise ConfigError(msg)


class RemoteStoreError(FipgraphError, OSError):
    """A store URL cannot be used: no filesystem for its scheme, a missing bucket, refused credentials, an
    endpoint that does not answer. The message names the URL and the fix, never a credential."""
