"""One scorer for build-time and query-time evaluation: which logits a task is scored on, and the
accuracy / cross-entropy of a model over batches.

A network built with ``data.head = "per_task"`` has one block of output units per task and is
scored on its task's block only; scoring it on all units (what `fipgraph evaluate` once did) gives
other numbers than the build recorded. Both sides call `head_slice` and `score_batches` so that
they cannot disagree again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fipgraph.errors import ConfigError


def head_slice(task: Any, head: str) -> slice:
    """Logit columns a task is scored on: all of them (single head) or its own block (per_task)."""
    if head == "per_task":
        return slice(task.label_offset, task.label_offset + task.n_classes)
    return slice(None)


def to_device(batch: dict, device: torch.device | None) -> dict:
    """The batch's tensors on `device` (None: left where they are)."""
    if device is None:
        return batch
    from fipgraph.device import move_batch

    return move_batch(batch, device)


@torch.inference_mode()
def score_batches(model: nn.Module, batches: Iterable[dict], columns: slice = slice(None),
                  device: torch.device | None = None) -> dict[str, float]:
    """Example- (or token-) weighted mean cross-entropy and accuracy of `model` over `batches`,
    on the logit `columns` only (see head_slice); positions labelled -100 are not scored.
    ``loss_se``: the standard error of that mean over rows (examples, or LM blocks: see ``mean_se``)."""
    from fipgraph.models import forward_logits

    correct, row_loss, row_n = 0, [], []
    for batch in batches:
        batch = to_device(batch, device)
        logits, labels = forward_logits(model, batch)
        logits = logits[:, columns]
        keep = labels != -100
        logits, labels = logits[keep], labels[keep]
        ce = F.cross_entropy(logits.float(), labels, reduction="none")
        sizes = _row_sizes(model, batch, keep)
        rows = torch.repeat_interleave(torch.arange(len(sizes), device=ce.device), sizes.to(ce.device))
        row_loss.append(torch.zeros(len(sizes), device=ce.device, dtype=torch.float64).index_add_(0, rows, ce.double()).cpu())
        row_n.append(sizes.cpu())
        correct += int((logits.argmax(-1) == labels).sum())
    loss, n = torch.cat(row_loss), torch.cat(row_n)
    count = int(n.sum())
    if count == 0:
        raise ConfigError("the query batches contain no scored position (all labels are -100)")
    mean, se = mean_se(loss, n)
    return {"loss": mean, "loss_se": se, "accuracy": correct / count, "n": count}


PERPLEXITY_METRICS = ("perplexity", "perplexity_se", "loss", "loss_se")


def perplexity_of(loss: float, loss_se: float) -> dict[str, float]:
    """exp(loss) and its standard error by the delta method (d exp(l) = exp(l)·dl)."""
    ppl = math.exp(min(loss, 700.0))  # exp overflows float past ~709
    return {"perplexity": ppl, "perplexity_se": ppl * loss_se}


def _row_sizes(model: nn.Module, batch: dict, keep: torch.Tensor) -> torch.Tensor:
    """Scored positions per example of `batch`, in forward_logits' row-major order (LM: per block)."""
    from fipgraph.models import model_kind

    labels = batch["labels"]
    if labels.dim() >= 2:
        if model_kind(model) == "causal_lm":
            labels = labels[:, 1:]  # position t predicts token t+1
        sizes = (labels != -100).sum(1)
        # a layout forward_logits scores otherwise: one row, so no standard error rather than a wrong one
        return sizes if int(sizes.sum()) == int(keep.sum()) else keep.sum().reshape(1)
    return keep.long()  # a classifier: one position per example


def mean_se(row_loss: torch.Tensor, row_n: torch.Tensor) -> tuple[float, float]:
    """Σloss/Σn and its standard error with the rows as the independent units (tokens inside one LM block
    are correlated, blocks much less): the ratio estimator's sqrt(B/(B−1)·Σ(L_b − mean·n_b)²)/Σn,
    which for equal-size blocks is std(block means)/sqrt(B). NaN with a single row."""
    rows = row_n > 0
    loss, n = row_loss[rows].double(), row_n[rows].double()
    total = float(n.sum())
    mean = float(loss.sum()) / total
    b = int(rows.sum())
    if b < 2:
        return mean, float("nan")
    se = math.sqrt(b / (b - 1) * float(((loss - mean * n) ** 2).sum())) / total
    return mean, se


def node_heads(store: Any, ids: Sequence[int]) -> dict[int, str | None]:
    """The `data.head` each node's build used (None for nodes without a run, e.g. imported)."""
    if not ids:
        return {}
    id_list = ",".join(str(int(i)) for i in ids)
    df = store.sql(f"select n.node_id, r.config from nodes n left join runs r using (run_id) "
                   f"where n.node_id in ({id_list})")
    out: dict[int, str | None] = {}
    for nid, config in zip(df["node_id"], df["config"]):
        data = (json.loads(config) if isinstance(config, str) and config else {}).get("data") or {}
        out[int(nid)] = data.get("head") if isinstance(data, dict) else None
    return out


def task_columns(task: Any, node_head: str | None, node_id: int) -> slice:
    """The columns node `node_id` (built with `node_head`) is scored on for `task`. A task made for
    the other head layout labels its examples differently, which would score wrongly: refused."""
    task_head = (getattr(task, "meta", None) or {}).get("head")
    if task_head is None or getattr(task, "kind", "classification") != "classification":
        return slice(None)  # LM tasks and plain batches: every output is scored
    built = node_head or "single"
    if built != task_head:
        raise ConfigError(
            f"node {node_id} was built with data.head={built!r} but task {task.name!r} was made with "
            f"head={task_head!r}, so its labels would be scored against the wrong output units; make "
            f"the task with head={built!r} (CLI: --head {built})")
    return head_slice(task, built)
