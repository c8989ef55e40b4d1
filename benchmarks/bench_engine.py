"""Run-engine throughput: K replica walks batched in one process vs K walks one after another.

    python benchmarks/bench_engine.py                       # (a) CPU, mlp + lenet300 + cnn5, ~10 min on 2 cores
    python benchmarks/bench_engine.py --models mlp --rounds 1 --steps-scale 0.2   # a quick look
    python benchmarks/bench_engine.py --modes sequential batched-2groups          # only these modes
    python benchmarks/bench_engine.py --gpu                 # (b) where CUDA exists (refuses without it)
    python benchmarks/bench_engine.py --gpu --device cpu --steps-scale 0.05       # (b)'s code path, smoke test

(a) K = 8 replicas of one run (``replicas = 8``) vs the same 8 walks one at a time, one torch thread
    each as builds run today (``fipgraph build --threads 1``). Both are whole ``fipgraph.path.build``
    calls into a fresh store; the figure is nodes per second of the walking loops (steps, saves and
    the evaluations inside the loop; data loading and model set-up, the same in both, are left out).
    Batched modes (MODES): the step as before this change (vmap for every model, one thread), with
    the MLP forward as batched matmuls on one thread, on two intra-op threads, and as two groups of
    K/2 stepped in two threads (what a build picks while the machine is otherwise idle:
    replicas.cpu_plan), which separates the one-core gain from the second core's. Rounds alternate
    the modes; medians are reported.
(b) On a GPU: K = 8 and K = 64 replicas vs sequential walks (the sequential rate is measured on 8
    walks: every walk costs the same); a FIP walk's step vs a plain PyTorch training loop with the
    same model, batch size and precision; nodes per second while saving every step.
Results go to benchmarks/results/engine_cpu.json (a) and engine_gpu.json (b).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import fipgraph
from fipgraph.path import ReplicaSettings, build
from fipgraph.path.config.schema import build_config

replicas_mod = importlib.import_module("fipgraph.path.engine.replicas")
walk_mod = importlib.import_module("fipgraph.path.engine.recipe")
RESULTS = Path(__file__).parent / "results"

# model, data and batch per case; steps are per walk (scaled by --steps-scale)
CASES = {
    "mlp": {"model": {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [128], "n_classes": 10}},
            "data": {"source": "digits", "split": [list(range(10))]}, "batch_size": 32, "steps": 400},
    "lenet300": {"model": {"name": "lenet300", "kwargs": {}},
                 "data": {"source": "mnist", "split": [list(range(10))]}, "batch_size": 64, "steps": 200},
    "cnn5": {"model": {"name": "cnn5", "kwargs": {"n_classes": 10}},
             "data": {"source": "digits", "split": [list(range(10))]}, "batch_size": 32, "steps": 150},
}


class LoopClock:
    """Wall and process-CPU seconds inside the walking loops (RunRecipe.loop one at a time,
    replicas._loop batched). CPU seconds are the steadier figure on a shared machine; with two
    threads they also count the time threads spend waiting for each other."""

    TIMED = ((walk_mod.RunRecipe, "loop"), (replicas_mod, "_loop"))

    def __init__(self) -> None:
        self.seconds = self.cpu_seconds = 0.0
        self._saved = {}

    def _timed(self, fn):
        def wrapper(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.cpu_seconds += time.process_time() - c0
        return wrapper

    def __enter__(self) -> "LoopClock":
        for owner, name in self.TIMED:
            self._saved[owner, name] = getattr(owner, name)
            setattr(owner, name, self._timed(getattr(owner, name)))
        return self

    def __exit__(self, *exc) -> None:
        for (owner, name), fn in self._saved.items():
            setattr(owner, name, fn)


def config(case: str, k: int, steps: int, op: str, device: str, precision: str, save_every: int) -> dict:
    c = CASES[case]
    run = {"name": "walk", "op": op, "task": 1, "steps": steps, "replicas": k, "batch_size": c["batch_size"],
           "save_every": save_every, "eval_every": 10**9, "probe_size": 32, "memory_size": 500,
           "memory_batch_size": 64, "device": device, "precision": precision}
    return {"name": f"bench-{case}", "data": {**c["data"], "seed": 0}, "model": c["model"], "runs": [run]}


# mode: (groups, intra-op threads per group, MLPs as batched matmuls); None: the build's own choice
MODES = {"batched": None, "batched-vmap-1thread": (1, 1, False), "batched-1thread": (1, 1, True),
         "batched-2threads": (1, 2, True), "batched-2groups": (2, 1, True)}
DEFAULT_MODES = ["sequential", "batched-vmap-1thread", "batched-1thread", "batched-2groups"]


def replica_settings(mode: str) -> ReplicaSettings:
    """The engine settings of one mode: sequential (the baseline), the build's own choice, or MODES' forcing."""
    if mode == "sequential":
        return ReplicaSettings(batch=False)
    if MODES[mode] is None:
        return ReplicaSettings()
    groups, threads, fast_mlp = MODES[mode]
    return ReplicaSettings(groups=groups, threads=threads, fast_mlp=fast_mlp)


def timed_build(raw: dict, mode: str) -> dict:
    """One whole build into a fresh store; mode: sequential or one of MODES."""
    store = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    settings = replica_settings(mode)
    torch.set_num_threads(1)  # builds run one thread by default; a batched CPU step raises it itself
    try:
        t0 = time.perf_counter()
        with LoopClock() as clock:
            result = build(build_config(raw), store, progress=False, replica_settings=settings)
        wall = time.perf_counter() - t0
        with fipgraph.open_store(store, "r") as s:
            nodes = int(s.sql("SELECT count(*) AS n FROM nodes WHERE step > 0")["n"][0])
    finally:
        shutil.rmtree(store, ignore_errors=True)
    assert result.status == "finished", result.status
    steps = sum(r.steps_done for r in result.runs)
    return {"mode": mode, "wall_s": wall, "loop_s": clock.seconds, "loop_cpu_s": clock.cpu_seconds, "nodes": nodes,
            "steps": steps, "nodes_per_s": nodes / clock.seconds, "steps_per_s": steps / clock.seconds,
            "nodes_per_cpu_s": nodes / clock.cpu_seconds}


def cpu_section(args) -> dict:
    out = {}
    for case in args.models:
        steps = max(10, int(CASES[case]["steps"] * args.steps_scale))
        raw = config(case, args.k, steps, args.op, "cpu", "fp32", args.save_every)
        modes = args.modes or ["sequential", *(f"batched-{t}thread{'s' * (t > 1)}" for t in args.threads)]
        rows = {m: [] for m in modes}
        for r in range(args.rounds):
            for mode in rows:
                rows[mode].append(timed_build(raw, mode))
                row = rows[mode][-1]
                print(f"{case} round {r} {mode}: {row['nodes_per_s']:.2f} nodes/s, {row['nodes_per_cpu_s']:.2f} "
                      f"nodes/CPU-s ({row['loop_s']:.1f} s in loops, load {os.getloadavg()[0]:.1f})", flush=True)
        med = {m: statistics.median(x["nodes_per_s"] for x in v) for m, v in rows.items()}
        cpu = {m: statistics.median(x["nodes_per_cpu_s"] for x in v) for m, v in rows.items()}
        base, base_cpu = med.get("sequential", float("nan")), cpu.get("sequential", float("nan"))
        speedup = {m: v / base for m, v in med.items() if m != "sequential"}
        cpu_speedup = {m: v / base_cpu for m, v in cpu.items() if m != "sequential"}
        out[case] = {"steps_per_walk": steps, "k": args.k, "rows": rows, "median_nodes_per_s": med,
                     "median_nodes_per_cpu_s": cpu, "speedup": speedup, "cpu_speedup": cpu_speedup}
        print(f"== {case} vs sequential: " + ", ".join(f"{m} {v:.2f}x ({cpu_speedup[m]:.2f}x per CPU-s)"
                                                       for m, v in speedup.items()), flush=True)
    return out


def plain_loop_step_s(case: str, device: torch.device, precision: str, steps: int) -> float:
    """Seconds per step of a plain PyTorch loop: same model, batch size, data, optimizer and precision."""
    from fipgraph.data import make_tasks
    from fipgraph.device import autocast, grad_scaler
    from fipgraph.models import build_model

    c = CASES[case]
    task = make_tasks(c["data"]["source"], split=c["data"]["split"], seed=0, head="single")[0]
    torch.manual_seed(0)
    model = build_model(c["model"]).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = grad_scaler(device, precision)
    loader = task.train_loader(c["batch_size"], 0, pin_memory=device.type == "cuda")
    batches, done, t0 = iter(loader), 0, 0.0
    while done < steps + 10:
        try:
            b = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        if done == 10:  # warm-up steps are not counted
            _sync(device)
            t0 = time.perf_counter()
        x, y = b["x"].to(device, non_blocking=True), b["labels"].to(device, non_blocking=True)
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        done += 1
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_section(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA (torch.cuda.is_available() is False here); "
                         "pass --device cpu to smoke-test this section's code path")
    case, out = "lenet300", {"device": str(device), "precision": args.precision}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    steps = max(10, int(CASES[case]["steps"] * args.steps_scale))
    seq = timed_build(config(case, min(8, args.k), steps, args.op, args.device, args.precision, args.save_every), "sequential")
    out["sequential"] = seq
    for k in (8, 64):
        b = timed_build(config(case, k, steps, args.op, args.device, args.precision, args.save_every), "batched")
        out[f"batched_k{k}"] = {**b, "speedup": b["nodes_per_s"] / seq["nodes_per_s"], "target": 0.6 * k}
        print(f"K={k}: {b['nodes_per_s']:.1f} nodes/s, {out[f'batched_k{k}']['speedup']:.1f}x sequential "
              f"(target >= {0.6 * k:.1f}x)", flush=True)
    # a FIP walk's step (finetune: the same loss as the plain loop) vs the plain loop: the time inside
    # RunRecipe.train_step (batches, seeds, forward, backward, optimizer; its float(loss) syncs the GPU),
    # first 10 steps left out as warm-up, so saves and evaluations are not in it
    fip_steps: list[float] = []
    real = walk_mod.RunRecipe.train_step

    def timed_step(recipe, stream):
        t0 = time.perf_counter()
        out = real(recipe, stream)
        fip_steps.append(time.perf_counter() - t0)
        return out

    walk_mod.RunRecipe.train_step = timed_step
    try:
        timed_build(config(case, 1, steps + 10, "finetune", args.device, args.precision, 10**9), "sequential")
    finally:
        walk_mod.RunRecipe.train_step = real
    fip_step = statistics.mean(fip_steps[10:])
    plain = plain_loop_step_s(case, device, args.precision, steps)
    out["fip_vs_plain"] = {"fip_step_s": fip_step, "plain_step_s": plain, "ratio": fip_step / plain, "target": 1.2}
    print(f"FIP step {out['fip_vs_plain']['fip_step_s'] * 1e3:.2f} ms vs plain {plain * 1e3:.2f} ms: "
          f"{out['fip_vs_plain']['ratio']:.2f}x (target <= 1.2x)", flush=True)
    for k in (1, 8):  # every step stored
        every = timed_build(config(case, k, steps, args.op, args.device, args.precision, 1), "batched" if k > 1 else "sequential")
        out[f"save_every_step_k{k}"] = every
        print(f"saving every step, K={k}: {every['nodes_per_s']:.1f} nodes/s", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--k", type=int, default=8, help="replicas (a)")
    p.add_argument("--op", default="finetune", choices=["finetune", "undirected"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=None, choices=["sequential", *MODES],
                   help=f"(a) modes to alternate (default: {' '.join(DEFAULT_MODES)})")
    p.add_argument("--threads", type=int, nargs="+", default=None, choices=[1, 2],
                   help="(a) older spelling: sequential + batched-1thread / batched-2threads")
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--steps-scale", type=float, default=1.0, help="scale every case's steps (quick looks)")
    p.add_argument("--gpu", action="store_true", help="run section (b) instead of (a)")
    p.add_argument("--device", default="cuda", help="(b) only: cuda, cuda:N, or cpu for a smoke test")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="(b) only")
    args = p.parse_args()
    if args.modes is None and args.threads is None:
        args.modes = DEFAULT_MODES
    meta = {"python": platform.python_version(), "torch": torch.__version__, "cores": len(os.sched_getaffinity(0)),
            "load_before": os.getloadavg(), "op": args.op, "save_every": args.save_every}
    section = gpu_section(args) if args.gpu else cpu_section(args)
    meta["load_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    name = "engine_gpu.json" if args.gpu else "engine_cpu.json"
    (RESULTS / name).write_text(json.dumps({"meta": meta, "results": section}, indent=1, default=str))
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
