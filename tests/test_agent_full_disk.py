"""A full disk under the agent loses nothing, and a client's `written` means stored (issue 12, finding 1).

The agent is a real subprocess. A full disk is simulated without root by lowering the agent's own
file-size limit with `prlimit --pid` (Python ignores SIGXFSZ, so a write past the limit fails with
EFBIG) and raising it back. Events the agent cannot write stay unacknowledged: the client keeps them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from agent_process import AgentProcess, short_socket
from conftest import PYTHON, rows, subprocess_env

import ml_persistence
from ml_persistence import ExperimentTracker
from ml_persistence.sqlite import schema

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or shutil.which("prlimit") is None, reason="needs Linux and prlimit(1)"
)

WAIT = 120.0  # generous limit on waiting for a condition; never asserted as a duration


def fill_disk(agent: AgentProcess, extra: int = 8192) -> None:
    """Let none of the agent's files grow more than ``extra`` bytes past the database's size now."""
    assert agent.proc is not None
    conn = sqlite3.connect(agent.db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = max(os.path.getsize(p) for p in (agent.db, agent.db + "-wal") if os.path.exists(p))
    subprocess.run(["prlimit", "--pid", str(agent.proc.pid), f"--fsize={size + extra}:"], check=True)


def free_disk(agent: AgentProcess) -> None:
    assert agent.proc is not None
    subprocess.run(["prlimit", "--pid", str(agent.proc.pid), "--fsize=unlimited:"], check=True)


def wait_for_log(agent: AgentProcess, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while text not in agent.log():
        assert time.monotonic() < deadline, f"no {text!r} in the agent's log within {WAIT} s:\n{agent.log()}"
        time.sleep(0.05)


def problem_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line or "Traceback" in line]


def steps(db: str) -> list[int]:
    return [s for (s,) in rows(db, "SELECT step FROM metrics WHERE metric_name = 'loss' ORDER BY id")]


def test_a_full_disk_under_the_agent_is_waited_out_and_written_means_stored(tmp_path: Path) -> None:
    n = 100_000
    with AgentProcess(str(tmp_path / "agent.db"), [short_socket(tmp_path)], tmp_path) as agent:
        tracker = ExperimentTracker(agent=agent.url, capture_environment=False)
        tracker.start_experiment("full-disk")
        tracker.flush()
        quiet = len(problem_lines(agent.log()))
        fill_disk(agent)
        for step in range(n):
            tracker.log_metric("loss", float(step), step=step)
        wait_for_log(agent, "cannot write")
        during = tracker.status()
        assert during["written"] < n and during["rejected"] == during["lost"] == 0, during
        free_disk(agent)
        tracker.flush(timeout=WAIT)
        after = tracker.status()
        tracker.end_experiment()
        ml_persistence.shutdown(timeout=30)
        assert agent.stop() == 0, agent.log()
    print(f"agent log:\n{agent.log()}\nduring: {during}\nafter: {after}")
    assert steps(agent.db) == list(range(n))  # each once, in logging order
    assert after["written"] == n and after["rejected"] == after["lost"] == after["dropped"] == 0, after
    assert len(problem_lines(agent.log())) - quiet < 10, agent.log()


def test_events_the_database_refuses_are_not_counted_written(tmp_path: Path) -> None:
    db = str(tmp_path / "agent.db")
    conn = schema.connect(db)
    conn.execute(
        "CREATE TRIGGER poison BEFORE INSERT ON metrics WHEN NEW.metric_name = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poisoned metric'); END"
    )
    conn.close()
    with AgentProcess(db, [short_socket(tmp_path)], tmp_path) as agent:
        tracker = ExperimentTracker(agent=agent.url, capture_environment=False)
        tracker.start_experiment("poison")
        for step in range(100):
            tracker.log_metric("good", float(step), step=step)
            if step == 50:
                tracker.log_metric("poison", 1.0, step=step)
        with pytest.raises(ml_persistence.WriterError, match="1 refused"):
            tracker.flush(timeout=WAIT)
        status = tracker.status()
        tracker.end_experiment()
        ml_persistence.shutdown(timeout=30)
        assert agent.stop() == 0, agent.log()
    assert rows(db, "SELECT COUNT(*) FROM metrics") == [(100,)]
    assert status["written"] == 100 and status["rejected"] == 1, status


TRAINER = """\
import json, sys
from ml_persistence import ExperimentTracker
t = ExperimentTracker(agent=sys.argv[1], capture_environment=False)
t.start_experiment("exits-on-a-full-disk")
t.flush()
print("started", flush=True)
sys.stdin.readline()  # the agent's disk is full now
for step in range({n}):
    t.log_metric("loss", float(step), step=step)
