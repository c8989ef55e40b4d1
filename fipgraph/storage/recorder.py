"""Record any training loop as a run: ``with store.recorder(run="name") as rec: rec.save(model, step=...)``.

Each ``save`` appends a node chained to the previous one through the store's asynchronous writer (the
weights are copied at the call, so training goes on at once; memory stays bounded by the writer's
``max_pending_bytes``). The run ends ``finished`` on a normal exit, ``failed`` (with the error) on an
exception and ``interrupted`` on Ctrl-C; the exception is re-raised either way.

Run names are keys in a store. Reusing one is an error unless ``resume=True``: as in W&B (``resume=
"allow"``) and MLflow (``start_run(run_id=...)``), continuing a run is something the user asks for, because
silently chaining a new training onto an old run's last node would give it a false lineage.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import torch

from fipgraph.errors import FipgraphError, ReadOnlyStoreError

MAX_ERROR_CHARS = 2000  # runs.error keeps the message, not a whole traceback


def end_open_recorders(store: Any, exc: BaseException | None) -> None:
    """Before ``store`` closes: a run whose with-block never ended (the loop raised in a framework that has no
    exception hook, such as the HF Trainer, or the script ended inside it) ends ``failed`` with ``exc`` when
    the store's own with-block saw one, else ``interrupted`` (resume=True continues it); never left 'running'."""
    stop = exc if exc is not None else KeyboardInterrupt()  # no error seen: stopped unfinished, as a Ctrl-C
    for rec in list(getattr(store, "_open_recorders", ())):
        rec.__exit__(type(stop), stop, None)


