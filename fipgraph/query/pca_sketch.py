"""One-pass randomized sketch of a weight-space PCA (Tropp, Yurtsever, Udell & Cevher 2017,
"Practical sketching algorithms for low-rank matrix approximation", SIAM J. Matrix Anal. Appl.).

For the centred deltas A = D - 1 mᵀ (N nodes x P weights), one streaming pass over the store keeps
Y = A Ω (N x k, range sketch), W = Ψ A (l x P, co-range sketch, l = 2k + 1), the mean and the total
variance. Then A ≈ Q X with Q = orth(Y), X = (Ψ Q)⁺ W, and the SVD of X gives the components.

Exactness: approximate. Exact (up to float32 rounding) when k reaches the rank of A (k >= N - 1);
otherwise the error is governed by the spectrum beyond k (Tropp et al., Thm 4.3): the top
components of a path, whose spectrum decays fast, come out close, never bit-for-bit. The Gram
route is the exact one. Centring is applied after the pass, since it is linear:
A Ω = D Ω - 1 (mᵀ Ω) and Ψ A = Ψ D - (Ψ 1) mᵀ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

BLOCK_ROWS = 64  # rows multiplied at once: Ω and the co-range sketch are streamed once per block, not per row


class SketchAccumulator:
    """Range and co-range sketches of the deltas, fed block by block in any row order.

    On the CPU the co-range sketch is accumulated in place by BLAS (sgemm with beta = 1): a
    temporary l x P product per block would cost more memory traffic than the product itself. Its
    last row uses weights of one, so it accumulates the column sums (the mean) for free.
    """

    def __init__(self, n: int, p: int, k: int, seed: int, matmul: Callable, on_cpu: bool = True) -> None:
        rng = np.random.default_rng(seed)
        self.n, self.p, self.k, self.l = n, p, k, 2 * k + 1
        self.omega = rng.standard_normal((p, k), dtype=np.float32)
        psi = rng.standard_normal((self.l, n), dtype=np.float32)
        self.psi_ext = np.vstack([psi, np.ones((1, n), np.float32)])  # (l + 1) x N
        self.y = np.zeros((n, k), np.float64)
        self.w_t = np.zeros((p, self.l + 1), np.float32, order="F")  # (Ψ_ext D)ᵀ, F-order for sgemm
        self.ssq = 0.0
        self.matmul, self.on_cpu = matmul, on_cpu  # (a, b) -> a @ b as float64, on the query's device

    def add(self, positions: list[int], block: np.ndarray) -> None:
        """Rows `block` (len(positions) x P, float32 deltas) at those positions of the node list."""
        self.y[positions] = self.matmul(block, self.omega)
        psi_b = np.ascontiguousarray(self.psi_ext[:, positions])
        if self.on_cpu:
            from scipy.linalg.blas import sgemm

            # w_t += blockᵀ psi_bᵀ; a C-ordered block is its own transpose in F-order: no copy
            sgemm(1.0, block.T, psi_b.T, beta=1.0, c=self.w_t, overwrite_c=True)
        else:
            self.w_t += self.matmul(psi_b, block).T.astype(np.float32)
        self.ssq += float(sum(np.dot(r, r) for r in block))  # float32 dot per row, float64 total

    def solve(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """(coords N x r, components r x P float32, mean delta, eigenvalues r, total variance)."""
        w_ext = self.w_t.T.astype(np.float64)  # (l + 1) x P
        psi = self.psi_ext[:-1].astype(np.float64)
        m = w_ext[-1] / self.n
        y = self.y - (m @ self.omega.astype(np.float64))[None, :]
        w = w_ext[:-1] - psi.sum(1)[:, None] * m[None, :]
        q, _ = np.linalg.qr(y)
        x = np.linalg.lstsq(psi @ q, w, rcond=None)[0]  # k x P
        evals, u = np.linalg.eigh(x @ x.T)
        evals, u = evals[::-1][:r].clip(min=0), u[:, ::-1][:, :r]
        sing = np.sqrt(evals)
        safe = np.where(sing > 0, sing, 1.0)
        comps = ((u.T @ x) / safe[:, None]).astype(np.float32)
        total = self.ssq - self.n * float(m @ m)
        return (q @ u) * sing, comps, m, evals, total


def sketch_rows(rows: Iterable[tuple[int, np.ndarray]], acc: SketchAccumulator, first: np.ndarray,
                check: Callable[[int, np.ndarray], None]) -> None:
    """Feed (position, weights) rows to `acc` as deltas to `first`, BLOCK_ROWS at a time;
    check(position, array) raises for a row of the wrong size or with NaN/Inf."""
    block = np.empty((BLOCK_ROWS, acc.p), np.float32)
    positions: list[int] = []
    for pos, vec in rows:
        row = block[len(positions)]
        if vec.size != acc.p:
            check(pos, vec)  # names the node
        np.subtract(vec, first, out=row)
        check(pos, row)
        positions.append(pos)
        if len(positions) == BLOCK_ROWS:
            acc.add(positions, block)
            positions = []
    if positions:
        acc.add(positions, block[: len(positions)])
