"""A chain of appended nodes with known weights, shared by the storage tests."""

import torch


def append_chain(store, n: int, big: tuple[int, int], small: tuple[int, int] = (10, 3)) -> list[tuple[int, dict]]:
    """n steps of two small random walks, a large Linear (own chunk files) and a small one (shared chunks),
    each step appended as a node; returns (node id, the exact state dict stored) pairs."""
    torch.manual_seed(0)
    big_net, small_net = torch.nn.Linear(*big), torch.nn.Linear(*small)
    out, a, b = [], None, None
    for _ in range(n):
        with torch.no_grad():
            big_net.weight.add_(1e-3 * torch.randn_like(big_net.weight))
            small_net.weight.add_(1e-3 * torch.randn_like(small_net.weight))
        a, b = store.append(big_net, parent=a), store.append(small_net, parent=b)
        out += [(a, {k: v.clone() for k, v in big_net.state_dict().items()}),
                (b, {k: v.clone() for k, v in small_net.state_dict().items()})]
    return out
