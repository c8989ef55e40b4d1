"""The user's own text as a query: the node's tokenizer, and strings turned into LM batches."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fipgraph.errors import ConfigError


def is_texts(dataset: Any) -> bool:
    """True for a list/tuple of strings (the text form of a query dataset)."""
    return isinstance(dataset, (list, tuple)) and bool(dataset) and all(isinstance(t, str) for t in dataset)


def texts_name(texts: Sequence[str]) -> str:
    """A cache name that changes with the text: results of other texts are never reused."""
    digest = hashlib.sha1("\x00".join(texts).encode()).hexdigest()[:12]
    return f"text-{digest}"


def tokenizer_name(store: Any, node_id: int) -> str | None:
    """The tokenizer recorded for a node: in its model spec, else in its build's data settings."""
    spec = store.arch_spec(node_id).get("model") or {}
    if spec.get("tokenizer"):
        return str(spec["tokenizer"])
    from fipgraph.query.catalog import query_rows

    rows = query_rows(store, "select json_extract_string(r.config, '$.data.kwargs.tokenizer') from nodes n "
                             "join runs r using (run_id) where n.node_id = ?", [int(node_id)]).rows
    return str(rows[0][0]) if rows and rows[0][0] is not None else None


def node_tokenizer(store: Any, node_id: int, tokenizer: Any = None) -> Any:
    """`tokenizer` if it is one; loaded by name or folder if a string; else the node's own."""
    from fipgraph.models import load_tokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    name = str(tokenizer) if tokenizer is not None else tokenizer_name(store, node_id)
    if name is None:
        raise ConfigError(f"node {node_id} records no tokenizer (neither its model spec nor its build's "
                          "data.kwargs); pass tokenizer= (CLI: --tokenizer), e.g. 'smollm2' or a folder")
    return load_tokenizer(name)


def text_batches(texts: Sequence[str], tokenizer: Any, *, batch_size: int, max_length: int,
                 kind: str) -> list[dict]:
    """LM batches of `texts`, one text per row, padded per batch; padding is never scored.
    Causal LMs get labels = input_ids (padding -100); masked LMs are masked later (fixed seed)."""
    from fipgraph.data import tokenize_texts

    if kind not in ("causal_lm", "masked_lm"):
        raise ConfigError(f"perplexity of text needs a language model; this node is a {kind}")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}; use at least 1")
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenize_texts(texts[start:start + batch_size], tokenizer, max_length=max_length)
        if kind == "causal_lm":
            enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        out.append(enc)
    return out


def read_texts(path: str | Path) -> list[str]:
    """One text per non-empty line of a UTF-8 file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--text {p}: no such file; give a UTF-8 text file, one document per line")
    texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ConfigError(f"--text {p} has no non-empty line; give one document per line")
    return texts


def save_tokenizer(store: Any, node_id: int, out_dir: str | Path, tokenizer: Any = None) -> str | None:
    """Write the node's tokenizer beside an exported transformers model, so that
    AutoTokenizer.from_pretrained(out_dir) works; the tokenizer's name, or None if none is recorded."""
    if tokenizer is None and tokenizer_name(store, node_id) is None:
        return None
    tok = node_tokenizer(store, node_id, tokenizer)
    tok.save_pretrained(str(out_dir))
    return str(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer_name(store, node_id) or type(tok).__name__
