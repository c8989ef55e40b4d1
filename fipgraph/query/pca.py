"""Weight-space PCA of stored networks, streamed node by node (paper figs. 2d, 3d/e, 5c).

Every pass over the store decodes nodes on `n_readers` threads at once (query/reading.py).
Routes, and how exact each is:
- "gram" (N up to a few thousand; exact up to float32 rounding of the weights): one pass writes
  each node's weights (minus the first node's) into column chunks (in RAM up to `max_memory`, the
  rest in a temporary file), then K = D Dᵀ (N x N, float64) is accumulated chunk by chunk (float32
  syrk), double-centred and diagonalised with `eigh`.
- "sketch" (one pass, approximate; query/pca_sketch.py): range and co-range sketches multiplied
  while the readers decode; exact only when n_components + n_oversamples reaches N - 1.
- "randomized" (beyond gram's size; exact to the convergence of its power iterations): a randomized
  range finder (Halko et al. 2011) whose every product with X is one streaming pass over the store;
  memory O((N + P) x (k + oversamples)).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as _SkNotFittedError
from tqdm.auto import tqdm

from fipgraph.errors import ConfigError, FipgraphError, NonFiniteWeightsError, ReadOnlyStoreError
from fipgraph.query._common import (
    check_same_arch,
    flat_vector,
    float_param_names,
    iter_vectors,
    resolve_nodes,
)
from fipgraph.query.pca_sketch import SketchAccumulator, sketch_rows
from fipgraph.query.reading import read_rows

METHODS = ("auto", "gram", "sketch", "randomized")


def _matmul_on(device) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """a @ b (float32 operands, float64 result) on `device`: numpy's BLAS on the CPU, torch elsewhere."""
    if device.type == "cpu":
        return lambda a, b: (a @ b).astype(np.float64, copy=False)
    import torch

    def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ta = torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True)
        tb = torch.from_numpy(np.ascontiguousarray(b)).to(device, non_blocking=True)
        return (ta @ tb).double().cpu().numpy()

    return matmul


class NotFittedError(FipgraphError, _SkNotFittedError):
    """A WeightPCA was used before `fit`."""


class _ColumnChunks:
    """An N x P float32 matrix held as column chunks: the first chunks in RAM up to `max_bytes`,
    the rest in one temporary file laid out chunk-major, so that reading a chunk for all rows is
    one contiguous read."""

    def __init__(self, n: int, p: int, chunk_cols: int, max_bytes: int, spill_dir: str | None):
        self.n, self.p = n, p
        self.bounds = [(a, min(a + chunk_cols, p)) for a in range(0, p, chunk_cols)]
        self.arrays: list[np.ndarray] = []
        used = 0
        for a, b in self.bounds:
            if used + n * (b - a) * 4 > max_bytes:
                break
            self.arrays.append(np.empty((n, b - a), np.float32))
            used += n * (b - a) * 4
        self.n_ram = len(self.arrays)
        self.file = None
        if self.n_ram < len(self.bounds):
            self.spill_start = self.bounds[self.n_ram][0]
            fd, self.path = tempfile.mkstemp(prefix="fipgraph-pca-", suffix=".f32", dir=spill_dir)
            self.file = os.fdopen(fd, "r+b")
            self.file.truncate(n * (p - self.spill_start) * 4)

    def write_row(self, i: int, vec: np.ndarray) -> None:
        for c, (a, b) in enumerate(self.bounds):
            if c < self.n_ram:
                self.arrays[c][i] = vec[a:b]
            else:  # spilled chunk c starts after all rows of earlier spilled chunks
                off = 4 * (self.n * (a - self.spill_start) + i * (b - a))
                os.pwrite(self.file.fileno(), vec[a:b].tobytes(), off)

    def chunk(self, c: int) -> np.ndarray:
        if c < self.n_ram:
            return self.arrays[c]
        a, b = self.bounds[c]
        self.file.flush()
        out = np.fromfile(self.path, np.float32, count=self.n * (b - a),
                          offset=4 * self.n * (a - self.spill_start))
        return out.reshape(self.n, b - a)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            os.unlink(self.path)


