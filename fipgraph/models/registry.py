"""The model registry: one ``@register_model`` per builder, a JSON spec per built model.

A spec is ``{"name": str, "kwargs": dict}`` (optionally ``"tokenizer"``). ``build_model`` stamps it
on the module as ``fipgraph_spec``; the store records it, so ``model_from_node`` can rebuild any
stored node without the code that first created it.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable

import torch
from torch import nn

from fipgraph.errors import ConfigError
from fipgraph.models.user import entry_point_builder, is_import_path, resolve_import_path

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``fn(**kwargs) -> nn.Module`` buildable as ``{"name": name, "kwargs": ...}``."""
    def wrap(fn: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ConfigError(f"model name {name!r} is already registered by {_REGISTRY[name].__module__}")
        _REGISTRY[name] = fn
        return fn
    return wrap


def known_models() -> list[str]:
    """Registered model names."""
    return sorted(_REGISTRY)


def normalize_spec(spec: str | dict) -> dict:
    """Accept "mlp" or {"name": ..., "kwargs": ...}; check it is JSON-able; return a deep copy."""
    if isinstance(spec, str):
        spec = {"name": spec, "kwargs": {}}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"a model spec is {{'name': ..., 'kwargs': {{...}}}}, got {spec!r}")
    spec = {"kwargs": {}, **copy.deepcopy(spec)}
    if not isinstance(spec["kwargs"], dict):
        raise ConfigError(f"model spec kwargs must be a dict, got {spec['kwargs']!r}")
    try:
        # round-trip so tuples become lists: the stored spec and the in-memory one then compare equal
        spec = json.loads(json.dumps(spec))
    except TypeError as e:
        raise ConfigError(f"model spec for {spec['name']!r} is not JSON-able ({e}); "
                          "use plain numbers, strings, lists and dicts") from None
    return spec


def build_model(spec: str | dict) -> nn.Module:
    """Build a registered model from its spec and set ``model.fipgraph_spec``."""
    spec = normalize_spec(spec)
    builder, name = _builder(spec), spec["name"]
    try:
        model = builder(**spec["kwargs"])
    except TypeError as e:  # wrong kwarg names surface here; say which model and what it takes
        raise ConfigError(f"cannot build model {name!r} with kwargs {spec['kwargs']}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if getattr(model, "fipgraph_spec", None) is None:  # a builder may set a cheaper rebuild spec itself
        model.fipgraph_spec = spec
    return model


def _builder(spec: dict) -> Builder:
    """Registered name, then ``package.module:callable``, then an installed ``fipgraph.models`` entry point."""
    name = spec["name"]
    if name in _REGISTRY:
        return _REGISTRY[name]
    if is_import_path(name):
        return resolve_import_path(name, spec)
    found = entry_point_builder(name)
    if found is None:
        raise ConfigError(f"unknown model {name!r}; known models: {known_models()}, or name your own as "
                          f"\"package.module:factory\" (a callable returning an nn.Module)")
    return found


def model_from_node(store: Any, node_id: int) -> nn.Module:
    """Rebuild the architecture recorded for ``node_id`` and load its weights."""
    spec = store.arch_spec(node_id).get("model")
    if not spec:
        raise ConfigError(f"node {node_id} has no model spec in the store (it was appended as a state dict); "
                          f"build the model yourself and call store.load_into(model, {node_id})")
    try:
        model = build_model(spec)
    except ConfigError as exc:
        raise ConfigError(f"node {node_id}: {exc}") from None
    store.load_into(model, node_id)
    return model


def model_kind(model: nn.Module) -> str:
    """'classifier' | 'masked_lm' | 'causal_lm', from an explicit ``fipgraph_kind`` or the HF class."""
    kind = getattr(model, "fipgraph_kind", None)
    if kind is not None:
        return kind
    cls = type(model).__name__
    if cls.endswith("ForMaskedLM"):
        return "masked_lm"
    if cls.endswith("ForCausalLM") or cls.endswith("LMHeadModel"):
        return "causal_lm"
    return "classifier"


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and type(model).__module__.startswith("transformers")


def _trim_padding(ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop trailing columns that are padding in every row: text tasks are padded to their longest
    text, so a batch of short sentences would otherwise pay for the longest (the classifier's
    outputs are unchanged; right padding only)."""
    if mask is None or mask.dim() != 2 or mask.shape[1] == 0:
        return ids, mask
    used = mask.bool().any(0).nonzero()
    width = int(used.max()) + 1 if len(used) else 1
    return ids[:, :width], mask[:, :width]


def _custom_logits(forward, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The user's ``forward(model, batch)``: logits with the batch's labels, or its own (logits, labels)."""
    out = forward(model, batch)
    logits, labels = out if isinstance(out, tuple) and len(out) == 2 else (out, batch.get("labels"))
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ConfigError(f"forward= must return logits (and the batch must have labels) or (logits, labels); got "
                          f"{type(out).__name__} for a batch with keys {sorted(batch)}")
    return logits, labels


def forward_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (P, C) at the scored positions and their labels (P,).

    Classifier: one position per example. Masked LM: positions with label != -100. Causal LM:
    HF convention (labels == input_ids, unshifted); position t predicts token t+1.
    """
    custom = getattr(model, "fipgraph_forward", None)  # fipgraph.walk(..., forward=): the user's own forward
    if custom is not None:
        return _custom_logits(custom, model, batch)
    kind = model_kind(model)
    if "labels" not in batch:
        raise ConfigError(f"the batch has no labels (keys {sorted(batch)}); give (inputs, labels) items or a 'labels' "
                          f"key, or pass forward=lambda model, batch: (logits, labels)")
    labels = batch["labels"]
    if kind == "classifier":
        if "x" in batch:
            out = model(pixel_values=batch["x"]) if _is_hf(model) else model(batch["x"])
        else:
            ids, mask = _trim_padding(batch["input_ids"], batch.get("attention_mask"))
            out = model(input_ids=ids, attention_mask=mask)
        logits = out.logits if hasattr(out, "logits") else out
        if not isinstance(logits, torch.Tensor):
            raise ConfigError(f"{type(model).__name__} returned a {type(logits).__name__}, not logits; pass "
                              f"forward=lambda model, batch: model(batch['x'])[0] (or whatever picks the logits)")
        if logits.shape[0] != labels.shape[0]:
            raise ConfigError(f"model gave {logits.shape[0]} rows of logits for {labels.shape[0]} labels")
        return logits, labels
    if "input_ids" not in batch:
        raise ConfigError(f"a {kind} model needs a text batch with input_ids; got keys {sorted(batch)}")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits  # (B, T, V)
    if kind == "causal_lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    elif kind != "masked_lm":
        raise ConfigError(f"unknown model kind {kind!r}; expected classifier, masked_lm or causal_lm")
    scored = labels != -100
    return logits[scored], labels[scored]
