"""Automatic upload: ExperimentTracker(sync_to=...), $ML_PERSISTENCE_SYNC_TO and the agent's --sync-to.

Trainers and agents are real child processes; what reached the target is counted afterwards with
sqlite3 (or psycopg), table by table and metric row by metric row, against the source. An
uploader's exit is awaited on a pidfd; stdout lines and process exits are the only other
synchronisation. GUARD only turns a hang into a failure.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agent_process import AgentProcess, short_socket
from pg import pg_rows
from test_process_lifecycle import GUARD, Child, child_env, db_path, run_script

import ml_persistence
from ml_persistence import ExperimentTracker, InvalidValueError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pidfd, fork and POSIX signals")

TABLES = ("experiments", "hyperparameters", "metrics", "models", "artifacts", "datasets", "experiment_datasets")
N = 2000  # metric steps per trainer, two metrics each
UNREACHABLE = "postgresql://mlp:x@127.0.0.1:1/none"
CLI = Path(sys.executable).with_name("ml-persistence")

TRAINER = """
from ml_persistence import DatasetManager, ModelRegistry

N = int(os.environ["STEPS"])
kwargs = {"sync_to": os.environ["SYNC_TO_ARG"]} if "SYNC_TO_ARG" in os.environ else {}
if os.environ.get("NO_CAPTURE"):
    kwargs["capture_environment"] = False
tracker = ExperimentTracker(**kwargs)
eid = tracker.start_experiment("upload", "ppo", tags=["sync"], metadata={"n": N})
tracker.log_hyperparameters_batch({"lr": 3e-4, "gamma": 0.99, "arch": "mlp"})
datasets = DatasetManager()
train = datasets.register_dataset(name="BTC-USD", version="2023", split_type="train", num_samples=365)
datasets.link_dataset_to_experiment(eid, train, "train")
registry = ModelRegistry()
for step in range(N):
    tracker.log_metrics_batch({"loss": 1.0 / (step + 1), "reward": float(step)}, step=step)
    if step % 500 == 0:
        model = registry.register_model(experiment_id=eid, checkpoint_path=f"m{step}.pth", architecture_type="ppo",
                                        episode_num=step, val_metric=float(step), is_best=step == 0)
tracker.log_metric("val", 0.5, step=N, model_id=model)
tracker.log_artifact("report.txt", artifact_type="report", model_id=model)
say("experiment", eid)
if os.environ.get("HOLD"):
    tracker.flush()
    upload = tracker.status()["upload"]
    say("upload", json.dumps(upload))
    expect("never")  # killed here
