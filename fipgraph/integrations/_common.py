"""What the Trainer and Lightning callbacks share: one recorder, and metrics attached to the node of their step.

Frameworks log metrics at a step before (HF: log, evaluate, then save) or after (Lightning: the batch, then
validation) the network of that step is saved. A metric goes to the run's node of its step when that node
exists, otherwise to the next node saved, as the latest value of that metric when it was saved.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

from fipgraph.errors import FipgraphError, ReadOnlyStoreError

SPLIT_PREFIXES = ("eval_", "test_", "predict_")  # HF's metric_key_prefix values: eval_loss -> ("eval", "loss")


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The numbers among logged values (0-d tensors included); strings and lists are not evaluations."""
    out = {}
    for key, value in values.items():
        if hasattr(value, "numel") and value.numel() == 1:
            value = value.item()
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[str(key)] = float(value)
    return out


def by_dataset(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """{"eval_loss": v, "val/acc": w, "loss": u} -> {"eval": {"loss": v}, "val": {"acc": w}, "": {"loss": u}}."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        dataset, metric = key.split("/", 1) if "/" in key else ("", key)
        for prefix in SPLIT_PREFIXES if not dataset else ():
            if key.startswith(prefix):
                dataset, metric = prefix[:-1], key[len(prefix):]
        out.setdefault(dataset, {})[metric] = value
    return out


class CallbackRun:
    """The run a callback records: opened at train start on the writing rank, closed at train end."""

    def __init__(self, store: Any, run: str | None, config: Mapping | None, parent: int | None,
                 model_kwargs: Mapping | None, resume: bool, op: str) -> None:
        if getattr(store, "mode", None) != "a":
            raise ReadOnlyStoreError(f"the callback needs a store opened for writing, got {store!r}; "
                                     "pass fipgraph.open_store(path, mode='a')")
        self.store, self.run, self.user_config, self.op = store, run, dict(config or {}), op
        self.options = dict(parent=parent, model_kwargs=model_kwargs, resume=resume, op=op)
        if run is not None:
            store.recorder(run, **self.options)  # a taken name or bad arguments fail now, before any training
        self.recorder = None
        self.began = False
        self.pending: dict[str, float] = {}
        self.last_node: int | None = None
        self.last_step: int | None = None

    def begin(self, default_name: str, config: Mapping) -> None:
        if self.recorder is not None:
            return
        if self.run is None:
            self.run = free_name(self.store, default_name)
        elif self.began:  # the same callback in a second train(): continue its own run
            self.options.update(resume=True, parent=None)
        self.recorder = self.store.recorder(self.run, config={**config, **self.user_config}, **self.options)
        self.recorder.__enter__()
        self.began = True

    def save(self, model: Any, step: int) -> None:
        if self.recorder is None:
            raise FipgraphError("the callback saved before training began; attach it with callbacks=[...]")
        metrics, self.pending = by_dataset(self.pending), {}
        self.last_node = self.recorder.save(model, step=step, metrics=metrics)
        self.last_step = step

    def metrics(self, values: Mapping[str, Any], step: int) -> None:
        values = numeric(values)
        if not values:
            return
        if self.last_node is not None and step == self.last_step:
            self.store.add_evals(self.last_node, by_dataset(values))  # also after training: a final evaluate()
        else:
            self.pending.update(values)

    def end(self, exc: BaseException | None = None) -> None:
        if self.recorder is not None:
            recorder, self.recorder = self.recorder, None
            recorder.__exit__(type(exc) if exc else None, exc, None)


def free_name(store: Any, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... : the first run name not taken in ``store``."""
    name, i = base, 1
    while store.find_run(name) is not None:
        i += 1
        name = f"{base}-{i}"
    return name
