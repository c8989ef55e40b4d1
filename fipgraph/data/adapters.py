"""The user's data as fipgraph tasks: DataLoaders, Datasets, Hugging Face datasets, tensors, streams.

The engine reads a task through four things: ``train_loader(batch_size, seed)`` (a re-iterable of
batches whose order the seed fixes, so a resumed walk sees the batches an uninterrupted one would),
``test_loader(batch_size)``, ``sample(n, seed)`` (memory buffers, probes) and its head (``classes``,
``n_classes``, ``label_offset``). Every batch becomes a dict of tensors with ``labels`` (the house
layout, ``fipgraph.data.task``): ``(x, y)`` items become ``{"x", "labels"}``; dicts and ``BatchEncoding``s
keep their keys (``label`` is renamed ``labels``).

Map-style data (anything with ``__len__`` and ``__getitem__``, including ``datasets.Dataset``) is read
lazily through ``torch.utils.data.DataLoader`` with a seeded generator; an ``IterableDataset`` is
streamed in the order it yields, never materialised (its memory buffer is its first examples).
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, default_collate

from fipgraph.data.seeds import derive_seed
from fipgraph.errors import FipgraphError

Batch = dict[str, torch.Tensor]


def as_batch(raw: Any) -> Batch:
    """One collated batch in the house layout (a dict of tensors with ``labels`` where the data has them)."""
    if isinstance(raw, Mapping):
        batch = {("labels" if k == "label" else k): v for k, v in raw.items()}
    elif isinstance(raw, (tuple, list)) and len(raw) == 2:
        batch = {"x": raw[0], "labels": raw[1]}
    elif isinstance(raw, (tuple, list)) and len(raw) == 1:
        batch = {"x": raw[0]}
    elif isinstance(raw, torch.Tensor):
        batch = {"x": raw}
    else:
        raise FipgraphError(f"cannot read a batch of type {type(raw).__name__}; items must be (x, y) tuples, dicts "
                            f"of tensors or BatchEncodings, or tensors")
    bad = {k: type(v).__name__ for k, v in batch.items() if not isinstance(v, torch.Tensor)}
    if bad:
        raise FipgraphError(f"batch values must be tensors, got {bad}; for a datasets.Dataset call "
                            f"dataset.with_format('torch') or drop the text columns (remove_columns=[...])")
    return batch


class _Batches:
    """Re-iterable batches of one dataset; ``shuffle`` draws epoch e's order from (seed, e) like ``BatchLoader``."""

    def __init__(self, dataset: Any, batch_size: int, shuffle: bool, seed: int, collate, num_workers: int,
                 drop_last: bool = False, pin_memory: bool = False) -> None:
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.collate, self.num_workers, self.drop_last, self.pin_memory = collate, num_workers, drop_last, pin_memory
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", self.epoch))
        self.epoch += 1
        loader = DataLoader(self.dataset, self.batch_size, shuffle=self.shuffle, generator=gen, collate_fn=self.collate,
                            num_workers=self.num_workers, drop_last=self.drop_last, pin_memory=self.pin_memory)
        return (as_batch(b) for b in loader)


class _Stream:
    """Batches of an IterableDataset (or a DataLoader over one) in the order it yields; no length."""

    def __init__(self, source: Iterable, batch_size: int | None, collate) -> None:
        self.source, self.batch_size, self.collate = source, batch_size, collate

    def __iter__(self) -> Iterator[Batch]:
        if isinstance(self.source, DataLoader):
            return (as_batch(b) for b in self.source)
        items = iter(self.source)
        chunks = iter(lambda: list(itertools.islice(items, self.batch_size)), [])
        return (as_batch(self.collate(chunk)) for chunk in chunks)