"""


# -- what a database holds -------------------------------------------------------------------------


def sqlite_rows(path: str, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path, timeout=GUARD)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def query(db: str, sql: str) -> list[tuple]:
    return pg_rows(db, sql) if db.startswith("postgresql://") else sqlite_rows(db, sql)


def counts(db: str) -> dict[str, int]:
    return {table: query(db, f"SELECT COUNT(*) FROM {table}")[0][0] for table in TABLES}


def metric_keys(db: str) -> Counter:
    """Every metric row as (experiment uuid, name, step, value), counted: duplicates show as counts > 1."""
    found = query(
        db,
        "SELECT e.uuid, m.metric_name, m.step, m.value FROM metrics m JOIN experiments e ON e.id = m.experiment_id",
    )
    return Counter(tuple(r) for r in found)


def assert_uploaded_once(source: str, target: str) -> None:
    """The target holds every row of the source exactly once (it started empty)."""
    assert counts(target) == counts(source)
    keys = metric_keys(target)
    assert keys == metric_keys(source)
    assert max(keys.values(), default=1) == 1
    uuids = query(target, "SELECT uuid FROM experiments")
    assert len(uuids) == len(set(uuids))


def printed_command(stderr: str) -> list[str]:
    """The argv of the `ml-persistence sync ...` command the exit message names."""
    match = re.search(r"upload (?:them|it later) with: (ml-persistence sync .*?)(?: \(the password|$)", stderr, re.M)
    assert match, f"no sync command in stderr:\n{stderr}"
    argv = shlex.split(match.group(1))
    return [str(CLI), *argv[1:]]


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


def train(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return run_script(tmp_path, TRAINER, name="trainer.py", STEPS=str(N), **env)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


# -- construction: checked at once, without connecting ----------------------------------------------


def test_sync_to_is_checked_when_the_tracker_is_made(db_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in (db_path, "ml_experiments.db", ":memory:", "file:x.db?mode=memory", str(tmp_path / "no" / "such.db"), str(tmp_path)):
        with pytest.raises(InvalidValueError):
            ExperimentTracker(db_path, sync_to=bad)
    with pytest.raises(InvalidValueError, match="--sync-to"):
        ExperimentTracker(agent="unix:///nonexistent/a.sock", sync_to=str(tmp_path / "t.db"))
    monkeypatch.setenv("ML_PERSISTENCE_SYNC_TO", str(tmp_path / "no" / "such.db"))  # the environment is checked too
    with pytest.raises(InvalidValueError):
        ExperimentTracker(db_path)
    monkeypatch.setenv("ML_PERSISTENCE_SYNC_TO", db_path)  # set for every job; this one writes there itself
    assert ExperimentTracker(db_path).status()["upload"] is None
    tracker = ExperimentTracker(db_path, sync_to="")  # the argument wins; empty means off
    assert tracker.status()["upload"] is None
    monkeypatch.setenv("ML_PERSISTENCE_SYNC_TO", "")
    assert ExperimentTracker(db_path).status()["upload"] is None
    ExperimentTracker(db_path, sync_to=UNREACHABLE)  # a URL: nothing is connected to yet


def test_an_uploader_starts_with_the_first_experiment_and_reports_in_status(db_path: str, tmp_path: Path) -> None:
    target = str(tmp_path / "team.db")
    tracker = ExperimentTracker(db_path, sync_to=target)
    assert tracker.status()["upload"] is None  # constructing starts nothing
    tracker.start_experiment("a")
    tracker.log_metrics_batch({"x": 1.0}, step=0)
    first = tracker.status()["upload"]
    assert first["target"] == target and first["pid"] is not None
    tracker.end_experiment()
    tracker.start_experiment("b")  # one uploader per (database, target) per process
    assert tracker.status()["upload"]["pid"] == first["pid"]
    tracker.end_experiment()
    tracker.close()  # the last tracker using it, nothing running: its final pass, then it exits
    wait_for_exit(first["pid"])
    ml_persistence.shutdown()
    assert_uploaded_once(db_path, target)


def test_the_uploader_runs_at_a_lower_cpu_priority_than_its_trainer(db_path: str, tmp_path: Path) -> None:
    tracker = ExperimentTracker(db_path, sync_to=str(tmp_path / "team.db"))
    tracker.start_experiment("a")
    deadline = time.monotonic() + GUARD
    while (upload := tracker.status()["upload"])["state"] == "starting":  # its state file comes after the priority
        assert time.monotonic() < deadline, upload
        time.sleep(0.01)
    assert os.getpriority(os.PRIO_PROCESS, upload["pid"]) == min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)
    tracker.end_experiment()
    tracker.close()
    ml_persistence.shutdown()


def test_passwords_reach_the_uploader_through_its_environment_only(
    db_path: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from ml_persistence import upload

    started: list[tuple[list[str], dict[str, str]]] = []
    popen = subprocess.Popen

    def recording(args: list[str], *rest: object, **kwargs: object) -> subprocess.Popen:
        if "--exit-with-fd" in args and "sync" in args:  # the uploader (the module is shared: others start processes too)
            started.append((list(args), dict(kwargs["env"])))  # type: ignore[arg-type]
        return popen(args, *rest, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(upload.subprocess, "Popen", recording)
    monkeypatch.setenv("ML_PERSISTENCE_SYNC_EXIT_TIMEOUT", "1")
    target = "postgresql://mlp:s3cret-pw@127.0.0.1:1/none"
    tracker = ExperimentTracker(db_path, sync_to=target)
    eid = tracker.start_experiment("a")
    pid = tracker.status()["upload"]["pid"]
    [(argv, environ)] = started
    assert "s3cret-pw" not in " ".join(argv)
    assert argv[argv.index("sync") + 1:][:2] == [os.path.realpath(db_path), "postgresql://mlp@127.0.0.1:1/none"]
    assert environ["PGPASSWORD"] == "s3cret-pw"
    tracker.end_experiment()
    tracker.close()  # it cannot reach the target: one message, and the uploader is stopped
    err = capfd.readouterr().err
    message = [line for line in err.splitlines() if line.startswith("ml_persistence:")]
    assert len(message) == 1 and f"experiment(s) {eid} were not fully uploaded to" in message[0], err
    assert "s3cret-pw" not in err
    wait_for_exit(pid)


def test_two_passwords_go_to_a_private_password_file(tmp_path: Path) -> None:
    from ml_persistence import upload

    uploader = upload.Uploader(
        "postgresql://alice:pw-a@db1:5433/runs", "postgresql://bob:p%3Aw@db2/team", owner_pid=None, final_timeout=1
    )
    directory = tmp_path / "private"
    directory.mkdir(mode=0o700)
    env = uploader._environment(str(directory))
    assert "PGPASSWORD" not in env
    path = Path(env["PGPASSFILE"])
    assert path.parent == directory and path.stat().st_mode & 0o777 == 0o600
    lines = path.read_text().splitlines()
    assert lines[:2] == ["db1:5433:runs:alice:pw-a", "db2:*:team:bob:p\\:w"]


# -- trainers in real processes ---------------------------------------------------------------------


def test_a_trainer_uploads_every_row_exactly_once_to_sqlite(tmp_path: Path) -> None:
    target = str(tmp_path / "team.db")
    done = ok(train(tmp_path, SYNC_TO_ARG=target))
    assert "not uploaded" not in done.stderr and "ml-persistence" not in done.stderr, done.stderr  # silent on success
    source = str(db_path(tmp_path))
    assert_uploaded_once(source, target)
    assert query(target, "SELECT status FROM experiments") == [("completed",)]
    # A later sync finds nothing left to copy.
    again = subprocess.run([str(CLI), "sync", source, target], env=child_env(tmp_path), capture_output=True, text=True, timeout=GUARD)
    assert again.returncode == 0, again.stderr
    assert_uploaded_once(source, target)


def test_the_environment_variable_turns_upload_on(tmp_path: Path) -> None:
    target = str(tmp_path / "from-env.db")
    ok(train(tmp_path, ML_PERSISTENCE_SYNC_TO=target))
    assert_uploaded_once(str(db_path(tmp_path)), target)


def test_a_trainer_that_captures_no_environment_still_uploads_its_runs(tmp_path: Path) -> None:
    # The uploader picks this process's runs by their recorded pid and host, which are kept without the capture.
    target = str(tmp_path / "team.db")
    ok(train(tmp_path, SYNC_TO_ARG=target, NO_CAPTURE="1"))
    source = str(db_path(tmp_path))
    assert query(source, "SELECT git_commit, packages FROM experiments") == [(None, None)]
    assert_uploaded_once(source, target)


def test_an_empty_argument_turns_the_environment_off(tmp_path: Path) -> None:
    target = tmp_path / "from-env.db"
    ok(train(tmp_path, ML_PERSISTENCE_SYNC_TO=str(target), SYNC_TO_ARG=""))
    assert not target.exists()


def test_a_trainer_uploads_to_postgresql(tmp_path: Path, pg_db: str) -> None:
    done = ok(train(tmp_path, SYNC_TO_ARG=pg_db))
    assert "not uploaded" not in done.stderr, done.stderr
    password = re.search(r"://[^:/@]+:([^@]+)@", pg_db)
    if password:
        assert password.group(1) not in done.stderr
    assert_uploaded_once(str(db_path(tmp_path)), pg_db)


def test_an_unreachable_target_never_holds_training_back(tmp_path: Path) -> None:
    done = ok(train(tmp_path, SYNC_TO_ARG=UNREACHABLE, ML_PERSISTENCE_SYNC_EXIT_TIMEOUT="3"))
    lines = [line for line in done.stderr.splitlines() if "upload" in line and "ml-persistence sync" in line]
    assert len(lines) == 1, done.stderr  # one message, naming the command
    assert "postgresql://mlp@127.0.0.1:1/none" in lines[0] and ":x@" not in done.stderr
    argv = printed_command(done.stderr)
    assert argv[2:] == [str(db_path(tmp_path)), "postgresql://mlp@127.0.0.1:1/none"]
    assert counts(str(db_path(tmp_path)))["metrics"] == 2 * N + 1  # the local writes are all there


def test_the_printed_command_uploads_what_was_left_exactly_once(tmp_path: Path, postgres_url: str) -> None:
    """The target database does not exist while the trainer runs; once it does, the printed command fills it."""
    from pg import drop_database, with_database

    name = f"mlp_t_upload_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    target = with_database(postgres_url, name)
    done = ok(train(tmp_path, SYNC_TO_ARG=target, ML_PERSISTENCE_SYNC_EXIT_TIMEOUT="3"))
    argv = printed_command(done.stderr)
    password = re.search(r"://[^:/@]+:([^@]+)@", postgres_url)
    if password:
        assert password.group(1) not in " ".join(argv)
    pg_rows(postgres_url, f'CREATE DATABASE "{name}"')
    try:
        env = child_env(tmp_path, PGPASSWORD=password.group(1) if password else os.environ.get("PGPASSWORD", ""))
        for _ in range(2):  # twice: the second copies nothing
            run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=GUARD)
            assert run.returncode == 0, run.stderr
            assert_uploaded_once(str(db_path(tmp_path)), target)
    finally:
        drop_database(postgres_url, name)


def test_a_killed_trainers_uploader_makes_its_final_pass_and_exits(tmp_path: Path) -> None:
    target = str(tmp_path / "team.db")
    child = Child(tmp_path, TRAINER, name="trainer.py", STEPS=str(N), HOLD="1", SYNC_TO_ARG=target,
                  ML_PERSISTENCE_SYNC_EXIT_TIMEOUT="2")
    try:
        child.read_line("experiment")
        upload = json.loads(child.read_line("upload"))
        pid = upload["pid"]
        assert pid is not None
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        private = Path(argv[argv.index(b"--private-dir") + 1].decode())
        assert private.is_dir()
        child.proc.kill()  # SIGKILL: no exit hook runs; the lifeline pipe reads end-of-file
        child.proc.wait(GUARD)
        wait_for_exit(pid)
    finally:
        child.close()
    assert not private.exists(), "an orphaned uploader leaves its private directory behind"
    source = str(db_path(tmp_path))
    assert metric_keys(target) == metric_keys(source)  # everything committed before the kill, once
    run = subprocess.run([str(CLI), "sync", source, target], env=child_env(tmp_path), capture_output=True, text=True, timeout=GUARD)
    assert run.returncode == 0, run.stderr
    assert_uploaded_once(source, target)


FORKING = """
import multiprocessing
target = os.environ["TARGET"]

