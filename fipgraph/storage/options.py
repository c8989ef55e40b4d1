"""How a store writes, keeps and buffers its rows: one dataclass, checked once.

``Store`` (and ``open_store``'s keywords) and a build config's ``[store]`` table both go through
``StoreOptions``, so a bad value fails with the same message wherever it was given, and every
default lives here. Light on purpose (no torch): a config check imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from fipgraph.errors import ConfigError, need

ENCODINGS = {"lossless": "lossless", "int8": "q8", "bounded": "bnd"}  # user word -> row encoding family
DEFAULT_CACHE_BYTES = 1 << 30  # decoded rows kept for reuse: 1 GiB (two SmolLM2-135M nodes)
DEFAULT_RECENT_BYTES = 512 << 20  # decoded rows of recent nodes the writer keeps as parents (beyond the two
# a chain needs): a branch off a recent node then needs no read from disk
BUILD_TABLE = ("encoding", "tolerance", "keyframe_every")  # what a build's [store] table may set: how rows are
# written (durable is the build's --durable; buffers and timeouts belong to the machine, not the config)


@dataclass(frozen=True)
class StoreOptions:
    encoding: str = "lossless"  # lossless | int8 (lossy deltas, ~10x) | bounded (lossy within `tolerance`)
    tolerance: float = 0.1  # encoding="bounded": max error per weight / its tensor's RMS step
    keyframe_every: int = 32  # a full row every this many nodes of a chain: a read replays at most this many
    durable: bool = False  # fsync chunk files and the catalog before a commit is reported (survives power loss)
    commit_interval: float = 0.25  # s between commits (the writer spaces them up to 2 s when one is slow)
    max_pending_bytes: int = 1 << 30  # snapshots queued before append blocks; also idle buffers kept for reuse
    cache_bytes: int = DEFAULT_CACHE_BYTES  # decoded rows kept for reads
    recent_bytes: int = DEFAULT_RECENT_BYTES  # recently written rows the writer keeps as parents
    lock_timeout: float = 60.0  # s to wait for the catalog while another process holds it
    writer_threads: int | None = None  # threads encoding and writing large rows; None: the cores torch leaves free
    compressor: str = "zstd"  # "lz4": rows with chunk files of their own written fast, `fipgraph compact` later
    lease_ttl: float | None = None  # a store on object storage: s a killed writer keeps others out (None: 30 s
    # or FIPGRAPH_LEASE_TTL)

    def __post_init__(self) -> None:
        need(self.encoding in ENCODINGS, f"encoding={self.encoding!r}; choose one of {sorted(ENCODINGS)}")
        need(_positive(self.tolerance), f"tolerance={self.tolerance!r} must be a positive number "
                                        "(max error per weight / its tensor's RMS step, for encoding='bounded'), e.g. 0.1")
        need(_whole(self.keyframe_every, 1), f"keyframe_every={self.keyframe_every!r} must be an "
                                             "integer >= 1, e.g. 32")
        need(isinstance(self.durable, bool), f"durable={self.durable!r} must be true or false")
        for name in ("max_pending_bytes", "cache_bytes", "recent_bytes"):
            need(_whole(getattr(self, name), 0), f"{name}={getattr(self, name)!r} must be a byte "
                                                 f"count >= 0, e.g. {getattr(StoreOptions, name)}")
        need(self.writer_threads is None or _whole(self.writer_threads, 1),
             f"writer_threads={self.writer_threads!r} must be an integer >= 1 (or None: the cores torch leaves free)")
        need(self.compressor in ("zstd", "lz4"), f"compressor={self.compressor!r}; choose 'zstd' (compact) or 'lz4' "
                                                 "(fast; `fipgraph compact` recompresses with zstd later)")
        need(self.lease_ttl is None or _positive(self.lease_ttl),
             f"lease_ttl={self.lease_ttl!r} must be a positive number of seconds, e.g. 30")
        for name in ("commit_interval", "lock_timeout"):
            need(_positive(getattr(self, name)), f"{name}={getattr(self, name)!r} must be a positive "
                                                 f"number of seconds, e.g. {getattr(StoreOptions, name)}")

    @classmethod
    def from_build_table(cls, table: dict[str, Any]) -> "StoreOptions":
        """A build config's [store] table: only the keys of BUILD_TABLE, each checked as above."""
        bad = sorted(set(table) - set(BUILD_TABLE))
        need(not bad, f"[store] has unknown keys {bad}; allowed: {list(BUILD_TABLE)}")
        try:
            return cls(**table)
        except ConfigError as exc:  # the same check, named as the config spells it
            raise ConfigError(f"[store] {exc}") from None

    def as_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least
