"""Calibration for the `travel` op (experiment 4): how far do undirected FIP walks travel on digits, and which secondary objective moves them?

MLP 64-128-10 trained 1,000 Adam steps on all ten digits; then walks of fixed-length steps (the authors' optimizer,
lr 0.01) on S(w) = odist(f(x_mem; w), f(x_mem; w_start)) + λ·L(w), memory = 500 training images, batch 32.
Candidates for L: none (literal Algorithm 3), a random direction, that direction projected off the top of the metric
tensor's spectrum, repulsion from the walk's saved nodes, isotropic noise on the normalised step. Prints per walk the
distance from the start, test accuracy, and for 5 evenly spaced nodes the representation diversity and coherence with
an independently trained MLP (the surrogate).

    python examples/paper/adversarial_ensembles/travel_digits.py [--steps 4000] [--only direction,literal]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from fipgraph.data import make_tasks
from fipgraph.models import build_model
from fipgraph.path.ops.odist import bhattacharyya
from fipgraph.path.engine.optim import FixedStep
from fipgraph.query.robustness import coherence, representation_diversity

SPEC = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [128], "n_classes": 10}}


def train(task, seed: int, steps: int = 1000) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(SPEC)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = task.train_loader(32, seed)
    it, epoch = iter(loader), 0
    for _ in range(steps):
        try:
            b = next(it)
        except StopIteration:
            epoch += 1
            loader.set_epoch(epoch)
            it = iter(loader)
            b = next(it)
        opt.zero_grad()
        F.cross_entropy(model(b["x"]), b["labels"]).backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def acc(model, task) -> float:
    return float((model(task.test["x"]).argmax(-1) == task.test["labels"]).float().mean())


def top_eigvecs(model, x: torch.Tensor, k: int) -> torch.Tensor:
    """(k, n) orthonormal top eigenvectors of g = J^T J / N over inputs x (dense J: digits is small)."""
    params = [p for p in model.parameters()]
    rows = []
    out = model(x)  # (N, 10)
    for i in range(out.shape[0]):
        for c in range(out.shape[1]):
            g = torch.autograd.grad(out[i, c], params, retain_graph=True)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
    J = torch.stack(rows)  # (N*10, n)
    _, _, vh = torch.linalg.svd(J, full_matrices=False)
    return vh[:k].detach()


def walk(start, task, method: str, steps: int, lr: float, lam: float, seed: int, save_every: int,
         noise: float = 0.0, k_eig: int = 0, reproject: int = 0) -> dict:
    model = copy.deepcopy(start).train()
    w0 = parameters_to_vector(model.parameters()).detach().clone()
    memory = task.sample(500, seed=1000 + seed)
    with torch.no_grad():
        ref = start(memory["x"])
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(w0.numel(), generator=gen)
    v /= v.norm()
    eig_x = task.sample(100, seed=7)["x"]

    def project(v: torch.Tensor) -> torch.Tensor:
        U = top_eigvecs(model, eig_x, k_eig)
        p = v - U.T @ (U @ v)
        return p / p.norm()

    if method == "lowrank":
        v = project(v)
    opt = FixedStep(model.parameters(), lr=lr)
    saved = [w0.clone()]
    rows = []
    for step in range(1, steps + 1):
        if method == "lowrank" and reproject and step % reproject == 0:
            v = project(v)
        idx = torch.randint(0, 500, (32,), generator=gen)
        loss = bhattacharyya(model(memory["x"][idx]), ref[idx])
        w = parameters_to_vector(model.parameters())
        if method in ("direction", "lowrank"):
            loss = loss - lam * torch.dot(w - w0, v)
        elif method == "repulsion":
            # L = -sum_j ||w - w_j||: push away from every saved node (a tiny offset avoids 0/0 at the start)
            loss = loss - lam * sum(torch.sqrt(((w - s) ** 2).sum() + 1e-8) for s in saved)
        opt.zero_grad()
        loss.backward()
        if method == "repulsion" and step == 1:  # at w0 every term is flat: a random first step breaks the tie
            with torch.no_grad():
                vector_to_parameters(w.detach() + lr * v, model.parameters())
        else:
            opt.step()
        if noise:
            with torch.no_grad():
                wn = parameters_to_vector(model.parameters()) + noise * lr * torch.randn(w0.numel(), generator=gen) / np.sqrt(w0.numel())
                vector_to_parameters(wn, model.parameters())
        if step % save_every == 0:
            wv = parameters_to_vector(model.parameters()).detach().clone()
            saved.append(wv)
            model.eval()
            rows.append((step, float((wv - w0).norm()), acc(model, task)))
            model.train()
    return {"rows": rows, "saved": saved}


def members_from(start, vecs):
    out = []
    for w in vecs:
        m = copy.deepcopy(start)
        vector_to_parameters(w, m.parameters())
        out.append(m.eval())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--only", default="")
    ap.add_argument("--seed", type=int, default=0, help="walk seed: direction, memory and batch order")
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = make_tasks("digits", [list(range(10))])[0]
    start, other, sur = train(task, 0), train(task, 1), train(task, 2)
    w0 = parameters_to_vector(start.parameters()).detach()
    print(f"start acc {acc(start, task):.4f}  ||w0|| {w0.norm():.2f}  independent distance "
          f"{(parameters_to_vector(other.parameters()) - w0).norm():.2f} (seed 1) "
          f"{(parameters_to_vector(sur.parameters()) - w0).norm():.2f} (seed 2)")
    x, y = task.test["x"], task.test["labels"]
    base = representation_diversity([start, other, sur], x)
    print(f"independent trio: diversity {np.mean(list(base.values())):.3f}; coherence of (seed 0, seed 1) with "
          f"seed 2 {coherence([start, other], sur, x, y)['coherence']:.3f}, cosines "
          f"{[round(c, 3) for c in coherence([start, other], sur, x, y)['cosine_member']]}")
    every = max(args.steps // 20, 1)
    methods = {
        "literal": dict(method="literal", lam=0.0),
        "noise": dict(method="literal", lam=0.0, noise=1.0),
        "direction_l0.1": dict(method="direction", lam=0.1),
        "direction_l1": dict(method="direction", lam=1.0),
        "direction_l10": dict(method="direction", lam=10.0),
        "lowrank_k100": dict(method="lowrank", lam=1.0, k_eig=100),
        "lowrank_k100_re": dict(method="lowrank", lam=1.0, k_eig=100, reproject=500),
        "repulsion_l0.1": dict(method="repulsion", lam=0.1),
        "repulsion_l1": dict(method="repulsion", lam=1.0),
        "direction_l0.3": dict(method="direction", lam=0.3),
        "repulsion_l0.03": dict(method="repulsion", lam=0.03),
        "repulsion_l0.3": dict(method="repulsion", lam=0.3),
    }
    only = [m for m in args.only.split(",") if m]
    for name, kw in methods.items():
        if only and name not in only:
            continue
        t0 = time.time()
        res = walk(start, task, steps=args.steps, lr=args.lr, seed=args.seed, save_every=every, **kw)
        rows = res["rows"]
        accs = [r[2] for r in rows]
        pick = res["saved"][1::4][:5]
        members = members_from(start, pick)
        div = np.mean(list(representation_diversity(members, x).values()))
        coh = coherence(members, sur, x, y)["cosine_member"]
        print(f"{name:18s} dist {rows[-1][1]:7.2f} (max {max(r[1] for r in rows):.2f}) acc last {accs[-1]:.4f} "
              f"min {min(accs):.4f}  diversity(5 nodes) {div:.3f} cosines {[round(c, 3) for c in coh]}  {time.time() - t0:.0f}s")
        print("   dist/acc by node:", " ".join(f"{r[1]:.1f}/{r[2]:.3f}" for r in rows[::2]))


if __name__ == "__main__":
    main()
