"""Review findings: each test demonstrates a gap between the issue/seed spec and the implementation.

Every scenario runs in a child process (so a hang or a lost event cannot disturb this test
process) and is checked through the SQLite file afterwards, as a user would.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

GUARD = 30.0


def _env(db: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["ML_PERSISTENCE_DB"] = str(db)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("ML_PERSISTENCE_EXIT_TIMEOUT", None)
    env.update(extra)
    return env


def _run(tmp_path: Path, code: str, timeout: float = GUARD, **extra: str) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)], env=_env(tmp_path / "ml.db", **extra), cwd=tmp_path,
        capture_output=True, text=True, timeout=timeout,
    )


def _rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# -- 1. an out-of-range integer kills the writer: other events lost, waits hang --------------------


def test_out_of_range_step_does_not_lose_other_events_or_hang(tmp_path: Path) -> None:
    """Issue: 'a bad event can never make the writer drop other events'; bad input raises on the caller's line."""
    done = _run(tmp_path, """
        import threading
        from ml_persistence import ExperimentTracker
        t = ExperimentTracker()
        t.start_experiment("overflow")
        t.log_metric("good_before", 1.0)
        try:
            t.log_metrics_batch({"bad": 1.0}, step=2**63)   # passes validation, SQLite cannot store it
        except (TypeError, ValueError):
            pass                                           # raising here would be fine
        t.log_metric("good_after", 2.0)
        result = []
        def flush():
            try:
                t.flush()
                result.append("ok")
            except Exception as exc:
                result.append(type(exc).__name__)
        th = threading.Thread(target=flush, daemon=True)
        th.start(); th.join(10)
        print("FLUSH", result[0] if result else "HUNG")
    """)
    assert "FLUSH HUNG" not in done.stdout, "flush() never returns once the writer crashed on an overflow"
    names = {n for (n,) in _rows(tmp_path / "ml.db", "SELECT metric_name FROM metrics")}
    assert {"good_before", "good_after"} <= names, f"valid events were lost: {names}"


def test_out_of_range_random_seed_does_not_hang_start_experiment(tmp_path: Path) -> None:
    done = _run(tmp_path, """
        import threading
        from ml_persistence import ExperimentTracker
        t = ExperimentTracker()
        out = []
        def start():
            try:
                out.append(t.start_experiment("x", random_seed=2**63))
            except Exception as exc:
                out.append(type(exc).__name__)
        th = threading.Thread(target=start, daemon=True)
        th.start(); th.join(10)
        print("START", out[0] if out else "HUNG")
    """)
    assert "START HUNG" not in done.stdout, "start_experiment() blocks forever after the writer crashed"


# -- 2. async facades: no SIGTERM handler, so nothing is committed and the run stays 'running' -----


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_tracker_commits_and_ends_interrupted_on_sigterm(tmp_path: Path, backend: str) -> None:
    pytest.importorskip(backend)
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import anyio
        from ml_persistence import AsyncExperimentTracker
        async def main():
            tr = AsyncExperimentTracker()
            await tr.start_experiment("async run")
            for i in range(1000):
                tr.log_metrics_batch({{"loss": float(i)}}, step=i)
            print("ready", flush=True)
            await anyio.sleep(60)
        anyio.run(main, backend={backend!r})
    """))
    db = tmp_path / "ml.db"
    proc = subprocess.Popen([sys.executable, str(script)], env=_env(db), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        proc.wait(GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _rows(db, "SELECT COUNT(*) FROM metrics") == [(1000,)]
    assert _rows(db, "SELECT status FROM experiments") == [("interrupted",)]


# -- 3. after ml_persistence.shutdown(), later log calls are silently lost at exit -----------------


def test_events_logged_after_shutdown_are_committed_at_exit(tmp_path: Path) -> None:
    done = _run(tmp_path, """
        import ml_persistence
        from ml_persistence import ExperimentTracker
        t = ExperimentTracker()
        t.start_experiment("x")
        t.log_metric("before", 1.0)
        ml_persistence.shutdown()          # README: the backend stays usable afterwards
        for i in range(10):
            t.log_metric("after", float(i))
    """)
    assert done.returncode == 0, done.stderr
    db = tmp_path / "ml.db"
    assert _rows(db, "SELECT COUNT(*) FROM metrics WHERE metric_name = 'after'") == [(10,)]
    assert _rows(db, "SELECT status FROM experiments") == [("completed",)]


# -- 4. a non-zero exit through `raise SystemExit(n)` / builtin exit(n) ends the run 'completed' ---


# A bare `raise SystemExit(3)` cannot be told from a clean exit by any exit hook (README says so).
@pytest.mark.parametrize("how", ["__import__(\"sys\").exit(3)", "exit(3)", "quit(3)"])
def test_nonzero_exit_ends_failed(tmp_path: Path, how: str) -> None:
    done = _run(tmp_path, f"""
        from ml_persistence import ExperimentTracker
        t = ExperimentTracker()
        t.start_experiment("x")
        t.log_metric("m", 1.0)
        {how}
    """)
    assert done.returncode == 3
    assert _rows(tmp_path / "ml.db", "SELECT status FROM experiments") == [("failed",)]


# -- 5. a file of the original implementation: a None hyperparameter loses its whole batch ---------

ORIGINAL_HYPERPARAMETERS = """
CREATE TABLE hyperparameters (id INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id INTEGER NOT NULL,
  model_id INTEGER, param_name TEXT NOT NULL, param_value TEXT NOT NULL, param_type TEXT,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
"""


def test_original_schema_none_hyperparameter_does_not_lose_the_batch(tmp_path: Path) -> None:
    """The original implementation declared hyperparameters.param_value NOT NULL."""
    db = tmp_path / "ml.db"
    conn = sqlite3.connect(db)
    conn.executescript(ORIGINAL_HYPERPARAMETERS)
    conn.close()
    done = _run(tmp_path, """
        from ml_persistence import ExperimentTracker
        t = ExperimentTracker()
        eid = t.start_experiment("x")
        t.log_hyperparameters_batch({"learning_rate": 3e-4, "scheduler": None, "gamma": 0.99})
        try:
            t.flush()
        except Exception as exc:
            print("flush raised", repr(exc))
        print(sorted(t.get_hyperparameters(eid)))
    """)
    names = {n for (n,) in _rows(db, "SELECT param_name FROM hyperparameters")}
    assert {"learning_rate", "gamma"} <= names, done.stdout + done.stderr


def test_experiment_left_running_after_shutdown_is_ended_at_exit(tmp_path: Path) -> None:
    """After shutdown() no writer runs; at exit (where 3.12+ may start no thread) the run still ends."""
    done = _run(tmp_path, """
        import ml_persistence
        from ml_persistence import ExperimentTracker
        t = ExperimentTracker()
        t.start_experiment("x")
        t.log_metric("m", 1.0)
        ml_persistence.shutdown()
    """)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert _rows(tmp_path / "ml.db", "SELECT status FROM experiments") == [("completed",)]
    assert _rows(tmp_path / "ml.db", "SELECT COUNT(*) FROM metrics") == [(1,)]
