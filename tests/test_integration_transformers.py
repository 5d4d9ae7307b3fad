"""The Transformers callback against the real Trainer: a tiny BERT built from a config, on CPU, random tokens."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import textwrap
from pathlib import Path
from typing import Any, Optional

from conftest import PYTHON, REPO, require_framework, rows, subprocess_env

import pytest

transformers = require_framework("transformers")
torch = require_framework("torch")

from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402
from transformers.integrations.integration_utils import get_available_reporting_integrations  # noqa: E402

from ml_persistence import ExperimentTracker, MetricsLogger, ModelRegistry  # noqa: E402
from ml_persistence.integrations.transformers import MLPersistenceCallback  # noqa: E402

TESTS = Path(__file__).resolve().parent


class RandomTokens(torch.utils.data.Dataset):
    """``n`` sequences of random token ids with random binary labels."""

    def __init__(self, n: int = 32, length: int = 8, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 50, (n, length), generator=generator)
        self.labels = torch.randint(0, 2, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def tiny_model() -> Any:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=2,
    )
    return BertForSequenceClassification(config)


def tiny_trainer(output_dir: Any, callbacks: Optional[list] = None, model: Any = None, **options: Any) -> Any:
    """A Trainer of 12 steps (1.5 epochs of 8), logging every 2 steps."""
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir), max_steps=12, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        learning_rate=1e-3, logging_steps=2, save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, seed=7,
    )
    settings.update(options)
    return Trainer(
        model=model if model is not None else tiny_model(),
        args=TrainingArguments(**settings),
        train_dataset=RandomTokens(32),
        eval_dataset=RandomTokens(16, seed=1),
        callbacks=callbacks,
    )


def explode_at(model: Any, step: int, exc: BaseException) -> None:
    """Make the model's ``step``-th training forward pass raise ``exc``."""
    calls = itertools.count(1)

    def hook(module: Any, inputs: Any) -> None:
        if module.training and next(calls) == step:
            raise exc

    model.register_forward_pre_hook(hook)


def running_epoch(epoch: float) -> int:
    return max(math.ceil(epoch) - 1, 0)


def logged(history: list[dict], name: str) -> list[tuple]:
    """(step, value, 0-based epoch) of every entry of Trainer's log_history holding ``name``."""
    return [(e["step"], e[name], running_epoch(e["epoch"])) for e in history if name in e]


def recorded(db: str, experiment_id: int, name: str) -> list[tuple]:
    return rows(
        db, "SELECT step, value, epoch FROM metrics WHERE experiment_id = ? AND metric_name = ? ORDER BY id",
        (experiment_id, name),
    )


def metric_names(db: str, experiment_id: int) -> set[str]:
    found = rows(db, "SELECT DISTINCT metric_name FROM metrics WHERE experiment_id = ?", (experiment_id,))
    return {name for (name,) in found}


def only_experiment(db: str) -> tuple:
    (experiment,) = rows(db, "SELECT id, name, experiment_type, tags, random_seed, status, notes FROM experiments")
    return experiment


