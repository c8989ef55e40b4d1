"""How well does the lenet300 replica step itself scale to two threads on this machine? (issue 9, session 3)

The group step of ``replicas.StackedWalks`` without the build around it: K/2 stacked LeNet-300-100s,
batch 64 rows each, batched-matmul forward (plain ``baddbmm``, as before ``stacked.StackedLinear``),
per-walk cross-entropy, backward, fused Adam. Only meaningful on an otherwise idle machine. Times the same
number of steps for
  one:        one group in one thread (the other core idle),
  two:        two groups in two threads at once (each torch.set_num_threads(1)), barrier-free,
  two-sync:   the same, but both threads meet after every step (as replicas._loop did before session 3),
  intra2:     one group of K walks on 2 intra-op threads,
and prints steps/s per group and the two-thread speedup over one thread doing both groups' work.
Also times the Python-only part: the same step on 1-row, 1-feature tensors (the dispatcher and Python
overhead, which holds the GIL).

    python benchmarks/tools/probe_two_cores.py --steps 300
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time

import torch
import torch.nn.functional as F


def make_group(k: int, dims: list[int], rows: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    weights = []
    for a, b in zip(dims[:-1], dims[1:]):
        weights.append(torch.nn.Parameter(torch.randn(k, b, a, generator=gen) * a ** -0.5))
        weights.append(torch.nn.Parameter(torch.zeros(k, b)))
    opt = torch.optim.Adam(weights, lr=1e-3, fused=True)
    x = torch.randn(k, rows, dims[0], generator=gen)
    y = torch.randint(0, dims[-1], (k, rows), generator=gen)
    return weights, opt, x, y


def step(weights, opt, x, y) -> None:
    h = x
    n = len(weights) // 2
    for i in range(n):
        w, b = weights[2 * i], weights[2 * i + 1]
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < n - 1:
            h = torch.relu(h)
    k, rows, c = h.shape
    loss = F.cross_entropy(h.reshape(k * rows, c), y.reshape(-1), reduction="none").view(k, rows).mean(1).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def run_threads(groups, steps: int, sync: bool) -> float:
    barrier = threading.Barrier(len(groups)) if sync else None

    def work(g):
        torch.set_num_threads(1)
        for _ in range(steps):
            step(*g)
            if barrier is not None:
                barrier.wait()

    threads = [threading.Thread(target=work, args=(g,)) for g in groups]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    dims = [784, 300, 100, 10]
    half = args.k // 2
    print(f"load {os.getloadavg()[0]:.2f}; K={args.k} as 2 groups of {half}, {args.rows} rows, {args.steps} steps")
    for r in range(args.rounds):
        groups = [make_group(half, dims, args.rows, s) for s in (0, 1)]
        big = make_group(args.k, dims, args.rows, 2)
        for g in groups:  # warm-up
            step(*g)
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            for g in groups:
                step(*g)
        one = time.perf_counter() - t0
        two = run_threads(groups, args.steps, sync=False)
        two_sync = run_threads(groups, args.steps, sync=True)
        torch.set_num_threads(2)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(*big)
        intra2 = time.perf_counter() - t0
        torch.set_num_threads(1)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        run_threads(groups, args.steps, sync=False)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (2 * args.steps)
        tiny = [make_group(half, [1, 1, 1, 1], 1, s) for s in (0, 1)]
        t0 = time.perf_counter()
        for _ in range(args.steps):
            for g in tiny:
                step(*g)
        python = time.perf_counter() - t0
        ms = 1e3 / args.steps
        print(f"round {r}: one thread both groups {one * ms:.2f} ms/step | two threads {two * ms:.2f} "
              f"({one / two:.2f}x) | two threads + barrier {two_sync * ms:.2f} ({one / two_sync:.2f}x) | "
              f"1 group of {args.k} on 2 intra-op threads {intra2 * ms:.2f} ({one / intra2:.2f}x) | "
              f"Python/dispatch only (tiny tensors) {python * ms:.2f} ms/step; {faults:.0f} page faults per group step in two threads (load {os.getloadavg()[0]:.2f})",
              flush=True)


if __name__ == "__main__":
    main()
