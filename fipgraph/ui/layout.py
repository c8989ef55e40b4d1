"""Where each node is drawn: by lineage (hops from its root × branch lane) or in weight-space PCA.

PCA coordinates come from the store when `fipgraph pca` recorded them (evals pca_pc1/pca_pc2).
When none are recorded, the UI fits its own WeightPCA on a background thread (record=False: the
UI never writes), draws the lineage until it is done, and places nodes appended later with the
fitted estimator's transform, so a live build's new nodes land in the same basis.
"""

from __future__ import annotations

import threading

import numpy as np

from fipgraph.errors import FipgraphError

# the gram route of WeightPCA handles a few thousand nodes in seconds; beyond that a fit would run
# for minutes on a laptop, so the UI asks the user to record coordinates with `fipgraph pca`
PCA_FIT_MAX_NODES = 4000
# ... and up to this many weights in all (nodes × parameters): the fit reads every weight of every node,
# so 8 nodes of a 135M-parameter LM already take minutes; such stores record PCA over a few layers
PCA_FIT_MAX_WEIGHTS = 10**9
# nodes placed by transform per request: each reads one node's weights (~1-10 ms)
TRANSFORM_PER_REQUEST = 500
# a request waits this long for a fit it started, so a small store opens in PCA at once
PCA_WAIT_S = 3.0
# memory the UI's own PCA may use before spilling weight columns to a temporary file
PCA_MAX_MEMORY = 512 * 2**20


def depths(parent_index: np.ndarray) -> np.ndarray:
    """Hops from the root for each node; parents precede children (a parent exists before its child)."""
    out = np.zeros(len(parent_index), np.int64)
    for i, p in enumerate(parent_index.tolist()):
        if p >= 0:
            out[i] = out[p] + 1
    return out


def branch_lanes(parent_index: np.ndarray) -> np.ndarray:
    """A lane (row) per branch: a branch is a chain cut at every fork; lanes are numbered depth-first,
    so each branch sits just below the branch it forks from."""
    n = len(parent_index)
    children: list[list[int]] = [[] for _ in range(n)]
    for i, p in enumerate(parent_index.tolist()):
        if p >= 0:
            children[p].append(i)
    lanes = np.zeros(n, np.int64)
    next_lane = 0
    stack = [i for i in range(n - 1, -1, -1) if parent_index[i] < 0]  # roots, lowest id on top
    while stack:
        start = stack.pop()
        node = start
        lanes[node] = next_lane
        while len(children[node]) == 1:  # follow the chain to a leaf or a fork
            node = children[node][0]
            lanes[node] = next_lane
        next_lane += 1
        stack.extend(reversed(children[node]))
    return lanes


