"""Accuracy, loss and perplexity of stored nodes on a query dataset, cached in `evals`.

Every node of one architecture is scored by loading its weights into ONE model instance
(`store.load_into`), so the cost per node is a weight read plus the forward passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from fipgraph.device import resolve_device
from fipgraph.errors import ConfigError, ReadOnlyStoreError
from fipgraph.query._common import cached_evals, resolve_nodes
from fipgraph.query.scoring import (PERPLEXITY_METRICS, node_heads, perplexity_of, score_batches, task_columns,
                                     to_device)
from fipgraph.query.text import is_texts, node_tokenizer, text_batches, texts_name

__all__ = ["evaluate", "perplexity", "query_batches", "mask_for_scoring", "score_batches", "empty_model"]

MLM_RATE = 0.15  # BERT's masking rate; the paper's masked-LM perplexity uses it too


def query_batches(dataset: Any, *, name: str | None = None, batch_size: int = 256,
                  max_batches: int | None = None) -> tuple[str, str | None, list[dict], dict]:
    """(name, kind, batches, meta) of a query dataset: a fipgraph Task (its test split), or an
    iterable of batch dicts together with `name`. (Lists of strings are tokenized per node: _run.)"""
    if hasattr(dataset, "test_loader"):
        batches = list(dataset.test_loader(batch_size))
        name, kind, meta = name or dataset.name, getattr(dataset, "kind", None), dataset.meta
    elif isinstance(dataset, str):
        raise ConfigError(f"dataset {dataset!r} is a name, not data; pass a Task "
                          "(fipgraph.data.make_tasks(...)[i]) or batches with name=...")
    else:
        if name is None:
            raise ConfigError("pass name='...' with an iterable of batches: it is the `dataset` "
                              "under which results are cached in evals")
        batches, kind, meta = list(dataset), None, {}
    if max_batches is not None:
        batches = batches[:max_batches]
    if not batches:
        raise ConfigError(f"query dataset {name!r} yielded no batches")
    return name, kind, batches, meta


def mask_for_scoring(batch: dict, mask_token_id: int, rate: float = MLM_RATE, seed: int = 0) -> dict:
    """BERT-style evaluation masking with a fixed seed: `rate` of the scorable tokens (attended,
    and not -100 in existing labels) become `mask_token_id`; only they are scored. Every masked
    token is replaced (no 80/10/10, unlike training's ``fipgraph.data.mask_tokens``) so the score is
    deterministic across nodes."""
    ids = batch["input_ids"]
    if "labels" in batch and (ids == mask_token_id).any():
        return batch  # the data layer masked it already; masking again would score [MASK] tokens
    cand = batch.get("attention_mask", torch.ones_like(ids)).bool()
    if "labels" in batch:
        cand &= batch["labels"] != -100
    gen = torch.Generator().manual_seed(seed)
    chosen = (torch.rand(ids.shape, generator=gen) < rate) & cand
    # every sequence with a scorable token gets at least one mask, else short texts score nothing
    empty = ~chosen.any(1) & cand.any(1)
    if empty.any():
        first = cand.float().argmax(1)
        chosen[empty.nonzero().squeeze(1), first[empty]] = True
    out = dict(batch)
    out["labels"] = torch.where(chosen, ids, torch.full_like(ids, -100))
    out["input_ids"] = torch.where(chosen, torch.full_like(ids, mask_token_id), ids)
    return out


def _mask_id(model: nn.Module, meta: dict, mask_token_id: int | None) -> int:
    for cand in (mask_token_id, meta.get("mask_token_id"),
                 getattr(getattr(model, "config", None), "mask_token_id", None)):
        if cand is not None:
            return int(cand)
    raise ConfigError("masked-LM perplexity needs the [MASK] token id; pass mask_token_id=... "
                      "(e.g. tokenizer.mask_token_id)")


def _models_by_arch(store, ids: Sequence[int], model: nn.Module | None) -> dict:
    id_list = ",".join(str(i) for i in ids)
    arch = store.sql(f"select node_id, arch_id from nodes where node_id in ({id_list})")
    arch_of = dict(zip(arch["node_id"].astype(int), arch["arch_id"]))
    groups: dict = {}
    for nid in ids:
        groups.setdefault(arch_of[nid], []).append(nid)
    if model is not None and len(groups) > 1:
        raise ConfigError(f"model= was given but the nodes span {len(groups)} architectures "
                          f"{sorted(groups)}; pass nodes of one architecture or model=None")
    return {a: (model if model is not None else empty_model(store, g[0]), g) for a, g in groups.items()}


def empty_model(store, nid: int) -> nn.Module:
    """The node's architecture, built without reading its weights (they are loaded per node)."""
    from fipgraph.models import build_model, model_from_node

    spec = store.arch_spec(nid).get("model")
    return build_model(spec) if spec else model_from_node(store, nid)  # the latter raises the clear error


def _group_batches(store, mdl: nn.Module, first: int, data: dict) -> list[dict]:
    """The batches one architecture group is scored on: the query's, or the user's texts
    tokenized with the group's tokenizer; masked LMs masked once so every node sees the same positions."""
    from fipgraph.models import model_kind

    mkind = model_kind(mdl)
    kind = data["kind"]
    if kind not in (None, "classification", mkind):
        raise ConfigError(f"dataset {data['name']!r} is a {kind} task but node {first} is a "
                          f"{mkind}; pick a dataset of the model's kind")
    batches = data["batches"]
    if data["texts"] is not None:
        tok = node_tokenizer(store, first, data["tokenizer"])
        batches = text_batches(data["texts"], tok, batch_size=data["batch_size"], max_length=data["max_length"],
                               kind=mkind)
        data = {**data, "meta": {"mask_token_id": tok.mask_token_id} if mkind == "masked_lm" else {}}
    if mkind == "masked_lm":
        mid = _mask_id(mdl, data["meta"], data["mask_token_id"])
        batches = [mask_for_scoring(b, mid, seed=data["mask_seed"] + i) for i, b in enumerate(batches)]
    return [to_device(b, data["device"]) for b in batches]  # moved once, scored by every node


def _query_data(dataset, *, name, batch_size, max_batches, max_length, tokenizer, mask_token_id,
                mask_seed, device) -> dict:
    if is_texts(dataset):
        return dict(name=name or texts_name(dataset), kind=None, batches=None, meta={}, texts=list(dataset),
                    task=None, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                    mask_token_id=mask_token_id, mask_seed=mask_seed, device=device)
    ds_name, kind, batches, meta = query_batches(dataset, name=name, batch_size=batch_size, max_batches=max_batches)
    return dict(name=ds_name, kind=kind, batches=batches, meta=meta, texts=None,
                task=dataset if hasattr(dataset, "test_loader") else None, tokenizer=None,
                mask_token_id=mask_token_id, mask_seed=mask_seed, device=device)


def _run(store, nodes, dataset, metrics: Sequence[str], **kw) -> pd.DataFrame:
    """One dataset's frame; for dataset=None every recorded task's, side by side as "{task}_{metric}"
    (the wide view's names), for a task name ("task2") that recorded task's."""
    from fipgraph.query.recorded import as_datasets

    dataset = as_datasets(store, nodes, dataset)
    if not isinstance(dataset, list) or not dataset or not hasattr(dataset[0], "test_loader"):
        return _run_one(store, nodes, dataset, metrics, **kw)
    frames = [_run_one(store, nodes, task, metrics, **kw).add_prefix(f"{task.name}_") for task in dataset]
    df = pd.concat(frames, axis=1)
    df.attrs["dataset"] = [task.name for task in dataset]
    return df


def _run_one(store, nodes, dataset, metrics: Sequence[str], *, model, recompute, record, progress, desc,
             **query) -> pd.DataFrame:
    ids = resolve_nodes(store, nodes)
    data = _query_data(dataset, device=resolve_device(query.pop("device")), **query)
    done = {} if recompute else cached_evals(store, ids, data["name"], metrics)
    todo = [n for n in ids if n not in done]
    heads = node_heads(store, todo) if data["task"] is not None else {}
    for mdl, group in (_models_by_arch(store, todo, model).values() if todo else ()):
        columns = {nid: task_columns(data["task"], heads.get(nid), nid) if data["task"] is not None
                   else slice(None) for nid in group}  # refuses a head mismatch before any scoring
        batches = _group_batches(store, mdl, group[0], data)
        mdl.to(data["device"]).eval()
        for nid in tqdm(group, desc=desc, disable=not progress, leave=False):
            store.load_into(mdl, nid)
            s = score_batches(mdl, batches, columns[nid])
            s.update(perplexity_of(s["loss"], s["loss_se"]))
            done[nid] = {m: s[m] for m in metrics}
            if record:
                try:
                    store.add_evals(nid, {data["name"]: done[nid]})
                except ReadOnlyStoreError:
                    record = False  # scores are still returned; the cache just stays cold
    df = pd.DataFrame([{"node_id": n, **done[n]} for n in ids]).set_index("node_id")
    df.attrs["dataset"] = data["name"]
    return df


def evaluate(store, nodes: Iterable[int] | None = None, dataset: Any = None, *, model: nn.Module | None = None,
             name: str | None = None, batch_size: int = 256, max_batches: int | None = None,
             recompute: bool = False, record: bool = True, progress: bool = True,
             device: str | torch.device = "auto") -> pd.DataFrame:
    """Accuracy and mean cross-entropy of each node on `dataset`; a DataFrame indexed by node_id.
    Cached in evals as (dataset name, "accuracy" / "loss"); cached values are reused. `dataset=None`
    scores every task of the data the nodes were built with (columns "task1_accuracy", ...), a name such
    as "task2" that task (`fipgraph.query.recorded`). A node built
    with data.head = "per_task" is scored on its task's block of outputs, as the build scored it.
    `device`: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N" or "mps"."""
    return _run(store, nodes, dataset, ("accuracy", "loss"), model=model, name=name,
                batch_size=batch_size, max_batches=max_batches, max_length=None, tokenizer=None,
                mask_token_id=None, mask_seed=0, recompute=recompute, record=record, progress=progress,
                desc="evaluate", device=device)


def perplexity(store, nodes: Iterable[int] | None = None, dataset: Any = None, *, model: nn.Module | None = None,
               name: str | None = None, batch_size: int = 32, max_batches: int | None = None,
               mask_token_id: int | None = None, mask_seed: int = 0, recompute: bool = False,
               record: bool = True, progress: bool = True, device: str | torch.device = "auto",
               tokenizer: Any = None, max_length: int = 512) -> pd.DataFrame:
    """exp(mean cross-entropy) per node: over examples for classifiers, over masked tokens
    (15 %, fixed seed) for masked LMs, over next tokens for causal LMs. Cached in evals as
    (dataset name, "perplexity" / "perplexity_se" / "loss" / "loss_se"): standard errors over examples,
    or LM blocks (``scoring.mean_se``), perplexity_se by the delta method. `dataset=None` or a task name:
    as in `evaluate`.

    `dataset` may be a list of strings: each is tokenized with the node's tokenizer (or
    `tokenizer`: an object, a name such as "smollm2", or a folder), truncated to `max_length`
    tokens, and scored on its own (cached as "text-<hash of the texts>" unless `name` is given)."""
    return _run(store, nodes, dataset, PERPLEXITY_METRICS, model=model, name=name,
                batch_size=batch_size, max_batches=max_batches, max_length=max_length, tokenizer=tokenizer,
                mask_token_id=mask_token_id, mask_seed=mask_seed, recompute=recompute, record=record,
                progress=progress, desc="perplexity", device=device)
