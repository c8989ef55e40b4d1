"""Record a Lightning fit in a fipgraph store with one callback.

    python examples/lightning_module.py --store store --steps 40

A small MLP LightningModule learns sklearn's digits on the CPU; every 10 optimizer steps the module becomes a node
of the run "lit-digits", with the step's loss and the validation loss/accuracy as the nodes' evaluations. The module
calls save_hyperparameters(), so its init arguments are stored too. Then: `fipgraph sql "SELECT * FROM wide"`.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as L
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import fipgraph
from fipgraph.integrations.lightning import FipgraphCallback


class LitDigits(L.LightningModule):
    def __init__(self, hidden: int = 32, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()  # what FipgraphCallback stores as the init arguments
        self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def digits_loaders(batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    train, val = TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:])  # (N, 64), (N,)
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=256)


def main(argv: list[str] | None = None) -> list[int]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="store", help="fipgraph store directory (created if missing)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps")
    p.add_argument("--every", type=int, default=10, help="record the module every N steps (and validate)")
    p.add_argument("--run", default="lit-digits", help="run name (resume=True continues it if it exists)")
    a = p.parse_args(argv)
    L.seed_everything(0, verbose=False)
    train, val = digits_loaders()
    with fipgraph.open_store(a.store) as store:
        trainer = L.Trainer(max_steps=a.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, val_check_interval=a.every,
                            callbacks=[FipgraphCallback(store, every_n_steps=a.every, run=a.run, resume=True)])
        trainer.fit(LitDigits(), train, val)
        run_id = int(store.find_run(a.run)["run_id"])
        nodes = store.sql("SELECT node_id, step, round(loss, 4) AS loss, round(val_loss, 4) AS val_loss, "
                          "round(val_acc, 3) AS val_acc FROM wide WHERE run_id = ? ORDER BY node_id", [run_id])
        print(nodes.to_string(index=False))
        return nodes["node_id"].tolist()


if __name__ == "__main__":
    main()
