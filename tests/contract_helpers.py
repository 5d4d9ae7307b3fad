"""Helpers shared by the backend contract tests and the PostgreSQL fault tests.

One way to read either engine's database directly (``db_rows``), one way to run the command
line and small scripts in child processes, and the normalisation that lets two engines' outputs
be compared as text.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import textwrap
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import pytest

from conftest import PYTHON, rows, subprocess_env
from pg import pg_rows

GUARD = 60.0  # seconds: a hang guard, never a synchronisation device


def engine_of(db: str) -> str:
    return "postgresql" if db.startswith(("postgresql://", "postgres://")) else "sqlite"


def db_rows(db: str, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """Run one query (``?`` placeholders) directly on either engine's database, as a user's SQL tool would."""
    if engine_of(db) == "postgresql":
        return pg_rows(db, sql.replace("?", "%s"), tuple(params))
    return rows(db, sql, tuple(params))


def child_env(db: Optional[str] = None, **extra: str) -> dict[str, str]:
    """Environment for a child: this checkout importable, no terminal width, ``db`` as the default database."""
    env = subprocess_env(PYTHONUNBUFFERED="1")
    for name in ("COLUMNS", "LINES", "ML_PERSISTENCE_DB", "ML_PERSISTENCE_EXIT_TIMEOUT"):
        env.pop(name, None)
    if db is not None:
        env["ML_PERSISTENCE_DB"] = db
    env.update(extra)
    return env


def cli(*args: str, cwd: Path, env: Optional[dict[str, str]] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m ml_persistence ARGS`` to completion (the timeout only turns a hang into a failure)."""
    return subprocess.run([PYTHON, "-m", "ml_persistence", *args], cwd=cwd, env=env or child_env(),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (done.args, done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def run_script(cwd: Path, body: str, *args: str, name: str = "script.py", env: Optional[dict[str, str]] = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """Write ``body`` to cwd/name and run it with ``args`` (relative path: the captured command line is the same
    wherever the test runs)."""
    (cwd / name).write_text(textwrap.dedent(body))
    return subprocess.run([PYTHON, name, *args], cwd=cwd, env=env or child_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?")
# Every experiment's uuid is random: masked wherever outputs of two runs or engines are compared.
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def comparable(value: Any) -> Any:
    """A read result made comparable across engines and runs: NaN as "nan", timestamps and durations masked."""
    if isinstance(value, dict):
        return {k: ("<duration>" if k == "duration_seconds" and v is not None else comparable(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [comparable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, str):
        return _UUID.sub("<uuid>", _TIME.sub("<time>", value))
    return value


def normalize_output(text: str, db: str, loose: bool = False) -> str:
    """Command output with the database's own name masked; ``loose`` also masks timestamps and durations
    and collapses runs of spaces (column widths follow the masked values)."""
    from pg import redact

    names = {db, redact(db)} | ({os.path.abspath(db), os.path.realpath(db)} if engine_of(db) == "sqlite" else set())
    for name in sorted(names, key=len, reverse=True):
        text = text.replace(name, "<db>")
    text = _UUID.sub("<uuid>", text)
    if not loose:
        return text
    text = _TIME.sub("<time>", text)
    text = re.sub(r"\b\d+(\.\d+)?\s?(ms|s)\b", "<duration>", text)
    return "\n".join(re.sub(r"[ \t]+", " ", line).rstrip() for line in text.splitlines())


def pin(db: str) -> None:
    """Give every row the same times, host and pid on any engine (the same logged data, compared as text)."""
    for table, columns in (("experiments", ("start_time", "end_time", "created_at", "updated_at")),
                           ("models", ("created_at",)), ("datasets", ("created_at",)), ("metrics", ("timestamp",)),
                           ("hyperparameters", ("created_at",)), ("artifacts", ("created_at",))):
        for (row_id,) in db_rows(db, f"SELECT id FROM {table} ORDER BY id"):
            moment = f"2024-01-01 10:{row_id // 60:02d}:{row_id % 60:02d}.250000"
            sets = ", ".join(f"{c} = ?" for c in columns)
            execute(db, f"UPDATE {table} SET {sets} WHERE id = ?", (*[moment] * len(columns), row_id))
    execute(db, "UPDATE experiments SET duration_seconds = 90.5 WHERE end_time IS NOT NULL")
    execute(db, "UPDATE experiments SET pid = 4242, hostname = 'trainhost'")


def execute(db: str, sql: str, params: Sequence[Any] = ()) -> None:
    """Run one write statement directly on either engine's database."""
    if engine_of(db) == "postgresql":
        pg_rows(db, sql.replace("?", "%s"), tuple(params))
        return
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(sql, tuple(params))
    finally:
        conn.close()


class Child:
    """A child Python process driven line by line: its stdout read by a thread (hang guard), commands on stdin."""

    def __init__(self, cwd: Path, body: str, *args: str, name: str = "child.py",
                 env: Optional[dict[str, str]] = None) -> None:
        import queue

        self.name = name
        (cwd / name).write_text(textwrap.dedent(body))
        self.stderr_path = cwd / f"{name}.stderr"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([PYTHON, name, *args], cwd=cwd, env=env or child_env(), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        self.stdout: list[str] = []
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.stdout.append(line)
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def describe(self) -> str:
        return f"{self.name} (pid {self.proc.pid})\nstdout:\n{''.join(self.stdout)}\nstderr:\n{self.stderr}"

    def line(self, prefix: str) -> str:
        """Return the rest of the next stdout line starting with ``prefix``; fail if the child exits or hangs."""
        import queue

        while True:
            try:
                line = self.lines.get(timeout=GUARD)
            except queue.Empty:
                self.kill()
                pytest.fail(f"no {prefix!r} line within {GUARD} s: {self.describe()}")
            if line is None:
                code = self.proc.wait(GUARD)
                pytest.fail(f"exited ({code}) before printing {prefix!r}: {self.describe()}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def send(self, word: str) -> None:
        self.proc.stdin.write(word + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def wait(self) -> int:
        try:
            code = self.proc.wait(GUARD)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"did not exit within {GUARD} s: {self.describe()}")
        self._reader.join(GUARD)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(GUARD)

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except (OSError, ValueError):
                pass


@pytest.fixture
def children():
    """Start children through ``children.start(...)``; any still running at the end is killed."""

    class Children(list):
        def start(self, *args: Any, **kwargs: Any) -> Child:
            child = Child(*args, **kwargs)
            self.append(child)
            return child

    started = Children()
    yield started
    for child in started:
        child.close()


def steps_once(db: str, experiment_id: int, metric: str, expected: range) -> None:
    """Assert every step of ``expected`` is stored exactly once for one experiment's metric."""
    found = db_rows(db, "SELECT step, COUNT(*) FROM metrics WHERE experiment_id = ? AND metric_name = ? GROUP BY step",
                    (experiment_id, metric))
    counts = {step: n for step, n in found}
    duplicated = sorted(s for s, n in counts.items() if n != 1)
    missing = sorted(set(expected) - set(counts))
    extra = sorted(set(counts) - set(expected))
    assert not duplicated and not missing and not extra, (
        f"experiment {experiment_id} {metric}: {sum(counts.values())} rows for {len(expected)} logged; "
        f"{len(missing)} missing (first {missing[:5]}), {len(duplicated)} steps stored more than once "
        f"(first {duplicated[:5]}), {len(extra)} unexpected (first {extra[:5]})"
    )


