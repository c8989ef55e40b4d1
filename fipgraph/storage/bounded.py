"""Error-bounded lossy rows (``encoding="bounded"``): every weight within ``tolerance`` × its tensor's
RMS step of the true value, the step being measured from the previous node as a reader sees it
(its reconstruction). A tensor that stops moving thus gets ever tighter bounds, down to the floor.

Per tensor, the step is measured against the *reconstructed* parent (what a reader will have), the
residual to the prediction (the parent, or 2·parent − grandparent from depth 2 on: optimiser
momentum makes that closer) is divided by a uniform quantum q and rounded to an integer, and the
reader adds the integers times q back. Quantising against reconstructions (closed loop) keeps the
error of every node within its own bound: errors never add up along a chain.

Rounding gives |error| ≤ q/2 in exact arithmetic; casting the reconstruction back to the tensor's
dtype adds up to half an ulp, so q is shrunk by that much. A tensor's bound is never tighter than
a few ulps of its largest weight (below that the dtype itself cannot hold the value any closer).
The integers are zig-zag coded into uint64 words: after the byte shuffle their high bytes are zero
runs that zstd stores almost for free.

Exact zeros stay exact: a pruned weight must read back as 0, or a sparse node loses its mask (a
walk that starts from it finds no zeros to keep). A weight that is 0 where the prediction is not
is stored as the integer ZERO, which no quantised step can reach (|integer| < 2^54 for float64);
where the prediction is 0 too, the integer 0 already gives 0 exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fipgraph.storage.layout import Group

if TYPE_CHECKING:  # imported on first use, so the lossless read path (and `fipgraph check`) never loads torch
    import torch

BOUNDED = ("bnd", "bndp")  # against the parent; against 2·parent − grandparent
ZERO = 1 << 62  # the integer meaning "exactly 0" (zig-zag 2^63: one set bit, in the top byte plane)


def is_bounded(group: Group, encoding: str) -> bool:
    return encoding in BOUNDED and group.is_float and not group.torch_dtype.is_complex


def _as64(group: Group, words: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(words).view(np.uint8)).view(group.torch_dtype).double()


def _prediction64(group: Group, parent: np.ndarray, grandparent: np.ndarray | None) -> torch.Tensor:
    p = _as64(group, parent)
    return p if grandparent is None else 2 * p - _as64(group, grandparent)


def _bits(group: Group, x64: torch.Tensor) -> np.ndarray:
    import torch

    return x64.to(group.torch_dtype).contiguous().view(torch.uint8).numpy().view(group.word).copy()


BLOCK = 1 << 20  # weights per float64 block: 8 MB temporaries stay in the allocator's heap (no page faults)


def _blocks(sl: slice) -> list[slice]:
    return [slice(a, min(a + BLOCK, sl.stop)) for a in range(sl.start, sl.stop, BLOCK)]


def quantise(group: Group, words: np.ndarray, parent: np.ndarray, grandparent: np.ndarray | None,
             tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """(zig-zag integers, per-tensor quanta, reconstructed words, max abs error, max error / bound)
    where a tensor's bound is max(tolerance × RMS step, 2 ulps of its largest weight); the ratio is <= 1.

    Blocked: float64 copies of a whole 134M-weight row (five of them, 1 GB each) spent most of a
    SmolLM2 node's time in page faults; per block the arithmetic per weight is the same."""
    import torch

    half_ulp = float(torch.finfo(group.torch_dtype).eps) / 2
    zig = np.zeros(words.size, dtype=np.uint64)
    recon_words = np.zeros_like(words)
    quanta = np.zeros(len(group.numels), dtype=np.float64)
    max_err = max_ratio = 0.0
    for i, sl in enumerate(_slices(group)):
        if sl.start == sl.stop:
            continue
        bound, quanta[i] = _quantum(group, words, parent, sl, tolerance, half_ulp)
        err = 0.0
        for bl in _blocks(sl):
            gp = None if grandparent is None else grandparent[bl]
            ints, recon, block_err = _quantise_block(group, words[bl], parent[bl], gp, float(quanta[i]))
            z = ints.numpy()
            zig[bl] = ((z << 1) ^ (z >> 63)).view(np.uint64)
            recon_words[bl] = _bits(group, recon)
            err = max(err, block_err)
        max_err = max(max_err, err)
        if bound > 0:
            max_ratio = max(max_ratio, err / bound)
    return zig, quanta, recon_words, max_err, max_ratio


def _slices(group: Group) -> list[slice]:
    offsets = np.concatenate([[0], np.cumsum(group.numels, dtype=np.int64)]).tolist()
    return [slice(a, b) for a, b in zip(offsets[:-1], offsets[1:])]


def _quantum(group: Group, words: np.ndarray, parent: np.ndarray, sl: slice, tolerance: float,
             half_ulp: float) -> tuple[float, float]:
    """(bound, quantum) of one tensor: bound = max(tolerance × RMS step, 4 half-ulps of its top)."""
    squares, top = 0.0, 0.0
    for bl in _blocks(sl):
        x = _as64(group, words[bl])
        squares += float((x - _as64(group, parent[bl])).square().sum())
        top = max(top, float(x.abs().max()))
    step_rms = (squares / (sl.stop - sl.start)) ** 0.5
    bound = max(tolerance * step_rms, 4 * half_ulp * top)
    rounding = 1.01 * half_ulp * (top + bound)  # the cast back to the dtype may move a value this far
    # q is 0 only for a tensor that did not move (x == parent): the reader copies the parent
    return bound, (2 * (bound - rounding) if bound > rounding else 0.0)


def _quantise_block(group: Group, words: np.ndarray, parent: np.ndarray, grandparent: np.ndarray | None,
                    q: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(integers, reconstruction in float64, max abs error) of one block of a tensor with quantum q."""
    import torch

    x = _as64(group, words)
    if q > 0:
        pred = _prediction64(group, parent, grandparent)
        ints = torch.round((x - pred) / q).to(torch.int64)
        recon = (pred + ints.double() * q).to(group.torch_dtype).double()
    else:
        ints = torch.zeros(x.numel(), dtype=torch.int64)
        recon = _as64(group, parent)
    zeroed = (x == 0) & (recon != 0)
    if bool(zeroed.any()):
        ints[zeroed] = ZERO
        recon = recon.masked_fill(zeroed, 0.0)
    return ints, recon, float((recon - x).abs().max())


def dequantise(group: Group, zig: np.ndarray, quanta: np.ndarray, parent: np.ndarray,
               grandparent: np.ndarray | None) -> np.ndarray:
    """Inverse of quantise: the reconstructed words (block by block, as quantise)."""
    out = np.zeros_like(parent)
    for i, tensor in enumerate(_slices(group)):
        for sl in _blocks(tensor):
            out[sl] = _dequantise_block(group, zig[sl], float(quanta[i]), parent[sl],
                                        None if grandparent is None else grandparent[sl])
    return out


def _dequantise_block(group: Group, zig: np.ndarray, q: float, parent: np.ndarray,
                      grandparent: np.ndarray | None) -> np.ndarray:
    import torch

    z = zig.view(np.uint64)
    ints = torch.from_numpy(((z >> np.uint64(1)) ^ (np.uint64(0) - (z & np.uint64(1)))).view(np.int64))
    if q == 0:
        vals = _as64(group, parent)
    else:
        vals = _prediction64(group, parent, grandparent) + ints.double() * q
    return _bits(group, vals.masked_fill_(ints == ZERO, 0.0))
