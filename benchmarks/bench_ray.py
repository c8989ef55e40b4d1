"""--executor ray vs the sequential build: 4 independent runs of a small CNN (cnn5 on digits).

Prints, measured side by side in one process run (the machine is shared: the load average is
printed with the numbers):
  - wall-clock seconds of the sequential build and of the Ray build (Ray start-up counted apart),
    and their ratio;
  - merge cost per node: the writer actor's time in append_many per node during the Ray build, the
    CPU time of the writer's whole process per node (appends plus the store's background encoding
    and writes: what competes with the workers for the cores), the seconds the workers waited for
    the writer, and the time a worker spends per RemoteStore.append (weights to numpy, a copy, the
    object store, the actor call; asynchronous, so settled at the end) against a plain local
    store.append of the same network.

    python benchmarks/tools/cores_free.py       # first: should print about 2 cores
    python benchmarks/bench_ray.py [--steps 1000] [--save-every 100] [--runs 4] [--cpus 2] [--repeat 2]

Writes benchmarks/results/ray.json (every pair's times and ratio, the merge cost, the load).

With ``--worker-writes`` (issue 23, section 2) it compares instead, saving every step, today's Ray build that ships
raw weights to the writer actor ("before") with workers that write their own rows into a folder declared shared
("after"), and prints per node: the driver side's CPU (the driver process, from getrusage, plus the writer actor's
process, from its CPU clock) and the bytes of the nodes' calls to the writer as Ray serializes them, the nodes and
the optimizer state that goes with every batch's last node apart (arguments over 100 KiB go through Ray's object
store, smaller ones inline in the call):

    python benchmarks/bench_ray.py --worker-writes [--steps 60] [--repeat 1]     # writes results/ray_shared.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch

import fipgraph
from fipgraph.models import build_model
from fipgraph.path import build, load_config
from fipgraph.scale.ray_executor import build_ray, connect

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = """
name = "bench"
[data]
source = "digits"
split = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]
[model]
name = "cnn5"
[defaults]
op = "finetune"
save_every = {save_every}
memory_size = 50
probe_size = 16
"""


def _config(tmp: Path, runs: int, steps: int, save_every: int):
    text = CONFIG.format(save_every=save_every) + "".join(f'[[runs]]\nname = "r{i}"\nseed = {i}\nsteps = {steps}\n' for i in range(runs))
    (tmp / "bench.toml").write_text(text)
    return load_config(tmp / "bench.toml")


def _final_weights_equal(a: Path, b: Path) -> bool:
    with fipgraph.open_store(a, mode="r") as sa, fipgraph.open_store(b, mode="r") as sb:
        q = "SELECT r.name, n.node_id FROM nodes n JOIN runs r USING (run_id) ORDER BY r.name, n.step"
        left, right = sa.sql(q).values.tolist(), sb.sql(q).values.tolist()
        if [n for n, _ in left] != [n for n, _ in right]:
            return False
        for (_, x), (_, y) in zip(left, right):
            wx, wy = sa.state_dict(int(x)), sb.state_dict(int(y))
            if any(not torch.equal(wx[k], wy[k]) for k in wx):
                return False
    return True


def _round_trip(ray, tmp: Path, n: int) -> tuple[float, float]:
    """ms per node: RemoteStore.append from a Ray task, and store.append in one process (flushed)."""
    from fipgraph.scale.remote import RemoteStore
    from fipgraph.scale.shard import StoreWriter

    model = build_model({"name": "cnn5"})
    with fipgraph.open_store(tmp / "local_rt", mode="a") as store:
        t0 = time.perf_counter()
        parent = None
        for _ in range(n):
            with torch.no_grad():
                next(model.parameters()).add_(1e-3)
            parent = store.append(model, parent=parent)
        store.flush()
        local = (time.perf_counter() - t0) / n
    writer = ray.remote(StoreWriter).options(num_cpus=0).remote(str(tmp / "ray_rt"), False)

    @ray.remote(num_cpus=1)
    def remote_appends(writer, n):
        torch.set_num_threads(1)
        remote, model, parent = RemoteStore(writer, "."), build_model({"name": "cnn5"}), None
        t0 = time.perf_counter()
        for _ in range(n):
            with torch.no_grad():
                next(model.parameters()).add_(1e-3)
            parent = remote.append(model, parent=parent)
        remote.flush()
        return (time.perf_counter() - t0) / n

    remote = ray.get(remote_appends.remote(writer, n))
    ray.get(writer.close.remote())
    ray.kill(writer)
    return 1e3 * local, 1e3 * remote


def _ray_build(config, store_dir: Path) -> tuple[float, float, tuple]:
    """(seconds, seconds until the first run started on a worker, (nodes, writer ms/node, writer CPU-ms/node,
    seconds the workers waited)) of one Ray build."""
    import datetime as dt

    t0, wall0 = time.perf_counter(), time.time()
    result = build_ray(config, store_dir)
    seconds = time.perf_counter() - t0
    assert result.status == "finished", result.failed
    log_text = result.log_path.read_text()
    first = re.search(r"^(\S+ \S+) INFO run \S+ on worker pid", log_text, re.M).group(1)
    started = dt.datetime.strptime(first, "%Y-%m-%d %H:%M:%S,%f").timestamp() - wall0
    line = [ln for ln in log_text.splitlines() if "nodes merged" in ln][-1]
    merged, writer_ms, cpu_ms = re.search(r"(\d+) nodes merged, ([\d.]+) ms each.*\(([\d.]+) CPU-ms", line).groups()
    waited = sum(float(w) for w in re.findall(r"([\d.]+) s waiting for the writer", log_text))
    return seconds, started, (int(merged), float(writer_ms), float(cpu_ms), waited)


def _driver_side(config, store_dir: Path, shared: bool) -> dict:
    """One Ray build saving every step: wall seconds, nodes, and per node the driver process's CPU, the writer
    actor's process CPU and the bytes of the nodes' calls to the writer (from the workers' build-log lines)."""
    import resource

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    t0, cpu0 = time.perf_counter(), cpu()
    result = build_ray(config, store_dir, shared_storage=shared)
    seconds, driver_cpu = time.perf_counter() - t0, cpu() - cpu0
    assert result.status == "finished", result.failed
    log_text = result.log_path.read_text()
    line = [ln for ln in log_text.splitlines() if "nodes merged" in ln][-1]
    merged, cpu_ms = re.search(r"(\d+) nodes merged, .*\(([\d.]+) CPU-ms", line).groups()
    runs = re.findall(r"(\d+) nodes written by the worker, (\d+) sent to the writer \((\d+) bytes of nodes, "
                      r"(\d+) of optimizer state", log_text)
    nodes = int(merged)
    return {"seconds": seconds, "nodes": nodes, "driver_cpu_ms_per_node": 1e3 * driver_cpu / nodes,
            "writer_cpu_ms_per_node": float(cpu_ms), "written_by_workers": sum(int(r[0]) for r in runs),
            "sent_raw": sum(int(r[1]) for r in runs), "bytes_per_node": sum(int(r[2]) for r in runs) / nodes,
            "optimizer_state_bytes_per_node": sum(int(r[3]) for r in runs) / nodes}


def _worker_writes(args: argparse.Namespace, tmp: Path) -> None:
    """Before (weights shipped to the writer) and after (workers write their rows), alternating, saving every step."""
    config = _config(tmp, args.runs, args.steps, 1)
    connect(None, num_cpus=args.cpus)
    rows: dict[str, list] = {"before": [], "after": []}
    for i in range(args.repeat):
        for which in (("before", "after") if i % 2 == 0 else ("after", "before")):
            load = os.getloadavg()[0]
            m = _driver_side(config, tmp / f"{which}{i}", shared=which == "after")
            m["load_1min"] = load
            rows[which].append(m)
            print(f"[{i}] {which:6s} {m['seconds']:6.1f} s, {m['nodes']} nodes ({m['written_by_workers']} written by the "
                  f"workers, {m['sent_raw']} shipped): driver process {m['driver_cpu_ms_per_node']:.2f} CPU-ms/node, "
                  f"writer actor {m['writer_cpu_ms_per_node']:.2f} CPU-ms/node; to the writer per node {m['bytes_per_node']:,.0f} "
                  f"bytes of nodes + {m['optimizer_state_bytes_per_node']:,.0f} of optimizer state (load {load:.1f})",
                  flush=True)
    print(f"stores identical (names, steps, weights bit-exact): {_final_weights_equal(tmp / 'before0', tmp / 'after0')}")
    args.out = args.out if args.out != RESULTS / "ray.json" else RESULTS / "ray_shared.json"
    _write(args, {"save_every": 1, **rows, "load_1min_after": os.getloadavg()[0]})


def _write(args: argparse.Namespace, result: dict) -> None:
    result = {"steps": args.steps, "save_every": args.save_every, "runs": args.runs, "cpus": args.cpus, **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--save-every", type=int, default=100)  # as the paper configs in examples/ (100-1000)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="pairs of builds, alternating which goes first")
    ap.add_argument("--log", help="copy the last Ray build's build.log here (where the time went)")
    ap.add_argument("--out", type=Path, default=RESULTS / "ray.json", help="where the numbers go")
    ap.add_argument("--worker-writes", action="store_true",
                    help="before/after workers writing their own rows, saving every step (see the docstring)")
    args = ap.parse_args()
    import ray

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    if args.worker_writes:
        os.environ["FIPGRAPH_RAY_BYTES"] = "1"  # before Ray starts: its workers inherit it
        try:
            _worker_writes(args, tmp)
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
        return
    try:
        config = _config(tmp, args.runs, args.steps, args.save_every)
        n_params = sum(p.numel() for p in build_model({"name": "cnn5"}).parameters())
        print(f"{args.runs} runs x {args.steps} steps of cnn5 ({n_params} params) on digits, save_every {args.save_every}, "
              f"Ray with {args.cpus} CPUs; load average before: {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")
        t0 = time.perf_counter()
        connect(None, num_cpus=args.cpus)  # as `fipgraph build --executor ray` starts a local Ray
        startup = time.perf_counter() - t0
        ratios, pairs = [], []
        for i in range(args.repeat):
            for which in (("seq", "ray") if i % 2 == 0 else ("ray", "seq")):
                load = os.getloadavg()[0]
                if which == "seq":
                    t0 = time.perf_counter()
                    build(config, tmp / f"seq{i}", progress=False)
                    seq = time.perf_counter() - t0
                    print(f"[{i}] sequential build  {seq:7.1f} s   (load {load:.1f})", flush=True)
                else:
                    par, started, merge = _ray_build(config, tmp / f"ray{i}")
                    print(f"[{i}] ray build         {par:7.1f} s   (load {load:.1f}; first run on a worker after "
                          f"{started:.1f} s)", flush=True)
            ratios.append(seq / par)
            pairs.append({"sequential_s": seq, "ray_s": par, "first_run_after_s": started, "ratio": seq / par})
            print(f"[{i}] ratio sequential / ray {seq / par:.2f}x   (with ray.init's {startup:.1f} s: "
                  f"{seq / (par + startup):.2f}x)", flush=True)
        print(f"median ratio over {len(ratios)} pairs: {sorted(ratios)[len(ratios) // 2]:.2f}x "
              f"(all: {', '.join(f'{r:.2f}' for r in ratios)}); load average after: {os.getloadavg()[0]:.1f}")
        merged, writer_ms, cpu_ms, waited = merge
        print(f"merge on the writer       {writer_ms:7.2f} ms/node over {merged} nodes "
              f"(writer process CPU {cpu_ms:.2f} ms/node); workers waited for the writer {waited:.2f} s in all")
        if args.log:
            shutil.copy(tmp / f"ray{args.repeat - 1}" / "build.log", args.log)
        print(f"stores identical (names, steps, weights bit-exact): {_final_weights_equal(tmp / 'seq0', tmp / 'ray0')}",
              flush=True)
        local_ms, remote_ms = _round_trip(ray, tmp, 40)
        print(f"append from a Ray task    {remote_ms:7.2f} ms/node vs {local_ms:.2f} ms/node "
              f"local store.append, both flushed at the end ({remote_ms / local_ms:.2f}x)")
        ray.shutdown()
        _write(args, {"pairs": pairs, "ray_init_s": startup, "median_ratio": sorted(ratios)[len(ratios) // 2],
                      "merge_ms_per_node": writer_ms, "writer_cpu_ms_per_node": cpu_ms, "workers_waited_s": waited,
                      "remote_append_ms": remote_ms, "local_append_ms": local_ms, "load_1min": os.getloadavg()[0]})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
