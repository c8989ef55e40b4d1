"""Save every step, one code version per process, for side-by-side A/B runs on a shared machine (issue 10).

    for r in 1 2 3; do
      PYTHONPATH=$PWD python benchmarks/tools/ab_save_every_step.py --no-save   # no saving
      PYTHONPATH=$PWD python benchmarks/tools/ab_save_every_step.py             # this checkout
      PYTHONPATH=../other-checkout python benchmarks/tools/ab_save_every_step.py
    done

Prints one JSON line: wall seconds of 200 (``--steps``) Adam steps of the 1M-parameter MLP (bench_store.py's workload, one
torch thread) plus flush and close, process CPU per step, the training thread's CPU per step, the median CPU of
``append()`` and the writer thread's own CPU per node. CPU seconds are what a loaded machine inflates least.
``fipgraph`` is imported before bench_store (which puts this checkout first on sys.path), so PYTHONPATH decides.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

import fipgraph  # noqa: F401  (first: PYTHONPATH picks the code under test)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench_store
import bench_store as B  # noqa: E402
from fipgraph.data import make_tasks  # noqa: E402



def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=int(os.environ.get("STEPS", 200)),
                    help="saved steps (1000: the store's close, ~0.5 s, amortised as in a real build)")
    ap.add_argument("--no-save", action="store_true", default=bool(os.environ.get("NOSAVE")),
                    help="train without a store (the baseline)")
    args = ap.parse_args(argv)
    STEPS = args.steps
    torch.set_num_threads(1)
    model, step = B.make_trainer(make_tasks("digits", seed=0)[0], "adam")
    for _ in range(5):  # warm-up
        step()
    path = B.WORK / "ab"
    shutil.rmtree(path, ignore_errors=True)
    store = None if args.no_save else fipgraph.open_store(path)
    prev, append_cpu, train_cpu = None, [], 0.0
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(STEPS):
        c = time.thread_time()
        loss = step()
        train_cpu += time.thread_time() - c
        if store is not None:
            c = time.thread_time()
            prev = store.append(model, parent=prev, step=i, metrics={"loss": loss})
            append_cpu.append(time.thread_time() - c)
    writer_cpu = 0.0
    if store is not None:
        store.flush()
        writer_cpu = time.clock_gettime(time.pthread_getcpuclockid(store._writer.ident))
        store.close()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    shutil.rmtree(B.WORK, ignore_errors=True)
    print(json.dumps({
        "code": str(Path(fipgraph.__file__).parent), "save": store is not None, "wall_s": wall,
        "process_cpu_ms_per_step": 1e3 * (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / STEPS,
        "train_cpu_ms_per_step": 1e3 * train_cpu / STEPS,
        "append_cpu_ms_median": 1e3 * statistics.median(append_cpu) if append_cpu else 0.0,
        "writer_cpu_ms_per_node": 1e3 * writer_cpu / STEPS, "load_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
