"""Output distances between two networks' logits on the same batch (the first FIP term).

Every distance is summed over the batch, as in the authors' code, so its weight against the
secondary objective L grows with the memory batch; divide by the batch size for a per-example value.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from fipgraph.errors import ConfigError

OdistFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ODISTS: dict[str, OdistFn] = {}


def register_odist(name: str) -> Callable[[OdistFn], OdistFn]:
    """Decorator: make ``fn(logits, ref_logits) -> scalar`` available as ``odist = "name"``."""

    def deco(fn: OdistFn) -> OdistFn:
        if name in ODISTS:
            raise ValueError(f"odist {name!r} is registered twice")
        ODISTS[name] = fn
        return fn

    return deco


def get_odist(name: str) -> OdistFn:
    if name not in ODISTS:
        raise ConfigError(f"unknown odist {name!r}; choose one of {sorted(ODISTS)}")
    return ODISTS[name]


def _check_reference(ref_logits: torch.Tensor) -> None:
    # A reference that carries a graph is (a function of) the live network: the constraint would
    # compare the network with itself and silently do nothing (the authors' CNN notebook bug).
    if ref_logits.requires_grad:
        raise ValueError(
            "reference logits require grad, so the reference is the live network; compute them "
            "from a frozen copy (fipgraph.path.memory.FrozenReference) under torch.no_grad()"
        )


@register_odist("bhattacharyya")
def bhattacharyya(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """-sum_b log sum_k sqrt(p_k q_k + eps), eps = max(1e-10, 1e-3 min q) (authors' formula)."""
    _check_reference(ref_logits)
    p = logits.float().softmax(-1)  # (B, C)
    q = ref_logits.float().softmax(-1)  # (B, C), no grad
    eps = max(1e-10, 1e-3 * q.min().item())
    return -torch.log(torch.sqrt(p * q + eps).sum(-1)).sum()


@register_odist("l2")
def l2(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """sum_b mean_k (z_k - z_ref_k)^2 on raw logits."""
    _check_reference(ref_logits)
    return (logits.float() - ref_logits.float()).pow(2).mean(-1).sum()


@register_odist("kl")
def kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """sum_b KL(q_ref || p): how much the live network loses of the reference's predictions."""
    _check_reference(ref_logits)
    logp = F.log_softmax(logits.float(), -1)
    logq = F.log_softmax(ref_logits.float(), -1)
    return F.kl_div(logp, logq, log_target=True, reduction="sum")


# The same distances for K walks at once: logits and ref_logits (K, B, C) -> (K,), walk k's distance
# from its own rows only (replicas.py's fused step); equal to the single forms up to float rounding.
BATCHED_ODISTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}


def _batched(name: str):
    def deco(fn):
        BATCHED_ODISTS[name] = fn
        return fn
    return deco


@_batched("bhattacharyya")
def bhattacharyya_batched(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    _check_reference(ref_logits)
    p, q = logits.float().softmax(-1), ref_logits.float().softmax(-1)
    eps = (1e-3 * q.amin(dim=(1, 2))).clamp_min(1e-10)  # each walk's own eps, as in the single form
    return -torch.log(torch.sqrt(p * q + eps[:, None, None]).sum(-1)).sum(-1)


@_batched("l2")
def l2_batched(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    _check_reference(ref_logits)
    return (logits.float() - ref_logits.float()).pow(2).mean(-1).sum(-1)


@_batched("kl")
def kl_batched(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    _check_reference(ref_logits)
    logp, logq = F.log_softmax(logits.float(), -1), F.log_softmax(ref_logits.float(), -1)
    return (logq.exp() * (logq - logp)).sum(dim=(1, 2))
