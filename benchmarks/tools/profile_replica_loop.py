"""Where the time of a batched replica build goes, per thread (issue 9, session 3).

One ``bench_engine`` build (lenet300 on MNIST, K = 8, finetune, save every 10) in a chosen mode, with
the replica loop's parts timed on the thread that runs them: each group's ``StackedWalks.step``
(wall and that thread's CPU), the build thread's ``after_step`` (saves, evaluations), the wait for the
other groups, and at the end every thread's CPU time (the store's writer thread included).

    python benchmarks/tools/profile_replica_loop.py --mode batched-2groups
    python benchmarks/tools/profile_replica_loop.py --mode sequential
"""

from __future__ import annotations

import argparse
import collections
import importlib
import os
import resource
import threading
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench_engine
import bench_engine as be  # noqa: E402

replicas = importlib.import_module("fipgraph.path.engine.replicas")
walk = importlib.import_module("fipgraph.path.engine.recipe")

WALL: dict[str, float] = collections.defaultdict(float)
CPU: dict[str, float] = collections.defaultdict(float)
CALLS: dict[str, int] = collections.defaultdict(int)
THREAD_CPU: dict[str, float] = {}


def timed(owner, name: str, label: str | None = None, per_thread: bool = False) -> None:
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        key = label or name
        if per_thread:
            key = f"{key}[{threading.current_thread().name}]"
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return real(*args, **kwargs)
        finally:
            WALL[key] += time.perf_counter() - t0
            CPU[key] += time.thread_time() - c0
            CALLS[key] += 1

    setattr(owner, name, wrapper)


def thread_cpu() -> dict[str, float]:
    out = {}
    for t in threading.enumerate():
        try:
            out[t.name] = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, TypeError):
            pass
    return out


def snapshot_threads(owner, name: str) -> None:
    """Record every live thread's CPU when ``owner.name`` returns (the writer is still alive there)."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        before, faults = thread_cpu(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        try:
            return real(*args, **kwargs)
        finally:
            for k, v in thread_cpu().items():
                THREAD_CPU[k] = THREAD_CPU.get(k, 0.0) + v - before.get(k, 0.0)
            THREAD_CPU["(page faults, count)"] = THREAD_CPU.get("(page faults, count)", 0) + \
                resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

    setattr(owner, name, wrapper)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="batched-2groups")
    p.add_argument("--model", default="lenet300")
    p.add_argument("--steps-scale", type=float, default=1.0)
    args = p.parse_args()
    timed(replicas.StackedWalks, "step", "group step", per_thread=True)
    timed(walk.RunRecipe, "after_step")
    timed(walk.RunRecipe, "evaluate")
    timed(walk.RunRecipe, "probe_logits")
    timed(walk.RunRecipe, "train_step")
    timed(replicas.StackedWalks, "streams")
    from fipgraph.path.engine import snapshot
    from fipgraph.storage import writer
    timed(writer.Writer, "_commit", "writer: catalog commit")
    timed(writer.Writer, "_write_weights", "writer: encode + write weights")
    timed(snapshot.NodeSaver, "save", "NodeSaver.save")
    # the loops are wrapped last, so the LoopClock of timed_build wraps these wrappers
    snapshot_threads(replicas, "_loop")
    snapshot_threads(walk.RunRecipe, "loop")
    steps = max(10, int(be.CASES[args.model]["steps"] * args.steps_scale))
    raw = be.config(args.model, 8, steps, "finetune", "cpu", "fp32", 10)
    load0 = os.getloadavg()[0]
    row = be.timed_build(raw, args.mode)
    print(f"{args.mode}: {row['nodes_per_s']:.2f} nodes/s, loop {row['loop_s']:.2f} s wall, "
          f"{row['loop_cpu_s']:.2f} s process CPU ({row['loop_cpu_s'] / row['loop_s']:.2f} cores); "
          f"load {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    for key in sorted(WALL):
        print(f"  {key:45s} {CALLS[key]:6d} calls  wall {WALL[key]:7.3f} s  thread CPU {CPU[key]:7.3f} s")
    print("  CPU per thread inside the loops:")
    for name, sec in sorted(THREAD_CPU.items(), key=lambda kv: -kv[1]):
        if sec > 0.005:
            print(f"    {name:40s} {sec:7.3f} s")


if __name__ == "__main__":
    main()
