"""Offline-first data: named sources cut into task sequences with held-out test splits."""

from fipgraph.data.task import Batch, BatchLoader, Task
from fipgraph.data.tasks import concat_batches, known_sources, make_tasks, split_tasks
from fipgraph.data.text import lm_task, load_lee, load_vader, load_wiki, mask_tokens, tokenize_texts
from fipgraph.data.vision import load_digits, load_fashion_mnist, load_mnist, read_idx

__all__ = ["Batch", "BatchLoader", "Task", "concat_batches", "known_sources", "lm_task", "load_digits",
           "load_fashion_mnist", "load_lee", "load_mnist", "load_vader", "load_wiki", "make_tasks",
           "mask_tokens", "read_idx", "split_tasks", "tokenize_texts"]
