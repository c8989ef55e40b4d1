"""What the Trainer and Lightning callbacks share: one recorder, and metrics attached to the node of their step.

Frameworks log metrics at a step before (HF: log, evaluate, then save) or after (Lightning: the batch, then
validation) the network of that step is saved. A metric goes to the run's node of its step when that node
exists, otherwise to the next node saved, as the latest value of that metric when it was saved.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path
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
    """The run a callback records: opened at train start on the writing rank, closed at train end.

    ``store`` is an open Store, or a path that only the writing rank opens (at train start) and closes (at train
    end): under DDP every rank builds the callback, but a store has one writer."""

    def __init__(self, store: Any, run: str | None, config: Mapping | None, parent: int | None,
                 model_kwargs: Mapping | None, resume: bool, op: str) -> None:
        self.path = Path(store) if isinstance(store, (str, os.PathLike)) else None
        if self.path is None and getattr(store, "mode", None) != "a":
            raise ReadOnlyStoreError(f"the callback needs a store path or a store opened for writing, got {store!r}; "
                                     "pass a directory or fipgraph.open_store(path, mode='a')")
        self.store = None if self.path else store
        self.run, self.user_config, self.op = run, dict(config or {}), op
        self.options = dict(parent=parent, model_kwargs=model_kwargs, resume=resume, op=op)
        if run is not None and self.store is not None:
            store.recorder(run, **self.options)  # a taken name or bad arguments fail now, before any training
        self.recorder = None
        self.began = False
        self.pending: dict[str, float] = {}
        self.last_node: int | None = None
        self.last_step: int | None = None

    def begin(self, default_name: str, config: Mapping) -> None:
        if self.recorder is not None:
            return
        if self.store is None:
            from fipgraph.storage import open_store

            self.store = open_store(self.path)
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

    def save_last(self, model: Any, step: int) -> None:
        """At the end of training: the final network too, when the step count is no multiple of the interval."""
        if self.recorder is not None and step > 0 and step != self.last_step:
            self.save(model, step)

    def metrics(self, values: Mapping[str, Any], step: int) -> None:
        values = numeric(values)
        if not values or self.store is None:  # a store the callback opened is closed after training
            return
        if self.last_node is not None and step == self.last_step:
            self.store.add_evals(self.last_node, by_dataset(values))  # also after training: a final evaluate()
        else:
            self.pending.update(values)

    def end(self, exc: BaseException | None = None) -> None:
        if self.recorder is None:
            return
        recorder, self.recorder = self.recorder, None
        try:
            recorder.__exit__(type(exc) if exc else None, exc, None)
        finally:
            if self.path is not None:  # opened here: release the writer lock for what the script does next
                self.store, store = None, self.store
                store.close()


def free_name(store: Any, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... : the first run name not taken in ``store``."""
    name, i = base, 1
    while store.find_run(name) is not None:
        i += 1
        name = f"{base}-{i}"
    return name
