"""Generic sources: a Hugging Face ``datasets.Dataset`` / ``DatasetDict`` or a local CSV / Parquet.

Feature columns become a float tensor ``x`` (optionally reshaped to ``image_shape``); a
``text_column`` is tokenized instead (``tokenizer=`` required). Non-integer labels are mapped to
0..K-1 in sorted order. A DatasetDict's "test" split is used as the held-out set when present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from fipgraph.data.vision import Arrays
from fipgraph.errors import ConfigError

_FILE_SUFFIXES = (".csv", ".parquet", ".pq")


def is_tabular(source: Any) -> bool:
    """True for a CSV/Parquet path or a ``datasets`` object."""
    if isinstance(source, (str, Path)):
        return Path(source).suffix.lower() in _FILE_SUFFIXES
    return type(source).__module__.startswith("datasets") or isinstance(source, pd.DataFrame)


def _frame(source: Any) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """(train frame, official test frame or None, short name)."""
    if isinstance(source, pd.DataFrame):
        return source, None, "frame"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"data file {path} does not exist")
        df = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
        return df, None, path.stem
    if hasattr(source, "keys") and "train" in source:  # DatasetDict
        test = source["test"].to_pandas() if "test" in source else None
        return source["train"].to_pandas(), test, "dataset"
    if hasattr(source, "to_pandas"):
        return source.to_pandas(), None, "dataset"
    raise ConfigError(f"cannot read a dataset from {type(source).__name__}; pass a datasets.Dataset, "
                      "DatasetDict, pandas DataFrame or a .csv/.parquet path")


def load_tabular(source: Any, *, test_size: float = 0.2, seed: int = 0, label_column: str = "label",
                 feature_columns: Sequence[str] | None = None, image_shape: Sequence[int] | None = None,
                 scale: float | None = None, text_column: str | None = None, tokenizer: Any = None,
                 max_length: int = 128, **unused: Any) -> tuple[Arrays | None, str, tuple | None]:
    """Read ``source``; returns (arrays, name, None) for features or (None, name, (train, test)) for text."""
    if unused:
        raise ConfigError(f"unknown options for a tabular source: {sorted(unused)}")
    df, test_df, name = _frame(source)
    if label_column not in df.columns:
        raise ConfigError(f"label column {label_column!r} not in {list(df.columns)}; pass label_column=")
    if test_df is None:
        from sklearn.model_selection import train_test_split
        strat = df[label_column] if df[label_column].value_counts().min() >= 2 else None
        df, test_df = train_test_split(df, test_size=test_size, random_state=seed, stratify=strat)
    y_tr, y_te = _encode_labels(df[label_column], test_df[label_column])
    if text_column is not None:
        if text_column not in df.columns:
            raise ConfigError(f"text column {text_column!r} not in {list(df.columns)}")
        from fipgraph.data.text import tokenize_texts
        train = {**tokenize_texts(list(df[text_column]), tokenizer, max_length), "labels": y_tr}
        test = {**tokenize_texts(list(test_df[text_column]), tokenizer, max_length), "labels": y_te}
        return None, name, (train, test)
    cols = list(feature_columns) if feature_columns is not None else [c for c in df.columns if c != label_column]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ConfigError(f"feature columns {missing} not in {list(df.columns)}")
    x_tr, x_te = (_features(d, cols, image_shape, scale) for d in (df, test_df))
    return Arrays(x_tr, y_tr, x_te, y_te), name, None


def _features(df: pd.DataFrame, cols: list[str], image_shape: Sequence[int] | None,
              scale: float | None) -> torch.Tensor:
    # a single column of arrays (e.g. a flattened image per row) or many scalar columns
    if len(cols) == 1 and df[cols[0]].dtype == object:
        arr = np.stack([np.asarray(v, dtype=np.float32).ravel() for v in df[cols[0]]])
    else:
        arr = df[cols].to_numpy(dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if scale:
        x = x / scale
    if image_shape is not None:
        shape = tuple(int(s) for s in image_shape)
        if int(np.prod(shape)) != x.shape[1]:
            raise ConfigError(f"image_shape {shape} holds {int(np.prod(shape))} values but rows have {x.shape[1]}")
        x = x.reshape(len(x), *shape)
    return x


def _encode_labels(train: pd.Series, test: pd.Series) -> tuple[torch.Tensor, torch.Tensor]:
    if pd.api.types.is_integer_dtype(train) and pd.api.types.is_integer_dtype(test):
        if train.min() < 0:
            raise ConfigError(f"integer labels must be >= 0, found {train.min()}")
        return torch.tensor(train.to_numpy(), dtype=torch.long), torch.tensor(test.to_numpy(), dtype=torch.long)
    names = sorted(set(train.tolist()) | set(test.tolist()), key=str)
    index = {v: i for i, v in enumerate(names)}
    return (torch.tensor([index[v] for v in train], dtype=torch.long),
            torch.tensor([index[v] for v in test], dtype=torch.long))
