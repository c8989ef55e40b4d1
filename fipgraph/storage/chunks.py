"""Whole-row chunk files read and written directly with numcodecs' Blosc, bypassing zarr's chunk pipeline.

zarr-python 3 routes every chunk through an asyncio loop, buffer wrappers and thread hops; measured on
SmolLM2-135M rows (538 MB) that cost ~2 s per row on top of a 1 s compress when writing and ~1.5 s on top
of a 0.75 s decompress when reading, most of it holding the GIL the training thread needs. For arrays
whose chunks hold exactly one row (every row above SMALL_CHUNK_BYTES) a chunk file is simply the Blosc
frame of the row's little-endian words, so this module writes and reads those files itself: the same
bytes at the same paths (``<array>/c/<row>/<k>``), so zarr reads what is written here and vice versa
(tested both ways). Arrays with any other codec chain or chunk grid keep going through zarr.

A chunk is written to a temporary file and renamed over its final name, as zarr's LocalStore does, so a
crash leaves either the old chunk or the new one. A read checks the Blosc header against the file's
length and the expected row length before decompressing: a truncated or foreign file raises instead
of being decoded from bytes past its end.
"""

from __future__ import annotations

import struct
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numcodecs import Blosc

from fipgraph.storage.remote import atomic_write

BLOSC_HEADER = struct.Struct("<4xIII")  # Blosc 1 frame header: version, versionlz, flags, typesize, then
# uncompressed bytes, block size, compressed bytes (the whole frame), little-endian uint32 each
_SHUFFLE = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
PARALLEL_CHUNKS = 2  # chunks of one large row compressed/decompressed at once: Blosc releases the GIL,
# and this machine has two cores
_pool: ThreadPoolExecutor | None = None


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(PARALLEL_CHUNKS, thread_name_prefix="fipgraph-chunks")
    return _pool


def read_frame(path: Path, decoded_bytes: int) -> bytes:
    """A chunk file's Blosc frame, checked against its header before decompressing: a truncated or foreign
    file raises (ValueError) instead of being decoded from bytes past its end."""
    frame = path.read_bytes()  # a local file or an object (RemotePath)
    nbytes, _, cbytes = BLOSC_HEADER.unpack_from(frame) if len(frame) >= BLOSC_HEADER.size else (0, 0, -1)
    if cbytes != len(frame) or nbytes != decoded_bytes:
        raise ValueError(f"chunk file {path} is {len(frame)} bytes holding {nbytes} decoded bytes; its Blosc "
                         f"header says {cbytes} bytes and this chunk needs {decoded_bytes} (truncated or not a chunk)")
    return frame


def submit_chunks(fn, items) -> list[Future]:
    """``fn(item)`` for each item on the chunk threads (both cores; numpy and Blosc release the GIL), started
    now, results in order. ``fn`` must not itself use the chunk threads (RowChunks.write of one chunk does not)."""
    pool = _threads()
    return [pool.submit(fn, item) for item in items]


class RowChunks:
    """Direct access to the chunk files of one zarr v3 array of one-row chunks, Blosc-compressed."""

    def __init__(self, folder: Path, chunk_words: int, n_words: int, dtype, blosc: dict) -> None:
        """``blosc``: the array's blosc codec configuration as zarr.json spells it (cname, clevel,
        shuffle, blocksize, typesize)."""
        self.folder = folder  # the array's folder (holding zarr.json)
        self.chunk_words, self.n_words, self.dtype = int(chunk_words), int(n_words), np.dtype(dtype)
        self.codec = Blosc(cname=blosc["cname"], clevel=blosc["clevel"], shuffle=_SHUFFLE[blosc["shuffle"]],
                           blocksize=blosc.get("blocksize", 0), typesize=blosc.get("typesize") or self.dtype.itemsize)

    def path(self, row: int, k: int) -> Path:
        return self.folder / "c" / str(row) / str(k)

    def write(self, row: int, first_word: int, words: np.ndarray) -> int:
        """Write words first_word.. of ``row`` (whole chunks); returns the compressed bytes written."""
        if first_word % self.chunk_words or (len(words) % self.chunk_words and first_word + len(words) != self.n_words):
            raise ValueError(f"write of words {first_word}..{first_word + len(words)} does not cover whole chunks "
                             f"of {self.chunk_words} words")
        words = np.ascontiguousarray(words, dtype=self.dtype)
        first = first_word // self.chunk_words
        parts = [(first + i, words[lo:lo + self.chunk_words]) for i, lo in enumerate(range(0, len(words), self.chunk_words))]
        (self.folder / "c" / str(row)).mkdir(parents=True, exist_ok=True)
        if len(parts) == 1:
            return self._write_one(row, *parts[0])
        return sum(_threads().map(lambda part: self._write_one(row, *part), parts))

    def _write_one(self, row: int, k: int, words: np.ndarray) -> int:
        return atomic_write(self.path(row, k), self.codec.encode(words))

    def read(self, row: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Words lo..hi of ``row``, reading only the chunks they overlap (a new, writeable array)."""
        hi = self.n_words if hi is None else hi
        if hi <= lo:
            return np.empty(0, dtype=self.dtype)
        first, last = lo // self.chunk_words, (hi - 1) // self.chunk_words
        out = np.empty((last - first + 1) * self.chunk_words, dtype=self.dtype)
        jobs = [(k, out[(k - first) * self.chunk_words:(k - first + 1) * self.chunk_words]) for k in range(first, last + 1)]
        if len(jobs) == 1:
            self._read_one(row, *jobs[0])
        else:
            list(_threads().map(lambda job: self._read_one(row, *job), jobs))
        start = lo - first * self.chunk_words
        return out[start:start + hi - lo]

    def _read_one(self, row: int, k: int, out: np.ndarray) -> None:
        path = self.path(row, k)
        self.codec.decode(read_frame(path, out.nbytes), out=out)