def child_run():
    tracker = ExperimentTracker(sync_to=target)
    eid = tracker.start_experiment("child")
    for step in range(500):
        tracker.log_metrics_batch({"c": float(step)}, step=step)
    say("child", eid, tracker.status()["upload"]["pid"])

tracker = ExperimentTracker(sync_to=target)
eid = tracker.start_experiment("parent")
for step in range(500):
    tracker.log_metrics_batch({"p": float(step)}, step=step)
parent_pid = tracker.status()["upload"]["pid"]
process = multiprocessing.get_context("fork").Process(target=child_run)
process.start()
process.join()
say("parent", eid, parent_pid, process.exitcode)
"""


def test_a_forked_child_uploads_its_own_run_through_its_own_uploader(tmp_path: Path) -> None:
    target = str(tmp_path / "team.db")
    done = ok(run_script(tmp_path, FORKING, name="forking.py", TARGET=target))
    said = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    assert said["parent"][2] == "0"
    assert said["child"][1] != said["parent"][1]  # not the parent's uploader
    assert "not uploaded" not in done.stderr, done.stderr
    assert_uploaded_once(str(db_path(tmp_path)), target)
    assert sorted(query(target, "SELECT name, status FROM experiments")) == [("child", "completed"), ("parent", "completed")]


# -- the agent --------------------------------------------------------------------------------------


def test_an_agent_with_sync_to_uploads_what_it_writes(tmp_path: Path) -> None:
    source = str(db_path(tmp_path))
    target = str(tmp_path / "team.db")
    agent = AgentProcess(source, [short_socket(tmp_path)], tmp_path, extra=["--sync-to", target])
    with agent:
        for _ in range(2):  # two trainers, one after the other
            ok(train(tmp_path, ML_PERSISTENCE_AGENT=agent.url))
        assert agent.stop() == 0
    assert "not uploaded" not in agent.log(), agent.log()
    assert_uploaded_once(source, target)
    assert query(target, "SELECT COUNT(*) FROM experiments") == [(2,)]


def test_an_agent_refuses_a_sync_target_that_is_its_own_database(tmp_path: Path) -> None:
    source = str(db_path(tmp_path))
    agent = AgentProcess(source, [short_socket(tmp_path)], tmp_path, extra=["--sync-to", source])
    with pytest.raises(RuntimeError, match="sync_to"):
        agent.start()
    assert agent.proc is not None and agent.proc.wait(GUARD) == 2
