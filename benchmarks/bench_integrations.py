"""What recording costs a framework's training loop: the same run with and without the integration.

    PYTHONPATH=. python benchmarks/bench_integrations.py [--repeats 3]

First each integration's per-call hook alone (what a logging step costs the training thread),
then each framework trains a small CPU model twice per repeat, once bare (Lightning with a
do-nothing logger) and once recorded into a fresh database: the median difference per step.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import ml_persistence


def sb3(recorded: bool) -> int:
    from stable_baselines3 import PPO

    from ml_persistence.integrations.sb3 import MLPersistenceCallback

    steps = 20_480
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=2048, batch_size=256, n_epochs=1, seed=0, device="cpu")
    model.learn(steps, callback=MLPersistenceCallback() if recorded else None)
    return steps


def lightning(recorded: bool) -> int:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from ml_persistence.integrations.lightning import MLPersistenceLogger

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(8, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            self.log("other", loss * 2)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class NullLogger(L.pytorch.loggers.Logger):
        """What Lightning costs with a logger attached, so the difference is ml_persistence's alone."""

        name, version = "null", 0

        def log_metrics(self, metrics: Any, step: Any = None) -> None:
            pass

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(4096, 8), torch.randn(4096, 1)), batch_size=8)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", log_every_n_steps=1, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
        logger=MLPersistenceLogger() if recorded else NullLogger(),
    )
    trainer.fit(Tiny(), data)
    return trainer.global_step


def transformers(recorded: bool) -> int:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from ml_persistence.integrations.transformers import MLPersistenceCallback

    class Tokens(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1024

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": torch.arange(8) % 50, "labels": torch.tensor(i % 2)}

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=2,
    ))
    out = tempfile.mkdtemp()
    args = TrainingArguments(
        output_dir=out, max_steps=256, per_device_train_batch_size=4, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[MLPersistenceCallback()] if recorded else None).train()
    return 256


def hook_costs(calls: int) -> None:
    """The integrations' per-call hooks timed alone, each call logging four values."""
    import types

    from ml_persistence.integrations.lightning import MLPersistenceLogger
    from ml_persistence.integrations.run import TrainingRun
    from ml_persistence.integrations.sb3 import _LoggerTap
    from ml_persistence.integrations.transformers import MLPersistenceCallback

    values = {"loss": 0.5, "grad_norm": 1.25, "learning_rate": 3e-4, "epoch": 0.5}
    with tempfile.TemporaryDirectory() as folder:
        os.environ["ML_PERSISTENCE_DB"] = os.path.join(folder, "hooks.db")
        run = TrainingRun("sb3")
        start = time.perf_counter()
        run.start("hooks")
        print(f"{'starting the run':22s} {(time.perf_counter() - start) * 1e3:6.1f} ms once (git, environment, packages)")
        tap = _LoggerTap(run)
        logger = MLPersistenceLogger("hooks")
        logger.log_metrics(values, step=0)
        callback = MLPersistenceCallback()
        callback.run.start("hooks")
        state = types.SimpleNamespace(global_step=0, epoch=0.5)
        hooks = {
            "sb3 logger dump": lambda i: tap.write(values, {}, i),
            "lightning log_metrics": lambda i: logger.log_metrics(values, step=i),
            "transformers on_log": lambda i: callback.on_log(None, state, None, logs=values),
        }
        for name, hook in hooks.items():
            start = time.perf_counter()
            for i in range(calls):
                hook(i)
            elapsed = time.perf_counter() - start
            print(f"{name:22s} {elapsed / calls * 1e6:6.2f} us per call (4 values)")
        ml_persistence.shutdown()


FRAMEWORKS: dict[str, Callable[[bool], int]] = {"sb3": sb3, "lightning": lightning, "transformers": transformers}


def timed(run: Callable[[bool], int], recorded: bool) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as folder:
        db = os.path.join(folder, "bench.db")
        os.environ["ML_PERSISTENCE_DB"] = db
        start = time.perf_counter()
        steps = run(recorded)
        elapsed = time.perf_counter() - start
        ml_persistence.shutdown()
        written = 0
        if recorded:
            with sqlite3.connect(db) as conn:
                written = conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        return elapsed, steps, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=sorted(FRAMEWORKS))
    options = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    if not options.only:
        hook_costs(100_000)
    print(f"whole runs, bare vs recorded, median of {options.repeats}:")
    for name, run in FRAMEWORKS.items():
        if options.only and name != options.only:
            continue
        run(False)  # warm-up: imports, first-call costs
        bare, recorded, rows = [], [], 0
        for _ in range(options.repeats):
            seconds, steps, _ = timed(run, False)
            bare.append(seconds)
            seconds, steps, rows = timed(run, True)
            recorded.append(seconds)
        extra = statistics.median(recorded) - statistics.median(bare)
        print(
            f"{name:13s} {steps:6d} steps: bare {statistics.median(bare):6.2f} s, recorded "
            f"{statistics.median(recorded):6.2f} s: {extra * 1e3:+6.0f} ms in all, {extra / steps * 1e6:+6.1f} us/step, "
            f"{rows} metric rows"
        )


if __name__ == "__main__":
    main()
