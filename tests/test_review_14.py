"""Review of issue 14 (hub, range sender, private writer process), as a user would meet it.

Every test runs real trainer processes and reads the database with sqlite3 afterwards.
Synchronisation is by stdout lines, process exits and pidfds; GUARD only turns a hang into a failure.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from test_private_writer import alive, wait_for_exit
from test_process_lifecycle import GUARD, Child, metric_steps, run_script

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pidfd and /proc")


# -- the private writer is `python -m agent`, found on the trainer's own sys.path first -------------

USER_AGENT_MODULE = """\
import os
class PPOAgent:
    pass
if __name__ == "__main__":
    open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "USER_MAIN_RAN"), "w").write(str(os.getpid()))
"""


def test_a_users_own_agent_module_in_the_working_directory_is_not_run_as_the_writer(tmp_path: Path) -> None:
    """An RL project with its own agent.py: `python -m agent` runs the user's file, __main__ block and all."""
    (tmp_path / "agent.py").write_text(USER_AGENT_MODULE)
    body = """
tracker = ExperimentTracker()
tracker.start_experiment("run", "ppo")
for step in range(100):
    tracker.log_metrics_batch({"a": float(step)}, step=step)
tracker.flush()
say("writer", tracker.status()["writer"])
"""
    done = run_script(tmp_path, body)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "USER_MAIN_RAN").exists(), "the user's agent.py was executed as the private writer"
    assert "writer process" in done.stdout, done.stdout + done.stderr
    assert metric_steps(tmp_path, 1, "a") == list(range(100))


# -- event sizes: the private writer must store what the thread writer stores ----------------------


def test_a_12_mib_metric_event_is_stored_by_the_default_private_writer_as_by_the_thread(tmp_path: Path) -> None:
    """The sender drops any event over its 8 MiB frame size ("refused by the database"), the thread writes it."""
    body = """
tracker = ExperimentTracker()
tracker.start_experiment("run")
tracker.log_metric("a", 1.0, step=12, metadata={"blob": "x" * (12 << 20)})
try:
    tracker.flush()
    say("flushed")
except Exception as exc:
    say("raised", type(exc).__name__, exc)
say("writer", tracker.status()["writer"])
"""
    done = run_script(tmp_path, body)
    assert done.returncode == 0, done.stderr
    assert "writer process" in done.stdout
    assert "flushed" in done.stdout, done.stdout + done.stderr
    assert metric_steps(tmp_path, 1, "a") == [12]


def test_a_start_experiment_with_70_mib_of_metadata_does_not_hang_the_default_private_writer(tmp_path: Path) -> None:
    """A Call frame past the agent's 64 MiB limit: the writer closes the connection, the sender reconnects
    and replays the same call forever, and start_experiment() never returns (the thread writer stores it)."""
    import subprocess

    from test_process_lifecycle import child_env, write_script

    body = """
tracker = ExperimentTracker()
try:
    say("started", tracker.start_experiment("run", metadata={"blob": "x" * (70 << 20)}))
except Exception as exc:
    say("raised", type(exc).__name__)
"""
    script = write_script(tmp_path, body)
    try:
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=child_env(tmp_path), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=GUARD, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        reconnects = (exc.stderr or b"").count(b"exceeds the limit")
        pytest.fail(f"start_experiment() hung for {GUARD} s; the writer closed the connection {reconnects} times")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "started 1" in done.stdout or "raised" in done.stdout


# -- the private writer's directory -----------------------------------------------------------------


def writer_directory(pid: int) -> str:
    """Return the temporary directory of private writer ``pid`` (from its command line)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    socket_url = argv[argv.index("--listen") + 1]
    return os.path.dirname(socket_url[len("unix://"):])


def test_a_sigkilled_trainer_leaves_no_private_writer_directory_behind(tmp_path: Path) -> None:
    """Only the trainer removes /tmp/ml_persistence-writer-*: every SIGKILLed run leaves one in /tmp."""
    body = """
tracker = ExperimentTracker()
tracker.start_experiment("run")
for step in range(1000):
    tracker.log_metrics_batch({"a": float(step)}, step=step)
