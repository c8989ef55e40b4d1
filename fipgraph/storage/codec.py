"""Row encodings: how one node's bits are stored relative to its lineage.

All lossless encodings work on the raw bit patterns as unsigned integers (wrapping arithmetic),
so they are exact for every dtype and invertible by construction.

- ``key``: the bits themselves (a keyframe; decoding needs no other row).
- ``diff``: bits minus the parent's bits, zig-zag coded. Consecutive networks share sign, exponent
  and high mantissa bits, so the difference is a small integer: its high bytes are zero.
- ``pred``: bits minus the linear prediction 2·parent − grandparent, zig-zag coded. Optimiser steps
  are correlated (momentum), so the residual is smaller still (measured on an Adam path: 0.55× raw
  after blosc/zstd vs 0.63× for XOR-to-parent).
- ``q8`` (opt-in, lossy): float groups as int8 block-quantised deltas to the parent's *decoded*
  weights (closed loop, so error does not accumulate along a chain); the node records its max error.
- ``bnd``/``bndp`` (opt-in, lossy, error-bounded): see bounded.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from typing import TYPE_CHECKING

import numpy as np

from fipgraph.errors import FormatVersionError
from fipgraph.storage import bounded
from fipgraph.storage.layout import Group, Layout

if TYPE_CHECKING:  # torch is imported only by the int8 encoding: lossless reads never need it
    import torch

Q8_BLOCK = 4096  # elements sharing one scale. Measured on an Adam path: blocks of 256 gave 0.208x raw,
# 4096 gave 0.168x, with the same max error (set by the block holding the largest step)
Rows = Mapping[str, np.ndarray]
ENCODINGS = ("key", "diff", "pred", "q8", *bounded.BOUNDED)
LOSSLESS = ("key", "diff", "pred")
DECODE_BLOCK = 1 << 20  # words decoded at a time


def uses_grandparent(encoding: str) -> bool:
    return encoding in ("pred", "bndp")


@dataclass
class Encoded:
    arrays: dict[str, np.ndarray]  # zarr array name within the arch -> row to store
    decoded: dict[str, np.ndarray]  # the bits a reader will reconstruct (== input unless lossy)
    max_abs_error: float
    max_error_ratio: float | None = None  # bounded: max error / its tensor's bound (<= 1)


def lossless_encoding(chain_depth: int) -> str:
    return "key" if chain_depth == 0 else "diff" if chain_depth == 1 else "pred"


def row_encoding(family: str, depth: int, two_rows_fit: bool) -> str:
    """The row encoding of a node ``depth`` rows after its chain's keyframe, in a store of encoding ``family``
    ("lossless", "q8" or "bnd"). Predicting from parent and grandparent ("pred", "bndp": 10 % fewer bytes than
    from the parent alone) needs both rows in the writer's memory: only when ``two_rows_fit`` (recent_bytes)."""
    if depth and family == "q8":
        return "q8"
    if depth and family == "bnd":
        return "bndp" if depth > 1 and two_rows_fit else "bnd"
    encoding = lossless_encoding(depth)
    return "diff" if encoding == "pred" and not two_rows_fit else encoding


def _residual(words: np.ndarray, parent: np.ndarray, grandparent: np.ndarray | None,
              out: np.ndarray | None = None) -> np.ndarray:
    """Zig-zag coded ``words - prediction`` (sign folded into the low bit, so small residuals of
    either sign have zero high bytes), built in one new array a block at a time: whole-row temporaries
    cost ~1.7 s and 1 GB per SmolLM2 node, blocks of 1M words stay in cache."""
    r = np.empty_like(words) if out is None else out
    signed, top = np.dtype(f"i{r.dtype.itemsize}"), r.dtype.itemsize * 8 - 1
    for lo in range(0, r.size, DECODE_BLOCK):
        z = r[lo:lo + DECODE_BLOCK]
        np.subtract(words[lo:lo + DECODE_BLOCK], parent[lo:lo + DECODE_BLOCK], out=z)
        if grandparent is not None:  # words - (2 parent - grandparent), wrapping
            z -= parent[lo:lo + DECODE_BLOCK]
            z += grandparent[lo:lo + DECODE_BLOCK]
        s = z.view(signed)
        sign = s >> top
        s <<= 1
        s ^= sign
    return r


def _floats(group: Group, words: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(words).view(np.uint8)).view(group.torch_dtype)