def lineage_layout(parent_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x = hops from the root, y = branch lane (first branch on top)."""
    return depths(parent_index).astype(np.float64), -branch_lanes(parent_index).astype(np.float64)


def place_at_ancestors(x: np.ndarray, y: np.ndarray, parent_index: np.ndarray) -> np.ndarray:
    """Fill NaN coordinates with the nearest placed ancestor's (in place); returns the mask of filled ones."""
    missing = np.isnan(x) | np.isnan(y)
    for i in np.flatnonzero(missing).tolist():
        p = parent_index[i]
        if p >= 0 and not np.isnan(x[p]):  # parents come first, so p is already filled if it can be
            x[i], y[i] = x[p], y[p]
    return missing & ~np.isnan(x)


class PcaPlacer:
    """The UI's own weight-space PCA, fitted in the background and extended by transform.

    While a build grows the store, the fit is redone (in the background) each time the node count
    doubles, so the basis is not the one of the first few nodes; in between, new nodes are placed
    with the current estimator. Amortised, that reads each node's weights a constant number of times.
    """

    def __init__(self, open_reader, max_nodes: int = PCA_FIT_MAX_NODES,
                 max_weights: int = PCA_FIT_MAX_WEIGHTS) -> None:
        self._open_reader = open_reader  # a fresh read-only Store for the fit thread
        self.max_nodes = max_nodes
        self.max_weights = max_weights
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()  # set by close(): a fit that fails because the UI shut down is no error
        self.estimator = None
        self.coords: dict[int, tuple[float, float]] = {}
        self.error: str | None = None  # why the UI cannot fit PCA for this store (it then shows lineage)
        self._too_few = False
        self.generation = 0  # bumps when coordinates appear, so polling pages redraw

    def status(self) -> str:
        if self.error:
            return self.error
        if self.estimator is not None:
            ratio = self.estimator.explained_variance_ratio_
            return f"the UI's own PCA of {len(self.estimator.nodes_)} nodes (explained variance {ratio[0]:.0%}, {ratio[1]:.0%})"
        if self._too_few:
            return "weight-space PCA needs at least 2 nodes; lineage shown"
        return "computing weight-space PCA in the background; lineage shown until it is done"

    def start(self, node_ids: list[int], arch_ids: list[str], n_params: list[int] | None = None) -> None:
        """Begin a fit over `node_ids` unless one is running, the current one still fits, or none can be done.
        `n_params` (per node) bounds the weights a fit would read (max_weights)."""
        with self._lock:
            fitted = len(self.estimator.nodes_) if self.estimator is not None else 0
            busy = self._thread is not None and self._thread.is_alive()
            if self._closing.is_set() or self.error or busy or (fitted and len(node_ids) < 2 * fitted):
                return  # extend() places the newcomers
            self._too_few = len(node_ids) < 2
            if self._too_few:
                return
            cannot = self._cannot_fit(node_ids, arch_ids, n_params)
            if cannot and fitted:
                return  # a basis that still serves beats none: keep extending it
            if cannot:
                self.error = cannot
                return
            self._thread = threading.Thread(target=self._fit, args=(list(node_ids),), daemon=True, name="ui-pca")
            self._thread.start()

    def _cannot_fit(self, node_ids: list[int], arch_ids: list[str], n_params: list[int] | None) -> str | None:
        """Why the UI leaves PCA over these nodes to `fipgraph pca` (None: it fits it itself)."""
        n = len(node_ids)
        if n > self.max_nodes:
            return (f"{n:,} nodes and no recorded PCA coordinates: the UI fits PCA itself up to "
                    f"{self.max_nodes:,} nodes. Record them once with `fipgraph pca --store …`; lineage shown")
        weights = int(sum(n_params)) if n_params is not None else 0
        if weights > self.max_weights:
            return (f"{n:,} nodes of {weights / n:,.0f} parameters and no recorded PCA coordinates: too many weights "
                    f"for the UI to fit PCA itself ({weights:,} > {self.max_weights:,}). Record them once with "
                    "`fipgraph pca --store … --params …` (a few layers); lineage shown")
        if len(set(arch_ids)) > 1:
            return ("the store holds several architectures; record PCA coordinates per architecture with "
                    "`fipgraph pca --nodes …`; lineage shown")
        return None

    def wait(self, seconds: float = PCA_WAIT_S) -> None:
        """Give a first fit up to `seconds` to finish (a small store then opens in PCA at once)."""
        thread = self._thread
        if thread is not None and self.estimator is None:
            thread.join(seconds)

    def _fit(self, node_ids: list[int]) -> None:
        from fipgraph.query.pca import WeightPCA

        try:
            with self._open_reader() as store:
                pca = WeightPCA(2, nodes=node_ids, record=False, progress=False,
                                max_memory=PCA_MAX_MEMORY).fit(store)
            with self._lock:  # a new basis: every old coordinate goes
                self.coords = {n: (float(a), float(b)) for n, (a, b) in zip(pca.nodes_, pca.coords_)}
                self.estimator = pca
                self.generation += 1
        except (FipgraphError, MemoryError, OSError) as exc:
            self.error = f"weight-space PCA failed ({exc}); lineage shown"
            self.generation += 1
        except Exception:
            if not self._closing.is_set():
                raise

    def close(self, timeout: float = 10.0) -> None:
        """Stop starting fits and wait up to `timeout` s for a running one (it reads the store's files)."""
        with self._lock:
            self._closing.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def extend(self, store, node_ids: list[int]) -> None:
        """Place up to TRANSFORM_PER_REQUEST nodes appended since the fit (same basis)."""
        estimator = self.estimator
        if estimator is None:
            return
        new = [n for n in node_ids if n not in self.coords][:TRANSFORM_PER_REQUEST]
        if not new:
            return
        try:
            placed = dict(zip(new, estimator.transform(store, nodes=new).tolist()))
        except FipgraphError:  # e.g. a node of another architecture: place one by one, NaN where it fails
            placed = {}
            for n in new:
                try:
                    placed[n] = estimator.transform(store, nodes=[n])[0].tolist()
                except FipgraphError:
                    placed[n] = [float("nan"), float("nan")]  # drawn at its nearest placed ancestor
        with self._lock:
            if self.estimator is estimator:  # a refit that finished meanwhile has its own coordinates
                self.coords.update({n: (float(a), float(b)) for n, (a, b) in placed.items()})
