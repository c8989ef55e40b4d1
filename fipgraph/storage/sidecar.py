"""Files a build keeps beside the store: the build log and each run's optimizer state.

This module is the one place that names their paths (store/README.md describes them). Optimizer
state is written atomically (temp file, then rename) and read with ``torch.load(weights_only=True)``:
tensors, numbers, strings, lists and dicts only, so a tampered file cannot run code when a build
resumes.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch

from fipgraph.errors import FipgraphError
from fipgraph.storage.catalog import fsync_path
from fipgraph.storage.remote import RemotePath, cache_dir, is_url

BUILD_LOG = "build.log"
OPTIM_DIR = "optim"
PENDING_DIR = "pending"  # optim/pending/<name>.pt: states Ray workers on shared storage wrote for the writer


class StoreFiles:
    """Paths and safe reads/writes of the files beside a store's weights and catalog."""

    def __init__(self, root: Path | RemotePath | str, *, durable: bool = False) -> None:
        self.root = root if is_url(root) else Path(root)
        self.durable = durable

    @property
    def build_log(self) -> Path:
        """The build log (written by ``fipgraph build``). A store on object storage keeps it in this machine's
        working folder for the store; its writer uploads it beside the store as it grows."""
        if is_url(self.root):
            return cache_dir(str(self.root)) / BUILD_LOG
        return self.root / BUILD_LOG

    def optimizer_state_path(self, run_id: int) -> Path:
        return self.root / OPTIM_DIR / f"run-{int(run_id)}.pt"

    def save_optimizer_state(self, run_id: int, node: int, state: Mapping[str, Any]) -> Path:
        """Keep ``state`` (an optimizer's state_dict) as belonging to ``node``; atomic: a crash leaves
        the previous file or the new one."""
        return self._save(self.optimizer_state_path(run_id), {"node": int(node), "state": dict(state)})

    def load_optimizer_state(self, run_id: int) -> dict | None:
        """{"node": id, "state": state_dict} saved for the run, or None if there is none."""
        path = self.optimizer_state_path(run_id)
        return self._load(path) if path.exists() else None

    # -- optimizer states a Ray worker on shared storage wrote for the writer (scale/remote.py) ------
    def pending_state_path(self, name: str) -> Path:
        return self.root / OPTIM_DIR / PENDING_DIR / f"{name}.pt"

    def save_pending_state(self, name: str, state: Mapping[str, Any]) -> None:
        """A worker's optimizer state for the writer, who learns which node it belongs to from the worker's call."""
        self._save(self.pending_state_path(name), {"node": -1, "state": dict(state)})

    def load_pending_state(self, name: str) -> dict:
        return self._load(self.pending_state_path(name))["state"]

    def drop_pending_states(self, names: list[str] | None = None) -> None:
        """Remove these pending states (all of them when None: at the end of a build, none is needed any more)."""
        if names is not None:
            for name in names:
                self.pending_state_path(name).unlink(missing_ok=True)
            return
        folder = self.root / OPTIM_DIR / PENDING_DIR
        if isinstance(folder, RemotePath):
            folder.remove_tree()
        elif folder.exists():
            for f in folder.iterdir():
                f.unlink(missing_ok=True)

    def _save(self, path: Path | RemotePath, payload: dict) -> Path:
        if isinstance(path, RemotePath):  # one PUT: the old object or the new one
            buf = io.BytesIO()
            torch.save(payload, buf)
            path.write_bytes(buf.getvalue())
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        if self.durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        if self.durable:
            fsync_path(path.parent)
        return path

    @staticmethod
    def _load(path: Path | RemotePath) -> dict:
        try:
            source = io.BytesIO(path.read_bytes()) if isinstance(path, RemotePath) else path
            saved = torch.load(source, weights_only=True, map_location="cpu")
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            raise FipgraphError(f"optimizer state {path} cannot be loaded safely ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to resume the run "
                                "with a fresh optimizer") from None
        if not isinstance(saved, dict) or "node" not in saved or "state" not in saved:
            raise FipgraphError(f"optimizer state {path} is not a fipgraph optimizer file (keys node, state); "
                                "delete it to resume the run with a fresh optimizer")
        return saved

    def drop_optimizer_state(self, run_id: int) -> None:
        """Forget a finished run's optimizer state."""
        self.optimizer_state_path(run_id).unlink(missing_ok=True)
