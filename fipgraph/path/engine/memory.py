"""Memory buffers, the frozen reference, and batch plumbing for the FIP step.

The reference network only ever enters a step as *cached logits*: ``FrozenReference`` copies the
weights once, runs them under ``torch.no_grad`` over the whole buffer and keeps the result. The live
model cannot leak in, and since the reference is frozen its outputs never need recomputing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from fipgraph.data.seeds import derive_seed
from fipgraph.models import forward_logits, model_kind

Batch = dict[str, torch.Tensor]
_PAD = {"labels": -100}  # padding value per key when text batches of different lengths are joined


def cat_batches(batches: list[Batch]) -> Batch:
    """Concatenate dict batches along dim 0, right-padding sequence tensors to one length."""
    out: Batch = {}
    for key in batches[0]:
        parts = [b[key] for b in batches]
        if parts[0].dim() >= 2 and parts[0].dtype in (torch.long, torch.int, torch.bool):
            width = max(p.shape[1] for p in parts)
            parts = [
                torch.nn.functional.pad(p, (0, width - p.shape[1]), value=_PAD.get(key, 0))
                for p in parts
            ]
        out[key] = torch.cat(parts, 0)
    return out


def batch_size_of(batch: Batch) -> int:
    return int(next(iter(batch.values())).shape[0])


def index_batch(batch: Batch, idx: torch.Tensor) -> Batch:
    return {k: v[idx] for k, v in batch.items()}


def scored_per_example(batch: Batch, causal: bool = False) -> torch.Tensor:
    """Logit rows forward_logits returns per example: 1 for classifiers, else labels != -100;
    a causal LM scores position t against token t+1, so its first label is never scored."""
    labels = batch["labels"]
    if labels.dim() == 1:
        return torch.ones_like(labels)
    return (labels[:, 1:] if causal else labels).ne(-100).sum(1)


def n_scored(batch: Batch, causal: bool = False) -> int:
    """Number of logit rows forward_logits returns for this batch (labels -100 are not scored)."""
    return int(scored_per_example(batch, causal).sum())


@dataclass
class FrozenReference:
    """Logits of the network as it was when the task started, over a fixed memory buffer."""

    memory: Batch  # every buffered example, all earlier tasks concatenated
    logits: torch.Tensor  # (P, C) reference logits at the scored positions, no grad
    offsets: torch.Tensor | None  # text: example i owns rows offsets[i]:offsets[i+1]; None = one row each

    @classmethod
    def take(cls, model: nn.Module, memory: Batch, batch_size: int = 256) -> "FrozenReference":
        snapshot = copy.deepcopy(model).eval()  # a copy: later steps on ``model`` cannot reach it
        n, chunks = batch_size_of(memory), []
        with torch.no_grad():
            for lo in range(0, n, batch_size):
                out, _ = forward_logits(snapshot, index_batch(memory, torch.arange(lo, min(lo + batch_size, n))))
                chunks.append(out.detach())
        logits, offsets = torch.cat(chunks, 0), None
        if memory["labels"].dim() > 1:  # token-level outputs: several rows per example
            counts = scored_per_example(memory, causal=model_kind(model) == "causal_lm")
            offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0).cpu()])  # host: read per row
        if logits.shape[0] != (n if offsets is None else int(offsets[-1])):
            raise ValueError(f"forward_logits gave {logits.shape[0]} rows for {n} memory examples")
        return cls(memory=memory, logits=logits, offsets=offsets)

    def __len__(self) -> int:
        return batch_size_of(self.memory)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Batch, torch.Tensor]:
        """A memory batch of n distinct examples and their reference logits."""
        idx = torch.randperm(len(self), generator=generator)[: min(n, len(self))]
        batch = index_batch(self.memory, idx)
        if self.offsets is None:
            return batch, self.logits[idx]
        rows = [torch.arange(int(self.offsets[i]), int(self.offsets[i + 1])) for i in idx.tolist()]
        return batch, self.logits[torch.cat(rows)]


def batch_stream(task, batch_size: int, seed: int, start_step: int, pin_memory: bool = False) -> Iterator[Batch]:
    """Task batches forever; epoch e is shuffled with derive_seed(seed, "epoch", e), and a resumed run
    skips the batches it already consumed, so step t sees the same batch whether or not the run was
    resumed. ``pin_memory`` (CUDA): page-locked batches, so the copy to the device can overlap."""
    if getattr(task, "streamed", False):  # the user's stream (fipgraph.data.adapters): no epochs to index
        yield from _stream_batches(task, batch_size, start_step, pin_memory)
        return
    per_epoch = len(task.train_loader(batch_size, derive_seed(seed, "epoch", 0)))
    if per_epoch == 0:
        raise ValueError(f"task {task.name!r} has no training batches")
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        for i, batch in enumerate(task.train_loader(batch_size, derive_seed(seed, "epoch", epoch), pin_memory=pin_memory)):
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0



def _stream_batches(task, batch_size: int, start_step: int, pin_memory: bool) -> Iterator[Batch]:
    """A stream's batches in its own order, pass after pass; a resumed run skips the batches it consumed
    (read again, not stored: the stream is never materialised)."""
    seen = 0
    while True:
        empty = True
        for batch in task.train_loader(batch_size, 0, pin_memory=pin_memory):
            empty, seen = False, seen + 1
            if seen > start_step:
                yield {k: v.pin_memory() for k, v in batch.items()} if pin_memory else batch
        if empty:
            raise ValueError(f"task {task.name!r}: the data stream yielded no batch")
