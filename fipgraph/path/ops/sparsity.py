"""Projection onto the p-sparse set (Algorithm 2) over the prunable weights: which entries go.

Scores are |W| (the authors' magnitude) or Wanda's |W_ij|·‖X_j‖₂ (input-activation aware); the
comparison group is all prunable weights, each tensor, or each output row (``select_masks``)."""

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


def saliency_scores(tensors: list[torch.Tensor], scales: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
    """|W|, or Wanda's |W_ij|·‖X_j‖₂ where ``scales[i]`` holds tensor i's input-feature norms (None = |W|)."""
    scales = scales or [None] * len(tensors)
    out = []
    for t, s in zip(tensors, scales):
        a = t.detach().abs()
        out.append(a if s is None else a * s.to(a.device, a.dtype).view(1, -1, *([1] * (a.dim() - 2))))
    return out


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of a flat score vector without its k smallest entries."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        keep[torch.topk(scores, k, largest=False, sorted=False).indices] = False
    return keep


def _row_mask(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Exactly round(p · row length) zeros in every output row (dim 0), Wanda's comparison group."""
    rows = scores.reshape(scores.shape[0], -1) if scores.dim() > 1 else scores.reshape(1, -1)
    k = round(p * rows.shape[1])
    keep = torch.ones_like(rows, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, torch.topk(rows, k, dim=1, largest=False, sorted=False).indices, False)
    return keep.view_as(scores)


def select_masks(scores: list[torch.Tensor], p: float, scope: str = "global") -> list[torch.Tensor]:
    """Boolean keep-masks that zero the entries of lowest score, fraction p of each comparison group.

    ``"global"`` ranks all entries together (the authors' choice): exactly round(p·n) zeros;
    ``"layer"`` prunes each tensor by ~p, the rounding spread so the total is still round(p·n);
    ``"row"`` prunes round(p·cols) of every output row (Wanda, Sun et al. 2023).
    """
    if scope == "global":
        flat = torch.cat([s.flatten() for s in scores])
        keep = _smallest(flat, round(p * flat.numel()))
        return [m.view_as(s) for m, s in zip(keep.split([s.numel() for s in scores]), scores)]
    if scope == "layer":
        ks = _largest_remainder([s.numel() for s in scores], p)
        return [_smallest(s.flatten(), k).view_as(s) for s, k in zip(scores, ks)]
    if scope == "row":
        return [_row_mask(s, p) for s in scores]
    raise ValueError(f"unknown prune scope {scope!r}; use 'global', 'layer' or 'row'")


def magnitude_masks(tensors: list[torch.Tensor], p: float, scope: str = "global",
                    scales: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
    """Keep-masks by |W| (or by Wanda scores when ``scales`` gives input norms); see ``select_masks``."""
    return select_masks(saliency_scores(tensors, scales), p, scope)


def sparsity_of(tensors: list[torch.Tensor]) -> float:
    n = sum(t.numel() for t in tensors)
    return sum(int((t == 0).sum()) for t in tensors) / max(n, 1)


def distance_to_sparse(tensors: list[torch.Tensor], p: float, scope: str = "global",
                       scales: list[torch.Tensor | None] | None = None) -> float:
    """‖w − P_p(w)‖ / ‖w‖: the share of the weights' norm that the projection onto p zeros removes."""
    with torch.no_grad():
        masks = magnitude_masks(tensors, p, scope, scales)
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
