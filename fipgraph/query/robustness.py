"""Robustness measures of the paper (§ FIP ensembles, Methods): PGD accuracy (white-box per member
and transferred from a surrogate) with the Adversarial Robustness Toolbox, ensemble accuracy,
representation diversity score and coherence with a surrogate."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fipgraph.errors import ConfigError


def _art_device_type(device: torch.device) -> str:
    """ART's PyTorchClassifier knows "cpu" and "gpu" (the current CUDA device) only."""
    if device.type == "cuda":
        return "gpu"
    if device.type != "cpu":
        raise ConfigError(f"PGD attacks run through ART, which supports CPU and CUDA devices, not "
                          f"{device.type!r}; use device='cpu' or a CUDA device")
    return "cpu"


def _art_classifier(model: nn.Module, x: torch.Tensor, n_classes: int, clip: tuple[float, float]):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model.eval(), loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                             nb_classes=n_classes, clip_values=clip, device_type=_art_device_type(x.device))


def pgd_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, n_classes: int, eps: float,
                 eps_step: float | None = None, max_iter: int = 20, clip: tuple[float, float] | None = None,
                 seed: int = 0) -> torch.Tensor:
    """L∞ PGD adversarial examples against `model` (ART's ProjectedGradientDescent), computed on
    the device `x` lives on (the model must be there too)."""
    import contextlib

    from art.attacks.evasion import ProjectedGradientDescent

    if eps <= 0:
        raise ConfigError(f"eps={eps}; PGD needs a positive perturbation budget")
    clip = clip if clip is not None else (float(x.min()), float(x.max()))
    np.random.seed(seed)  # ART draws its random start from numpy's global generator
    # ART places its tensors on the *current* CUDA device: make that the one x is on
    on_device = torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        attack = ProjectedGradientDescent(_art_classifier(model, x, n_classes, clip), norm=np.inf, eps=eps,
                                          eps_step=eps_step or eps / 4, max_iter=max_iter, num_random_init=1,
                                          batch_size=256, verbose=False)
        adv = attack.generate(x=x.detach().cpu().numpy(), y=y.detach().cpu().numpy())
    return torch.as_tensor(adv).to(x.device)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    out = model.eval()(x)
    out = out.logits if hasattr(out, "logits") else out
    return float((out.argmax(-1) == y).float().mean())


class _LogMean(nn.Module):
    """An ensemble's log mean probability as logits, so PGD attacks the ensemble as a whole."""

    def __init__(self, ensemble: nn.Module):
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ensemble.log_proba(x)


def adversarial_report(ensemble, x: torch.Tensor, y: torch.Tensor, *, n_classes: int, eps: float,
                       surrogate: nn.Module | None = None, max_iter: int = 20,
                       clip: tuple[float, float] | None = None, joint: bool = False,
                       eps_step: float | None = None, whitebox_members: bool = True) -> dict:
    """Clean accuracies; PGD accuracy of each member attacked white-box (whitebox_members; also the
    ensemble's accuracy on each member's examples); with `surrogate`, the paper's transfer setting:
    member and ensemble accuracy on the surrogate's PGD examples; joint=True also attacks the
    ensemble as a whole (log mean probability as logits)."""
    kw = dict(n_classes=n_classes, eps=eps, eps_step=eps_step, max_iter=max_iter, clip=clip)
    members = list(ensemble.members)
    rep = {"clean_member": [accuracy(m, x, y) for m in members], "clean_ensemble": accuracy(ensemble, x, y)}
    if whitebox_members:  # one attack per member: costs as much as the joint attack
        advs = [pgd_examples(m, x, y, **kw) for m in members]
        rep["pgd_whitebox_member"] = [accuracy(m, a, y) for m, a in zip(members, advs)]
        rep["pgd_whitebox_member_ensemble"] = [accuracy(ensemble, a, y) for a in advs]
    if surrogate is not None:
        x_adv = pgd_examples(surrogate, x, y, **kw)
        rep["pgd_surrogate_self"] = accuracy(surrogate, x_adv, y)
        rep["pgd_transfer_member"] = [accuracy(m, x_adv, y) for m in members]
        rep["pgd_transfer_ensemble"] = accuracy(ensemble, x_adv, y)
    if joint:
        rep["pgd_joint_ensemble"] = accuracy(ensemble, pgd_examples(_LogMean(ensemble), x, y, **kw), y)
    return rep


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


