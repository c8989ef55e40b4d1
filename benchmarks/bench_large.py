"""Large nodes (issue 14 §1): SmolLM2-135M (134.5M float32 weights, 538 MB a node) in the store.

    python benchmarks/bench_large.py                   # prepare + build (6 synchronous + 50 saved steps) + reads
    python benchmarks/bench_large.py --steps 12        # a shorter build
    python benchmarks/bench_large.py --only profile    # where the writer's time goes, codec variants side by side

Each phase runs in its own process so its peak RSS is its own:
- ``build``: the model, a frozen reference copy and Adam state (what a FIP build holds) are set up and
  measured (the baseline); then each step is a real forward/backward on 64 random tokens and an Adam
  step. The first ``--sync`` nodes are appended and committed one by one (flush per node: the
  append + commit time per node); the next ``--steps`` are appended as a build does (the writer works
  in the background, flush at the end). RSS is sampled every 20 ms; peak minus baseline is reported.
- ``read``: a fresh read-only process reads every node one after another (time per node, RSS added),
  then the deepest node of a chain alone in another fresh process (the worst "read any node"), then two
  layers of it with ``state_dict(node, params=[...])``.
- ``profile``: the writer's stages on real consecutive SmolLM2 steps, timed one by one, and the
  blosc variants (shuffle / bitshuffle, zstd-1 / lz4) with their bytes.
The machine is shared: every phase records ``os.getloadavg()`` beside its numbers.
Writes benchmarks/results/large.json; scratch under benchmarks/_work/large-<pid>/ (removed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "large.json"


class PeakRSS:
    """Samples this process's resident set every ``every`` seconds (getrusage's peak includes set-up)."""

    def __init__(self, every: float = 0.02) -> None:
        import psutil

        self.proc, self.every, self.peak, self._stop = psutil.Process(), every, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        return self.proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.every)

    def __enter__(self) -> "PeakRSS":
        self.peak = self.now()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.now())


def load_model(work: Path):
    """SmolLM2 from the prepared config + weights (1-2 s instead of the GGUF's ~20-40 s)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig.from_json_file(work / "config.json"))
    model.load_state_dict(torch.load(work / "weights.pt", weights_only=True))
    model.tie_weights()  # lm_head shares the embedding, as in the GGUF model
    return model


def phase_prepare(work: Path) -> dict:
    import torch

    from fipgraph.models.hf import smollm2

    model = smollm2()  # a GGUF-dequantised model refuses save_pretrained: keep its config and weights
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (work / "config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), work / "weights.pt")
    return {}


def train_step(model, opt, gen) -> None:
    import torch

    ids = torch.randint(0, model.config.vocab_size, (1, 64), generator=gen)
    opt.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()


def phase_build(work: Path, steps: int, sync: int, keyframe_every: int) -> dict:
    import copy

    import torch

    import fipgraph

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = load_model(work)
    reference = copy.deepcopy(model).requires_grad_(False)  # a FIP build's frozen reference
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    train_step(model, opt, gen)  # allocates Adam's two moments
    opt.zero_grad(set_to_none=True)
    from fipgraph.storage.layout import Layout

    raw = Layout.of(model.state_dict()).n_params * 4  # float32; the tied lm_head counted once, as stored
    out = {"raw_bytes_per_node": raw, "loadavg_start": os.getloadavg()}
    with PeakRSS() as rss:
        out["baseline_rss"] = rss.now()  # model + reference + optimizer state
        with fipgraph.open_store(work / "store", keyframe_every=keyframe_every) as store:
            parent, ids, sync_s, append_s, train_s = None, [], [], [], []
            for i in range(sync + steps):
                t = time.perf_counter()
                train_step(model, opt, gen)
                opt.zero_grad(set_to_none=True)  # gradients are not part of a saved step
                train_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                parent = store.append(model, parent=parent, step=i)
                append_s.append(time.perf_counter() - t)
                if i < sync:
                    store.flush()
                    sync_s.append(time.perf_counter() - t)
                ids.append(parent)
            t = time.perf_counter()
            store.flush()
            out["final_flush_s"] = time.perf_counter() - t
            out["writer_stalled_s"] = store._writer.stalled_seconds
            out["store_rows"] = store.sql("SELECT node_id, encoding, chain_depth, stored_bytes FROM storage "
                                          "ORDER BY node_id").to_dict("list")
        out["build_wall_s"] = sum(train_s) + sum(append_s) + out["final_flush_s"]
    out.update(peak_rss=rss.peak, ids=ids, sync_append_commit_s=sync_s, append_s=append_s, train_s=train_s,
               loadavg_end=os.getloadavg())
    out["peak_minus_baseline"] = rss.peak - out["baseline_rss"]
    return out


def phase_read_all(work: Path) -> dict:
    import fipgraph

    times = []
    with PeakRSS() as rss, fipgraph.open_store(work / "store", mode="r") as store:
        base = rss.now()
        ids = store.sql("SELECT node_id FROM nodes ORDER BY node_id")["node_id"].tolist()
        for n in ids:
            t = time.perf_counter()
            state = store.state_dict(n)
            times.append(time.perf_counter() - t)
            if n == ids[0]:
                after_first = rss.now()
            del state
    return {"read_s": times, "rss_before": base, "rss_after_first": after_first, "peak_rss": rss.peak,
            "added_over_first": rss.peak - after_first, "loadavg": os.getloadavg()}


def phase_read_one(work: Path, params: bool) -> dict:
    import fipgraph

    with PeakRSS() as rss, fipgraph.open_store(work / "store", mode="r") as store:
        base = rss.now()
        deepest = store.sql("SELECT node_id, chain_depth FROM storage ORDER BY chain_depth DESC, node_id LIMIT 1")
        node, depth = int(deepest["node_id"][0]), int(deepest["chain_depth"][0])
        names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.29.mlp.down_proj.weight"] if params else None
        t = time.perf_counter()
        state = store.state_dict(node, params=names)
        seconds = time.perf_counter() - t
        nbytes = sum(v.numel() * v.element_size() for v in state.values())
    return {"node": node, "chain_depth": depth, "params": names, "seconds": seconds, "returned_bytes": nbytes,
            "rss_added": rss.peak - base, "loadavg": os.getloadavg()}


def _timed(fn, repeat: int = 2) -> tuple[float, object]:
    """Best of ``repeat`` wall times (the machine is shared: the best is the least disturbed)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def phase_profile(work: Path) -> dict:
    """The writer's stages on one real SmolLM2 node (a pred row: step 3 against steps 2 and 1), each
    timed alone, and the blosc variants on its residual, chunked as the store chunks it."""
    import numcodecs
    import torch

    from fipgraph.storage import codec, weights, writer
    from fipgraph.storage.layout import Layout
    from fipgraph.storage.reader import checksum

    gen = torch.Generator().manual_seed(0)
    model = load_model(work)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    layout, rows = Layout.of(model.state_dict()), []
    for _ in range(3):
        train_step(model, opt, gen)
        rows.append(layout.pack(model.state_dict()))
    out = {"loadavg_start": os.getloadavg(), "raw_bytes": int(rows[0]["float32"].nbytes)}
    out["pack_s"], _ = _timed(lambda: layout.pack(model.state_dict()))
    out["encode_pred_s"], enc = _timed(lambda: codec.encode(layout, rows[2], rows[1], rows[0], "pred"))
    out["float_stats_s"], _ = _timed(lambda: writer.float_stats(layout, rows[2], rows[1]))
    out["checksum_s"], _ = _timed(lambda: checksum(layout, rows[2]))
    residual = enc.arrays["float32"]
    step = weights._chunk_len(residual.size)
    chunks = [residual[i:i + step] for i in range(0, residual.size, step)]
    variants = {}
    for cname, shuffle, block in [("zstd", numcodecs.Blosc.SHUFFLE, 0), ("zstd", numcodecs.Blosc.SHUFFLE, 1 << 20),
                                  ("zstd", numcodecs.Blosc.BITSHUFFLE, 0), ("lz4", numcodecs.Blosc.SHUFFLE, 0),
                                  ("lz4", numcodecs.Blosc.BITSHUFFLE, 0)]:
        codec_ = numcodecs.Blosc(cname=cname, clevel=1, shuffle=shuffle, blocksize=block)
        for threads in (1, 2):
            numcodecs.blosc.set_nthreads(threads)
            secs, packed = _timed(lambda: [codec_.encode(c) for c in chunks])
            dsecs, _ = _timed(lambda: [codec_.decode(b) for b in packed])
            name = (f"{cname}-1 {'bit' if shuffle == numcodecs.Blosc.BITSHUFFLE else 'byte'}shuffle"
                    f"{' 1MiB-blocks' if block else ''} x{threads}")
            variants[name] = {"compress_s": secs, "decompress_s": dsecs,
                              "ratio": sum(len(b) for b in packed) / residual.nbytes}
    numcodecs.blosc.set_nthreads(1)
    out["blosc"] = variants
    arrays = weights.WeightArrays(work / "profile.zarr", read_only=False)
    # the store's own chunk I/O (direct Blosc frames, chunks in parallel) beside zarr's pipeline, same array
    out["store_write_row_s"], _ = _timed(lambda: arrays.write_rows("a", "float32", 0, residual[None]))
    out["store_read_row_s"], _ = _timed(lambda: arrays.read_row("a", 0, {"float32": (np.uint32, residual.size)}))
    zarr_array = arrays.array("a", "float32")
    out["zarr_pipeline_write_row_s"], _ = _timed(lambda: zarr_array.__setitem__(1, residual))
    out["zarr_pipeline_read_row_s"], _ = _timed(lambda: zarr_array[1])
    out["decode_pred_s"], _ = _timed(lambda: codec.decode_step(layout, enc.arrays, rows[1], rows[0], "pred"))
    out["loadavg_end"] = os.getloadavg()
    return out


def run_phase(name: str, work: Path, args) -> dict:
    """One phase in a fresh interpreter (its own peak RSS), results through a JSON file."""
    result = work / f"{name}.json"
    cmd = [sys.executable, __file__, "--phase", name, "--work", str(work), "--steps", str(args.steps),
           "--sync", str(args.sync), "--keyframe-every", str(args.keyframe_every), "--out", str(result)]
    subprocess.run(cmd, check=True)
    return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50, help="saved steps of the build phase")
    p.add_argument("--sync", type=int, default=6, help="nodes appended and committed one by one first")
    p.add_argument("--keyframe-every", type=int, default=32, help="the store's keyframe_every: a read decodes up to "
                   "this many rows (4: every read <= 2 s on 2 cores, at more bytes)")
    p.add_argument("--only", choices=["profile"], default=None)
    p.add_argument("--keep", action="store_true", help="keep the scratch store")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help="scratch folder (reused with --keep: skips the GGUF load)")
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:  # a child process
        phases = {"prepare": lambda: phase_prepare(args.work),
                  "build": lambda: phase_build(args.work, args.steps, args.sync, args.keyframe_every),
                  "read_all": lambda: phase_read_all(args.work),
                  "read_one": lambda: phase_read_one(args.work, params=False),
                  "read_params": lambda: phase_read_one(args.work, params=True),
                  "profile": lambda: phase_profile(args.work)}
        args.out.write_text(json.dumps(phases[args.phase]()))
        return
    work = args.work or ROOT / "benchmarks" / "_work" / f"large-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "store", ignore_errors=True)
    shutil.rmtree(work / "profile.zarr", ignore_errors=True)
    try:
        results = {"uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
        if not (work / "weights.pt").is_file():  # --work DIR of an earlier --keep run reuses its weights
            results["prepare"] = run_phase("prepare", work, args)
        names = ["profile"] if args.only == "profile" else ["build", "read_all", "read_one", "read_params"]
        for name in names:
            results[name] = run_phase(name, work, args)
            print(name, json.dumps(summary(name, results[name])), flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        target = RESULTS.with_suffix(".profile.json") if args.only else RESULTS
        target.write_text(json.dumps(results, indent=1))
        print("wrote", target)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def summary(name: str, r: dict) -> dict:
    """The few numbers the targets are about (the JSON keeps everything)."""
    gb = 1e9
    if name == "build":
        sync = r["sync_append_commit_s"]
        return {"append_commit_s_median": sorted(sync)[len(sync) // 2] if sync else None,
                "append_commit_s": [round(s, 2) for s in sync],
                "MB_per_s_raw": r["raw_bytes_per_node"] / 1e6 / (sorted(sync)[len(sync) // 2]) if sync else None,
                "snapshot_s_median": sorted(r["append_s"])[len(r["append_s"]) // 2],
                "train_s_median": sorted(r["train_s"])[len(r["train_s"]) // 2],
                "final_flush_s": r["final_flush_s"], "build_wall_s": r["build_wall_s"],
                "baseline_GB": r["baseline_rss"] / gb, "peak_GB": r["peak_rss"] / gb,
                "peak_minus_baseline_GB": r["peak_minus_baseline"] / gb,
                "store_GB": sum(r["store_rows"]["stored_bytes"]) / gb,
                "bytes_ratio_vs_raw": sum(r["store_rows"]["stored_bytes"]) / (r["raw_bytes_per_node"] * len(r["ids"])),
                "loadavg": r["loadavg_end"]}
    if name == "read_all":
        t = r["read_s"]
        return {"read_s_median": sorted(t)[len(t) // 2], "read_s_max": max(t), "first_s": t[0],
                "added_over_first_GB": r["added_over_first"] / gb, "peak_GB": r["peak_rss"] / gb, "loadavg": r["loadavg"]}
    if name in ("read_one", "read_params"):
        return {k: r[k] for k in ("node", "chain_depth", "seconds", "returned_bytes", "loadavg")} | {
            "rss_added_GB": r["rss_added"] / gb}
    return r


if __name__ == "__main__":
    main()
