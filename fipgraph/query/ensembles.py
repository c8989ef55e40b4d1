"""Ensembles of stored networks: choose k members by a rule, predict with the sum of softmaxes.

Rules: "robust" (lowest H recorded along undirected paths, the paper's rule H ≤ δ as "the k lowest H"),
"spread" (farthest-point sampling in weight space among the candidates whose accuracy is within `max_drop` of the
best one: members far apart along a travelling walk), "diverse" (greedy maximal disagreement on a query set, or
maximal weight distance without one), "top" (by a metric).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fipgraph.errors import ConfigError, FipgraphError
from fipgraph.query._common import check_metric, check_same_arch, flat_vector, float_param_names, wide_columns
from fipgraph.query.selection import select
from fipgraph.storage.sql import quote_ident


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


class Ensemble(nn.Module):
    """Sum of the members' softmax outputs (paper, Algorithm 3). `node_ids` and `rule` say where
    the members came from."""

    def __init__(self, members: Sequence[nn.Module], node_ids: Sequence[int] = (), rule: dict | None = None):
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.node_ids = [int(n) for n in node_ids]
        self.rule = dict(rule or {})

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return sum(torch.softmax(_logits(m(*args, **kwargs)), dim=-1) for m in self.members)

    def log_proba(self, *args, **kwargs) -> torch.Tensor:
        """log of the mean member probability: a proper logit for losses and attacks."""
        return torch.log(self(*args, **kwargs) / len(self.members)).clamp_min(-80.0)

    def export(self, path: str) -> str:
        """Write `path`/ensemble.safetensors (all member weights) and `path`/ensemble.json
        (member node ids, model specs, selection rule); returns `path`."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, os.path.join(path, "ensemble.safetensors"))
        specs = [getattr(m, "fipgraph_spec", None) for m in self.members]
        with open(os.path.join(path, "ensemble.json"), "w") as f:
            json.dump({"node_ids": self.node_ids, "specs": specs, "rule": self.rule}, f, indent=1)
        return path


def _candidates(store, where, k: int, require: str | None = None) -> tuple[list[int], Any]:
    cond: Any = where
    if require is not None:  # members must carry the ranking metric
        check_metric(store, require)
        cond = dict(where or {}) if not isinstance(where, str) else where
        if isinstance(cond, dict):
            cond[require] = ("not null", None)
        else:
            cond = f"({where}) and \"{require}\" is not null"
    ids = select(store, where=cond)
    if k < 1 or k > len(ids):
        extra = f" with a value for {require!r}" if require else ""
        raise ConfigError(f"k={k} but only {len(ids)} candidate node(s){extra} meet where={where!r}; "
                          f"use 1 <= k <= {len(ids)} or loosen the constraints")
    return ids, cond


