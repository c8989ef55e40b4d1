"""The Zarr side of the store: one 2-D array per (architecture, stored array), one row per node.

Arrays are created with a fixed, very large row count so that appending never rewrites array
metadata (a reader never sees a half-written zarr.json); unwritten rows are simply absent chunks.
Chunks are whole rows (split into equal divisors only above MAX_CHUNK_WORDS), so no chunk is padded.
Small rows share a chunk (up to SMALL_CHUNK_BYTES), so a store of 100k tiny networks holds a few
hundred files, not 100k; writing a row rewrites its chunk atomically, leaving committed rows intact.

Rows are read straight from their chunk files (numcodecs' blosc, the codec zarr itself calls) when an
array's zarr.json says plain little-endian bytes + blosc, as fipgraph writes them: zarr's asynchronous
machinery costs ~1.3 ms per read and ~0.5 s to import, more than decoding a small node. Any other
array (written by another tool) is read through zarr. Rows with chunks of their own (every row above
SMALL_CHUNK_BYTES) are also written that way (storage/chunks.py); rows sharing a chunk are written by zarr.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fipgraph.storage.catalog import fsync_path
from fipgraph.storage.chunks import RowChunks, read_frame
from fipgraph.storage.remote import RemotePath, _fs_options

if TYPE_CHECKING:  # zarr is imported when an array is created or read through it
    import zarr

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


@dataclass(frozen=True)
class ArrayMeta:
    """What a reader needs from an array's zarr.json."""

    n_words: int
    rows_per_chunk: int
    chunk_len: int
    dtype: np.dtype
    direct: bool  # chunks are little-endian bytes + blosc: read them without zarr
    blosc: dict | None = field(default=None, compare=False)  # the blosc codec's configuration, when direct

    @property
    def one_row(self) -> bool:
        """Every chunk is one row, or an even part of one: its files are read and written directly."""
        return self.direct and self.rows_per_chunk == 1 and self.n_words % self.chunk_len == 0

    @classmethod
    def parse(cls, meta: dict) -> "ArrayMeta":
        rows_per_chunk, chunk_len = meta["chunk_grid"]["configuration"]["chunk_shape"]
        codecs = [c["name"] for c in meta["codecs"]]
        little = meta["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
        direct = (codecs == ["bytes", "blosc"] and little and meta["chunk_key_encoding"]["name"] == "default"
                  and meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/") == "/")
        blosc = meta["codecs"][1].get("configuration", {}) if direct else None
        return cls(meta["shape"][1], rows_per_chunk, chunk_len, np.dtype(meta["data_type"]), direct, blosc)


class WeightArrays:
    """Opens, creates and reads/writes rows of the per-architecture arrays."""

    def __init__(self, path: Path | RemotePath, *, read_only: bool, clevel: int = 1, durable: bool = False,
                 compressor: str = "zstd") -> None:
        self.path = path  # a folder, or a prefix on an object store (RemotePath)
        self.read_only = read_only
        # fsync every chunk file written, and the folders naming them (an object store's PUT is durable already)
        self.durable = durable and not isinstance(path, RemotePath)
        self._known: set[tuple[str, str]] = set()  # arrays seen to exist (on a bucket each look is a request)
        self.clevel = clevel
        # Blosc's compressor for rows with chunk files of their own: "lz4" writes ~2.5x faster, ~14 % larger,
        # until `fipgraph compact` recompresses them with the arrays' own zstd (frames name their compressor,
        # so readers, zarr included, decode either). zarr.json always says zstd: the codec at rest.
        self.compressor = compressor
        self._store = None
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._metas: dict[tuple[str, str], ArrayMeta] = {}
        self._direct: dict[tuple[str, str], RowChunks | None] = {}

    def _array(self, arch_id: str, name: str, dtype=None, n_words: int | None = None) -> zarr.Array:
        key = (arch_id, name)
        if key not in self._arrays:
            import zarr
            import zarr.errors

            if self._store is None:
                self._store = self._zarr_store()
            if self.has_array(arch_id, name) or n_words is None:
                self._arrays[key] = zarr.open_array(self._store, path=f"{arch_id}/{name}", mode="r" if self.read_only else "r+")
            else:
                try:
                    self._arrays[key] = self._create(arch_id, name, dtype, n_words)
                except zarr.errors.ContainsArrayError:  # another writer (a Ray worker on shared storage) was first
                    self._arrays[key] = zarr.open_array(self._store, path=f"{arch_id}/{name}", mode="r+")
        self._known.add(key)
        return self._arrays[key]

    def _create(self, arch_id: str, name: str, dtype, n_words: int) -> zarr.Array:
        """A new array of one row per node (rows of n_words words), chunked and compressed as fipgraph reads it."""
        import zarr
        from zarr.codecs import BloscCodec

        rows_per_chunk = _rows_per_chunk(n_words * np.dtype(dtype).itemsize)
        return zarr.create_array(
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

    def _zarr_store(self):
        """Zarr's own store for this location: LocalStore, or FsspecStore on an object store."""
        import zarr

        if isinstance(self.path, RemotePath):
            options = {**_fs_options(self.path.protocol, self.path.options), "asynchronous": True}
            return zarr.storage.FsspecStore.from_url(str(self.path), storage_options=options, read_only=self.read_only)
        return zarr.storage.LocalStore(self.path, read_only=self.read_only)

    def close(self) -> None:
        """Close zarr's connection to an object store (its aiohttp session warns at exit when left open)."""
        client = getattr(getattr(self._store, "fs", None), "_s3", None)
        if client is not None:
            from zarr.core.sync import sync

            sync(client.__aexit__(None, None, None))
            self._store.fs._s3 = None
        self._store, self._arrays = None, {}

    def has_array(self, arch_id: str, name: str) -> bool:
        """True once the array's zarr.json exists (remembered: arrays are never removed)."""
        if (arch_id, name) not in self._known and (self.path / arch_id / name / "zarr.json").exists():
            self._known.add((arch_id, name))
        return (arch_id, name) in self._known

    def meta(self, arch_id: str, name: str) -> ArrayMeta:
        """Shape, chunking and codecs of an existing array (its zarr.json, read once)."""
        key = (arch_id, name)
        if key not in self._metas:
            self._metas[key] = ArrayMeta.parse(json.loads((self.path / arch_id / name / "zarr.json").read_text()))
        return self._metas[key]

    def array(self, arch_id: str, name: str) -> zarr.Array:
        """An existing array, opened once (slices of it read only the chunks they overlap)."""
        return self._array(arch_id, name)

    def direct(self, arch_id: str, name: str) -> RowChunks | None:
        """An existing array's one-row chunk files for direct reads and writes, or None when its rows share
        chunks (written through zarr) or its codecs are not fipgraph's."""
        key = (arch_id, name)
        if key not in self._direct:
            m = self.meta(arch_id, name)
            blosc = {**m.blosc, "cname": self.compressor} if m.one_row and self.compressor != "zstd" else m.blosc
            self._direct[key] = RowChunks(self.path / arch_id / name, m.chunk_len, m.n_words, m.dtype, blosc) if m.one_row else None
        return self._direct[key]

    def row_chunks(self, arch_id: str, name: str, dtype, n_words: int) -> RowChunks | None:
        """The array's one-row chunk files for direct writes, the array created first if it is new (so
        threads writing its chunks never race to create it); None when its rows share chunks."""
        self._array(arch_id, name, dtype, n_words)
        return self.direct(arch_id, name)

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
        if self.has_array(arch_id, name):
            return self.meta(arch_id, name).chunk_len
        return _chunk_len(n_words)

    def sync_rows(self, arch_id: str, name: str, first_row: int, last_row: int) -> None:
        self._sync_rows(arch_id, name, first_row, last_row)

    def _sync_rows(self, arch_id: str, name: str, first_row: int, last_row: int) -> None:
        """fsync the chunk files of rows first_row..last_row and every folder on their way up, so a
        power loss after the catalog commit cannot lose them (SIGKILL alone never could)."""
        rows_per_chunk = self.meta(arch_id, name).rows_per_chunk
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
            if not n:
                out[name] = np.empty(0, dtype=dtype)
            elif (direct := self.direct(arch_id, name)) is not None:
                out[name] = direct.read(row)
            elif self.meta(arch_id, name).direct:
                out[name] = self._read_direct(arch_id, name, row)
            else:
                out[name] = self._array(arch_id, name)[row]
        return out

    def _read_direct(self, arch_id: str, name: str, row: int) -> np.ndarray:
        """One row of a chunk shared by several rows, decompressed from its chunk files (a missing file
        raises: never the fill value; a truncated one raises before decompressing)."""
        from numcodecs import blosc

        m = self.meta(arch_id, name)
        out = np.empty(m.n_words, dtype=m.dtype)
        within = row % m.rows_per_chunk
        chunk_bytes = m.rows_per_chunk * m.chunk_len * m.dtype.itemsize
        for k, f in enumerate(self.row_files(arch_id, name, row)):
            chunk = np.frombuffer(blosc.decompress(read_frame(f, chunk_bytes)), dtype=m.dtype)
            out[k * m.chunk_len:(k + 1) * m.chunk_len] = chunk.reshape(m.rows_per_chunk, m.chunk_len)[within]
        return out

    def row_files(self, arch_id: str, name: str, row: int) -> list[Path | RemotePath]:
        """The chunk files (absolute paths) that together hold ``row`` of one array."""
        m = self.meta(arch_id, name)
        folder = self.path / arch_id / name / "c" / str(row // m.rows_per_chunk)
        return [folder / str(k) for k in range(-(-m.n_words // m.chunk_len))] if m.n_words else []

    def chunk_dir(self, arch_id: str, name: str, row: int) -> Path:
        """The folder holding the chunk(s) of ``row``, relative to the weights root."""
        return Path(arch_id) / name / "c" / str(row // self.meta(arch_id, name).rows_per_chunk)

    def is_direct(self, arch_id: str, name: str) -> bool:
        """True when the array exists and its chunk files are read and written directly (one row each)."""
        return self.has_array(arch_id, name) and self.direct(arch_id, name) is not None

    def chunk_bytes(self, arch_id: str, names, first_row: int, last_row: int | None = None,
                    shared_only: bool = False) -> int:
        """Bytes on disk of the chunks holding rows first_row..last_row (shared with neighbours
        when rows are small); ``shared_only``: only arrays whose rows share chunks."""
        total = 0
        for n in names:
            if not self.has_array(arch_id, n):  # not created yet
                continue
            if shared_only and self.direct(arch_id, n) is not None:
                continue
            rows_per_chunk = self.meta(arch_id, n).rows_per_chunk
            for k in range(first_row // rows_per_chunk, (last_row if last_row is not None else first_row) // rows_per_chunk + 1):
                total += sum(p.stat().st_size for p in (self.path / arch_id / n / "c" / str(k)).glob("*"))
        return total

    def chunk_files(self) -> list[Path | RemotePath]:
        """Every chunk file (and leftover temp file) on disk, for orphan detection."""
        if not self.path.exists():
            return []
        return [p for p in self.path.rglob("*") if p.is_file() and p.name != "zarr.json"]

