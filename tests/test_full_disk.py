"""A full disk loses nothing (issue 12, finding 1), in real child processes.

A full disk is simulated without root by a file-size limit: the child ignores SIGXFSZ and lowers
its own RLIMIT_FSIZE just above the database's size, so every write past it fails as SQLite's
"disk I/O error" (EFBIG), the way a full device fails with "database or disk is full".
Synchronisation is by the child's stdout lines and the parent's stdin lines: the child says
"stalled" once ml_persistence has logged that it cannot write, and waits for the parent.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import PYTHON, rows, subprocess_env

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not hasattr(__import__("signal"), "SIGXFSZ"), reason="POSIX file-size limits"
)

GUARD = 120.0  # seconds: a hang guard, never a synchronisation device

PRELUDE = """\
import json, logging, os, resource, signal, sqlite3, sys, threading
from ml_persistence import ExperimentTracker

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
db = os.environ["ML_PERSISTENCE_DB"]
stalled = threading.Event()

class Echo(logging.StreamHandler):
    # Prints ml_persistence's log lines to stderr as usual, and notes when writing stalls.
    def emit(self, record):
        super().emit(record)
        if "cannot write" in record.getMessage():
            stalled.set()

logging.getLogger("ml_persistence").addHandler(Echo(sys.stderr))

def say(*parts):
    print(*parts, flush=True)

def fill_disk(extra):
    # The database as it is now, write-ahead log folded in, plus ``extra`` bytes: no file may grow past that.
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = max(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + extra, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

def free_disk():
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))

t = ExperimentTracker(db, capture_environment=False)
eid = t.start_experiment("full-disk")
t.flush()
"""


class Child:
    """A child Python process running PRELUDE + ``body``; read its lines, write to its stdin."""

    def __init__(self, tmp_path: Path, db: str, body: str, **env: str) -> None:
        script = tmp_path / "child.py"
        script.write_text(PRELUDE + textwrap.dedent(body))
        self.err_path = tmp_path / "child.stderr"
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            # The writer thread, whose log lines the Echo handler above sees in this process; the
            # private writer process's full disk is in test_private_writer.py.
            [PYTHON, str(script)], cwd=tmp_path, env=subprocess_env(ML_PERSISTENCE_DB=db, ML_PERSISTENCE_WRITER="thread", **env),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True, bufsize=1,
        )

    def read_line(self, prefix: str) -> str:
        """Return the rest of the child's next stdout line starting with ``prefix``."""
        deadline = time.monotonic() + GUARD
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.proc.kill()
                pytest.fail(f"no {prefix!r} line within {GUARD} s; stderr:\n{self.stderr()}")
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                self.proc.wait()
                pytest.fail(f"child exited ({self.proc.returncode}) before {prefix!r}; stderr:\n{self.stderr()}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def wait(self) -> int:
        try:
            code = self.proc.wait(GUARD)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"child hung; stderr:\n{self.stderr()}")
        self._err.close()
        return code

    def stderr(self) -> str:
        return self.err_path.read_text()


def steps(db: str) -> list[int]:
    """The logged steps, in the order the rows were stored."""
    return [s for (s,) in rows(db, "SELECT step FROM metrics WHERE metric_name = 'loss' ORDER BY id")]


def condition_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ml_persistence" in line or "write" in line]


def test_a_full_disk_is_waited_out_and_every_event_is_stored_once_in_order(tmp_path: Path) -> None:
    db = str(tmp_path / "full.db")
    n = 100_000
    child = Child(tmp_path, db, f"""
        fill_disk(8192)
        for i in range({n}):
            t.log_metric("loss", float(i), step=i)
        assert stalled.wait(60), "the writer never reported the full disk"
        say("stalled", json.dumps(t.status()))
        sys.stdin.readline()
        free_disk()
        t.flush()
        say("flushed", json.dumps(t.status()))
    """)
    during = json.loads(child.read_line("stalled"))
    assert during["condition"] is not None and during["condition"]["reason"], during
    assert during["queued"] > 0 and during["rejected"] == 0 and during["lost"] == 0, during
    child.send("space is back")
    after = json.loads(child.read_line("flushed"))
    assert child.wait() == 0, child.stderr()
    stderr = child.stderr()
    print(f"stderr:\n{stderr}\nduring: {during}\nafter: {after}")
    assert after["condition"] is None and after["written"] == n + 1, after  # + the experiment
    assert after["rejected"] == after["lost"] == after["dropped"] == 0, after
    assert steps(db) == list(range(n))  # each once, in logging order
    assert len(condition_lines(stderr)) < 10, stderr
    assert "cannot write" in stderr and "again" in stderr, stderr  # one line when it starts, one when it clears


def saved_at_exit(tmp_path: Path, db: str, n: int) -> tuple[str, str]:
    """Run a child that logs ``n`` events on a full disk and exits before it clears; return the
    recovery file its exit message names, and that message."""
    child = Child(tmp_path, db, f"""
        fill_disk(64 * 1024)
        for i in range({n}):
            t.log_metric("loss", float(i), step=i)
        assert stalled.wait(60), "the writer never reported the full disk"
        say("stalled")
        # the script ends with the disk still full: the exit deadline passes
    """, ML_PERSISTENCE_EXIT_TIMEOUT="1")
    child.read_line("stalled")
    assert child.wait() == 0, child.stderr()
    stderr = child.stderr()
    print(f"stderr:\n{stderr}")
    found = re.search(r"saved to (\S+\.mlrecovery)", stderr)
    assert found, stderr
    path = found.group(1)
    assert f"ml-persistence recover {path}" in stderr, stderr  # the command that applies it
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(condition_lines(stderr)) < 10, stderr
    assert len(steps(db)) < n  # the disk was full: not everything got in
    return path, stderr


def test_events_unwritten_at_the_exit_deadline_are_saved_and_recover_stores_them_once(tmp_path: Path) -> None:
    db = str(tmp_path / "full.db")
    n = 5000
    path, _ = saved_at_exit(tmp_path, db, n)
    copy = str(tmp_path / "copy.mlrecovery")
    shutil.copy(path, copy)
    env = subprocess_env()
    done = subprocess.run([PYTHON, "-m", "ml_persistence", "recover", path], env=env, capture_output=True,
                          text=True, timeout=GUARD, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert steps(db) == list(range(n))
    assert rows(db, "SELECT status FROM experiments") == [("completed",)]  # its end was saved too
    assert not os.path.exists(path)
    again = subprocess.run([PYTHON, "-m", "ml_persistence", "recover", copy, "--db", db], env=env,
                           capture_output=True, text=True, timeout=GUARD, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 events stored" in again.stdout, again.stdout
    assert steps(db) == list(range(n))  # applying it again adds nothing


def test_the_next_writer_on_the_database_applies_a_recovery_file_by_itself(tmp_path: Path) -> None:
    db = str(tmp_path / "full.db")
    n = 5000
    path, _ = saved_at_exit(tmp_path, db, n)
    script = tmp_path / "next.py"
    script.write_text(textwrap.dedent(f"""
        from ml_persistence import ExperimentTracker
        t = ExperimentTracker({db!r}, capture_environment=False)
        t.start_experiment("next")  # its writer stores the saved events first
        t.log_metric("loss", -1.0, step={n})
        t.flush()
    """))
    done = subprocess.run([PYTHON, str(script)], env=subprocess_env(), capture_output=True, text=True,
                          timeout=GUARD, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "applied recovery file" in done.stderr, done.stderr
    assert steps(db) == list(range(n + 1))  # the saved events first, each once, then the new one
    assert not os.path.exists(path)