tracker.flush()
say("writer", tracker.status()["writer_pid"])
expect("die")
"""
    child = Child(tmp_path, body)
    try:
        pid = int(child.read_line("writer"))
        directory = writer_directory(pid)
        child.proc.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    finally:
        child.close()
    wait_for_exit(pid)
    assert metric_steps(tmp_path, 1, "a") == list(range(1000))
    assert not os.path.exists(directory), f"{directory} left behind: {os.listdir(directory)}"


def test_the_private_writer_does_not_crash_on_its_removed_status_file_while_draining(tmp_path: Path) -> None:
    """At a normal exit the trainer removes the writer's directory at once; a writer still retrying a
    locked database then fails writing status.json.tmp and dies with an error on the user's terminal."""
    import sqlite3
    import subprocess

    from test_process_lifecycle import child_env, db_path, write_script

    body = """
tracker = ExperimentTracker(capture_environment=False)
tracker.start_experiment("run")
tracker.flush()
say("writer", tracker.status()["writer_pid"])
expect("locked")
for step in range(1000):
    tracker.log_metric("loss", float(step), step=step)
"""
    script = write_script(tmp_path, body)
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=child_env(tmp_path, ML_PERSISTENCE_EXIT_TIMEOUT="1"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    holder = sqlite3.connect(str(db_path(tmp_path)), timeout=GUARD, isolation_level=None)
    try:
        pid = int(proc.stdout.readline().split()[1])
        holder.execute("BEGIN EXCLUSIVE")
        proc.stdin.write("locked\n")
        proc.stdin.flush()
        assert proc.wait(GUARD) == 0
        wait_for_exit(pid)  # the writer gives up on the lock too (its stop timeout is the trainer's)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()  # the writer shares the trainer's stderr
    proc.stdout.close()
    proc.stderr.close()
    assert "status.json" not in stderr, stderr


# -- what status() says was sent --------------------------------------------------------------------


def test_events_status_counts_as_sent_are_committed_after_a_sigkill(tmp_path: Path) -> None:
    """status()["sent"] is raised before _transmit() hands the frame to the kernel: a trainer that
    waits for sent == logged and is then SIGKILLed loses the frame still being written."""
    body = """
N = 300000
tracker = ExperimentTracker()
tracker.start_experiment("run")
for step in range(N):
    tracker.log_metrics_batch({"a": float(step)}, step=step)
while tracker.status()["sent"] < N:
    time.sleep(0.001)  # the child polls its own counter; the test waits on its line and exit
say("sent", tracker.status()["writer_pid"])
os.kill(os.getpid(), signal.SIGKILL)
"""
    child = Child(tmp_path, body)
    try:
        pid = int(child.read_line("sent"))
        assert child.wait() == -signal.SIGKILL
    finally:
        child.close()
    wait_for_exit(pid)
    steps = metric_steps(tmp_path, 1, "a")
    assert len(steps) == 300000, f"{300000 - len(steps)} events counted as sent were never committed"


def test_a_frozen_application_is_not_started_again_as_its_own_writer(tmp_path: Path) -> None:
    """In a PyInstaller-style app sys.executable is the app itself: `app -m agent ...` runs the app
    (its training loop) once more, which multiprocessing avoids by checking sys.frozen."""
    app = tmp_path / "app"
    app.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'APP_STARTED_AGAIN'}\n")
    app.chmod(0o755)
    body = f"""
sys.frozen = True
sys.executable = {str(app)!r}
tracker = ExperimentTracker()
tracker.start_experiment("run")
for step in range(10):
    tracker.log_metrics_batch({{"a": float(step)}}, step=step)
tracker.flush()
"""
    done = run_script(tmp_path, body)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "APP_STARTED_AGAIN").exists(), "the frozen app was executed again as the writer"
    assert metric_steps(tmp_path, 1, "a") == list(range(10))


def test_an_agent_stores_a_12_mib_event_that_the_call_accepted(tmp_path: Path) -> None:
    """The call admits events up to MAX_EVENT_BYTES (32 MiB); the sender then drops any over FRAME_BYTES (8 MiB)."""
    from agent_process import AgentProcess, short_socket

    db = str(tmp_path / "agent.db")
    with AgentProcess(db, [short_socket(tmp_path)], tmp_path) as agent:
        body = """
tracker = ExperimentTracker()
tracker.start_experiment("run")
tracker.log_metric("a", 1.0, step=12, metadata={"blob": "x" * (12 << 20)})
try:
    tracker.flush()
    say("flushed")
except Exception as exc:
    say("raised", type(exc).__name__, exc)
"""
        done = run_script(tmp_path, body, ML_PERSISTENCE_AGENT=agent.url)
    assert done.returncode == 0, done.stderr
    assert "flushed" in done.stdout, done.stdout + done.stderr