class Recorder:
    """One run of a training loop in ``store``; use it as a context manager (see the module docstring).

    ``run_id``: the run's id once entered; ``nodes``: the ids saved in this block; ``last_node``/``last_step``:
    what the next save chains to (a resumed run's last node, or ``parent``; None for a new run's first node)."""

    def __init__(self, store: Any, run: str, *, config: Mapping | None = None, parent: int | None = None,
                 model_kwargs: Mapping | None = None, resume: bool = False, op: str = "record") -> None:
        if store.mode != "a":
            raise ReadOnlyStoreError(f"store {store.root} was opened read-only (mode='r'); open it with mode='a' "
                                     "to record a run")
        if not isinstance(run, str) or not run.strip():
            raise FipgraphError(f"run must be a non-empty name, got {run!r}; e.g. store.recorder(run='bert-lr3e-4')")
        if config is not None and not isinstance(config, Mapping):
            raise FipgraphError(f"config must be a dict of the run's settings, got {type(config).__name__}")
        self.store, self.run, self.op, self.resume = store, run, op, bool(resume)
        self.config = dict(config or {})
        self.model_kwargs = _checked_kwargs(model_kwargs)
        self.existing = store.find_run(run)
        if self.existing is not None and not resume:
            raise FipgraphError(f"a run named {run!r} already exists in {store.root} (run {self.existing['run_id']}, "
                                f"status {self.existing['status']}); pass resume=True to append to it, "
                                "or choose another run name")
        self.last_node, self.last_step = self._resume_point()
        if parent is not None:
            store.node(parent)  # NodeNotFoundError names the id and how to list nodes
            if self.last_node is not None:
                raise FipgraphError(f"parent={parent} only applies to a new run's first node; run {run!r} already "
                                    f"has nodes (its last is {self.last_node}): drop parent to continue from it")
            self.last_node = int(parent)
        self.run_id: int | None = None
        self.nodes: list[int] = []
        self._open = False

    def _resume_point(self) -> tuple[int | None, int | None]:
        """(node, step) of the existing run's last node, where a resumed run continues its chain."""
        if self.existing is None:
            return None, None
        df = self.store.sql("SELECT node_id, step FROM nodes WHERE run_id = ? ORDER BY step DESC, node_id DESC "
                            "LIMIT 1", [int(self.existing["run_id"])])
        if df.empty:
            return None, None
        step = df["step"][0]
        return int(df["node_id"][0]), None if step != step else int(step)  # NaN: a node saved without a step

    def __enter__(self) -> "Recorder":
        if self.existing is None:
            self.run_id = self.store.start_run(self.run, self.op, self.config)
        else:  # a resumed run keeps its first config: a restart's arguments (resume_from_checkpoint...) differ
            self.run_id = int(self.existing["run_id"])
            self.store.set_run_status(self.run_id, "running")
        self._open = True
        self.store._open_recorders.add(self)
        return self

    def save(self, model: torch.nn.Module | Mapping[str, torch.Tensor], *, step: int | None = None,
             metrics: Mapping | None = None, tags: Mapping | None = None) -> int:
        """Append ``model`` (a module or its state dict) as the run's next node and return its id.
        ``step`` defaults to the previous step + 1; ``metrics`` ({name: value} or {dataset: {name: value}})
        are stored as the node's evaluations."""
        self._check_open("save")
        if step is None:
            step = 0 if self.last_step is None else self.last_step + 1
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise FipgraphError(f"step must be an integer >= 0 (e.g. the optimizer step), got {step!r}")
        self._attach_spec(model)
        node = self.store.append(model, parent=self.last_node, run=self.run_id, op=self.op, step=step,
                                 metrics=metrics, tags=tags)
        self.last_node, self.last_step = node, step
        self.nodes.append(node)
        return node

    def add_evals(self, metrics: Mapping, node: int | None = None) -> None:
        """Attach evaluations to ``node`` (default: the last node saved)."""
        self._check_open("add_evals")
        node = self.last_node if node is None else node
        if node is None:
            raise FipgraphError(f"run {self.run!r} has no node yet to attach {sorted(metrics)} to; save() one first")
        self.store.add_evals(node, metrics)

    def _attach_spec(self, model: Any) -> None:
        """Record the init arguments the user gave, so model_from_node can rebuild the class elsewhere."""
        if self.model_kwargs is None or not isinstance(model, torch.nn.Module):
            return
        from fipgraph.models.user import unwrap, user_spec

        inner = unwrap(model)
        if hasattr(getattr(inner, "config", None), "to_dict"):
            raise FipgraphError(f"model_kwargs was given for a {type(inner).__name__}, a transformers model that is "
                                "rebuilt from its own config; drop model_kwargs")
        if getattr(inner, "fipgraph_spec", None) is None:
            inner.fipgraph_spec = user_spec(inner, self.model_kwargs)

    def _check_open(self, what: str) -> None:
        if not self._open:
            raise FipgraphError(f"recorder.{what}() outside its with-block: use "
                                f"`with store.recorder(run={self.run!r}) as rec: rec.{what}(...)`")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._open = False
        self.store._open_recorders.discard(self)
        if exc is None:
            self.store.finish_run(self.run_id, "finished")
            self.store.flush()  # a failed background write surfaces here, inside the user's with-block
        elif isinstance(exc, KeyboardInterrupt):
            self.store.set_run_status(self.run_id, "interrupted")  # as a Ctrl-C'd build: resume=True continues
        else:
            self.store.finish_run(self.run_id, "failed", f"{exc_type.__name__}: {exc}"[:MAX_ERROR_CHARS])


def _checked_kwargs(model_kwargs: Mapping | None) -> dict | None:
    """The init arguments as stored (JSON), or an error naming the one that cannot be."""
    if model_kwargs is None:
        return None
    if not isinstance(model_kwargs, Mapping):
        raise FipgraphError(f"model_kwargs must be a dict of the model's init arguments, got {model_kwargs!r}")
    for key, value in model_kwargs.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise FipgraphError(f"model_kwargs[{key!r}] = {value!r} cannot be stored as JSON; pass plain numbers, "
                                "strings, lists or dicts (or set model.fipgraph_spec yourself)") from None
    return dict(model_kwargs)
