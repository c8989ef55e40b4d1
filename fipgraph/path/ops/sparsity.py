"""Magnitude projection onto the p-sparse set (Algorithm 2) over the prunable weights."""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

# Weight matrices of these layers are prunable by default; biases, norms and embeddings are not.
_PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_names(model: nn.Module, patterns: list[str] | None = None) -> list[str]:
    """Names of prunable parameters: fnmatch ``patterns`` if given, else Linear/Conv/attention weights."""
    params = dict(model.named_parameters())
    if patterns:
        return [n for n in params if any(fnmatch.fnmatch(n, p) for p in patterns)]
    names = []
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(mod, _PRUNABLE_TYPES):
            names.append(prefix + "weight")
        elif isinstance(mod, nn.MultiheadAttention) and mod.in_proj_weight is not None:
            names.append(prefix + "in_proj_weight")  # out_proj is an nn.Linear, found above
        elif type(mod).__name__ == "Conv1D":  # GPT-2 style transformers.pytorch_utils.Conv1D
            names.append(prefix + "weight")
    return [n for n in names if n in params]


def _largest_remainder(sizes: list[int], p: float) -> list[int]:
    """Zeros per tensor, each ~p*size, summing to exactly round(p*sum(sizes))."""
    total = round(p * sum(sizes))
    raw = [p * s for s in sizes]
    ks = [int(r) for r in raw]
    order = sorted(range(len(sizes)), key=lambda i: raw[i] - ks[i], reverse=True)
    for i in order[: total - sum(ks)]:
        ks[i] += 1
    return ks


def magnitude_masks(
    tensors: list[torch.Tensor], p: float, scope: str = "global"
) -> list[torch.Tensor]:
    """Boolean keep-masks zeroing exactly round(p * n) entries of smallest magnitude.

    ``scope="global"`` ranks all entries together (the authors' choice); ``"layer"`` prunes each
    tensor by ~p, distributing the rounding so the total is still exactly round(p * n).
    """
    sizes = [t.numel() for t in tensors]
    if scope == "global":
        flat = torch.cat([t.detach().abs().flatten() for t in tensors])
        k = round(p * flat.numel())
        keep = torch.ones_like(flat, dtype=torch.bool)
        if k > 0:
            keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
        return [m.view_as(t) for m, t in zip(keep.split(sizes), tensors)]
    if scope == "layer":
        masks = []
        for t, k in zip(tensors, _largest_remainder(sizes, p)):
            keep = torch.ones(t.numel(), dtype=torch.bool)
            if k > 0:
                keep[torch.topk(t.detach().abs().flatten(), k, largest=False, sorted=False).indices] = False
            masks.append(keep.view_as(t))
        return masks
    raise ValueError(f"unknown prune scope {scope!r}; use 'global' or 'layer'")


def sparsity_of(tensors: list[torch.Tensor]) -> float:
    n = sum(t.numel() for t in tensors)
    return sum(int((t == 0).sum()) for t in tensors) / max(n, 1)


def distance_to_sparse(tensors: list[torch.Tensor], p: float, scope: str = "global") -> float:
    """‖w − P_p(w)‖ / ‖w‖: the share of the weights' norm that the projection onto p zeros removes."""
    with torch.no_grad():
        masks = magnitude_masks(tensors, p, scope)
        removed = sum(float((t * ~m).pow(2).sum()) for t, m in zip(tensors, masks))
        norm = sum(float(t.pow(2).sum()) for t in tensors)
    return (removed / max(norm, 1e-24)) ** 0.5


def cubic_sparsity(step: int, start: float, target: float, ramp: int) -> float:
    """Zhu & Gupta (2017): s_t = p + (s_0 − p)(1 − t/n)³ for t ≤ n, then p; fast early, gentle near p."""
    if ramp <= 0 or step >= ramp:
        return target
    return target + (start - target) * (1.0 - step / ramp) ** 3


def lambda_factor(step: int, ramp: int, growth: float, period: int, cap: float) -> float:
    """Multiplier of λ: 1 until the sparsity ramp ends, then ×``growth`` every ``period`` steps, at most ``cap``.

    A constant λ settles where ∇odist balances 2λ(w − P_p(w)), off the sparse set; a growing λ
    moves that balance point onto it, so the walk converges."""
    if step <= ramp or growth == 1.0:
        return 1.0
    return min(growth ** ((step - ramp) / period), cap)
