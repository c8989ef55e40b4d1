"""The Zarr side of the store: one 2-D array per (architecture, stored array), one row per node.

Arrays are created with a fixed, very large row count so that appending never rewrites array
metadata (a reader never sees a half-written zarr.json); unwritten rows are simply absent chunks.
Chunks are whole rows (split into equal divisors only above MAX_CHUNK_WORDS), so no chunk is padded.
Small rows share a chunk (up to SMALL_CHUNK_BYTES), so a store of 100k tiny networks holds a few
hundred files, not 100k; writing a row rewrites its chunk atomically, leaving committed rows intact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from fipgraph.storage.catalog import fsync_path
from fipgraph.storage.chunks import RowChunks

MAX_ROWS = 2**40
MAX_CHUNK_WORDS = 2**24  # 64 MiB of float32 per chunk: big rows are split so blosc and memory stay sane
SMALL_CHUNK_BYTES = 2**18  # rows smaller than this share chunks; 256 KiB keeps the rewrite per append cheap
BLOSC_BLOCK_BYTES = 2**20  # Blosc block of one-row chunks: on Adam residuals 1 MiB blocks were 0.537x raw in
# 6.3 ms per 4 MB vs 0.562x in 8.2 ms for Blosc's automatic (small) blocks, and decompressed 1.5x faster
# (measured, one thread); shared small-row chunks keep automatic blocks


def _rows_per_chunk(row_bytes: int) -> int:
    rows = 1
    while rows * 2 * row_bytes <= SMALL_CHUNK_BYTES and rows < 4096:
        rows *= 2
    return rows


def _chunk_len(n_words: int) -> int:
    if n_words <= MAX_CHUNK_WORDS:
        return max(n_words, 1)
    for pieces in range(-(-n_words // MAX_CHUNK_WORDS), n_words):
        if n_words % pieces == 0:
            return n_words // pieces
    return MAX_CHUNK_WORDS  # unreachable: pieces == n_words always divides


class WeightArrays:
    """Opens, creates and reads/writes rows of the per-architecture arrays."""

    def __init__(self, path: Path, *, read_only: bool, clevel: int = 1, durable: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.durable = durable  # fsync every chunk file written, and the folders naming them
        self.clevel = clevel
        self._store = zarr.storage.LocalStore(path, read_only=read_only)
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._direct: dict[tuple[str, str], RowChunks | None] = {}

    def _array(self, arch_id: str, name: str, dtype=None, n_words: int | None = None) -> zarr.Array:
        key = (arch_id, name)
        if key not in self._arrays:
            if (self.path / arch_id / name / "zarr.json").exists() or n_words is None:
                self._arrays[key] = zarr.open_array(self._store, path=f"{arch_id}/{name}", mode="r" if self.read_only else "r+")
            else:
                rows_per_chunk = _rows_per_chunk(n_words * np.dtype(dtype).itemsize)
                self._arrays[key] = zarr.create_array(
                    self._store,
                    name=f"{arch_id}/{name}",
                    shape=(MAX_ROWS, n_words),
                    chunks=(rows_per_chunk, _chunk_len(n_words)),
                    dtype=dtype,
                    fill_value=0,
                    # byte shuffle groups the (mostly zero) high bytes of the deltas together for zstd;
                    # level 1: levels 3 and 9 were 1-4 % smaller but 1.6x and 30x slower here
                    compressors=BloscCodec(cname="zstd", clevel=self.clevel, shuffle="shuffle",
                                           blocksize=BLOSC_BLOCK_BYTES if rows_per_chunk == 1 else 0),
                    config={"write_empty_chunks": True},  # an all-zero delta is still a committed row
                )
        return self._arrays[key]

    def array(self, arch_id: str, name: str) -> zarr.Array:
        """An existing array, opened once (slices of it read only the chunks they overlap)."""
        return self._array(arch_id, name)

    def direct(self, arch_id: str, name: str) -> RowChunks | None:
        """The array's chunk files for direct access, or None when its chunks need zarr (shared rows)."""
        key = (arch_id, name)
        if key not in self._direct:
            array = self._array(arch_id, name)
            self._direct[key] = RowChunks.of_array(self.path / arch_id / name, array) if RowChunks.supports(array) else None
        return self._direct[key]

    def write_rows(self, arch_id: str, name: str, first_row: int, data: np.ndarray) -> int | None:
        """Write consecutive rows (data: (n_rows, n_words)); returns the compressed bytes written when
        the chunks are the rows' own (None when rows share chunks: then only the files' sizes tell)."""
        if not data.shape[1]:
            return 0
        array = self._array(arch_id, name, data.dtype, data.shape[1])
        direct = self.direct(arch_id, name)
        written = None
        if direct is not None:
            written = sum(direct.write(first_row + i, 0, row) for i, row in enumerate(data))
        else:
            array[first_row:first_row + len(data)] = data
        if self.durable:
            self._sync_rows(arch_id, name, first_row, first_row + len(data) - 1)
        return written

    def write_slice(self, arch_id: str, name: str, row: int, first_word: int, data: np.ndarray, n_words: int) -> int | None:
        """Write words first_word.. of one row (whole chunks, so no chunk is read back and merged)."""
        array = self._array(arch_id, name, data.dtype, n_words)
        direct = self.direct(arch_id, name)
        if direct is not None:
            return direct.write(row, first_word, data)
        array[row, first_word:first_word + len(data)] = data
        return None

    def read_words(self, arch_id: str, name: str, row: int, lo: int, hi: int) -> np.ndarray:
        """Words lo..hi of one row (only the chunks overlapping them are read)."""
        direct = self.direct(arch_id, name)
        return direct.read(row, lo, hi) if direct is not None else self._array(arch_id, name)[row, lo:hi]

    def chunk_words(self, arch_id: str, name: str, n_words: int) -> int:
        """Words per chunk of the array's rows (as created; rows above MAX_CHUNK_WORDS are split evenly)."""
        if (self.path / arch_id / name / "zarr.json").exists():
            return self._array(arch_id, name).chunks[1]
        return _chunk_len(n_words)

    def sync_rows(self, arch_id: str, name: str, first_row: int, last_row: int) -> None:
        self._sync_rows(arch_id, name, first_row, last_row)

    def _sync_rows(self, arch_id: str, name: str, first_row: int, last_row: int) -> None:
        """fsync the chunk files of rows first_row..last_row and every folder on their way up, so a
        power loss after the catalog commit cannot lose them (SIGKILL alone never could)."""
        rows_per_chunk = self._array(arch_id, name).chunks[0]
        folders = set()
        for k in range(first_row // rows_per_chunk, last_row // rows_per_chunk + 1):
            for f in self.row_files(arch_id, name, k * rows_per_chunk):
                fsync_path(f)
                folders.add(f.parent)
        array_dir = self.path / arch_id / name
        for folder in sorted(folders) + [array_dir / "c", array_dir, self.path / arch_id, self.path]:
            fsync_path(folder)

    def read_row(self, arch_id: str, row: int, names: dict[str, tuple[type, int]]) -> dict[str, np.ndarray]:
        out = {}
        for name, (dtype, n) in names.items():
            direct = self.direct(arch_id, name) if n else None
            if direct is not None:
                out[name] = direct.read(row)
            else:
                out[name] = self._array(arch_id, name)[row] if n else np.empty(0, dtype=dtype)
        return out

    def row_files(self, arch_id: str, name: str, row: int) -> list[Path]:
        """The chunk files (absolute paths) that together hold ``row`` of one array."""
        arr = self._array(arch_id, name)
        rows_per_chunk, chunk_len = arr.chunks
        folder = self.path / arch_id / name / "c" / str(row // rows_per_chunk)
        return [folder / str(k) for k in range(-(-arr.shape[1] // chunk_len))] if arr.shape[1] else []

    def chunk_dir(self, arch_id: str, name: str, row: int) -> Path:
        """The folder holding the chunk(s) of ``row``, relative to the weights root."""
        rows_per_chunk = self._array(arch_id, name).chunks[0]
        return Path(arch_id) / name / "c" / str(row // rows_per_chunk)

    def is_direct(self, arch_id: str, name: str) -> bool:
        """True when the array exists and its chunk files are read and written directly (one row each)."""
        return (self.path / arch_id / name / "zarr.json").exists() and self.direct(arch_id, name) is not None

    def chunk_bytes(self, arch_id: str, names, first_row: int, last_row: int | None = None,
                    shared_only: bool = False) -> int:
        """Bytes on disk of the chunks holding rows first_row..last_row (shared with neighbours
        when rows are small); ``shared_only``: only arrays whose rows share chunks."""
        total = 0
        for n in names:
            if not (self.path / arch_id / n / "zarr.json").exists():  # not created yet
                continue
            if shared_only and self.direct(arch_id, n) is not None:
                continue
            rows_per_chunk = self._array(arch_id, n).chunks[0]
            for k in range(first_row // rows_per_chunk, (last_row if last_row is not None else first_row) // rows_per_chunk + 1):
                total += sum(p.stat().st_size for p in (self.path / arch_id / n / "c" / str(k)).glob("*"))
        return total

    def chunk_files(self) -> list[Path]:
        """Every chunk file (and leftover temp file) on disk, for orphan detection."""
        if not self.path.exists():
            return []
        return [p for p in self.path.rglob("*") if p.is_file() and p.name != "zarr.json"]

