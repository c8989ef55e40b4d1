"""Merge methods over the tensors of one parameter, as mergekit defines them (arcee-ai/mergekit 0.1.5,
`mergekit/merge_methods/`): one function per method behind one interface, each registered once.

Written here rather than called from mergekit: mergekit plans merges over Hugging Face folders on disk
(and brings peft, datasets, accelerate with it), while a store merges any torch module's state dict in
memory. The arithmetic follows mergekit's operation by operation (float32 math for float32 weights), so
`tests/test_merge.py` checks every method against mergekit itself, bit for bit or to 1e-6 relative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from fipgraph.errors import ConfigError

MergeFn = Callable[..., torch.Tensor]  # fn(tensors, weights, base, **options) -> merged tensor


@dataclass(frozen=True)
class MergeMethod:
    """A method's contract: whether it needs a base (an ancestor the task vectors start from), how many
    nodes it takes, and its options with their defaults (mergekit's names; `lambda_` for `lambda`)."""

    name: str
    fn: MergeFn
    needs_base: bool
    min_nodes: int = 1
    max_nodes: int | None = None
    options: dict = field(default_factory=dict)
    weighted: bool = True  # takes one weight per node (slerp takes `t` instead)


METHODS: dict[str, MergeMethod] = {}


def register_merge(name: str, *, needs_base: bool, min_nodes: int = 1, max_nodes: int | None = None,
                   weighted: bool = True, **options) -> Callable[[MergeFn], MergeFn]:
    """Register a merge method under `name` (one call per method, the one source of truth)."""
    def wrap(fn: MergeFn) -> MergeFn:
        METHODS[name] = MergeMethod(name, fn, needs_base, min_nodes, max_nodes, dict(options), weighted)
        return fn
    return wrap


def work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@register_merge("linear", needs_base=False, normalize=True)
def linear(tensors: list[torch.Tensor], weights: torch.Tensor, base, *, normalize: bool) -> torch.Tensor:
    """sum_i w_i x_i (/ sum_i w_i): a model soup (Wortsman et al. 2022) when the weights are equal."""
    first = tensors[0]
    dtype = work_dtype(first)
    w = weights.to(dtype)
    out = torch.zeros_like(first, dtype=dtype)
    for t, c in zip(tensors, w.unbind(0)):
        out.addcmul_(t, c)
    if normalize:
        out.div_(w.sum())
    return out.to(first.dtype)


def magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """`delta` with all but its `density` largest-magnitude entries zeroed (at least one kept)."""
    if density >= 1:
        return delta
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    w = delta.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    mask[torch.argsort(w, descending=True)[:k]] = 1  # argsort as mergekit does, so ties break alike
    return delta * mask.reshape_as(delta)


def _task_vectors(tensors, weights, base, *, density: float, sign_consensus: bool, normalize: bool,
                  lambda_: float) -> torch.Tensor:
    """base + lambda * (weighted task vectors, optionally sparsified and sign-elected, optionally normalised)."""
    deltas = base.new_empty((len(tensors), *base.shape))
    for i, t in enumerate(tensors):
        deltas[i] = magnitude(t - base, density)
    w = weights.to(deltas.dtype)
    while w.dim() < deltas.dim():
        w = w.unsqueeze(-1)
    deltas.mul_(w)
    if sign_consensus:  # TIES: keep the entries whose sign agrees with the sign of the total
        majority = (deltas.sum(dim=0) >= 0).to(base.dtype) * 2 - 1
        mask = deltas.sign().to(base.dtype) == majority
        mixed, divisor = (deltas * mask).sum(dim=0), (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed, divisor = deltas.sum(dim=0), w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lambda_ != 1:
        mixed *= lambda_
    return (base + mixed).to(base.dtype)


@register_merge("task_arithmetic", needs_base=True, normalize=False, lambda_=1.0)
def task_arithmetic(tensors, weights, base, *, normalize: bool, lambda_: float) -> torch.Tensor:
    """base + lambda * sum_i w_i (x_i - base) (Ilharco et al. 2023)."""
    return _task_vectors(tensors, weights, base, density=1.0, sign_consensus=False, normalize=normalize,
                         lambda_=lambda_)


@register_merge("ties", needs_base=True, density=1.0, normalize=True, lambda_=1.0)
def ties(tensors, weights, base, *, density: float, normalize: bool, lambda_: float) -> torch.Tensor:
    """TIES (Yadav et al. 2023): trim each task vector to its `density` largest entries, elect each
    entry's sign by the weighted sum, average the agreeing entries."""
    return _task_vectors(tensors, weights, base, density=density, sign_consensus=True, normalize=normalize,
                         lambda_=lambda_)


@register_merge("slerp", needs_base=False, min_nodes=2, max_nodes=2, weighted=False, t=0.5)
def slerp(tensors, weights, base, *, t: float, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of each tensor from the first node (t = 0) to the second (t = 1); nearly
    parallel tensors (|cos| > dot_threshold) are interpolated linearly."""
    v0, v1 = tensors
    dtype = work_dtype(v0)
    a, b = v0.reshape(-1).to(dtype), v1.reshape(-1).to(dtype)
    if not a.numel():
        return v0.clone()
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    na, nb = (na if na > eps else torch.ones_like(na)), (nb if nb > eps else torch.ones_like(nb))
    dot = float(((a / na) * (b / nb)).sum().clamp(-1, 1))
    if abs(dot) > dot_threshold:
        coef_a, coef_b = 1 - t, t
    else:
        theta = math.acos(dot)
        coef_a, coef_b = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    return (coef_a * a + coef_b * b).reshape(v0.shape).to(v0.dtype)


def method(name: str) -> MergeMethod:
    if name not in METHODS:
        raise ConfigError(f"unknown merge method {name!r}; use one of {sorted(METHODS)}")
    return METHODS[name]
