"""The HF Trainer checkpointing every N steps itself vs the same run recorded by FipgraphCallback every N steps.

    python benchmarks/tools/cores_free.py                # how quiet the machine is (timings need a quiet one)
    python benchmarks/bench_integrations.py              # ~2.5M-param BERT, 200 steps, every 10, 3 repeats, lr 5e-5
    python benchmarks/bench_integrations.py --steps 40 --repeats 1   # a quick look

Both sides train the same model from the same weights on the same batches: "trainer" saves with its own
``save_steps`` (weights only: ``save_only_model=True``, so no optimizer state on either side), "fipgraph" has the
Trainer's saving off and ``FipgraphCallback(store, every=N)`` on (the store opened, flushed and closed inside the
timing). "none" saves nothing: the floor both are measured against. Runs alternate (trainer, fipgraph, none, then
the next repeat in another order) after one untimed warm-up of each; medians of wall and CPU seconds are reported,
with bytes on disk (file sizes, and blocks allocated) and whether the last node equals the Trainer's last
checkpoint bit for bit. Writes --out as one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import fipgraph
from fipgraph.integrations.transformers import FipgraphCallback

VARIANTS = ("trainer", "fipgraph", "none")


def make_model(a: argparse.Namespace) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=4,
        intermediate_size=4 * a.hidden, max_position_embeddings=a.seq, num_labels=2))


def make_data(a: argparse.Namespace) -> list[dict]:
    """Random tokens labelled by a rule the model can learn (first token in the upper half of the vocabulary)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, a.vocab, (a.steps * a.batch, a.seq), generator=g)
    mask = torch.ones(a.seq, dtype=torch.long)
    return [{"input_ids": i, "attention_mask": mask, "labels": int(i[0] >= a.vocab // 2)} for i in ids]


def cpu_seconds() -> float:
    """CPU time of this process, all threads (the store's writer thread too): steadier than wall time on a
    shared machine, and what saving costs where no core is free for the writer."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def disk_bytes(paths: list[Path]) -> tuple[int, int]:
    """(sum of file sizes, bytes of blocks allocated) of ``paths``: files, or folders and all below them."""
    size = blocks = 0
    for root in paths:
        for f in [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file()):
            st = f.stat()
            size, blocks = size + st.st_size, blocks + st.st_blocks * 512
    return size, blocks


def run_once(variant: str, a: argparse.Namespace, data: list[dict], work: Path) -> dict:
    out, store_dir = work / f"{variant}-out", work / f"{variant}-store"
    saving = dict(save_strategy="steps", save_steps=a.every, save_only_model=True) if variant == "trainer" else \
        dict(save_strategy="no")
    args = TrainingArguments(output_dir=str(out), max_steps=a.steps, per_device_train_batch_size=a.batch,
                             learning_rate=a.lr, logging_steps=a.every, report_to="none", disable_tqdm=True,
                             seed=0, data_seed=0, use_cpu=not torch.cuda.is_available(), **saving)
    model = make_model(a)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    if variant == "fipgraph":
        with fipgraph.open_store(store_dir) as store:
            callback = FipgraphCallback(store, every=a.every)
            Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    else:
        Trainer(model=model, args=args, train_dataset=data).train()
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    checkpoints = sorted(out.glob("checkpoint-*"))
    row = {"variant": variant, "seconds": seconds, "cpu_seconds": cpu}
    if variant == "trainer":
        row["bytes"], row["bytes_allocated"] = disk_bytes(checkpoints)
        row["safetensors_bytes"] = sum((c / "model.safetensors").stat().st_size for c in checkpoints)
        row["saves"] = len(checkpoints)
    if variant == "fipgraph":
        row["bytes"], row["bytes_allocated"] = disk_bytes([store_dir])
        row["bytes_by_part"] = {p.name: disk_bytes([p])[0] for p in store_dir.iterdir()}
        with fipgraph.open_store(store_dir, "r") as store:  # read back after the timing: not part of a save
            row["last_state"] = store.state_dict(int(store.sql("SELECT max(node_id) AS n FROM nodes")["n"][0]))
    return row


def last_checkpoint(work: Path) -> dict:
    folders = sorted((work / "trainer-out").glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))
    return load_file(folders[-1] / "model.safetensors")


def same_bits(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    p.add_argument("--every", type=int, default=10, help="save / record every N steps (both sides)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each variant (medians reported)")
    p.add_argument("--hidden", type=int, default=192, help="BERT hidden size (192: ~2.5M parameters with the rest)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=32, help="tokens per example")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (5e-5: the Trainer's default; "
                   "a larger one changes more bits per step, so deltas compress less)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 on a shared machine")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--out", default="benchmarks/results/integrations.json")
    a = p.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v]
    if a.threads:
        torch.set_num_threads(a.threads)
    data, rows = make_data(a), []
    with tempfile.TemporaryDirectory() as tmp:
        warm = argparse.Namespace(**{**vars(a), "steps": a.every})
        for variant in variants:  # imports, first Trainer and first store: not part of any timing
            run_once(variant, warm, data, Path(tmp) / "warm-up")
        for r in range(a.repeats):
            order = variants[r % len(variants):] + variants[:r % len(variants)]  # rotate who runs first
            now = {}
            for variant in order:
                now[variant] = run_once(variant, a, data, Path(tmp) / f"r{r}")
                print(f"repeat {r} {variant}: {now[variant]['seconds']:.1f} s", flush=True)
            if {"trainer", "fipgraph"} <= set(now):
                now["fipgraph"]["same_as_trainer_checkpoint"] = same_bits(now["fipgraph"].pop("last_state"),
                                                                          last_checkpoint(Path(tmp) / f"r{r}"))
            rows += now.values()
    return report(a, variants, rows)


def report(a: argparse.Namespace, variants: list[str], rows: list[dict]) -> dict:
    med = {v: {k: statistics.median(r[k] for r in rows if r["variant"] == v)
               for k in ("seconds", "cpu_seconds", "bytes", "bytes_allocated", "safetensors_bytes") if all(
                   k in r for r in rows if r["variant"] == v)} for v in variants}
    n_params = sum(t.numel() for t in make_model(a).parameters())
    result = {"settings": {**vars(a), "n_params": n_params}, "machine": {
        "python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
        "device": "cuda" if torch.cuda.is_available() else "cpu", "loadavg": os.getloadavg()},
        "medians": med, "runs": [{k: v for k, v in r.items() if k != "last_state"} for r in rows]}
    if "trainer" in med and "fipgraph" in med:
        t, f = med["trainer"], med["fipgraph"]
        result["ratios"] = {"time_fipgraph_over_trainer": f["seconds"] / t["seconds"],
                            "cpu_fipgraph_over_trainer": f["cpu_seconds"] / t["cpu_seconds"],
                            "bytes_fipgraph_over_trainer": f["bytes"] / t["bytes"],
                            "bytes_fipgraph_over_trainer_safetensors": f["bytes"] / t["safetensors_bytes"],
                            "allocated_fipgraph_over_trainer": f["bytes_allocated"] / t["bytes_allocated"]}
        if "none" in med:
            result["ratios"].update({f"{k}_{v}_over_none": med[v][c] / med["none"][c] for v in ("trainer", "fipgraph")
                                     for k, c in (("time", "seconds"), ("cpu", "cpu_seconds"))})
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"medians": med, "ratios": result.get("ratios")}, indent=2))
    return result


if __name__ == "__main__":
    main()
