"""Model classes and a factory defined outside fipgraph (imported by path in tests)."""

import torch
from torch import nn


class TwoLayer(nn.Module):
    """A classifier of the user's own: nothing in fipgraph registers it."""

    def __init__(self, d_in: int = 64, hidden: int = 32, n_out: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))


class TupleOut(TwoLayer):
    """Returns (logits, features): the default loss cannot read it without forward=."""

    def forward(self, x: torch.Tensor):
        h = self.body(x.flatten(1))
        return self.head(h), h


def small_classifier(hidden: int = 16) -> nn.Module:
    """A factory, as a TOML [model] name = "tests.owncode.models:small_classifier" would call it."""
    return TwoLayer(hidden=hidden)
