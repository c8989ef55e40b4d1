"""A writer process for crash and concurrency tests: appends deterministic networks forever.

Node weights are a pure function of the tag ``seed``, so a test can re-create what any committed
node must contain and compare bit for bit.
"""

import sys
import time

import torch

import fipgraph


def weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(64, 48, generator=g),
        "b": torch.randn(48, generator=g).half(),
        "count": torch.tensor(seed, dtype=torch.int64),
    }


def main(path: str, n: int, delay: float) -> None:
    with fipgraph.open_store(path, keyframe_every=4, commit_interval=0.02) as store:
        start = len(store)
        parent = int(store.sql("SELECT max(node_id) AS m FROM nodes")["m"].fillna(-1)[0])
        print("ready", flush=True)
        for i in range(n):
            seed = start + i
            parent = store.append(weights(seed), parent=None if parent < 0 else parent, step=seed,
                                  tags={"seed": seed}, metrics={"x": float(seed)})
            if delay:
                time.sleep(delay)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
