"""The private writer process: started by the library, fed over a socket, gone with its trainer.

Every trainer is a real child process; the database is read with sqlite3 afterwards. A writer
process's exit is awaited on a pidfd (or its /proc entry with a hang guard), never a sleep.
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from test_process_lifecycle import GUARD, Child, metric_steps, run_script
from test_process_lifecycle import db_path as database_file

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pidfd and /proc")


def wait_for_exit(pid: int) -> None:
    """Wait until process ``pid`` (not our child) has exited; fail after GUARD seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], GUARD)
        assert ready, f"process {pid} still running {GUARD} s later"
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def rows(tmp_path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(database_file(tmp_path))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


LOGGING = """
tracker = ExperimentTracker()
eid = tracker.start_experiment("run", "ppo")
status = tracker._backend.status()
say("writer", status["writer"], status.get("writer_pid"))
for step in range(N):
    tracker.log_metrics_batch({"a": float(step), "b": 1.0}, step=step)
"""


def test_by_default_a_private_process_writes_and_leaves_with_a_normal_exit(tmp_path: Path) -> None:
    child = Child(tmp_path, "N = 20000\n" + LOGGING + "say('done')\n")
    try:
        kind, pid = child.read_line("writer").split()
        assert kind == "process"
        child.read_line("done")
        assert child.wait() == 0
    finally:
        child.close()
    wait_for_exit(int(pid))
    assert metric_steps(tmp_path, 1, "a") == list(range(20000))
    assert rows(tmp_path, "SELECT status FROM experiments") == [("completed",)]


def test_after_a_sigkill_of_the_trainer_the_writer_commits_what_it_received_and_exits(tmp_path: Path) -> None:
    body = "N = 50000\n" + LOGGING + "tracker.flush()\nsay('flushed')\nexpect('die')\n"
    child = Child(tmp_path, body)
    try:
        _, pid = child.read_line("writer").split()
        child.read_line("flushed")
        child.proc.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    finally:
        child.close()
    wait_for_exit(int(pid))  # no orphan: the lifeline pipe's end-of-file stops it
    assert metric_steps(tmp_path, 1, "a") == list(range(50000))


def test_a_sigkill_mid_logging_loses_at_most_the_unsent_tail_and_duplicates_nothing(tmp_path: Path) -> None:
    body = "N = 1000\n" + LOGGING + (
        "tracker.flush()\nsay('logging')\n"
        "for step in range(N, 10**9):\n    tracker.log_metrics_batch({'a': float(step), 'b': 1.0}, step=step)\n"
    )
    child = Child(tmp_path, body)
    try:
        _, pid = child.read_line("writer").split()
        child.read_line("logging")
        child.proc.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        child.close()
    wait_for_exit(int(pid))
    steps = metric_steps(tmp_path, 1, "a")
    assert len(steps) >= 1000 and steps == list(range(len(steps)))  # a prefix, each step once


def test_the_trainer_starts_a_new_writer_when_its_writer_dies_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    body = (
        "N = 30000\n" + LOGGING + "tracker.flush()\nsay('first half')\nexpect('go on')\n"
        "for step in range(N, 2 * N):\n    tracker.log_metrics_batch({'a': float(step), 'b': 1.0}, step=step)\n"
        "tracker.flush()\nstatus = tracker._backend.status()\nsay('second', status['writer_pid'], status['lost'])\n"
    )
    child = Child(tmp_path, body)
    try:
        _, pid = child.read_line("writer").split()
        child.read_line("first half")
        os.kill(int(pid), signal.SIGKILL)
        wait_for_exit(int(pid))
        child.send("go on")
        new_pid, lost = child.read_line("second").split()
        assert child.wait() == 0
    finally:
        child.close()
    assert new_pid != pid and lost == "0"
    assert metric_steps(tmp_path, 1, "a") == list(range(60000))


def test_a_forked_child_gets_its_own_writer_and_the_parents_writer_ends_with_the_parent(tmp_path: Path) -> None:
    body = "N = 1000\n" + LOGGING + """
tracker.flush()
pid = os.fork()
if pid == 0:
    child = ExperimentTracker()
    cid = child.start_experiment("forked", "ppo")
    for step in range(500):
        child.log_metrics_batch({"c": float(step)}, step=step)
    child.end_experiment()
    os._exit(0)
_, code = os.waitpid(pid, 0)
say("child exit", code)
"""
    child = Child(tmp_path, body)
    try:
        _, parent_writer = child.read_line("writer").split()
        assert child.read_line("child exit") == "0"
        assert alive(int(parent_writer))  # the forked child's exit does not end the parent's writer
        assert child.wait() == 0
    finally:
        child.close()
    wait_for_exit(int(parent_writer))
    assert metric_steps(tmp_path, 1, "a") == list(range(1000))
    assert metric_steps(tmp_path, 2, "c") == list(range(500))


def test_one_setting_selects_the_writer_thread(tmp_path: Path) -> None:
    done = run_script(tmp_path, "N = 10\n" + LOGGING, ML_PERSISTENCE_WRITER="thread")
    assert done.returncode == 0, done.stderr
    assert "writer thread None" in done.stdout
    assert metric_steps(tmp_path, 1, "a") == list(range(10))


def test_configure_selects_the_writer_and_refuses_an_unknown_one(db_path: str) -> None:
    import ml_persistence
    from ml_persistence.errors import InvalidValueError

    with pytest.raises(InvalidValueError, match="writer must be one of process, thread"):
        ml_persistence.configure(db_path, writer="fork")
    assert ml_persistence.configure(db_path, writer="thread").writer == "thread"


def test_where_no_process_can_be_started_the_thread_writes_instead(tmp_path: Path) -> None:
    body = "import sys\nsys.executable = ''\nN = 100\n" + LOGGING
    done = run_script(tmp_path, body)
    assert done.returncode == 0, done.stderr
    assert "writer thread None" in done.stdout
    assert "writing from a thread in this process instead" in done.stderr
    assert metric_steps(tmp_path, 1, "a") == list(range(100))


FULL_DISK = """
import json, os, resource, signal, sqlite3, sys
from ml_persistence import ExperimentTracker

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
db = os.environ["ML_PERSISTENCE_DB"]
t = ExperimentTracker(db, capture_environment=False)
t.start_experiment("full-disk")
t.flush()
conn = sqlite3.connect(db)
conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
conn.close()
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(db) + 8192, hard))  # this process's limit: its writer's too
for i in range(N):
    t.log_metric("loss", float(i), step=i)
print("logged", flush=True)
sys.stdin.readline()
print("status", json.dumps(t.status()), flush=True)
sys.stdin.readline()
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
t.flush()
print("flushed", json.dumps(t.status()), flush=True)
"""


def test_a_full_disk_under_the_private_writer_shows_in_status_and_every_event_lands_once(tmp_path: Path) -> None:
    import json
    import subprocess

    from conftest import PYTHON, subprocess_env

    script = tmp_path / "full.py"
    script.write_text("N = 20000\n" + FULL_DISK)
    db = str(tmp_path / "full.db")
    proc = subprocess.Popen(
        [PYTHON, str(script)], cwd=tmp_path, env=subprocess_env(ML_PERSISTENCE_DB=db),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
    )
    try:
        def line(stream, prefix: str) -> str:
            while True:
                ready, _, _ = select.select([stream], [], [], GUARD)
                assert ready, f"no {prefix!r} line within {GUARD} s"
                text = stream.readline()
                assert text, f"stream ended before {prefix!r}"
                if text.startswith(prefix) or prefix in text:
                    return text

        line(proc.stdout, "logged")
        warning = line(proc.stderr, "cannot write to")  # the writer process says so once, on the trainer's stderr
        assert "full.db" in warning
        proc.stdin.write("status?\n")
        proc.stdin.flush()
        during = json.loads(line(proc.stdout, "status")[len("status"):])
        assert during["writer"] == "process" and during["condition"]["reason"], during
        assert during["lost"] == during["rejected"] == 0 and during["queued"] > 0, during
        proc.stdin.write("space is back\n")
        proc.stdin.flush()
        after = json.loads(line(proc.stdout, "flushed")[len("flushed"):])
        assert proc.wait(GUARD) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert after["written"] == 20001 and after["lost"] == after["rejected"] == after["dropped"] == 0, after
    conn = sqlite3.connect(db)
    try:
        steps = [s for (s,) in conn.execute("SELECT step FROM metrics ORDER BY id")]
    finally:
        conn.close()
    assert steps == list(range(20000))
