"""Per-step cost of a FIP step against plain fine-tuning, and of saving every step.

    python benchmarks/bench_fip_step.py            # ~2 minutes on one CPU thread

(a) FIP step (new batch B + memory batch M, one forward) vs a plain step on the new batch B alone.
(b) FIP step vs a plain step on the concatenated B + M batch: the overhead beyond the intrinsic
    extra examples (target <= 1.1x; the frozen reference costs nothing per step, its outputs on the
    memory buffer are cached when the task starts).
(c) a whole `continual` build saving a node every step vs saving only at the end (target <= 1.10x).
Times are medians over interleaved rounds, measured side by side in this one process.
Results go to benchmarks/results/fip_step.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fipgraph.models import build_model
from fipgraph.path import FrozenReference, build, get_odist, load_config
from fipgraph.path.config.schema import build_config
from fipgraph.path.engine.memory import cat_batches
from fipgraph.path.ops import OBJECTIVES
from fipgraph.path.engine.step import fip_step

MODELS = {
    "mlp": {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [128], "n_classes": 10}},
    "cnn5": {"name": "cnn5", "kwargs": {"n_classes": 10}},
    "bert-tiny": {"name": "bert", "kwargs": {"vocab_size": 1000, "head": "classifier", "num_labels": 4,
                                             "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                                             "intermediate_size": 256, "max_position_embeddings": 64}},
}


def make_batch(model: str, n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    if model == "bert-tiny":
        return {"input_ids": torch.randint(0, 1000, (n, 32), generator=g),
                "attention_mask": torch.ones(n, 32, dtype=torch.long), "labels": torch.randint(0, 4, (n,), generator=g)}
    x = torch.rand(n, 64, generator=g) if model == "mlp" else torch.rand(n, 1, 8, 8, generator=g)
    return {"x": x, "labels": torch.randint(0, 10, (n,), generator=g)}


def _timer(fn, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def bench_step(name: str, batch: int, memory_batch: int, steps: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model = build_model(MODELS[name]).train()
    run = build_config({"model": MODELS[name], "runs": [{"name": "r", "op": "continual", "task": 2, "from": 0}],
                        "data": {"split": [[0], [1]]}}).runs[0]
    fip, plain = OBJECTIVES["continual"](run, model), OBJECTIVES["finetune"](run, model)
    odist, opt = get_odist("bhattacharyya"), torch.optim.Adam(model.parameters(), lr=1e-4)
    new, memory = make_batch(name, batch, 1), make_batch(name, 500, 2)
    ref = FrozenReference.take(model, memory)
    gen = torch.Generator().manual_seed(0)
    mem, ref_logits = ref.sample(memory_batch, gen)
    both = cat_batches([new, mem])
    cases = {
        "fip": lambda: fip_step(model, opt, fip, odist, 1.0, new, *ref.sample(memory_batch, gen)),
        "plain_new": lambda: fip_step(model, opt, plain, odist, 1.0, new, None, None),
        "plain_concat": lambda: fip_step(model, opt, plain, odist, 1.0, both, None, None),
    }
    for fn in cases.values():  # warm up allocator and kernels
        _timer(fn, 3)
    times = {k: [] for k in cases}
    for _ in range(rounds):  # interleaved so drift from other processes hits all cases alike
        for k, fn in cases.items():
            times[k].append(_timer(fn, steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "batch": batch, "memory_batch": memory_batch, "ms_per_step": {k: v * 1e3 for k, v in med.items()},
            "ratio_a_fip_vs_plain_new": med["fip"] / med["plain_new"],
            "ratio_b_fip_vs_plain_concat": med["fip"] / med["plain_concat"]}


def bench_save(model: str, steps: int, rounds: int) -> dict:
    """(c): one continual run from a stored task-1 node, saving every step vs only at the end."""
    root = Path(tempfile.mkdtemp(prefix="fipbench-"))
    overrides = [f"model.name=\"{model}\"", "model.kwargs={n_classes = 10}" if model == "cnn5" else "model.name=\"mlp\"",
                 "runs.task1.steps=50", f"runs.continual.steps={steps}", f"eval_every={10 * steps}", "memory_batch_size=32"]
    try:
        base = load_config(None, overrides)
        base.runs = base.runs[:1]
        task1 = build(base, root, progress=False).runs[0].last_node
        cases = (("save_every_step", 1), ("save_every_10", 10), ("save_at_end", steps))
        times: dict[str, list[float]] = {case: [] for case, _ in cases}
        for r in range(rounds):
            for case, every in cases:
                cfg = load_config(None, overrides + [f"runs.continual.save_every={every}", f"name=\"{case}{r}\""])
                cfg.runs = [cfg.runs[1]]
                cfg.runs[0].start = task1
                t = time.perf_counter()
                build(cfg, root, progress=False)
                times[case].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        return {"model": model, "steps": steps, "seconds": med,
                "ratio_c_save_every_step": med["save_every_step"] / med["save_at_end"],
                "ratio_save_every_10": med["save_every_10"] / med["save_at_end"]}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="steps per timing round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--build-steps", type=int, default=300)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fip_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    step_rows = []
    for name in MODELS:
        row = bench_step(name, 32, 32, args.steps, args.rounds)
        step_rows.append(row)
        ms = row["ms_per_step"]
        print(f"{name:10s} fip {ms['fip']:7.2f} ms  plain(new) {ms['plain_new']:7.2f} ms  plain(new+mem) "
              f"{ms['plain_concat']:7.2f} ms   (a) {row['ratio_a_fip_vs_plain_new']:.2f}x   (b) {row['ratio_b_fip_vs_plain_concat']:.2f}x")
    save_rows = []
    for name in ("mlp", "cnn5"):
        row = bench_save(name, args.build_steps, max(3, args.rounds // 2))
        save_rows.append(row)
        s = row["seconds"]
        print(f"{name:10s} build {args.build_steps} steps: save every step {s['save_every_step']:.2f} s, every 10 "
              f"{s['save_every_10']:.2f} s, at end {s['save_at_end']:.2f} s   (c) {row['ratio_c_save_every_step']:.2f}x "
              f"(every 10: {row['ratio_save_every_10']:.2f}x)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "torch": torch.__version__, "threads": 1,
                               "step": step_rows, "save": save_rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