def _unwrap_loader(data: Any) -> tuple[Any, dict]:
    """(dataset, what the user's DataLoader says: batch_size, collate_fn, num_workers) for any accepted input."""
    if isinstance(data, DataLoader):
        settings = {"batch_size": data.batch_size, "collate": data.collate_fn, "num_workers": data.num_workers}
        return (data if isinstance(data.dataset, IterableDataset) else data.dataset), settings
    if isinstance(data, torch.Tensor):
        return TensorDataset(data), {}
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        return TensorDataset(*data), {}
    if isinstance(data, Mapping) and data and all(isinstance(t, torch.Tensor) for t in data.values()):
        return _DictDataset(dict(data)), {}
    if _is_hf_dataset(data) and getattr(data, "format", {}).get("type") is None:
        data = data.with_format("torch")
    if isinstance(data, (IterableDataset, Dataset)) or (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        return data, {}
    if hasattr(data, "__iter__"):
        return data, {}
    raise FipgraphError(f"cannot use a {type(data).__name__} as data; give a DataLoader, a Dataset, a datasets.Dataset, "
                        f"an IterableDataset, a (inputs, labels) pair of tensors or a dict of tensors")


def _is_hf_dataset(data: Any) -> bool:
    return type(data).__module__.startswith("datasets.")


class _DictDataset(Dataset):
    """Rows of a dict of equally long tensors, as dicts."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise FipgraphError(f"the tensors of a data dict differ in length: {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.tensors.items()}


def _streamed(dataset: Any) -> bool:
    return isinstance(dataset, (IterableDataset, DataLoader)) or not hasattr(dataset, "__len__")


def _causal_labels(batch: Batch) -> Batch:
    """A causal LM learns its own inputs: labels = input_ids, padding not scored (the HF convention)."""
    if "labels" in batch or "input_ids" not in batch:
        return batch
    labels = batch["input_ids"].clone()
    if "attention_mask" in batch:
        labels[batch["attention_mask"] == 0] = -100
    return {**batch, "labels": labels}


def _cat(batches: list[Batch], n: int) -> Batch:
    return {k: torch.cat([b[k] for b in batches])[:n] for k in batches[0]}


class SourceTask:
    """A task over the user's data: training (and memory) examples, optional held-out examples.

    Quacks like ``fipgraph.data.Task`` for the engine; ``classes == []`` (a single head scored on all
    logits). ``memory`` replaces the training examples as the source of ``sample`` (the anchor data of
    sparsify / undirected walks); ``causal`` fills missing labels of text batches with their input ids."""

    label_offset, kind = 0, "classification"

    def __init__(self, train: Any, test: Any = None, *, name: str = "data", memory: Any = None,
                 causal: bool = False) -> None:
        self.name, self.classes, self.n_classes, self.meta = name, [], 0, {"source": "python"}
        self.train, self.train_settings = _unwrap_loader(train)
        self.test, self.test_settings = _unwrap_loader(test) if test is not None else (None, {})
        self.memory, self.memory_settings = _unwrap_loader(memory) if memory is not None else (self.train, self.train_settings)
        self.causal = causal

    @property
    def streamed(self) -> bool:
        """True when the training data is a stream: it has no length, so a walk needs ``steps``."""
        return _streamed(self.train)

    @property
    def batch_size(self) -> int | None:
        """The batch size of the user's DataLoader, if one was given."""
        return self.train_settings.get("batch_size")

    def _loader(self, dataset: Any, settings: dict, batch_size: int, shuffle: bool, seed: int, **kw) -> Iterable[Batch]:
        collate = settings.get("collate") or default_collate
        loader = (_Stream(dataset, batch_size, collate) if _streamed(dataset) else
                  _Batches(dataset, batch_size, shuffle, seed, collate, settings.get("num_workers", 0), **kw))
        return _Filled(loader, self.causal)

    def train_loader(self, batch_size: int = 64, seed: int = 0, drop_last: bool = False, pin_memory: bool = False):
        """Shuffled training batches (the same seed, the same batches); a stream in its own order."""
        return self._loader(self.train, self.train_settings, batch_size, True, seed, drop_last=drop_last,
                            pin_memory=pin_memory)

    def test_loader(self, batch_size: int = 256, pin_memory: bool = False):
        """Held-out batches in a fixed order."""
        if self.test is None:
            raise FipgraphError(f"{self.name!r} has no held-out data; pass test= to evaluate on it")
        return self._loader(self.test, self.test_settings, batch_size, False, 0, pin_memory=pin_memory)

    def sample(self, n: int, seed: int = 0) -> Batch:
        """n distinct memory examples: a seeded choice of a dataset, the first n of a stream."""
        if n < 1:
            raise FipgraphError(f"sample size must be >= 1, got {n} ({self.name!r})")
        if _streamed(self.memory):
            batches, have = [], 0
            for batch in self._loader(self.memory, self.memory_settings, n, False, seed):
                batches.append(batch)
                have += len(next(iter(batch.values())))
                if have >= n:
                    break
            if not batches:
                raise FipgraphError(f"{self.name!r}: the data stream yielded no examples")
            return _cat(batches, n)
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.memory), generator=gen)[:n].sort().values
        collate = self.memory_settings.get("collate") or default_collate
        batch = as_batch(collate([self.memory[int(i)] for i in idx]))
        return _causal_labels(batch) if self.causal else batch

    def __repr__(self) -> str:
        return f"SourceTask({self.name!r}, train={type(self.train).__name__}, test={type(self.test).__name__})"


class _Filled:
    """A loader whose batches get causal-LM labels where missing; keeps the loader's length."""

    def __init__(self, loader, causal: bool) -> None:
        self.loader, self.causal = loader, causal

    def __len__(self) -> int:
        return len(self.loader)  # TypeError for a stream: callers check ``streamed`` first

    def __iter__(self) -> Iterator[Batch]:
        return (_causal_labels(b) for b in self.loader) if self.causal else iter(self.loader)


def to_task(train: Any, test: Any = None, *, name: str = "data", memory: Any = None, causal: bool = False) -> SourceTask:
    """The user's data as a task (see the module docstring for what is accepted)."""
    return SourceTask(train, test, name=name, memory=memory, causal=causal)