def _quantise(group: Group, words: np.ndarray, parent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    import torch

    x, p = _floats(group, words).float(), _floats(group, parent).float()
    n = x.numel()
    pad = (-n) % Q8_BLOCK
    delta = torch.nn.functional.pad(x - p, (0, pad)).view(-1, Q8_BLOCK)
    scale = delta.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(delta / scale[:, None]).clamp(-127, 127).to(torch.int8)
    recon = _dequantise(group, parent, q.view(-1)[:n].numpy(), scale.numpy())
    error = float((_floats(group, recon).double() - x.double()).abs().max()) if n else 0.0
    return q.view(-1)[:n].numpy(), scale.numpy().astype(np.float32), recon, error


def _dequantise(group: Group, parent: np.ndarray, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    import torch

    p = _floats(group, parent).float()
    step = torch.from_numpy(np.repeat(scale.astype(np.float32), Q8_BLOCK)[: q.size])
    x = (p + torch.from_numpy(q.astype(np.float32)) * step).to(group.torch_dtype)
    return x.contiguous().view(torch.uint8).numpy().view(group.word).copy()


def _lossy(group: Group, encoding: str) -> bool:
    return encoding == "q8" and group.is_float and not group.is_complex


def encode(layout: Layout, rows: Rows, parent: Rows | None, grandparent: Rows | None, encoding: str,
           tolerance: float | None = None, out: dict[str, np.ndarray] | None = None) -> Encoded:
    """Encode one node's rows given its parent's and grandparent's decoded rows (None where unused).
    ``out``: reusable residual rows by array name (filled in and reused when their size matches)."""
    arrays, decoded, error, step_error = {}, {}, 0.0, None
    for g in layout.groups:
        words = rows[g.dtype]
        if encoding == "key":
            arrays[g.dtype], decoded[g.dtype] = words, words
        elif bounded.is_bounded(g, encoding):
            gp = grandparent[g.dtype] if encoding == "bndp" else None
            zig, quanta, recon, err, rel = bounded.quantise(g, words, parent[g.dtype], gp, tolerance)
            arrays[f"{g.dtype}.bq"], arrays[f"{g.dtype}.bstep"] = zig, quanta
            decoded[g.dtype], error, step_error = recon, max(error, err), max(step_error or 0.0, rel)
        elif _lossy(g, encoding):
            q, scale, recon, err = _quantise(g, words, parent[g.dtype])
            arrays[f"{g.dtype}.q8"], arrays[f"{g.dtype}.scale"] = q, scale
            decoded[g.dtype], error = recon, max(error, err)
        else:  # diff, pred, and the exact groups (integers, bools) of a lossy node
            gp = grandparent[g.dtype] if encoding == "pred" else None
            buf = None
            if out is not None:
                buf = out.get(g.dtype)
                if buf is None or buf.shape != words.shape or buf.dtype != words.dtype:
                    buf = out[g.dtype] = np.empty_like(words)
            arrays[g.dtype] = _residual(words, parent[g.dtype], gp, buf)
            decoded[g.dtype] = words
    return Encoded(arrays, decoded, error, step_error)


def decode_step(layout: Layout, stored: Rows, parent: Rows | None, grandparent: Rows | None, encoding: str) -> dict[str, np.ndarray]:
    """Inverse of encode for one row."""
    if encoding not in ENCODINGS:  # never guess: a wrong decoder returns plausible garbage
        raise FormatVersionError(f"row encoding {encoding!r} is unknown to this fipgraph (knows {ENCODINGS}); "
                                 "the store was written by another version")
    out = {}
    for g in layout.groups:
        if encoding == "key":
            out[g.dtype] = stored[g.dtype]
        elif _lossy(g, encoding):
            out[g.dtype] = _dequantise(g, parent[g.dtype], stored[f"{g.dtype}.q8"], stored[f"{g.dtype}.scale"])
        elif bounded.is_bounded(g, encoding):
            gp = grandparent[g.dtype] if encoding == "bndp" else None
            out[g.dtype] = bounded.dequantise(g, stored[f"{g.dtype}.bq"], stored[f"{g.dtype}.bstep"], parent[g.dtype], gp)
        else:
            # exact groups of lossy rows are plain diffs; "pred" alone predicts from the grandparent too
            gp = grandparent[g.dtype] if encoding == "pred" else None
            out[g.dtype] = decode_words(stored[g.dtype], parent[g.dtype], gp, "pred" if gp is not None else "diff")
    return out


def encode_words(words: np.ndarray, parent: np.ndarray | None, grandparent: np.ndarray | None,
                 encoding: str) -> np.ndarray:
    """A lossless encoding of any slice of a row (the inverse of decode_words)."""
    if encoding == "key":
        return words
    return _residual(words, parent, grandparent if encoding == "pred" else None)


def decode_words(stored: np.ndarray, parent: np.ndarray | None, grandparent: np.ndarray | None,
                 encoding: str) -> np.ndarray:
    """Inverse of a lossless encoding on any slice of a row (key/diff/pred are elementwise, so a
    chunk of a row decodes from the same chunk of its parent and grandparent)."""
    if encoding == "key":
        return stored
    # in place over the freshly read words, a block at a time: the whole-row expression made five
    # row-sized temporaries (2.7 GB for one SmolLM2 node), blocks of 1M words make five of 8 MB
    out = stored if stored.flags.writeable and stored.flags.c_contiguous else stored.copy()
    one = out.dtype.type(1)
    for lo in range(0, out.size, DECODE_BLOCK):
        z = out[lo:lo + DECODE_BLOCK]
        sign = np.bitwise_and(z, one)
        np.negative(sign, out=sign)  # all ones where the low bit was set (wrapping)
        z >>= one
        z ^= sign
        p = parent[lo:lo + DECODE_BLOCK]
        z += p
        if encoding == "pred" and grandparent is not None:  # + parent - grandparent, wrapping
            z += p
            z -= grandparent[lo:lo + DECODE_BLOCK]
    return out


def array_names(layout: Layout, encoding: str) -> dict[str, tuple[type, int]]:
    """The zarr arrays (name -> (dtype, row length)) that a node of this encoding writes."""
    names = {}
    for g in layout.groups:
        if _lossy(g, encoding):
            names[f"{g.dtype}.q8"] = (np.int8, g.n_items)
            names[f"{g.dtype}.scale"] = (np.float32, -(-g.n_items // Q8_BLOCK))
        elif bounded.is_bounded(g, encoding):
            names[f"{g.dtype}.bq"] = (np.uint64, g.n_items)
            names[f"{g.dtype}.bstep"] = (np.float64, len(g.numels))
        else:
            names[g.dtype] = (g.word, g.n_words)
    return names
