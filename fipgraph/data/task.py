"""A task: held-out train/test tensors plus reproducible batch iterators.

Every batch is a plain dict of tensors (vision ``{"x", "labels"}``; text ``{"input_ids",
"attention_mask", "labels"}``), so the same loader serves classifiers and language models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from fipgraph.data.seeds import derive_seed
from fipgraph.errors import ConfigError

Batch = dict[str, torch.Tensor]


def _n_rows(tensors: Batch) -> int:
    return len(next(iter(tensors.values())))


def _take(tensors: Batch, idx: torch.Tensor) -> Batch:
    return {k: v[idx] for k, v in tensors.items()}


class BatchLoader:
    """Re-iterable batches over a dict of tensors.

    With ``shuffle`` each pass draws a fresh permutation from a generator seeded by
    ``(seed, epoch)``, so epoch ``e`` is the same sequence on every machine and a resumed
    run can jump to its epoch with :meth:`set_epoch` instead of replaying earlier ones.
    """

    def __init__(self, tensors: Batch, batch_size: int, shuffle: bool, seed: int = 0,
                 drop_last: bool = False, pin_memory: bool = False) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0
        self.pin_memory = pin_memory  # page-locked batches: a CUDA copy can then run asynchronously

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass produce epoch ``epoch``'s order."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = _n_rows(self.tensors)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = _n_rows(self.tensors)
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", self.epoch))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        self.epoch += 1
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            batch = _take(self.tensors, order[start:start + self.batch_size])
            yield {k: v.pin_memory() for k, v in batch.items()} if self.pin_memory else batch


@dataclass(eq=False)  # tensors have no useful ==; identity is what a task compares by
class Task:
    """One task of a sequence, with a held-out test split.

    ``labels`` in the batches are output-unit indices of the model's head. ``head="single"``
    (default): one head of ``n_classes`` outputs shared by all tasks, label = global class id,
    ``label_offset`` = the first output unit this task's classes use. ``head="per_task"``:
    labels are positions in ``classes`` (0..k-1), ``n_classes`` = k, and ``label_offset`` is where
    the task's block starts if the per-task heads are concatenated. Language-model tasks have
    ``kind`` "masked_lm" / "causal_lm", ``classes == []`` and ``n_classes`` = vocabulary size.
    """

    name: str
    classes: list[int]
    n_classes: int
    label_offset: int
    train: Batch
    test: Batch
    kind: str = "classification"
    meta: dict = field(default_factory=dict)  # source details, e.g. the pixel permutation seed

    def __post_init__(self) -> None:
        for split, tensors in (("train", self.train), ("test", self.test)):
            if not tensors or _n_rows(tensors) == 0:
                raise ConfigError(f"task {self.name!r} has an empty {split} split; "
                                  "check the class split and test_size")
            lengths = {k: len(v) for k, v in tensors.items()}
            if len(set(lengths.values())) != 1:
                raise ConfigError(f"task {self.name!r} {split} tensors differ in length: {lengths}")

    @property
    def n_train(self) -> int:
        return _n_rows(self.train)

    @property
    def n_test(self) -> int:
        return _n_rows(self.test)

    def train_loader(self, batch_size: int = 64, seed: int = 0, drop_last: bool = False,
                     pin_memory: bool = False) -> BatchLoader:
        """Shuffled training batches; the same ``seed`` gives the same batches (pinned for CUDA on request)."""
        return BatchLoader(self.train, batch_size, shuffle=True, seed=seed, drop_last=drop_last, pin_memory=pin_memory)

    def test_loader(self, batch_size: int = 256, pin_memory: bool = False) -> BatchLoader:
        """Held-out batches in a fixed order."""
        return BatchLoader(self.test, batch_size, shuffle=False, pin_memory=pin_memory)

    def sample(self, n: int, seed: int = 0) -> Batch:
        """One batch of ``n`` distinct training examples (e.g. a memory buffer); all if n >= size."""
        if n < 1:
            raise ConfigError(f"sample size must be >= 1, got {n} (task {self.name!r})")
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.n_train, generator=gen)[:n]
        return _take(self.train, idx.sort().values)

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, kind={self.kind}, classes={self.classes}, n_classes={self.n_classes}, "
                f"label_offset={self.label_offset}, n_train={self.n_train}, n_test={self.n_test})")
