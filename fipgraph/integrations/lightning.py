"""``FipgraphCallback`` for Lightning: ``Trainer(callbacks=[FipgraphCallback(store, every_n_steps=100)])``.

Every N optimizer steps (``trainer.global_step``) the LightningModule becomes a node of one run; the step's
training loss and the values logged during validation become evaluations of the node of their step, the
module's ``hparams`` and the Trainer's settings the run's config. Only global rank zero writes (as MLflow's
Lightning autolog saves on rank 0 only). A module that called ``save_hyperparameters()`` is stored with them
as its init arguments, so ``model_from_node`` rebuilds it.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from lightning.pytorch import Callback

from fipgraph.errors import FipgraphError
from fipgraph.integrations._common import CallbackRun, numeric


class FipgraphCallback(Callback):
    """Record a Lightning fit in ``store``: a Store opened with mode='a', or a store directory that
    only the writing rank opens (at train start) and closes (at train end), as DDP scripts need."""

    def __init__(self, store: Any, every_n_steps: int = 100, *, run: str | None = None,
                 config: Mapping | None = None, parent: int | None = None, model_kwargs: Mapping | None = None,
                 resume: bool = False) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise FipgraphError(f"every_n_steps must be a number of optimizer steps >= 1, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.rec = CallbackRun(store, run, config, parent, model_kwargs, resume, op="lightning")
        self._before_validation: dict[str, float] = {}
        self._validation_keys: set[str] = set()

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            hparams = dict(getattr(pl_module, "hparams", {}) or {})
            if self.rec.options["model_kwargs"] is None and _json_safe(hparams):
                self.rec.options["model_kwargs"] = hparams
            self.rec.begin(type(pl_module).__name__, {"framework": "lightning", "hparams": hparams,
                                                      "trainer": _trainer_settings(trainer)})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # with gradient accumulation several batches end at one global step: save it once
        if not trainer.is_global_zero or step % self.every_n_steps or step == self.rec.last_step:
            return
        logged = numeric(trainer.callback_metrics)
        metrics = {k: v for k, v in logged.items() if k not in self._validation_keys}  # not stale val values
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        self.rec.metrics({**numeric({"loss": loss} if loss is not None else {}), **metrics}, step)
        self.rec.save(pl_module, step)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._before_validation = numeric(trainer.callback_metrics)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        # callback_metrics mixes training and validation values: validation's are those it added or changed
        now = numeric(trainer.callback_metrics)
        new = {k: v for k, v in now.items() if self._before_validation.get(k) != v}
        self._validation_keys |= set(new)
        self.rec.metrics(new, trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.rec.save_last(pl_module, trainer.global_step)  # max_steps=12, every 5: nodes at 5, 10 and 12
            self.rec.end()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.is_global_zero:
            self.rec.end(exception)  # failed with the error, or interrupted on Ctrl-C

    @property
    def run_name(self) -> str | None:
        return self.rec.run


def _trainer_settings(trainer: Any) -> dict:
    names = ("max_steps", "max_epochs", "accumulate_grad_batches", "gradient_clip_val", "precision", "world_size",
             "val_check_interval", "check_val_every_n_epoch")
    return {n: getattr(trainer, n, None) for n in names}


def _json_safe(values: dict) -> bool:
    try:
        json.dumps(values)
    except (TypeError, ValueError):
        return False
    return bool(values)
