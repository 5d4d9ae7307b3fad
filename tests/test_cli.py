"""The ml-persistence command line: init and demo, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import rows, subprocess_env


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ml_persistence", *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


def test_demo_writes_a_complete_training_run(tmp_path: Path) -> None:
    db = str(tmp_path / "demo.db")
    done = cli("demo", "--db", db, "--episodes", "12", "--steps", "50", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout
    assert rows(db, "SELECT status, experiment_type FROM experiments") == [("completed", "rl")]
    # 12 episodes x (5 logging steps x 4 + 4 episode metrics) + 1 action distribution
    assert rows(db, "SELECT COUNT(*) FROM metrics") == [(12 * (5 * 4 + 4) + 1,)]
    assert rows(db, "SELECT COUNT(*), SUM(is_best) >= 1, MIN(checkpoint_size_mb) > 0 FROM models") == [(3, 1, 1)]
    assert rows(db, "SELECT usage_type FROM experiment_datasets ORDER BY 1") == [("test",), ("train",)]
    assert rows(db, "SELECT COUNT(*) FROM hyperparameters") == [(5,)]


def test_init_creates_then_reports_up_to_date(tmp_path: Path) -> None:
    first = cli("init", "--db", "x.db", cwd=tmp_path)
    assert first.returncode == 0 and "Created" in first.stdout
    second = cli("init", "--db", "x.db", cwd=tmp_path)
    assert second.returncode == 0 and "up to date" in second.stdout


def test_usage_error_exits_2(tmp_path: Path) -> None:
    done = cli("no-such-command", cwd=tmp_path)
    assert done.returncode == 2 and "usage" in done.stderr
