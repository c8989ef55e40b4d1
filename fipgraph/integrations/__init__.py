"""Thin training-loop callbacks over ``store.recorder``: ``fipgraph.integrations.transformers`` (HF Trainer) and
``fipgraph.integrations.lightning``. Each imports its framework only when used."""
