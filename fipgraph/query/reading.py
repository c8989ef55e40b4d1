"""Flat weight vectors of many nodes, decoded by several threads at once.

Reading dominates a weight-space PCA (1,000 nodes x 1M weights: ~12-18 ms per node, mostly zstd).
A Store decodes under one lock, so threads sharing it would take turns; each reader thread here
has its own read-only Store and reads a contiguous part of the node list in order, so delta chains
decode once per part, and zstd and numpy, which release the GIL, keep every core busy.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from fipgraph.query._common import flat_vector, iter_vectors

READ_AHEAD = 4  # decoded rows each reader may hold ahead of the consumer: bounds the extra memory
_DONE = object()


def _parts(n: int, k: int) -> list[tuple[int, int]]:
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def read_rows(store: Any, ids: Sequence[int], names: Sequence[str], n_readers: int = 2
              ) -> Iterator[tuple[int, np.ndarray]]:
    """(position in `ids`, float32 vector) for every node, in the order they are decoded (ids in
    one part keep their order; parts interleave). One reader (or a store without a path) reads in
    order on the caller's side with one node of read-ahead."""
    if n_readers <= 1 or len(ids) < 2 * n_readers or not hasattr(store, "root"):
        yield from enumerate(iter_vectors(store, ids, names))
        return
    from fipgraph.storage import open_store

    store.flush()  # other readers see committed nodes only
    rows: queue.Queue = queue.Queue(maxsize=READ_AHEAD * n_readers)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                rows.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work(start: int, stop_at: int, own: bool) -> None:
        try:
            reader = store if own else open_store(store.root, mode="r")
            try:
                for pos in range(start, stop_at):
                    if not put((pos, flat_vector(reader.state_dict(ids[pos]), names))):
                        return
            finally:
                if not own:
                    reader.close()
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            put(_DONE)

    parts = _parts(len(ids), n_readers)
    threads = [threading.Thread(target=work, args=(a, b, i == 0), daemon=True, name=f"fipgraph-read-{i}")
               for i, (a, b) in enumerate(parts)]
    for t in threads:
        t.start()
    try:
        running = len(threads)
        while running:
            item = rows.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        for t in threads:
            t.join()