print("logged", json.dumps(t.status()), flush=True)
# the script ends with the agent unable to write: the exit deadline passes
"""


def test_a_trainer_exiting_while_the_agent_cannot_write_saves_its_events_and_they_are_stored_once(
    tmp_path: Path,
) -> None:
    n = 70_000  # more than the client's window of 65,536 unacknowledged events: some are never sent
    script = tmp_path / "trainer.py"
    script.write_text(textwrap.dedent(TRAINER.format(n=n)))
    with AgentProcess(str(tmp_path / "agent.db"), [short_socket(tmp_path)], tmp_path) as agent:
        trainer = subprocess.Popen(
            [PYTHON, str(script), agent.url], cwd=tmp_path, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=subprocess_env(ML_PERSISTENCE_EXIT_TIMEOUT="2"),
        )
        assert trainer.stdout is not None and trainer.stdout.readline().startswith("started")
        fill_disk(agent)
        out, err = trainer.communicate("go\n", timeout=WAIT)
        assert trainer.returncode == 0, err
        print(f"trainer stdout:\n{out}\ntrainer stderr:\n{err}")
        logged = json.loads(out.split("logged ", 1)[1])
        assert logged["lost"] == 0
        found = re.search(r"saved to (\S+\.mlrecovery)", err)
        assert found, err
        path = found.group(1)
        assert f"ml-persistence recover {path} --db {agent.db}" in err, err  # the command, naming the agent's database
        assert "lost" not in err, err
        # The agent still holds what it received: once it can write, it stores those; applying the
        # trainer's file then adds only what the agent never had (the file's keys are the client's
        # sequence numbers): each event once.
        free_disk(agent)
        assert agent.stop() == 0, agent.log()
    done = subprocess.run(
        [PYTHON, "-m", "ml_persistence", "recover", path, "--db", agent.db],
        env=subprocess_env(), capture_output=True, text=True, timeout=WAIT, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    print(f"recover: {done.stdout}")
    assert re.search(r": [1-9]\d* events stored", done.stdout), done.stdout  # what never reached the agent
    assert sorted(steps(agent.db)) == list(range(n))
    assert rows(agent.db, "SELECT status FROM experiments") == [("completed",)]  # its end was saved too


def test_what_an_agent_could_not_write_by_its_stop_deadline_is_stored_once_through_the_next_agent(
    tmp_path: Path,
) -> None:
    n = 5000
    agent = AgentProcess(str(tmp_path / "agent.db"), [short_socket(tmp_path)], tmp_path, extra=["--stop-timeout", "1"])
    agent.start()
    try:
        tracker = ExperimentTracker(agent=agent.url, capture_environment=False)
        tracker.start_experiment("outlives-its-agent")
        tracker.flush()
        fill_disk(agent)
        for step in range(n):
            tracker.log_metric("loss", float(step), step=step)
        wait_for_log(agent, "cannot write")
        assert agent.stop() == 0, agent.log()  # the disk is still full: the stop deadline passes
        assert "left unacknowledged" in agent.log(), agent.log()
        assert tracker.status()["written"] <= len(steps(agent.db)) < n  # written never counts what is not stored
        agent.start()  # a new agent, where there is room: the client replays what was not acknowledged
        tracker.flush(timeout=WAIT)
        status = tracker.status()
        tracker.end_experiment()
        ml_persistence.shutdown(timeout=30)
        assert agent.stop() == 0, agent.log()
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill()
    print(f"agent log:\n{agent.log()}\nclient: {status}")
    assert steps(agent.db) == list(range(n))  # each once, in logging order
    assert status["written"] == n and status["lost"] == status["rejected"] == 0, status
