"""The Zarr side of the store: one 2-D array per (architecture, stored array), one row per node.

Arrays are created with a fixed, very large row count so that appending never rewrites array
metadata (a reader never sees a half-written zarr.json); unwritten rows are simply absent chunks.
Chunks are whole rows (split into equal divisors only above MAX_CHUNK_WORDS), so no chunk is padded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

MAX_ROWS = 2**40
MAX_CHUNK_WORDS = 2**24  # 64 MiB of float32 per chunk: big rows are split so blosc and memory stay sane


def _chunk_len(n_words: int) -> int:
    if n_words <= MAX_CHUNK_WORDS:
        return max(n_words, 1)
    for pieces in range(-(-n_words // MAX_CHUNK_WORDS), n_words):
        if n_words % pieces == 0:
            return n_words // pieces
    return MAX_CHUNK_WORDS  # unreachable: pieces == n_words always divides


class WeightArrays:
    """Opens, creates and reads/writes rows of the per-architecture arrays."""

    def __init__(self, path: Path, *, read_only: bool, clevel: int = 3) -> None:
        self.path = path
        self.read_only = read_only
        self.clevel = clevel
        self._store = zarr.storage.LocalStore(path, read_only=read_only)
        self._arrays: dict[tuple[str, str], zarr.Array] = {}

    def _array(self, arch_id: str, name: str, dtype=None, n_words: int | None = None) -> zarr.Array:
        key = (arch_id, name)
        if key not in self._arrays:
            if (self.path / arch_id / name / "zarr.json").exists() or n_words is None:
                self._arrays[key] = zarr.open_array(self._store, path=f"{arch_id}/{name}", mode="r" if self.read_only else "r+")
            else:
                self._arrays[key] = zarr.create_array(
                    self._store,
                    name=f"{arch_id}/{name}",
                    shape=(MAX_ROWS, n_words),
                    chunks=(1, _chunk_len(n_words)),
                    dtype=dtype,
                    fill_value=0,
                    # byte shuffle groups the (mostly zero) high bytes of XOR deltas together for zstd
                    compressors=BloscCodec(cname="zstd", clevel=self.clevel, shuffle="shuffle"),
                    config={"write_empty_chunks": True},  # an all-zero delta is still a committed row
                )
        return self._arrays[key]

    def write_row(self, arch_id: str, row: int, arrays: dict[str, np.ndarray]) -> None:
        for name, data in arrays.items():
            if data.size:
                self._array(arch_id, name, data.dtype, data.size)[row] = data

    def read_row(self, arch_id: str, row: int, names: dict[str, tuple[type, int]]) -> dict[str, np.ndarray]:
        out = {}
        for name, (dtype, n) in names.items():
            out[name] = self._array(arch_id, name)[row] if n else np.empty(0, dtype=dtype)
        return out

    def row_nbytes(self, arch_id: str, row: int, names) -> int:
        """Compressed bytes on disk of one node's row (chunk files c/<row>/*)."""
        return sum(p.stat().st_size for name in names for p in (self.path / arch_id / name / "c" / str(row)).glob("*"))

    def chunk_files(self) -> list[Path]:
        """Every chunk file (and leftover temp file) on disk, for orphan detection."""
        if not self.path.exists():
            return []
        return [p for p in self.path.rglob("*") if p.is_file() and p.name != "zarr.json"]

    def nbytes_stored(self) -> int:
        return sum(p.stat().st_size for p in self.chunk_files())