def test_a_training_run_is_one_experiment_with_its_hyperparameters_and_logs(db_path: str, tmp_path: Path) -> None:
    model = tiny_model()
    model.config.learning_rate = 99.0  # clashes with TrainingArguments.learning_rate, which wins
    trainer = tiny_trainer(
        tmp_path / "out", [MLPersistenceCallback(tags=["bert"], description="tiny")], model=model,
        run_name="tiny-bert", eval_strategy="steps", eval_steps=4,
    )
    trainer.train()

    exp_id, name, kind, tags, seed, status, notes = only_experiment(db_path)
    assert (name, kind, json.loads(tags), seed, status, notes) == (
        "tiny-bert", "supervised", ["bert", "transformers"], 7, "completed", None,
    )
    params = ExperimentTracker().get_hyperparameters(exp_id)
    assert params["learning_rate"] == 1e-3 and params["per_device_train_batch_size"] == 4
    assert params["hidden_size"] == 16 and params["model_type"] == "bert"
    assert params["num_parameters"] == model.num_parameters()
    assert rows(
        db_path, "SELECT param_name, param_type FROM hyperparameters WHERE param_name IN "
        "('learning_rate', 'max_steps', 'hidden_size', 'output_dir', 'load_best_model_at_end') ORDER BY param_name",
    ) == [("hidden_size", "int"), ("learning_rate", "float"), ("load_best_model_at_end", "bool"),
          ("max_steps", "int"), ("output_dir", "str")]

    history = trainer.state.log_history
    assert [step for step, _, _ in logged(history, "loss")] == [2, 4, 6, 8, 10, 12]
    for metric in ("loss", "learning_rate", "grad_norm", "epoch", "eval_loss", "train_runtime", "train_loss"):
        assert recorded(db_path, exp_id, metric) == logged(history, metric), metric
    assert [step for step, _, _ in recorded(db_path, exp_id, "eval_loss")] == [4, 8, 12]
    assert {epoch for _, _, epoch in recorded(db_path, exp_id, "loss")} == {0, 1}
    assert rows(db_path, "SELECT COUNT(*) FROM models") == [(0,)]  # save_strategy="no"


