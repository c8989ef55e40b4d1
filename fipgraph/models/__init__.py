"""Model registry, built-in architectures and the per-kind forward used by losses and odist."""

from fipgraph.models.hf import hf_spec, load_tokenizer, tokenizer_for  # also registers the HF builders
from fipgraph.models import vision as _vision  # noqa: F401  (registers mlp, cnn5, lenet300, resnet)
from fipgraph.models.registry import (build_model, forward_logits, known_models, model_from_node,
                                      model_kind, normalize_spec, register_model)

__all__ = ["build_model", "forward_logits", "hf_spec", "known_models", "load_tokenizer", "model_from_node",
           "model_kind", "normalize_spec", "register_model", "tokenizer_for"]
