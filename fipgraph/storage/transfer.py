"""Moving networks in and out of a store: safetensors files, transformers folders, checkpoint dirs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fipgraph.errors import FipgraphError
from fipgraph.storage.store import Store


def _lineage(store: Store, node_id: int) -> dict:
    row = store.node(node_id)
    as_int = lambda v: None if v is None or v != v else int(v)  # noqa: E731 - NaN-safe int
    return {"node_id": int(node_id), "parent_id": as_int(row["parent_id"]), "run_id": as_int(row["run_id"]),
            "op": row["op"], "step": as_int(row["step"]), "store": str(store.root.resolve())}


def export_node(store: Store, node_id: int, out_dir: str | Path) -> Path:
    """Write a node as a transformers folder (save_pretrained) when it is a transformers model,
    else as model.safetensors + fipgraph.json (lineage and model spec). Returns the folder."""
    out = Path(out_dir)
    lineage = _lineage(store, node_id)
    spec = store.arch_spec(node_id).get("model") or {}
    out.mkdir(parents=True, exist_ok=True)
    if spec.get("name") == "hf":
        from fipgraph.models import model_from_node

        model = model_from_node(store, node_id)
        model.config.fipgraph = lineage  # lineage travels inside config.json
        model.save_pretrained(out)
    else:
        # unpack() returns views of one buffer; safetensors refuses shared storage, so copy each
        state = {k: v.clone().contiguous() for k, v in store.state_dict(node_id).items()}
        save_file(state, out / "model.safetensors", metadata={"fipgraph": json.dumps(lineage)})
    (out / "fipgraph.json").write_text(json.dumps({**lineage, "model": spec}, indent=2, default=str))
    return out


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def find_checkpoints(path: str | Path) -> list[Path]:
    """A safetensors file; a folder of *.safetensors files; or a folder of checkpoint sub-folders
    (each holding *.safetensors), in natural order (checkpoint-2 before checkpoint-10)."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise FipgraphError(f"{path} is not a .safetensors file; export other formats with safetensors first")
        return [path]
    if not path.is_dir():
        raise FipgraphError(f"{path} does not exist")
    files = sorted(path.glob("*.safetensors"), key=_natural_key)
    if files and not any(p.is_dir() and any(p.glob("*.safetensors")) for p in path.iterdir()):
        # one checkpoint split into shards (model-00001-of-00002...) is one node, not a chain
        return [path] if any("-of-" in f.name for f in files) else files
    dirs = sorted((p for p in path.iterdir() if p.is_dir() and any(p.glob("*.safetensors"))), key=_natural_key)
    if not dirs:
        raise FipgraphError(f"no .safetensors files in {path} or its sub-folders")
    return dirs


def _load(checkpoint: Path) -> dict[str, torch.Tensor]:
    files = [checkpoint] if checkpoint.is_file() else sorted(checkpoint.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    return state


def import_checkpoints(store: Store, path: str | Path, *, parent: int | None = None, run: int | None = None) -> list[int]:
    """Append every checkpoint under ``path`` as a chain of nodes (the first child of ``parent``)."""
    ids = []
    for i, checkpoint in enumerate(find_checkpoints(path)):
        parent = store.append(_load(checkpoint), parent=parent, run=run, op="import", step=i,
                              tags={"source": str(checkpoint)})
        ids.append(parent)
    store.flush()
    return ids
