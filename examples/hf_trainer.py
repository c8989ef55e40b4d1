"""Record a Hugging Face Trainer run in a fipgraph store with one callback.

    python examples/hf_trainer.py --store store --steps 40

A tiny randomly initialised BERT (nothing is downloaded) learns a toy rule on random tokens; every 10 optimizer
steps the network becomes a node of the run "hf-bert" (the Trainer itself saves nothing), with the logged loss and
the evaluation loss as the nodes' evaluations. Then: `fipgraph sql "SELECT * FROM wide" --store store`.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import fipgraph
from fipgraph.integrations.transformers import FipgraphCallback


def token_data(n: int, length: int = 16, vocab: int = 128, seed: int = 0) -> list[dict]:
    """Random token sequences labelled by whether their first token is in the upper half of the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    return [{"input_ids": i, "attention_mask": torch.ones(length, dtype=torch.long), "labels": int(i[0] >= vocab // 2)}
            for i in ids]


def main(argv: list[str] | None = None) -> list[int]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="store", help="fipgraph store directory (created if missing)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps")
    p.add_argument("--every", type=int, default=10, help="record the network every N steps")
    p.add_argument("--run", default="hf-bert", help="run name (resume=True continues it if it exists)")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=2))
    with fipgraph.open_store(a.store) as store, tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=a.steps, per_device_train_batch_size=16,
                                 learning_rate=1e-3, logging_steps=a.every, eval_strategy="steps", eval_steps=a.every,
                                 save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
        callback = FipgraphCallback(store, every=a.every, run=a.run, resume=True)
        Trainer(model=model, args=args, train_dataset=token_data(256), eval_dataset=token_data(64, seed=1),
                callbacks=[callback]).train()
        run_id = int(store.find_run(a.run)["run_id"])
        nodes = store.sql("SELECT node_id, step, round(loss, 4) AS loss, round(eval_loss, 4) AS eval_loss FROM wide "
                          "WHERE run_id = ? ORDER BY node_id", [run_id])
        print(nodes.to_string(index=False))
        return nodes["node_id"].tolist()


if __name__ == "__main__":
    main()
