"""Reproducibility capture: git state in and out of a repository, interpreter, host, seeds."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ml_persistence import ExperimentTracker, environment

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "research")
    git(path, "config", "user.email", "t@example.invalid")
    git(path, "config", "user.name", "t")
    (path / "train.py").write_text("print('v1')\n")
    git(path, "add", "train.py")
    git(path, "commit", "-qm", "first")
    return path


@needs_git
def test_clean_and_dirty_repository(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD").strip()
    clean = environment.git_state(str(repo))
    assert clean == {"git_dirty": False, "git_commit": head, "git_branch": "research"}
    (repo / "train.py").write_text("print('v2')\n")
    dirty = environment.git_state(str(repo))
    assert dirty["git_dirty"] is True and "+print('v2')" in dirty["git_diff"]


def test_outside_git_gives_nothing_and_does_not_fail(tmp_path: Path) -> None:
    assert environment.git_state(str(tmp_path)) == {}


@needs_git
def test_start_experiment_records_the_environment(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    (repo / "train.py").write_text("print('dirty')\n")
    tracker = ExperimentTracker(str(repo.parent / "env.db"))
    exp = tracker.get_experiment(tracker.start_experiment("env", random_seed=3))
    assert exp["git_commit"] == git(repo, "rev-parse", "HEAD").strip() and exp["git_branch"] == "research"
    assert exp["git_dirty"] is True and "+print('dirty')" in exp["git_diff"]
    assert exp["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert exp["pid"] == os.getpid() and exp["hostname"] and exp["platform"]
    assert sys.executable in exp["command"]
    assert "msgspec" in exp["packages"] and isinstance(exp["packages"], dict)


def test_seed_everything_seeds_random_and_imported_numpy() -> None:
    np = pytest.importorskip("numpy")
    seeded = environment.seed_everything(123)
    a = (random.random(), np.random.rand())
    environment.seed_everything(123)
    assert (random.random(), np.random.rand()) == a and {"random", "numpy"} <= set(seeded)


def test_packages_are_json_of_name_to_version() -> None:
    packages = json.loads(environment.installed_packages())
    assert packages.get("msgspec") and packages.get("anyio")
