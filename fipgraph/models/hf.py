"""Hugging Face transformers builders (filled in below)."""
