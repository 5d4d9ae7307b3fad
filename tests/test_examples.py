"""The runnable examples under examples/ run as a user would run them, and record what they promise."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, REPO, require_framework, rows, subprocess_env

EXAMPLES = {
    "sb3_example.py": ("stable_baselines3", ["--timesteps", "2048"], "rl"),
    "lightning_example.py": ("lightning", [], "supervised"),
    "transformers_example.py": ("transformers", [], "supervised"),
}


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs_and_records_a_completed_run_with_checkpoints(script: str, tmp_path: Path) -> None:
    framework, args, kind = EXAMPLES[script]
    require_framework(framework)
    done = subprocess.run(
        [PYTHON, str(REPO / "examples" / script), *args],
        cwd=tmp_path, env=subprocess_env(HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    db = str(tmp_path / "ml_experiments.db")
    (exp, status, experiment_type), = rows(db, "SELECT id, status, experiment_type FROM experiments")
    assert (status, experiment_type) == ("completed", kind)
    assert f"ml-persistence show {exp}" in done.stdout
    assert rows(db, "SELECT COUNT(*) > 0 FROM hyperparameters WHERE experiment_id = ?", (exp,)) == [(1,)]
    assert rows(db, "SELECT COUNT(DISTINCT metric_name) > 2 FROM metrics WHERE experiment_id = ?", (exp,)) == [(1,)]
    best = rows(db, "SELECT checkpoint_path FROM models WHERE experiment_id = ? AND is_best = 1 ORDER BY id", (exp,))
    assert best and (tmp_path / best[-1][0]).exists()  # older ones may be gone: Lightning keeps its top k
