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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fipgraph.storage.layout import Group

if TYPE_CHECKING:  # imported on first use, so the lossless read path never loads torch
    import torch

BOUNDED = ("bnd", "bndp")  # against the parent; against 2·parent − grandparent


def is_bounded(group: Group, encoding: str) -> bool:
    return encoding in BOUNDED and group.is_float and not group.is_complex


def _as64(group: Group, words: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(words).view(np.uint8)).view(group.torch_dtype).double()


def _prediction64(group: Group, parent: np.ndarray, grandparent: np.ndarray | None) -> torch.Tensor:
    p = _as64(group, parent)
    return p if grandparent is None else 2 * p - _as64(group, grandparent)


def _bits(group: Group, x64: torch.Tensor) -> np.ndarray:
    import torch

    return x64.to(group.torch_dtype).contiguous().view(torch.uint8).numpy().view(group.word).copy()


def quantise(group: Group, words: np.ndarray, parent: np.ndarray, grandparent: np.ndarray | None,
             tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """(zig-zag integers, per-tensor quanta, reconstructed words, max abs error, max error / bound)
    where a tensor's bound is max(tolerance × RMS step, 2 ulps of its largest weight); the ratio is <= 1."""
    import torch

    x, p = _as64(group, words), _as64(group, parent)
    pred = p if grandparent is None else 2 * p - _as64(group, grandparent)
    half_ulp = float(torch.finfo(group.torch_dtype).eps) / 2
    ints = torch.empty(x.numel(), dtype=torch.int64)
    quanta = np.zeros(len(group.numels), dtype=np.float64)
    recon = torch.empty_like(x)
    max_err = max_ratio = 0.0
    offset = 0
    for i, numel in enumerate(group.numels):
        sl = slice(offset, offset + numel)
        offset += numel
        if not numel:
            continue
        step_rms = float((x[sl] - p[sl]).square().mean().sqrt())
        top = float(x[sl].abs().max())
        bound = max(tolerance * step_rms, 4 * half_ulp * top)
        rounding = 1.01 * half_ulp * (top + bound)  # the cast back to the dtype may move a value this far
        q = 2 * (bound - rounding) if bound > rounding else 0.0
        if q > 0:
            ints[sl] = torch.round((x[sl] - pred[sl]) / q).to(torch.int64)
            recon[sl] = (pred[sl] + ints[sl].double() * q).to(group.torch_dtype).double()
        else:  # q is 0 only for a tensor that did not move (x == parent): the reader copies the parent
            ints[sl] = 0
            recon[sl] = p[sl]
        quanta[i] = q
        err = float((recon[sl] - x[sl]).abs().max())
        max_err = max(max_err, err)
        if bound > 0:
            max_ratio = max(max_ratio, err / bound)
    z = ints.numpy()
    zig = ((z << 1) ^ (z >> 63)).view(np.uint64)
    return zig, quanta, _bits(group, recon), max_err, max_ratio


def dequantise(group: Group, zig: np.ndarray, quanta: np.ndarray, parent: np.ndarray,
               grandparent: np.ndarray | None) -> np.ndarray:
    """Inverse of quantise: the reconstructed words."""
    import torch

    z = zig.view(np.uint64)
    ints = torch.from_numpy(((z >> np.uint64(1)) ^ (np.uint64(0) - (z & np.uint64(1)))).view(np.int64))
    q = torch.from_numpy(np.repeat(quanta, group.numels))
    moved = _prediction64(group, parent, grandparent) + ints.double() * q
    return _bits(group, torch.where(q == 0, _as64(group, parent), moved))