@torch.no_grad()
def representation_diversity(members: Sequence[nn.Module], x: torch.Tensor) -> dict[str, float]:
    """Per layer: the std across members of the L2 norm of the layer's activation, averaged over
    the inputs (paper, Methods: 'representation diversity score')."""
    norms: dict[str, list[torch.Tensor]] = {}
    for m in members:
        hooks, acts = [], {}
        for name, layer in _layers(m):
            hooks.append(layer.register_forward_hook(
                lambda _mod, _inp, out, name=name: acts.__setitem__(name, out.flatten(1).norm(dim=1))))
        try:
            m.eval()(x)
        finally:
            for h in hooks:
                h.remove()
        for name, v in acts.items():
            norms.setdefault(name, []).append(v)
    if not norms:
        raise ConfigError("no Linear/Conv layers found in the members; representation diversity "
                          "is defined over those layers' activations")
    return {name: float(torch.stack(v).std(0, unbiased=False).mean()) for name, v in norms.items()}


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇_x CE(model(x), y), flattened over the whole input set."""
    x = x.clone().requires_grad_(True)
    out = model.eval()(x)
    out = out.logits if hasattr(out, "logits") else out
    (g,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), x)
    return g.reshape(-1)


def coherence(members: Sequence[nn.Module], surrogate: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Cosine similarity of each member's input-gradient with the surrogate's; coherence = the
    maximum (paper, Methods). Low coherence = the surrogate's attacks transfer poorly."""
    gs = input_gradient(surrogate, x, y)
    cos = [float(F.cosine_similarity(input_gradient(m, x, y), gs, dim=0)) for m in members]
    return {"coherence": max(cos), "cosine_member": cos}


def ensemble_robustness(store, name: str, x: torch.Tensor, y: torch.Tensor, *, n_classes: int, eps: float,
                        surrogate: int | None = None, max_iter: int = 20, eps_step: float | None = None,
                        clip: tuple[float, float] | None = None, joint_n: int | None = None,
                        whitebox_members: bool = False, probe_n: int = 200, record: bool = True,
                        device: str | torch.device = "auto") -> dict:
    """The adversarial report, representation diversity and (with a surrogate node) coherence of
    the store's recorded ensemble `name`, on inputs x (labels y).

    joint_n: attack the ensemble as a whole (its log mean probability) on the first joint_n inputs
    (0 = skip; None = all). probe_n: inputs for diversity and coherence. record=True writes the
    scalars to the store's ensemble_evals table, read back with
    ``select metric, value from ensemble_evals where name = '<name>'``.
    Everything runs on `device` ("auto": CUDA, then MPS, then CPU; ART attacks need CPU or CUDA).
    """
    from fipgraph.device import resolve_device
    from fipgraph.models import model_from_node
    from fipgraph.query.ensembles import load_ensemble

    dev = resolve_device(device)
    if dev.type == "mps" and str(device) == "auto":
        dev = torch.device("cpu")  # ART has no MPS support: "auto" means the best device ART can use
    _art_device_type(dev)  # refuse a device ART cannot use before loading anything

    if len(x) != len(y) or len(x) == 0:
        raise ConfigError(f"x has {len(x)} inputs and y {len(y)} labels; give the same positive number")
    ens = load_ensemble(store, name).to(dev)
    if surrogate is not None and int(surrogate) in ens.node_ids:  # refuse before loading its weights
        raise ConfigError(f"surrogate node {surrogate} is a member of ensemble {name!r}; a transfer "
                          "attack needs a network outside the ensemble")
    sur = model_from_node(store, int(surrogate)).to(dev).eval() if surrogate is not None else None
    x, y = x.to(dev), y.to(dev)
    rep = adversarial_report(ens, x, y, n_classes=n_classes, eps=eps, eps_step=eps_step, surrogate=sur,
                             max_iter=max_iter, clip=clip, whitebox_members=whitebox_members)
    out: dict[str, float] = {"n_inputs": len(x), "eps": eps, "max_iter": max_iter, "k": len(ens.node_ids)}
    for key, v in rep.items():  # member lists -> mean, min, max
        if isinstance(v, list):
            out.update({f"{key}_mean": float(np.mean(v)), f"{key}_min": min(v), f"{key}_max": max(v)})
        else:
            out[key] = v
    if joint_n != 0:
        xj, yj = x[:joint_n], y[:joint_n]
        adv = pgd_examples(_LogMean(ens), xj, yj, n_classes=n_classes, eps=eps, eps_step=eps_step,
                           max_iter=max_iter, clip=clip)
        out.update(n_joint=len(xj), clean_ensemble_joint_inputs=accuracy(ens, xj, yj),
                   pgd_joint_ensemble=accuracy(ens, adv, yj))
    xp, yp = x[:probe_n], y[:probe_n]
    div = representation_diversity(list(ens.members), xp)
    out.update({f"diversity_{layer}": v for layer, v in div.items()})
    out["diversity_mean"] = float(np.mean(list(div.values())))
    if sur is not None:
        coh = coherence(list(ens.members), sur, xp, yp)
        out.update(coherence=coh["coherence"], cosine_member_mean=float(np.mean(coh["cosine_member"])))
        out["surrogate_node"] = int(surrogate)
    if record:
        store.add_ensemble_evals(name, out)
        store.flush()
    return out
