"""Shared fixtures: every test gets its own database and leaves no writer running."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import pytest

import ml_persistence

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database path, also made the default through ML_PERSISTENCE_DB."""
    path = str(tmp_path / "ml_experiments.db")
    monkeypatch.setenv("ML_PERSISTENCE_DB", path)
    monkeypatch.chdir(tmp_path)
    return path


@pytest.fixture(autouse=True)
def _stop_writers(monkeypatch: pytest.MonkeyPatch):
    for name in ("ML_PERSISTENCE_AGENT", "ML_PERSISTENCE_TOKEN"):
        monkeypatch.delenv(name, raising=False)  # embedded unless a test asks for an agent
    yield
    ml_persistence.shutdown(timeout=30)


def rows(path: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Read the database the way a user would, with the stdlib sqlite3 module."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child Python processes that import this checkout's ml_persistence."""
    env = {k: v for k, v in os.environ.items() if k not in ("ML_PERSISTENCE_AGENT", "ML_PERSISTENCE_TOKEN")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


PYTHON = sys.executable


def require_framework(module: str):
    """Import a framework for its integration tests: skipped where it is not installed, unless
    $ML_PERSISTENCE_REQUIRE_INTEGRATIONS is set (CI sets it), where a missing one fails."""
    if os.environ.get("ML_PERSISTENCE_REQUIRE_INTEGRATIONS"):
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)


from otheruser import other_user  # noqa: E402,F401 - the second-local-user fixture, for every test module
pytest_plugins = ["pg"]  # tests/pg.py: the PostgreSQL fixtures (postgres_url, pg_db, any_db) and the serial marker
