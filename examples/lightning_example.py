"""A tiny PyTorch Lightning regression on random tensors, recorded by ml_persistence (seconds on a CPU).

    pip install 'ml_persistence[lightning]'
    python examples/lightning_example.py     # then: ml-persistence ls / show ID / ui
"""

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from ml_persistence.integrations.lightning import MLPersistenceLogger


class Regressor(L.LightningModule):
    def __init__(self, hidden: int = 16, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()  # recorded as the experiment's hyperparameters
        self.net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def step(self, batch: tuple) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        loss = self.step(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self.log("val_loss", self.step(batch))

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        self.log("test_loss", self.step(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def loader(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.linspace(-1, 1, 8).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=seed == 0)


def main() -> None:
    L.seed_everything(42)  # recorded as the experiment's random_seed
    logger = MLPersistenceLogger("lightning regression", tags=["example"])  # the one line that records the run
    checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=2)  # each checkpoint registered, the best marked
    trainer = L.Trainer(max_epochs=5, accelerator="cpu", logger=logger, callbacks=[checkpoint],
                        log_every_n_steps=4, enable_progress_bar=False, enable_model_summary=False)
    model = Regressor()
    trainer.fit(model, loader(1024, 0), loader(256, 1))
    trainer.test(model, loader(256, 2), verbose=False)  # lands in the same experiment
    print(f"recorded experiment {logger.version} in ml_experiments.db; look at it with:")
    print(f"  ml-persistence show {logger.version}")
    print(f"  ml-persistence metrics {logger.version} val_loss")


if __name__ == "__main__":
    main()