def _resolve_column(store, name: str, what: str, missing: str) -> str | None:
    """`name` itself, or the single wide column "{dataset}_{name}" (metrics are recorded per dataset);
    several make the caller choose, none raises with `missing` as the fix."""
    cols = wide_columns(store)
    if name in cols:
        return name
    found = [c for c in cols if c.endswith("_" + name)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(f"{name} is recorded for several datasets {found}; pass {what}= one of them")
    raise ConfigError(f"no column {name!r} (or '*_{name}') in the wide view: {missing}")


def resolve_h(store, h_metric: str) -> str:
    """The wide column holding H. The undirected path records H per task ("{task}_H"), so a bare
    "H" resolves to the single such column; several make the choice explicit."""
    return _resolve_column(store, h_metric, "h_metric", "robust ensembles need H, which `fipgraph build` "
                           "records on undirected runs; use strategy='top', 'spread' or 'diverse'")


def _disagreement_pick(store, ids: list[int], k: int, query: Any, model: nn.Module | None,
                       device: torch.device | None = None) -> list[int]:
    """Greedy: start from the most accurate node on `query`, then repeatedly add the node whose
    predictions disagree most (mean over current members) with the members chosen so far."""
    from fipgraph.models import forward_logits, model_from_node
    from fipgraph.query.evaluation import query_batches
    from fipgraph.query.scoring import to_device

    check_same_arch(store, ids)
    _, _, batches, _ = query_batches(query, name="query")
    batches = [to_device(b, device) for b in batches]
    mdl = model if model is not None else model_from_node(store, ids[0])
    mdl.to(device).eval()
    preds, labels = [], None
    with torch.inference_mode():
        for nid in ids:
            store.load_into(mdl, nid)
            out = [forward_logits(mdl, b) for b in batches]
            preds.append(torch.cat([o[0].argmax(-1) for o in out]).cpu())
            labels = torch.cat([o[1] for o in out]).cpu()
    p = torch.stack(preds)  # (N, examples)
    acc = (p == labels).float().mean(1)
    chosen = [int(acc.argmax())]
    disagree = torch.zeros(len(ids))
    while len(chosen) < k:
        disagree += (p != p[chosen[-1]]).float().mean(1)
        score = disagree.clone()
        score[chosen] = -1.0
        chosen.append(int(score.argmax()))
    return [ids[i] for i in chosen]


def _distance_pick(store, ids: list[int], k: int, first: int = 0) -> list[int]:
    """Greedy farthest point in weight space, starting from candidate `first`; one streaming
    pass over the candidates per pick, holding only one vector and N distances."""
    check_same_arch(store, ids)
    names = float_param_names(store, ids[0])
    chosen = [first]
    mind = np.full(len(ids), np.inf)
    while len(chosen) < k:
        ref = flat_vector(store.state_dict(ids[chosen[-1]]), names).astype(np.float64)
        for i, nid in enumerate(ids):
            d = np.linalg.norm(flat_vector(store.state_dict(nid), names) - ref)
            mind[i] = min(mind[i], d)
        mind[chosen] = -1.0
        chosen.append(int(mind.argmax()))
    return [ids[i] for i in chosen]


def _spread_pick(store, where, k: int, metric: str | None, max_drop: float | None) -> tuple[list[int], str]:
    """(members, accuracy column): farthest-point sampling in weight space, seeded with the most
    accurate candidate, among the candidates within `max_drop` of that best accuracy."""
    if max_drop is not None and not max_drop >= 0:
        raise ConfigError(f"max_drop={max_drop}; give the accuracy a member may lose against the best candidate "
                          "as a fraction >= 0 (e.g. 0.01 = one point), or None for no bound")
    col = _resolve_column(store, metric or "accuracy", "metric", "spread ensembles bound the candidates' "
                          "accuracy; evaluate them first (`fipgraph evaluate`) or pass metric= a column")
    ids, _ = _candidates(store, where, 1, require=col)
    q = f"select node_id, {quote_ident(col)} as m from wide where node_id in ({', '.join(map(str, ids))})"
    acc = store.sql(q).set_index("node_id")["m"]
    best = float(acc.max())
    kept = [i for i in ids if max_drop is None or float(acc[i]) >= best - max_drop]
    if k > len(kept):
        raise ConfigError(f"k={k} but only {len(kept)} of {len(ids)} candidate node(s) meeting where={where!r} have "
                          f"{col} >= {best:.4f} - max_drop={max_drop}; use k <= {len(kept)} or raise max_drop")
    first = max(range(len(kept)), key=lambda i: (float(acc[kept[i]]), -i))  # the most accurate, earliest on ties
    return _distance_pick(store, kept, k, first), col


def ensemble(store, k: int, where: dict | str | None = None, strategy: str = "robust", *,
             metric: str | None = None, descending: bool = True, h_metric: str = "H",
             query: Any = None, model: nn.Module | None = None, name: str | None = None,
             record: bool = True, max_drop: float | None = 0.01, device: str | torch.device = "auto") -> Ensemble:
    """Choose k nodes meeting `where` by `strategy` and return their Ensemble.

    robust: the k lowest `h_metric` (H = output motion under input perturbation, recorded by the
    undirected path; the paper's H ≤ δ rule, δ = the k-th lowest H). spread: farthest-point
    sampling in weight space, starting at the most accurate candidate, among candidates whose
    `metric` (default: the single '*_accuracy' column) is within `max_drop` of it (None = no bound).
    diverse: greedy max disagreement on `query` (a Task or batches), or max weight distance if no
    query. top: the k best by `metric` (descending unless descending=False).
    The ensemble is recorded in the store's `ensembles` table under `name`. The diverse pick's
    forward passes and the returned members run on `device` ("auto": CUDA, then MPS, then CPU).
    """
    from fipgraph.device import resolve_device

    dev = resolve_device(device)
    if strategy == "robust":
        h_metric = resolve_h(store, h_metric)
        _, cond = _candidates(store, where, k, require=h_metric)
        members = select(store, where=cond, order_by=h_metric, limit=k)
    elif strategy == "top":
        if metric is None:
            raise ConfigError("strategy='top' needs metric=..., e.g. metric='task1_accuracy'")
        _, cond = _candidates(store, where, k, require=metric)
        members = select(store, where=cond, order_by=("-" if descending else "") + metric, limit=k)
    elif strategy == "spread":
        members, metric = _spread_pick(store, where, k, metric, max_drop)
    elif strategy == "diverse":
        ids, _ = _candidates(store, where, k)
        members = (_disagreement_pick(store, ids, k, query, model, dev) if query is not None
                   else _distance_pick(store, ids, k))
    else:
        raise ConfigError(f"unknown strategy {strategy!r}; use 'robust', 'spread', 'diverse' or 'top'")
    rule = {"strategy": strategy, "k": k, "where": where, "metric": metric if strategy in ("top", "spread") else
            (h_metric if strategy == "robust" else ("disagreement" if query is not None else "weight_distance"))}
    if strategy == "spread":
        rule["max_drop"] = max_drop
    ens = Ensemble(_load_members(store, members, model), members, rule).to(dev)
    if record:
        name = name or f"{strategy}-k{k}-{time.strftime('%Y%m%d-%H%M%S')}"
        record_ensemble(store, name, ens)
        ens.name = name
    return ens


def _load_members(store, ids: list[int], model: nn.Module | None) -> list[nn.Module]:
    import copy

    from fipgraph.models import model_from_node

    if model is None:
        return [model_from_node(store, n).eval() for n in ids]
    return [store.load_into(copy.deepcopy(model), n).eval() for n in ids]


def record_ensemble(store, name: str, ens: Ensemble) -> None:
    """Record the ensemble in the store's `ensembles` table (members and the rule that chose them)."""
    store.add_ensemble(name, ens.node_ids, ens.rule)


def load_ensemble(store, name: str, model: nn.Module | None = None) -> Ensemble:
    """Rebuild a recorded ensemble from the store's `ensembles` table."""
    try:
        spec = store.ensemble_spec(name)
    except FipgraphError as exc:
        raise ConfigError(str(exc)) from None
    return Ensemble(_load_members(store, spec["members"], model), spec["members"], spec["rule"])
