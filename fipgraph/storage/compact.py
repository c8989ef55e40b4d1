"""``fipgraph compact``: recompress the chunks written with the fast hot compressor (``compressor="lz4"``) with
the arrays' own zstd, as RocksDB keeps LZ4 in its hot levels and ZSTD at the bottom.

A chunk file is a Blosc frame that names its compressor (header byte 2, bits 5-7), so chunks of both kinds
read the same way meanwhile (zarr too) and compaction can go file by file: each is replaced atomically (a
rename on a disk, one PUT on a bucket), so a crash mid-way leaves a store that reads bit-exact and a rerun
finishes the job. The decoded bits do not change, so checksums stay valid; ``storage.stored_bytes`` is
updated in one commit at the end. The store is opened for writing: no build writes meanwhile.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from fipgraph.storage.catalog import CatalogOp
from fipgraph.storage.chunks import RowChunks
from fipgraph.storage.remote import atomic_write

ZSTD = 4  # Blosc's compressor code for zstd (blosclz 0, lz4 1, snappy 2, zlib 3)


@dataclass
class CompactReport:
    files: int = 0  # chunk files recompressed
    bytes_before: int = 0
    bytes_after: int = 0


def compressor_code(frame: bytes) -> int:
    return (frame[2] >> 5) & 0x7 if len(frame) > 2 else ZSTD


def _arrays(weights) -> list[tuple[str, str]]:
    out = []
    for arch in weights.path.iterdir():
        if arch.name == "zarr.json" or arch.is_file():
            continue
        out += [(arch.name, a.name) for a in arch.iterdir() if a.name != "zarr.json" and not a.is_file()
                and weights.has_array(arch.name, a.name)]
    return sorted(out)


def compact_store(path, *, storage_options: dict | None = None) -> CompactReport:
    """Recompress every chunk that is not zstd yet (only rows with chunk files of their own can be lz4)."""
    from fipgraph.storage.store import open_store
    from fipgraph.storage.writer import OpJob

    report, grew = CompactReport(), defaultdict(int)
    with open_store(path, mode="a", storage_options=storage_options) as store:
        weights = store.weights
        for arch_id, name in _arrays(weights):
            m = weights.meta(arch_id, name)
            if not m.one_row:  # rows sharing chunks are written by zarr, with the array's zstd
                continue
            codec = RowChunks(weights.path / arch_id / name, m.chunk_len, m.n_words, m.dtype, m.blosc).codec
            for f in list((weights.path / arch_id / name / "c").rglob("*")):
                if not f.name.isdigit() or not f.is_file():  # a row folder, or a leftover temp file (check --repair)
                    continue
                frame = f.read_bytes()
                if compressor_code(frame) == ZSTD:
                    continue
                new = codec.encode(np.frombuffer(codec.decode(frame), dtype=m.dtype))  # decode reads any compressor
                atomic_write(f, new)
                report.files += 1
                report.bytes_before, report.bytes_after = report.bytes_before + len(frame), report.bytes_after + len(new)
                grew[(arch_id, int(f.parent.name))] += len(new) - len(frame)
        if grew:
            rows = [(delta, arch_id, row) for (arch_id, row), delta in sorted(grew.items())]
            store._writable().put(OpJob(CatalogOp("add_stored_bytes", (rows,))))
            store.flush()
    return report