def _check_finite_difference(d: np.ndarray, nid: int) -> None:
    # one NaN would silently turn every coordinate into NaN; name the node instead
    if not np.isfinite(d.sum(dtype=np.float64)):
        raise NonFiniteWeightsError(f"node {nid} has NaN/Inf weights (or differs from the first node by "
                                    "Inf); leave it out with nodes=[...] or run `fipgraph check`")


class WeightPCA(BaseEstimator):
    """PCA of flattened network weights, fitted from a store without materialising N x P.

    Parameters
    ----------
    n_components : number of principal components (at most the number of nodes).
    nodes : node ids to fit on (None = every node; they must share one architecture).
    params : parameter names or name prefixes to include (None = every floating-point tensor).
    method : "auto" (gram up to `max_gram_nodes`, randomized beyond), "gram" (exact), "sketch"
        (one pass, approximate) or "randomized" (several passes; see the module docstring).
    max_memory : bytes the gram route may use (beyond the process baseline) before weight
        columns spill to a temporary file.
    record : write each node's coordinates to the store as evals (dataset, "pc1", "pc2", ...).
    device : where the products run: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda[:N]", "mps".
    n_readers : threads decoding nodes at once (each with its own read-only store).
    """

    def __init__(self, n_components: int = 2, *, nodes: Iterable[int] | None = None,
                 params: Sequence[str] | None = None, method: str = "auto",
                 max_memory: int = 2 * 2**30, max_gram_nodes: int = 4000, n_oversamples: int = 10,
                 n_power_iter: int = 2, random_state: int = 0, record: bool = True,
                 dataset: str = "pca", spill_dir: str | None = None, progress: bool = True,
                 device: str = "auto", n_readers: int = 2):
        self.n_components = n_components
        self.nodes = nodes
        self.params = params
        self.method = method
        self.max_memory = max_memory
        self.max_gram_nodes = max_gram_nodes
        self.n_oversamples = n_oversamples
        self.n_power_iter = n_power_iter
        self.random_state = random_state
        self.record = record
        self.dataset = dataset
        self.spill_dir = spill_dir
        self.progress = progress
        self.device = device
        self.n_readers = n_readers

    # ---------------------------------------------------------------- fit
    def fit(self, store, y=None) -> "WeightPCA":
        """Fit on the store's nodes; sets components_, mean_, explained_variance_ratio_, coords_."""
        ids = resolve_nodes(store, self.nodes)
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}; use one of {', '.join(map(repr, METHODS))}")
        if not isinstance(self.n_readers, int) or self.n_readers < 1:
            raise ConfigError(f"n_readers={self.n_readers!r}; use an integer >= 1")
        from fipgraph.device import resolve_device

        self._device = resolve_device(self.device)
        self._matmul = _matmul_on(self._device)
        k = int(self.n_components)
        if not 1 <= k <= len(ids) or len(ids) < 2:
            raise ConfigError(
                f"n_components={k} but {len(ids)} node(s) selected; need 2 <= nodes and "
                f"1 <= n_components <= number of nodes ({len(ids)})"
            )
        self.arch_id_ = check_same_arch(store, ids)
        self.param_names_ = float_param_names(store, ids[0], self.params)
        method = self.method
        if method == "auto":
            method = "gram" if len(ids) <= self.max_gram_nodes else "randomized"
        fit = {"gram": self._fit_gram, "sketch": self._fit_sketch, "randomized": self._fit_randomized}[method]
        coords = fit(store, ids, k)
        # sklearn's convention (svd_flip, v-based): the largest |entry| of each component is > 0
        signs = np.sign(self.components_[np.arange(k), np.abs(self.components_).argmax(1)])
        signs[signs == 0] = 1
        self.components_ *= signs[:, None].astype(self.components_.dtype)
        self.coords_ = coords * signs
        self.nodes_ = ids
        self.method_ = method
        self.n_components_ = k
        self.n_features_in_ = self.components_.shape[1]
        if self.record:
            self._record(store)
        return self

    def _bar(self, it, total, desc):
        return tqdm(it, total=total, desc=desc, disable=not self.progress, leave=False)

    def _fit_gram(self, store, ids: list[int], k: int) -> np.ndarray:
        n = len(ids)
        first = flat_vector(store.state_dict(ids[0]), self.param_names_)
        p = first.size
        chunk_cols = max(1024, min(p, (128 * 2**20) // (4 * n)))  # ~128 MB per chunk read
        # P-sized working vectors (reference, float64 sums, read-ahead, decode buffers, results)
        # take ~40 bytes per weight; what is left of max_memory holds weight columns
        cols = _ColumnChunks(n, p, chunk_cols, max(0, int(self.max_memory) - 40 * p), self.spill_dir)
        try:
            # Deltas to the first node: weights along a path differ by tiny amounts, so
            # subtracting a reference before any product avoids catastrophic cancellation.
            ref = first.astype(np.float64)
            dsum = np.zeros(p, np.float64)
            rows = read_rows(store, ids, self.param_names_, self.n_readers)
            for i, vec in self._bar(rows, n, "pca: reading nodes"):
                if vec.size != p:
                    raise ConfigError(f"node {ids[i]} has {vec.size} weights, node {ids[0]} {p}")
                d = (vec - first).astype(np.float32)
                _check_finite_difference(d, ids[i])
                dsum += d
                cols.write_row(i, d)
            dmean = dsum / n
            gram = np.zeros((n, n), np.float64)
            for c, (a, b) in enumerate(self._bar(cols.bounds, len(cols.bounds), "pca: gram")):
                block = cols.chunk(c)
                gram += self._matmul(block, block.T)  # numpy uses syrk for A @ A.T
            # double centring, H K H with H = I - 11ᵀ/n, instead of a centring pass over the data;
            # deltas to a node of the set are of the spread's size, so this loses no precision
            gram -= gram.mean(0)[None, :]
            gram -= gram.mean(1)[:, None]
            evals, evecs = np.linalg.eigh(gram)
            evals, evecs = evals[::-1][:k].clip(min=0), evecs[:, ::-1][:, :k]
            sing = np.sqrt(evals)
            safe = np.where(sing > 0, sing, 1.0)
            comps = np.empty((k, p), np.float32)
            u32 = (evecs / safe).astype(np.float32)
            for c, (a, b) in enumerate(cols.bounds):  # V = Xcᵀ U / s = Dᵀ U / s since 1ᵀU = 0
                comps[:, a:b] = (cols.chunk(c).T @ u32).T
        finally:
            cols.close()
        self.mean_ = ref + dmean
        self.components_ = comps
        self._set_variances(evals, float(np.trace(gram)), n)
        return evecs * sing

    def _fit_randomized(self, store, ids: list[int], k: int) -> np.ndarray:
        n = len(ids)
        first = flat_vector(store.state_dict(ids[0]), self.param_names_)
        p, ell = first.size, min(k + self.n_oversamples, n)
        rng = np.random.default_rng(self.random_state)
        omega = rng.standard_normal((p, ell), dtype=np.float32)

        def times(right: np.ndarray, desc: str) -> np.ndarray:  # D @ right, one pass over the store
            out = np.empty((n, right.shape[1]), np.float64)
            for i, vec in self._bar(read_rows(store, ids, self.param_names_, self.n_readers), n, desc):
                out[i] = (vec - first) @ right
            return out

        def t_times(q: np.ndarray, desc: str) -> np.ndarray:  # Dᵀ @ q, one pass over the store
            out = np.zeros((p, q.shape[1]), np.float32)
            for i, vec in self._bar(read_rows(store, ids, self.param_names_, self.n_readers), n, desc):
                out += np.outer(vec - first, q[i].astype(np.float32))
            return out

        # pass 1: mean, total variance and the sketch D Ω; centring is applied afterwards
        # because it is linear: (D - 1mᵀ) Ω = D Ω - 1 (mᵀ Ω).
        dsum, ssq = np.zeros(p, np.float64), 0.0
        y = np.empty((n, ell), np.float64)
        for i, vec in self._bar(read_rows(store, ids, self.param_names_, self.n_readers), n, "pca: sketch"):
            d = vec - first
            _check_finite_difference(d, ids[i])
            dsum += d
            ssq += float(np.dot(d.astype(np.float64), d))
            y[i] = d @ omega
        m = dsum / n
        y -= m.astype(np.float32) @ omega
        for it in range(self.n_power_iter):
            q, _ = np.linalg.qr(y)
            z = t_times(q, f"pca: power {it + 1}") - np.outer(m, q.sum(0)).astype(np.float32)
            y = times(z, f"pca: power {it + 1}b") - (m.astype(np.float32) @ z)
        q, _ = np.linalg.qr(y)
        bt = t_times(q, "pca: project") - np.outer(m, q.sum(0)).astype(np.float32)  # Xcᵀ Q
        small = bt.T.astype(np.float64) @ bt  # (Qᵀ Xc)(Qᵀ Xc)ᵀ, ell x ell
        evals, w = np.linalg.eigh(small)
        evals, w = evals[::-1][:k].clip(min=0), w[:, ::-1][:, :k]
        sing = np.sqrt(evals)
        safe = np.where(sing > 0, sing, 1.0)
        self.mean_ = first.astype(np.float64) + m
        self.components_ = ((bt.astype(np.float64) @ w) / safe).T.astype(np.float32)
        self._set_variances(evals, ssq - n * float(m @ m), n)
        return (q @ w) * sing

    def _fit_sketch(self, store, ids: list[int], k: int) -> np.ndarray:
        first = flat_vector(store.state_dict(ids[0]), self.param_names_)
        n, p = len(ids), first.size
        acc = SketchAccumulator(n, p, min(k + self.n_oversamples, n), self.random_state, self._matmul,
                                on_cpu=self._device.type == "cpu")

        def check(pos: int, d: np.ndarray) -> None:
            if d.size != p:
                raise ConfigError(f"node {ids[pos]} has {d.size} weights, node {ids[0]} {p}")
            _check_finite_difference(d, ids[pos])

        rows = read_rows(store, ids, self.param_names_, self.n_readers)
        sketch_rows(self._bar(rows, n, "pca: one-pass sketch"), acc, first, check)
        coords, self.components_, m, evals, total = acc.solve(k)
        self.mean_ = first.astype(np.float64) + m
        self._set_variances(evals, total, n)
        return coords

    def _set_variances(self, evals: np.ndarray, total: float, n: int) -> None:
        self.singular_values_ = np.sqrt(evals)
        self.explained_variance_ = evals / (n - 1)
        self.explained_variance_ratio_ = evals / total if total > 0 else np.zeros_like(evals)

    def _record(self, store) -> None:
        try:
            store.add_evals_many({nid: {self.dataset: {f"pc{j + 1}": float(v) for j, v in enumerate(row)}}
                                  for nid, row in zip(self.nodes_, self.coords_)})
        except ReadOnlyStoreError:
            warnings.warn("store opened read-only: PCA coordinates were not recorded; open it with "
                          "mode='a' or pass record=False", stacklevel=3)

    # ---------------------------------------------------------------- use
    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NotFittedError(
                "This WeightPCA instance is not fitted yet; call .fit(store) before using it."
            )

    def transform(self, X, nodes: Iterable[int] | None = None) -> np.ndarray:
        """Coordinates of `X`: a store (with `nodes`, default the fitted ones), a state dict,
        or an array of flat weight rows (n, P)."""
        self._check_fitted()
        if hasattr(X, "state_dict") and hasattr(X, "sql"):
            ids = resolve_nodes(X, nodes if nodes is not None else self.nodes_)
            rows: Iterable[np.ndarray] = iter_vectors(X, ids, self.param_names_)
        elif isinstance(X, dict):
            rows = [flat_vector(X, self.param_names_)]
        else:
            rows = np.atleast_2d(np.asarray(X, np.float32))
        out = []
        for row in rows:
            if row.size != self.n_features_in_:
                raise ConfigError(f"got {row.size} weights per row, the PCA was fitted on "
                                  f"{self.n_features_in_}; pass nodes of arch {self.arch_id_}")
            out.append((row - self.mean_) @ self.components_.T.astype(np.float64))
        return np.asarray(out)

    def fit_transform(self, store, y=None) -> np.ndarray:
        return self.fit(store).coords_

    def inverse_transform(self, coords: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return np.atleast_2d(coords) @ self.components_ + self.mean_
