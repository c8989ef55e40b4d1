"""``FipgraphCallback`` for the Hugging Face ``transformers.Trainer``, in the style of its MLflowCallback:

    trainer = Trainer(model, args, train_dataset=..., callbacks=[FipgraphCallback(store)])

Every checkpoint the Trainer saves (``every="save"``), or every N optimizer steps (``every=N``), becomes a node of
one run, step = ``state.global_step``; the logged metrics (training loss, learning rate, ``eval_*``) become the
nodes' evaluations, and the ``TrainingArguments`` (tokens dropped) the run's config. Only the world process zero
writes. The Trainer has no exception event, so the store ends a run still recording: 'failed' with the error when
``train()`` raised inside ``with open_store(...)``, else 'interrupted' when the store closes; continue it with
``FipgraphCallback(store, run=name, resume=True)``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from transformers import TrainerCallback

from fipgraph.errors import FipgraphError
from fipgraph.integrations._common import CallbackRun


class FipgraphCallback(TrainerCallback):
    """Record a Trainer's run in ``store``: a Store opened with mode='a', or a store directory that
    only the writing rank opens (at train start) and closes (at train end), as DDP scripts need."""

    def __init__(self, store: Any, every: str | int = "save", *, run: str | None = None,
                 config: Mapping | None = None, parent: int | None = None, model_kwargs: Mapping | None = None,
                 resume: bool = False) -> None:
        if every != "save" and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise FipgraphError(f"every must be 'save' (at each Trainer checkpoint) or a number of optimizer "
                                f"steps >= 1, got {every!r}")
        self.every = every
        self.rec = CallbackRun(store, run, config, parent, model_kwargs, resume, op="hf_trainer")

    def on_train_begin(self, args, state, control, **kwargs):
        if self.every == "save" and args.save_strategy == "no":
            raise FipgraphError("FipgraphCallback(every='save') records the Trainer's checkpoints, but "
                                "save_strategy is 'no'; pass every=N (optimizer steps) or set save_steps")
        if state.is_world_process_zero:
            name = args.run_name or os.path.basename(os.path.normpath(args.output_dir or "trainer"))
            self.rec.begin(name, {"framework": "transformers.Trainer", "training_args": training_config(args)})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every != "save" and state.global_step % self.every == 0 and state.is_world_process_zero:
            self.rec.save(model, state.global_step)

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.every == "save" and state.is_world_process_zero:  # checkpoint-{global_step}/ is written by now
            self.rec.save(model, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Trainer.evaluate logs its metrics too (then calls on_evaluate): on_log alone sees both, once
        if state.is_world_process_zero and logs:
            self.rec.metrics(logs, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            if self.every != "save":  # every=3 over 7 steps: nodes at 3, 6 and the final 7
                self.rec.save_last(model, state.global_step)
            self.rec.end()

    @property
    def run_name(self) -> str | None:
        return self.rec.run


def training_config(args: Any) -> dict:
    """``TrainingArguments.to_dict()`` without its token fields (hub_token...): secrets never reach the store."""
    return {k: v for k, v in args.to_dict().items() if not k.endswith("_token")}
