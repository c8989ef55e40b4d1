"""How many cores a parallel benchmark started from this shell really gets (run it before benchmarks/bench_ray.py).

Times a fixed single-threaded torch workload in one process, then in N processes at once, and prints the
parallel speed-up. On an idle 2-core machine it is close to 2. It is much lower when another *session* is
busy, even at nice 19: with autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled`` = 1, the
default on desktop/VM kernels) nice only ranks processes within one session (terminal, tool shell), and
sessions share the CPU equally, so a background job at nice 19 in another session takes a full share from a
2-process benchmark while a 1-process one (a sequential build) hardly notices (measured in
git history of benchmarks/RESULTS.md, issue 12, session 3).

    python benchmarks/tools/cores_free.py [--procs 2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path


def _work(seconds: float, queue) -> None:
    """A fixed amount of work: about ``seconds`` of one free core on this VM (10,000 128x128 matmuls a second)."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(128, 128)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(int(seconds * 10000)):
        a = torch.tanh(a @ a)
    queue.put((time.perf_counter() - t0, time.process_time() - cpu0))


def _timed(procs: int, seconds: float) -> list[tuple[float, float]]:
    queue = mp.get_context("fork").Queue()
    workers = [mp.get_context("fork").Process(target=_work, args=(seconds, queue)) for _ in range(procs)]
    for w in workers:
        w.start()
    out = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    auto = Path("/proc/sys/kernel/sched_autogroup_enabled")
    group = Path("/proc/self/autogroup")
    print(f"autogroup scheduling: {auto.read_text().strip() if auto.exists() else 'n/a'}; this session: "
          f"{group.read_text().strip() if group.exists() else 'n/a'}; load average {os.getloadavg()[0]:.1f}")
    (alone, alone_cpu), = _timed(1, args.seconds)
    together = _timed(args.procs, args.seconds)
    wall = max(w for w, _ in together)
    print(f"1 process: {alone:.2f} s ({alone_cpu / alone:.2f} of a core); {args.procs} at once: "
          + ", ".join(f"{w:.2f} s ({c / w:.2f} of a core)" for w, c in together)
          + f" -> {sum(c for _, c in together) / wall:.2f} cores for this session's {args.procs} processes "
          f"(speed-up {args.procs * alone / wall:.2f}x)")


if __name__ == "__main__":
    main()
