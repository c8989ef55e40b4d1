"""``make_tasks``: turn a named source (or a dataset object / file) into a task sequence.

Splits: ``None`` (one task, all classes), a list of class-id lists (class-incremental),
``"classes:K"`` (consecutive groups of K classes), ``"permuted:N"`` (N tasks over all classes,
task i's pixels shuffled by a fixed permutation; task 0 keeps the original images).
A list of image sources (``["mnist", "fashion-mnist"]``) chains them: one task per source, the
paper's MNIST -> Fashion-MNIST setting (single head: labels 0-9, then 10-19).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from fipgraph.data.seeds import derive_seed
from fipgraph.data.task import Task
from fipgraph.data.vision import Arrays, load_digits, load_fashion_mnist, load_mnist, permute_pixels
from fipgraph.errors import ConfigError
from fipgraph.heads import HEADS


# name -> loader(test_size, seed, **options); image sources only, text sources dispatch below
IMAGE_SOURCES: dict[str, Callable[..., Arrays]] = {
    "digits": lambda test_size, seed, **kw: load_digits(test_size=test_size, seed=seed),
    "mnist": lambda test_size, seed, **kw: load_mnist(kw.get("folder")),
    "fashion-mnist": lambda test_size, seed, **kw: load_fashion_mnist(kw.get("folder")),
}
TEXT_SOURCES = ("vader", "wiki", "lee")


def known_sources() -> list[str]:
    """Names ``make_tasks`` accepts as a string source (files, dataset objects and
    ``package.module:function`` paths also work); installed ``fipgraph.data`` entry points included."""
    from fipgraph.data.user import registered_sources

    return sorted(IMAGE_SOURCES) + list(TEXT_SOURCES) + registered_sources()


def make_tasks(source: Any, split: Any = None, seed: int = 0, *, head: str = "single",
               test_size: float = 0.2, **options: Any) -> list[Task]:
    """Build a list of :class:`Task` from ``source``.

    ``source``: "digits", "mnist", "fashion-mnist", "vader", "wiki", "lee", a path to a CSV /
    Parquet file, a Hugging Face ``datasets.Dataset`` / ``DatasetDict``, or the user's own function as
    ``"package.module:function"`` or a ``fipgraph.data`` entry-point name (see :mod:`fipgraph.data.user`). ``seed`` fixes the
    held-out split (where the source has no official one) and pixel permutations.
    Text sources need ``tokenizer=``; tabular ones take ``label_column``, ``feature_columns``,
    ``text_column``, ``image_shape`` (see :mod:`fipgraph.data.tabular`).
    """
    if head not in HEADS:
        raise ConfigError(f"head must be one of {HEADS}, got {head!r}")
    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"test_size must be in (0, 1), got {test_size}")
    if isinstance(source, (list, tuple)):
        if split is not None:
            raise ConfigError(f"a list of sources {list(source)} makes one task per source; drop split={split!r}")
        from fipgraph.data import text
        if source and all(s in text.LM_SOURCES for s in source):  # e.g. ["wiki", "lee"]: one LM task each
            return text.make_text_tasks(list(source), seed=seed, test_size=test_size, head=head, **options)
        return chain_sources(source, seed=seed, head=head, test_size=test_size, **options)
    if isinstance(source, str) and source in TEXT_SOURCES:
        from fipgraph.data import text
        return text.make_text_tasks(source, split=split, seed=seed, test_size=test_size, head=head, **options)
    if isinstance(source, str) and source in IMAGE_SOURCES:
        arrays = IMAGE_SOURCES[source](test_size, seed, **options)
        name = source
    else:
        from fipgraph.data import tabular, user
        if user.is_user_source(source):
            return user.user_tasks(source, split=split, seed=seed, head=head, test_size=test_size, **options)
        if not tabular.is_tabular(source):
            raise ConfigError(f"unknown data source {source!r}; known names: {known_sources()}, a .csv/.parquet "
                              "path, a datasets.Dataset, or your own function as 'package.module:function'")
        arrays, name, extra = tabular.load_tabular(source, test_size=test_size, seed=seed, **options)
        if extra is not None:  # text classification: already tokenized dict batches
            return split_tasks(extra, split, name, head=head, seed=seed)
    return split_tasks(arrays, split, name, head=head, seed=seed)


def chain_sources(sources: Sequence[str], *, seed: int = 0, head: str = "single", test_size: float = 0.2,
                  **options: Any) -> list[Task]:
    """One task per image source, in order. Single head: source i's labels follow source i-1's
    (MNIST 0-9, Fashion-MNIST 10-19 on a 20-output head); per_task: labels 0..k-1 per source."""
    unknown = [s for s in sources if s not in IMAGE_SOURCES]
    if not sources or unknown:
        raise ConfigError(f"chained sources must be image sources {sorted(IMAGE_SOURCES)}, got {list(sources)}")
    parts = [split_tasks(IMAGE_SOURCES[s](test_size, seed, **options), None, s, head="per_task", seed=seed)[0]
             for s in sources]
    shapes = {tuple(p.train["x"].shape[1:]) for p in parts}
    if len(shapes) > 1:
        raise ConfigError(f"chained sources {list(sources)} have different image shapes {sorted(shapes)}; "
                          "chain sources of one shape (e.g. mnist and fashion-mnist, both 1x28x28)")
    total = sum(p.n_classes for p in parts)
    tasks, offset = [], 0
    for i, (src, p) in enumerate(zip(sources, parts)):
        k = p.n_classes
        if head == "single":  # shift labels into this source's block of the shared head
            train = {**p.train, "labels": p.train["labels"] + offset}
            test = {**p.test, "labels": p.test["labels"] + offset}
            classes, n_out = list(range(offset, offset + k)), total
        else:
            train, test, classes, n_out = p.train, p.test, list(range(k)), k
        tasks.append(Task(name=f"task{i + 1}", classes=classes, n_classes=n_out, label_offset=offset,
                          train=train, test=test, meta={"source": src, "head": head, "index": i}))
        offset += k
    return tasks


def _parse_split(split: Any, classes: list[int]) -> tuple[str, Any]:
    if split is None:
        return "classes", [classes]
    if isinstance(split, str):
        kind, _, num = split.partition(":")
        if kind in ("permuted", "classes") and num.isdigit() and int(num) >= 1:
            n = int(num)
            if kind == "permuted":
                return "permuted", n
            return "classes", [classes[i:i + n] for i in range(0, len(classes), n)]
        raise ConfigError(f"split {split!r} not understood; use a list of class lists, "
                          "'classes:K' or 'permuted:N' (e.g. 'permuted:5')")
    groups = [list(map(int, g)) for g in split]
    seen: set[int] = set()
    for g in groups:
        if not g:
            raise ConfigError(f"split {split!r} has an empty task")
        unknown = sorted(set(g) - set(classes))
        if unknown:
            raise ConfigError(f"split {split!r} names classes {unknown} that the data lacks; classes: {classes}")
        dup = sorted(seen & set(g))
        if dup or len(set(g)) != len(g):
            raise ConfigError(f"split {split!r} repeats classes {dup or g}; each class belongs to one task")
        seen |= set(g)
    return "classes", groups


def _select(tensors: dict[str, torch.Tensor], y: torch.Tensor, cls: list[int],
            label_map: dict[int, int]) -> dict[str, torch.Tensor]:
    keep = torch.isin(y, torch.tensor(cls))
    out = {k: v[keep] for k, v in tensors.items()}
    lut = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
    for c, lab in label_map.items():
        lut[c] = lab
    out["labels"] = lut[y[keep]]
    return out


def split_tasks(data: Arrays | tuple[dict, dict], split: Any, name: str, *, head: str = "single",
                seed: int = 0) -> list[Task]:
    """Cut one labelled dataset into tasks (see module docstring for ``split``)."""
    if isinstance(data, Arrays):
        train = {"x": data.x_train, "labels": data.y_train}
        test = {"x": data.x_test, "labels": data.y_test}
    else:
        train, test = data
    y_tr, y_te = train["labels"], test["labels"]
    classes = sorted(set(y_tr.tolist()))
    kind, groups = _parse_split(split, classes)
    if kind == "permuted":
        return _permuted_tasks(train, test, classes, groups, name, seed)
    n_single = max(max(g) for g in groups) + 1  # label = class id, so the head spans up to the top id
    tasks, offset = [], 0
    for i, g in enumerate(groups):
        if head == "single":
            label_map, n_out, task_offset = {c: c for c in g}, n_single, min(g)
        else:
            label_map, n_out, task_offset = {c: j for j, c in enumerate(g)}, len(g), offset
        tasks.append(Task(name=f"task{i + 1}", classes=list(g), n_classes=n_out, label_offset=task_offset,
                          train=_select(train, y_tr, g, label_map), test=_select(test, y_te, g, label_map),
                          meta={"source": name, "head": head, "index": i}))
        offset += len(g)
    return tasks


def _permuted_tasks(train: dict, test: dict, classes: list[int], n: int, name: str, seed: int) -> list[Task]:
    if "x" not in train:
        raise ConfigError(f"split 'permuted:{n}' needs image/feature inputs; source {name!r} is text")
    tasks = []
    for i in range(n):
        perm_seed = derive_seed(seed, "permutation", i)
        x_tr, x_te = train["x"], test["x"]
        if i > 0:  # task 0 is the original data, as in the usual permuted-MNIST protocol
            x_tr, perm = permute_pixels(x_tr, perm_seed)
            x_te = x_te.reshape(len(x_te), -1)[:, perm].reshape(x_te.shape)
        tasks.append(Task(name=f"task{i + 1}", classes=list(classes), n_classes=max(classes) + 1,
                          label_offset=0, train={**train, "x": x_tr}, test={**test, "x": x_te},
                          meta={"source": name, "head": "single", "index": i,
                                "permutation_seed": perm_seed if i > 0 else None}))
    return tasks


def concat_batches(batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Join dict batches along the first dim (e.g. memory buffers of several tasks)."""
    keys = batches[0].keys()
    return {k: torch.cat([b[k] for b in batches]) for k in keys}