def test_checkpoints_are_registered_and_the_best_one_marked(db_path: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    trainer = tiny_trainer(
        out, [MLPersistenceCallback()], eval_strategy="steps", eval_steps=4, save_strategy="steps", save_steps=4,
        metric_for_best_model="loss", load_best_model_at_end=True,
    )
    trainer.train()

    exp_id = only_experiment(db_path)[0]
    evaluations = [(step, loss) for step, loss, _ in logged(trainer.state.log_history, "eval_loss")]
    best_so_far, expected = math.inf, []
    for step, loss in evaluations:
        expected.append((str(out / f"checkpoint-{step}"), step, loss, int(loss < best_so_far)))
        best_so_far = min(best_so_far, loss)
    assert 0 < sum(best for *_, best in expected) < len(expected), "the run should have a best and a worse checkpoint"
    assert rows(
        db_path,
        "SELECT checkpoint_path, global_step, val_metric, is_best FROM models WHERE experiment_id = ? ORDER BY id",
        (exp_id,),
    ) == expected
    best = ModelRegistry().get_best_model(exp_id)
    assert best["checkpoint_path"] == trainer.state.best_model_checkpoint
    assert best["val_metric"] == trainer.state.best_metric
    assert best["architecture_type"] == "BertForSequenceClassification"
    assert best["metadata"]["val_metric"] == "eval_loss"


def test_report_to_ml_persistence_names_the_run_after_the_model(db_path: str, tmp_path: Path) -> None:
    assert "ml_persistence" not in get_available_reporting_integrations()  # report_to="all" stays as it was
    trainer = tiny_trainer(tmp_path / "out", report_to=["ml_persistence"])
    assert sum(isinstance(cb, MLPersistenceCallback) for cb in trainer.callback_handler.callbacks) == 1
    trainer.train()

    exp_id, name, _, tags, _, status, _ = only_experiment(db_path)
    assert name.startswith("BertForSequenceClassification_") and status == "completed"
    assert json.loads(tags) == ["transformers"]
    assert recorded(db_path, exp_id, "loss") == logged(trainer.state.log_history, "loss")


@pytest.mark.parametrize("setup", ["callbacks", "report_to"])
@pytest.mark.parametrize(
    "exc, status, notes",
    [(RuntimeError("boom at step 5"), "failed", "RuntimeError: boom at step 5"),
     (KeyboardInterrupt(), "interrupted", "KeyboardInterrupt")],
)
def test_train_raising_ends_the_run_at_once(
    db_path: str, tmp_path: Path, setup: str, exc: BaseException, status: str, notes: str
) -> None:
    if setup == "callbacks":
        trainer = tiny_trainer(tmp_path / "out", [MLPersistenceCallback()])
    else:
        trainer = tiny_trainer(tmp_path / "out", report_to="ml_persistence")
    explode_at(trainer.model, 5, exc)
    with pytest.raises(type(exc)):
        trainer.train()

    exp_id, _, _, _, _, got_status, got_notes = only_experiment(db_path)
    assert got_status == status and notes in got_notes
    if status == "failed":
        assert got_notes.startswith("Traceback")
    assert [step for step, _, _ in recorded(db_path, exp_id, "loss")] == [2, 4]


def test_an_added_callback_cannot_see_train_raise_until_the_next_train(db_path: str, tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path / "out", max_steps=4)
    trainer.add_callback(MLPersistenceCallback())
    explode_at(trainer.model, 3, RuntimeError("unseen"))
    with pytest.raises(RuntimeError):
        trainer.train()
    assert rows(db_path, "SELECT status FROM experiments") == [("running",)]
    trainer.train()
    assert rows(db_path, "SELECT status, notes LIKE 'train() raised%' FROM experiments ORDER BY id") == [
        ("failed", 1), ("completed", None),
    ]


def test_an_exception_that_ends_the_process_fails_the_run(db_path: str, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import ml_persistence.integrations.transformers  # registers report_to="ml_persistence"
        from test_integration_transformers import explode_at, tiny_trainer

        trainer = tiny_trainer("out", report_to=["ml_persistence"], run_name="doomed")
        explode_at(trainer.model, 5, RuntimeError("boom in a subprocess"))
        trainer.train()
    """))
    done = subprocess.run(
        [PYTHON, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=subprocess_env(HF_HUB_OFFLINE="1", ML_PERSISTENCE_DB=db_path),
    )
    assert done.returncode == 1, done.stderr
    assert "RuntimeError: boom in a subprocess" in done.stderr
    exp_id, name, _, _, _, status, notes = only_experiment(db_path)
    assert (name, status) == ("doomed", "failed")
    assert notes.startswith("Traceback") and "RuntimeError: boom in a subprocess" in notes
    assert [step for step, _, _ in recorded(db_path, exp_id, "loss")] == [2, 4]


def test_each_train_call_is_an_experiment_and_later_evaluations_join_the_last(db_path: str, tmp_path: Path) -> None:
    callback = MLPersistenceCallback("twice")
    trainer = tiny_trainer(tmp_path / "out", [callback], max_steps=4)
    trainer.train()
    first = callback.experiment_id
    trainer.train()
    second = callback.experiment_id
    metrics = trainer.evaluate(RandomTokens(8, seed=2), metric_key_prefix="test")

    assert first != second
    assert rows(db_path, "SELECT id, name, status FROM experiments ORDER BY id") == [
        (first, "twice", "completed"), (second, "twice", "completed"),
    ]
    for exp_id in (first, second):
        assert [step for step, _, _ in recorded(db_path, exp_id, "loss")] == [2, 4]
    assert recorded(db_path, first, "test_loss") == []
    history = MetricsLogger().get_metric_history(second, "test_loss")
    assert [(r["step"], r["value"], r["split"]) for r in history] == [(4, metrics["test_loss"], "test")]


def test_a_callers_experiment_is_logged_into_and_left_running(db_path: str, tmp_path: Path) -> None:
    tracker = ExperimentTracker()
    exp_id = tracker.start_experiment("mine")
    trainer = tiny_trainer(tmp_path / "out", [MLPersistenceCallback(tracker=tracker)], max_steps=4)
    trainer.train()

    assert rows(db_path, "SELECT id, status FROM experiments") == [(exp_id, "running")]
    assert recorded(db_path, exp_id, "loss") == logged(trainer.state.log_history, "loss")
    tracker.end_experiment()


def test_agent_mode(db_path: str, tmp_path: Path) -> None:
    from agent_process import AgentProcess, short_socket

    agent_db = str(tmp_path / "agent.db")
    with AgentProcess(agent_db, [short_socket(tmp_path)], tmp_path) as agent:
        trainer = tiny_trainer(
            tmp_path / "out", [MLPersistenceCallback("via-agent", agent=agent.url)], max_steps=4, save_strategy="steps",
            save_steps=4,
        )
        trainer.train()
        assert agent.stop() == 0
    assert not Path(db_path).exists()
    ((exp_id, status),) = rows(agent_db, "SELECT id, status FROM experiments WHERE name = 'via-agent'")
    assert status == "completed"
    assert recorded(agent_db, exp_id, "loss") == logged(trainer.state.log_history, "loss")
    checkpoint = str(tmp_path / "out" / "checkpoint-4")
    assert rows(agent_db, "SELECT checkpoint_path, global_step FROM models") == [(checkpoint, 4)]


def test_torchrun_two_processes(db_path: str, tmp_path: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import torch
        sys.path.insert(0, {str(TESTS)!r})
        from ml_persistence.integrations.transformers import MLPersistenceCallback
        from test_integration_transformers import tiny_trainer

        for name, all_ranks in (("rank-zero", False), ("all-ranks", True)):
            trainer = tiny_trainer(name, [MLPersistenceCallback(name, all_ranks=all_ranks)], max_steps=4,
                                   save_strategy="steps", save_steps=4)
            trainer.train()
            assert trainer.args.world_size == 2
            if trainer.args.process_index == 0:
                with open(name + ".json", "w") as f:
                    json.dump(trainer.state.log_history, f)
        # Left to interpreter exit, gloo's threads can abort the process after Python has finished.
        torch.distributed.destroy_process_group()
    """))
    done = subprocess.run(
        [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
        env=subprocess_env(HF_HUB_OFFLINE="1", ML_PERSISTENCE_DB=db_path, OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    experiments = rows(db_path, "SELECT id, name, status FROM experiments ORDER BY id")
    assert [(name, status) for _, name, status in experiments] == [
        ("rank-zero", "completed"), ("all-ranks", "completed"),
    ]
    (rank_zero, _, _), (all_ranks, _, _) = experiments

    history = json.loads((tmp_path / "rank-zero.json").read_text())
    assert not any("/" in name for name in metric_names(db_path, rank_zero))
    assert recorded(db_path, rank_zero, "loss") == logged(history, "loss")
    assert rows(db_path, "SELECT global_step FROM models WHERE experiment_id = ?", (rank_zero,)) == [(4,)]

    history = json.loads((tmp_path / "all-ranks.json").read_text())
    names = metric_names(db_path, all_ranks)
    assert {"rank0/loss", "rank1/loss", "rank0/train_runtime", "rank1/train_runtime"} <= names
    assert all(name.startswith(("rank0/", "rank1/")) for name in names)
    assert recorded(db_path, all_ranks, "rank0/loss") == logged(history, "loss")
    assert [s for s, _, _ in recorded(db_path, all_ranks, "rank1/loss")] == [s for s, _, _ in logged(history, "loss")]
    assert rows(db_path, "SELECT global_step FROM models WHERE experiment_id = ?", (all_ranks,)) == [(4,)]
    assert rows(  # from rank 0 only
        db_path, "SELECT COUNT(DISTINCT param_name) > 100, COUNT(*) = COUNT(DISTINCT param_name) FROM hyperparameters "
        "WHERE experiment_id = ?", (all_ranks,),
    ) == [(1, 1)]


def test_without_transformers_the_import_error_says_what_to_install() -> None:
    code = "import sys; sys.modules['transformers'] = None; import ml_persistence.integrations.transformers"
    done = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env=subprocess_env(), cwd=REPO
    )
    assert done.returncode == 1
    assert "pip install 'ml_persistence[transformers]'" in done.stderr
