"""Every example of the seed README (tests/data/seed_README.md, a copy of shared/seed/README.md) runs as written.

Each Python block runs verbatim in a fresh subprocess, in a working directory whose default
database is ./ml_experiments.db; a short prelude defines only what the README leaves to the
reader's own training code (episode_return, env, agent, ...).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, rows, subprocess_env

README = Path(__file__).parent / "data" / "seed_README.md"
SHARED_README = REPO.parent / "shared" / "seed" / "README.md"


def blocks(lang: str) -> dict[str, str]:
    """Return {nearest heading: code} for every ```lang block of the README."""
    found: dict[str, str] = {}
    heading = ""
    text = README.read_text()
    for match in re.finditer(r"^(#+ [^\n]*)$|^```(\w+)\n(.*?)^```", text, re.M | re.S):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        elif match.group(2) == lang:
            found[heading] = match.group(3)
    return found


PY = blocks("python")
SH = blocks("bash")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("ML_PERSISTENCE_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_python(workdir: Path, code: str) -> str:
    env = subprocess_env()
    env.pop("ML_PERSISTENCE_DB", None)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_block(workdir: Path, heading: str, prelude: str = "", after: str = "") -> str:
    return run_python(workdir, textwrap.dedent(prelude) + PY[heading] + textwrap.dedent(after))


QUICKSTART_PRELUDE = """
episode_return, total_reward, avg_policy_loss, avg_value_loss = 1.5, 2.5, 0.1, 0.2
val_sharpe, best_sharpe = 0.8, 0.5
"""


def test_the_copy_is_the_users_spec() -> None:
    if SHARED_README.exists():
        assert SHARED_README.read_text() == README.read_text()
    assert {"Quick Start", "Modify `rl/train.py`", "List All Experiments", "Compare Experiments", "Get Best Models",
            "Custom Metrics", "Regime-Specific Tracking", "Multi-Asset Tracking", "Export to CSV"} <= set(PY)


def test_quick_start(workdir: Path) -> None:
    run_block(workdir, "Quick Start", QUICKSTART_PRELUDE)
    db = str(workdir / "ml_experiments.db")
    assert rows(db, "SELECT name, experiment_type, status, notes, random_seed, tags FROM experiments") == [
        ("PPO Bitcoin Trading v1", "rl", "completed", "Training completed successfully", 42, '["rl","bitcoin","ppo"]')
    ]
    assert rows(db, "SELECT COUNT(*) FROM metrics") == [(400,)]
    assert rows(db, "SELECT metric_name, COUNT(*), MIN(episode), MAX(episode) FROM metrics GROUP BY 1 ORDER BY 1") == [
        ("policy_loss", 100, 0, 99), ("train_return", 100, 0, 99), ("train_reward", 100, 0, 99), ("value_loss", 100, 0, 99)
    ]
    assert rows(db, "SELECT COUNT(*), SUM(is_best) FROM models") == [(10, 10)]
    assert rows(db, "SELECT param_name, param_value, param_type FROM hyperparameters ORDER BY id") == [
        ("learning_rate", "0.0003", "float"), ("gamma", "0.99", "float"), ("batch_size", "128", "int"), ("hidden_dim", "256", "int")
    ]
    assert rows(db, "SELECT usage_type FROM experiment_datasets") == [("train",)]


def test_train_py_integration(workdir: Path) -> None:
    code = PY["Modify `rl/train.py`"].replace(
        "def train(...):",
        "def train(symbol, start_date, end_date, env, agent, num_episodes, save_freq, final_return,\n"
        "          episode_reward, episode_steps, metrics, checkpoint_path, best_return):",
    )
    prelude = """
    from datetime import datetime
    from types import SimpleNamespace
    """
    after = """
    env = SimpleNamespace(market_data=list(range(365)), observation_space=SimpleNamespace(shape=(43,)),
                          action_space=SimpleNamespace(n=3))
    agent = SimpleNamespace(lr=3e-4, gamma=0.99, eps_clip=0.2, k_epochs=4)
    train("BTC-USD", "2023-01-01", "2023-12-31", env, agent, num_episodes=20, save_freq=5, final_return=1.2,
          episode_reward=3.4, episode_steps=365, metrics={"policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.9},
          checkpoint_path="models/ppo.pth", best_return=1.0)
    """
    run_python(workdir, textwrap.dedent(prelude) + code + textwrap.dedent(after))
    db = str(workdir / "ml_experiments.db")
    assert rows(db, "SELECT experiment_type, status, tags FROM experiments") == [("rl", "completed", '["rl","ppo","btc-usd"]')]
    assert rows(db, "SELECT COUNT(*) FROM metrics") == [(20 * 6,)]
    assert rows(db, "SELECT COUNT(*), MIN(episode_num), MAX(episode_num) FROM models") == [(4, 0, 15)]
    assert rows(db, "SELECT name, version, split_type, num_samples FROM datasets") == [
        ("BTC-USD-Daily", "2023-01-01_2023-12-31", "train", 365)
    ]


def test_querying_examples(workdir: Path) -> None:
    run_block(workdir, "Quick Start", QUICKSTART_PRELUDE)
    imports = "from ml_persistence import ExperimentTracker, ModelRegistry\n"  # from the Quick Start above them
    listed = run_block(workdir, "List All Experiments", imports)
    assert "1: PPO Bitcoin Trading v1" in listed and "Status: completed" in listed and "Best metric: 0.8" in listed
    best = run_block(workdir, "Get Best Models", imports)
    assert "Best checkpoint: models/checkpoint_ep90.pth" in best and "Val metric: 0.8" in best
    assert best.count(" - 0.8000") == 10


def test_compare_experiments(workdir: Path) -> None:
    setup = """
    from ml_persistence import ExperimentTracker
    t = ExperimentTracker()
    for run in range(3):
        t.start_experiment(f"run{run}")
        for ep in range(4):
            t.log_metric("val_sharpe", ep + run, episode=ep)
    t.end_experiment()
    """
    run_python(workdir, textwrap.dedent(setup))
    out = run_block(workdir, "Compare Experiments")
    assert out.splitlines() == [
        "Experiment 1: Mean=1.5000, Max=3.0000",
        "Experiment 2: Mean=2.5000, Max=4.0000",
        "Experiment 3: Mean=3.5000, Max=5.0000",
    ]


def test_advanced_examples(workdir: Path) -> None:
    prelude = """
    from ml_persistence import ExperimentTracker
    tracker = ExperimentTracker()
    tracker.start_experiment("advanced")
    episode = 7
    returns = {"bull": 0.3, "bear": -0.2, "sideways": 0.01}
    """
    code = textwrap.dedent(prelude) + PY["Custom Metrics"] + PY["Regime-Specific Tracking"] + PY["Multi-Asset Tracking"]
    run_python(workdir, code)
    db = str(workdir / "ml_experiments.db")
    assert rows(db, "SELECT metric_name, value, value_json, episode, metadata FROM metrics ORDER BY id") == [
        ("action_distribution", 0.0, '{"hold": 0.5, "buy": 0.3, "sell": 0.2}', 7, None),
        ("return_bull", 0.3, None, 7, '{"regime":"bull"}'),
        ("return_bear", -0.2, None, 7, '{"regime":"bear"}'),
        ("return_sideways", 0.01, None, 7, '{"regime":"sideways"}'),
    ]
    assert rows(db, "SELECT name, tags, metadata FROM experiments WHERE id > 1 ORDER BY id") == [
        ("PPO_BTC-USD", '["multi-asset","BTC-USD"]', '{"asset":"BTC-USD"}'),
        ("PPO_ETH-USD", '["multi-asset","ETH-USD"]', '{"asset":"ETH-USD"}'),
        ("PPO_SOL-USD", '["multi-asset","SOL-USD"]', '{"asset":"SOL-USD"}'),
    ]


def test_migration_placeholder_block_runs(workdir: Path) -> None:
    run_block(workdir, "Migration from Legacy `experiments.db`")


def test_export_to_csv_with_pandas(workdir: Path) -> None:
    pytest.importorskip("pandas")
    run_block(workdir, "Quick Start", QUICKSTART_PRELUDE)
    run_block(workdir, "Export to CSV")
    header, first = (workdir / "experiments.csv").read_text().splitlines()[:2]
    assert header.startswith("id,name,experiment_type,status") and "best_val_metric" in header
    assert first.startswith("1,PPO Bitcoin Trading v1,rl,completed")


def shell(workdir: Path, script: str) -> str:
    script = script.replace("python3", shlex_quote(sys.executable))
    env = subprocess_env()
    env.pop("ML_PERSISTENCE_DB", None)
    done = subprocess.run(["bash", "-euc", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def test_command_line_blocks(workdir: Path) -> None:
    created = shell(workdir, SH["Initialize Database"])
    assert "Created" in created and (workdir / "ml_experiments.db").exists()
    run_block(workdir, "Quick Start", QUICKSTART_PRELUDE)
    assert shell(workdir, SH["Query Experiments"]).strip() == "1: PPO Bitcoin Trading v1 - completed"


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 command-line shell is not installed")
def test_maintenance_blocks(workdir: Path) -> None:
    run_block(workdir, "Quick Start", QUICKSTART_PRELUDE)
    shell(workdir, SH["Vacuum Database"])
    shell(workdir, SH["Backup Database"])
    (backup,) = [p for p in os.listdir(workdir) if p.startswith("ml_experiments_backup_")]
    assert rows(str(workdir / backup), "SELECT COUNT(*) FROM metrics") == [(400,)]
