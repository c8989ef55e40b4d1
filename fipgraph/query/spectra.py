"""Top of the spectrum of the metric tensor g = (1/N) Σ_i J_iᵀ J_i at a stored node.

g is n x n (n = weights) and J (N·m x n) is never formed: the nonzero eigenvalues of JᵀJ/N equal
those of the dual J Jᵀ/N (N·m x N·m), and Lanczos (scipy `eigsh`) only needs u ↦ J (Jᵀ u)/N,
one vjp and one jvp per iteration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn
from torch.func import functional_call, jvp, vjp

from fipgraph.errors import ConfigError, ReadOnlyStoreError
from fipgraph.query._common import resolve_nodes
from fipgraph.query.recorded import recorded_tasks

DENSE_LIMIT = 200  # below this dual size a dense eigvalsh (size matvecs) is as fast and exact


class _Outputs(nn.Module):
    """f(batch) = logits at the scored positions, as a module so functional_call can swap weights."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        from fipgraph.models import forward_logits

        return forward_logits(self.model, batch)[0]


def dual_operator(model: nn.Module, batch: dict, dtype: torch.dtype = torch.float32):
    """(matvec, size, n_weights) of u ↦ J Jᵀ u / N for `model` on `batch` (N examples)."""
    wrapper = _Outputs(model).eval()
    device = next(model.parameters()).device  # the operator runs where the model lives
    params = {k: v.detach().to(dtype) for k, v in wrapper.named_parameters() if v.requires_grad}
    batch = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}
    model.to(dtype)

    def f(p: dict) -> torch.Tensor:
        return functional_call(wrapper, p, (batch,))

    out, pullback = vjp(f, params)  # one forward; the pullback is reused by every matvec
    shape, n_ex = out.shape, out.shape[0]
    n_weights = sum(v.numel() for v in params.values())

    def matvec(u: np.ndarray) -> np.ndarray:
        u_t = torch.as_tensor(np.asarray(u).reshape(shape), dtype=dtype, device=device)
        (jt_u,) = pullback(u_t)  # Jᵀu: a weight-shaped dict
        _, j_jt_u = jvp(f, (params,), (jt_u,))
        return (j_jt_u.reshape(-1) / n_ex).detach().double().cpu().numpy()

    return matvec, out.numel(), n_weights


def metric_eigenvalues(model: nn.Module, batch: dict, k: int = 20, dtype: torch.dtype = torch.float32,
                       seed: int = 0) -> tuple[np.ndarray, int, int]:
    """(top-k eigenvalues of g descending, dual size N·m, n weights)."""
    matvec, size, n_weights = dual_operator(model, batch, dtype)
    k = min(k, size)
    if size <= DENSE_LIMIT or k >= size - 1:
        dense = np.column_stack([matvec(e) for e in np.eye(size)])  # size matvecs, exact
        vals = np.linalg.eigvalsh((dense + dense.T) / 2)[::-1][:k]
    else:
        op = LinearOperator((size, size), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(size)
        vals = np.sort(eigsh(op, k=k, which="LA", v0=v0, return_eigenvectors=False))[::-1]
    return vals.clip(min=0.0), size, n_weights


def spectrum(store, node: int, dataset: Any = None, k: int = 20, *, n_examples: int = 64,
             threshold: float = 1e-3, model: nn.Module | None = None, name: str | None = None,
             dtype: torch.dtype = torch.float32, record: bool = True,
             device: str | torch.device = "auto") -> dict:
    """Top-k eigenvalues of g at `node` over the first `n_examples` query examples, computed on
    `device` ("auto": CUDA, then MPS, then CPU). `dataset`: a Task or batches; None: the first task of the
    data the node was built with; a name such as "task2": that task.

    The fraction of g's n eigenvalues below `threshold` is bounded honestly: g has at most
    r = min(n, N·m) nonzero eigenvalues, so n - r are exactly 0; of the r others only the top k are
    computed. `frac_small_lo`/`_hi` bound the fraction over all n (equal when k reaches the
    threshold or covers r); `frac_small_topk` is the fraction among the k computed.
    """
    from fipgraph.data import concat_batches
    from fipgraph.device import resolve_device
    from fipgraph.models import model_from_node
    from fipgraph.query.evaluation import query_batches

    if k < 1:
        raise ConfigError(f"k={k}; ask for at least one eigenvalue")
    dev = resolve_device(device)
    (nid,) = resolve_nodes(store, [node])
    if dataset is None or isinstance(dataset, str):
        dataset = recorded_tasks(store, [nid], task=dataset)[0]
    ds_name, _, batches, _ = query_batches(dataset, name=name, batch_size=n_examples, max_batches=1)
    batch = concat_batches(batches)
    mdl = model_from_node(store, nid) if model is None else store.load_into(model, nid)
    mdl.to(dev)
    vals, size, n = metric_eigenvalues(mdl, batch, k, dtype)
    rank = min(n, size)
    below = int((vals < threshold).sum())
    exact = len(vals) >= rank or below > 0  # eigenvalues past the smallest computed are smaller
    lo = (n - rank + below + (rank - len(vals) if exact else 0)) / n
    hi = lo if exact else (n - rank + below + rank - len(vals)) / n
    result = {f"g_eig{i + 1}": float(v) for i, v in enumerate(vals)}
    result.update(g_frac_small_lo=lo, g_frac_small_hi=hi, g_frac_small_topk=below / len(vals),
                  g_rank_bound=float(rank), g_n_examples=float(batch_size(batch)))
    if record:
        try:
            store.add_evals(nid, {ds_name: result})
        except ReadOnlyStoreError:
            pass  # the caller still gets the numbers
    return {"node_id": nid, "dataset": ds_name, "eigenvalues": vals, "threshold": threshold, **result}


def batch_size(batch: dict) -> int:
    return len(next(iter(batch.values())))
