"""The agent with real processes: trainer subprocesses talk to a real agent subprocess.

Trainers are small scripts run with this checkout on PYTHONPATH, ML_PERSISTENCE_AGENT set to
the agent's URL, no ML_PERSISTENCE_DB and an empty working directory of their own: every row
they log can only reach the database through the agent. What landed is checked with the stdlib
``sqlite3`` module once the agent has stopped.

Synchronisation is by the trainers' stdout lines, the test's commands on their stdin, the
agent's ready line and process exits. A trainer may wait on its own client's state (a poll of
``tracker.status()``); the test never sleeps. Timeouts (``GUARD``) only turn a hang into a failure.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from agent_process import AgentProcess, short_socket
from conftest import PYTHON, rows, subprocess_env

GUARD = 60.0  # seconds: a hang guard, never a synchronisation device

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets, POSIX signals and fork")


# -- helpers ---------------------------------------------------------------------------------------

PRELUDE = """\
import json, os, signal, sys, threading, time
import ml_persistence
from ml_persistence import AgentError, AgentRefusedError, DatasetManager, ExperimentTracker, MetricsLogger, ModelRegistry

def say(*parts):
    print(*parts, flush=True)

def expect(word):
    got = sys.stdin.readline().strip()
    assert got == word, f"expected {word!r} on stdin, got {got!r}"

def until(predicate):
    # The trainer waiting on its own client's state (the sender thread moves it on).
    while not predicate():
        time.sleep(0.002)
"""


class Trainer:
    """A trainer subprocess in agent mode: stdout read line by line (hang guard), commands on stdin."""

    def __init__(self, tmp_path: Path, name: str, body: str, url: str | None, **env: str) -> None:
        self.name = name
        scripts = tmp_path / "scripts"
        scripts.mkdir(exist_ok=True)
        self.script = scripts / f"{name}.py"
        self.script.write_text(PRELUDE + textwrap.dedent(body))
        self.cwd = tmp_path / f"cwd-{name}"  # empty: there is no database to find here
        self.cwd.mkdir()
        self.stderr_path = tmp_path / f"{name}.stderr"
        child_env = subprocess_env(PYTHONUNBUFFERED="1")
        child_env.pop("ML_PERSISTENCE_DB", None)
        child_env.pop("ML_PERSISTENCE_EXIT_TIMEOUT", None)
        child_env.update(env)
        if url is not None:
            child_env["ML_PERSISTENCE_AGENT"] = url
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [PYTHON, str(self.script)],
                cwd=self.cwd,
                env=child_env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
            )
        self.stdout: list[str] = []
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.stdout.append(line)
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def describe(self) -> str:
        return f"trainer {self.name}\nstdout:\n{''.join(self.stdout)}\nstderr:\n{self.stderr}"

    def line(self, prefix: str) -> str:
        """Return the rest of the next stdout line starting with ``prefix``; fail on exit or hang."""
        deadline = time.monotonic() + GUARD
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                pytest.fail(f"no {prefix!r} line within {GUARD} s from {self.describe()}")
            if line is None:
                code = self.proc.wait(GUARD)
                pytest.fail(f"exited ({code}) before printing {prefix!r}: {self.describe()}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def json(self, prefix: str) -> Any:
        return json.loads(self.line(prefix))

    def send(self, word: str) -> None:
        self.proc.stdin.write(word + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def wait(self) -> int:
        """Wait for exit (hang guard) and return the exit status."""
        try:
            code = self.proc.wait(GUARD)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"did not exit within {GUARD} s: {self.describe()}")
        self._reader.join(GUARD)
        return code

    def kill(self, sig: int = signal.SIGKILL) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(GUARD)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(GUARD)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except (OSError, ValueError):
                pass


@pytest.fixture
def procs():
    """Start trainers and agents through this; whatever is still running at the end is killed."""

    class Procs:
        def __init__(self) -> None:
            self.trainers: list[Trainer] = []
            self.agents: list[AgentProcess] = []

        def trainer(self, tmp_path: Path, name: str, body: str, url: str | None, **env: str) -> Trainer:
            trainer = Trainer(tmp_path, name, body, url, **env)
            self.trainers.append(trainer)
            return trainer

        def agent(self, db: str, listen: list[str], workdir: Path, extra: tuple = (), **env: str) -> AgentProcess:
            agent = AgentProcess(db, listen, workdir, extra, **env)
            self.agents.append(agent)
            return agent.start()

    p = Procs()
    yield p
    for trainer in p.trainers:
        trainer.close()
    for agent in p.agents:
        if agent.proc is not None:
            if agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait(GUARD)
            if agent.proc.stdout is not None:
                agent.proc.stdout.close()


def check_exit(trainer: Trainer, expected: int = 0) -> None:
    code = trainer.wait()
    assert code == expected, f"exit status {code}, expected {expected}: {trainer.describe()}"


def steps_of(db: str, experiment_id: int, metric: str) -> list[int]:
    """Every stored step of one metric (duplicates kept: they are what we look for)."""
    return [r[0] for r in rows(db, "SELECT step FROM metrics WHERE experiment_id = ? AND metric_name = ?", (experiment_id, metric))]


def assert_exactly_once(db: str, experiment_id: int, metric: str, expected: range, note: str = "") -> None:
    steps = steps_of(db, experiment_id, metric)
    missing = sorted(set(expected) - set(steps))
    duplicated = len(steps) - len(set(steps))
    extra = sorted(set(steps) - set(expected))
    assert len(steps) == len(expected) and not missing and not duplicated and not extra, (
        f"experiment {experiment_id} {metric}: {len(steps)} rows for {len(expected)} logged; "
        f"{len(missing)} missing (first {missing[:5]}), {duplicated} duplicated, {len(extra)} unexpected\n{note}"
    )


def status_of(db: str, experiment_id: int) -> str:
    return rows(db, "SELECT status FROM experiments WHERE id = ?", (experiment_id,))[0][0]


# -- 1: many trainers through one agent ------------------------------------------------------------

N_MANY = 2000
TRAINERS = 8


def test_eight_trainers_through_one_agent_land_every_row_exactly_once(tmp_path: Path, procs) -> None:
    db = str(tmp_path / "agent.db")
    agent = procs.agent(db, [short_socket(tmp_path)], tmp_path)
    body = f"""
    worker = int(os.environ["WORKER"])
    tracker = ExperimentTracker()
    exp = tracker.start_experiment(f"worker-{{worker}}", experiment_type="rl", tags=["many"], random_seed=worker)
    tracker.log_hyperparameters_batch({{"learning_rate": 3e-4, "worker": worker, "clip": 0.2}})
    for step in range({N_MANY}):
        tracker.log_metrics_batch({{"reward": step * 0.5, "loss": 1.0 / (step + 1)}}, step=step)
    model = ModelRegistry().register_model(exp, f"/ckpt/worker-{{worker}}.pt", architecture_type="ppo",
                                           val_metric=float(worker), is_best=True)
    tracker.end_experiment()
    say("done", json.dumps({{"exp": exp, "model": model, "status": tracker.status()}}))
    """
    trainers = [procs.trainer(tmp_path, f"worker-{i}", body, agent.url, WORKER=str(i)) for i in range(TRAINERS)]
    results = [t.json("done") for t in trainers]
    for t in trainers:
        check_exit(t)
    assert agent.stop() == 0, agent.log()

    ids = sorted(r["exp"] for r in results)
    assert len(set(ids)) == TRAINERS
    assert rows(db, "SELECT COUNT(*) FROM experiments") == [(TRAINERS,)]
    assert rows(db, "SELECT DISTINCT status FROM experiments") == [("completed",)]
    for i, result in enumerate(results):
        exp = result["exp"]
        assert rows(db, "SELECT name FROM experiments WHERE id = ?", (exp,)) == [(f"worker-{i}",)]
        for metric in ("reward", "loss"):
            assert_exactly_once(db, exp, metric, range(N_MANY))
        assert rows(db, "SELECT COUNT(*) FROM metrics WHERE experiment_id = ?", (exp,)) == [(2 * N_MANY,)]
        params = dict(rows(db, "SELECT param_name, param_value FROM hyperparameters WHERE experiment_id = ?", (exp,)))
        assert params == {"learning_rate": "0.0003", "worker": str(i), "clip": "0.2"}
        assert rows(db, "SELECT id, checkpoint_path FROM models WHERE experiment_id = ?", (exp,)) == [
            (result["model"], f"/ckpt/worker-{i}.pt")
        ]
        status = result["status"]
        assert status["mode"] == "agent" and status["lost"] == 0 and status["dropped"] == 0, status
    for t in trainers:
        assert os.listdir(t.cwd) == [], f"{t.name} wrote into its working directory"


# -- 2: the agent is SIGKILLed and restarted while a trainer logs ----------------------------------

N_FIRST = 2000  # logged and flushed before the kill
N_BURST = 20000  # logged just before the kill, not flushed: in flight when the agent dies
N_DOWN = 5000  # logged while no agent runs


def test_agent_sigkill_and_restart_loses_nothing_and_duplicates_nothing(tmp_path: Path, procs) -> None:
    db = str(tmp_path / "agent.db")
    url = short_socket(tmp_path)
    agent = procs.agent(db, [url], tmp_path)
    trainer = procs.trainer(
        tmp_path,
        "survivor",
        f"""
        tracker = ExperimentTracker()
        exp = tracker.start_experiment("survivor")
        step = 0
        for _ in range({N_FIRST}):
            tracker.log_metrics_batch({{"reward": float(step)}}, step=step); step += 1
        tracker.flush()
        say("first", exp)
        expect("burst")
        for _ in range({N_BURST}):
            tracker.log_metrics_batch({{"reward": float(step)}}, step=step); step += 1
        say("burst")
        expect("down")
        took = []
        clock = time.perf_counter_ns
        for _ in range({N_DOWN}):
            t0 = clock()
            tracker.log_metrics_batch({{"reward": float(step)}}, step=step)
            took.append(clock() - t0)
            step += 1
        took.sort()
        say("logged", json.dumps({{"max_call_us": took[-1] / 1000, "p50_us": took[len(took) // 2] / 1000,
                                   "p99_us": took[len(took) * 99 // 100] / 1000, "status": tracker.status()}}))
        expect("finish")
        tracker.flush()
        say("status", json.dumps(tracker.status()))
        tracker.end_experiment()
        """,
        agent.url,
    )
    exp = int(trainer.line("first"))
    trainer.send("burst")
    trainer.line("burst")
    assert agent.kill() == -signal.SIGKILL
    trainer.send("down")
    logged = trainer.json("logged")
    print(
        f"\nlog_metrics_batch while the agent was down ({N_DOWN} calls): max {logged['max_call_us']:.1f} µs, "
        f"p50 {logged['p50_us']:.1f} µs, p99 {logged['p99_us']:.1f} µs (status then: {logged['status']})"
    )
    agent.start()  # same database, same socket path; the stale socket file is replaced
    trainer.send("finish")
    status = trainer.json("status")
    print(f"client status after the restart and flush: {status}")
    check_exit(trainer)
    assert agent.stop() == 0, agent.log()

    assert status["reconnects"] >= 1, status
    assert status["lost"] == 0 and status["dropped"] == 0 and status["queued"] == 0, status
    assert_exactly_once(db, exp, "reward", range(N_FIRST + N_BURST + N_DOWN))
    assert status_of(db, exp) == "completed"


# -- 3: a trainer SIGKILLed after its events were sent ---------------------------------------------

N_SENT = 3000


def test_trainer_sigkilled_after_sending_keeps_what_it_sent(tmp_path: Path, procs) -> None:
    db = str(tmp_path / "agent.db")
    agent = procs.agent(db, [short_socket(tmp_path)], tmp_path)
    trainer = procs.trainer(
        tmp_path,
        "victim",
        f"""
        tracker = ExperimentTracker()
        exp = tracker.start_experiment("victim")
        for step in range({N_SENT}):
            tracker.log_metrics_batch({{"loss": 1.0 / (step + 1)}}, step=step)
        until(lambda: tracker.status()["sent"] >= {N_SENT})  # no flush
        say("sent", exp)
        expect("never")
        """,
        agent.url,
    )
    exp = int(trainer.line("sent"))
    assert trainer.kill() == -signal.SIGKILL
    assert agent.stop(signal.SIGTERM) == 0, agent.log()
    assert_exactly_once(db, exp, "loss", range(N_SENT), f"agent log:\n{agent.log()}")
    assert status_of(db, exp) == "running"  # nobody ended it: the trainer was killed


# -- 4: agent SIGTERM / SIGINT with a connected trainer that has not flushed -----------------------

N_TERM = 3000


def test_agent_sigterm_and_sigint_exit_zero_after_committing_what_they_received(tmp_path: Path, procs) -> None:
    db = str(tmp_path / "agent.db")
    url = short_socket(tmp_path)
    agent = procs.agent(db, [url], tmp_path)
    trainer = procs.trainer(
        tmp_path,
        "unflushed",
        f"""
        tracker = ExperimentTracker()
        exp = tracker.start_experiment("unflushed")
        for step in range({N_TERM}):
            tracker.log_metrics_batch({{"loss": float(step)}}, step=step)
        until(lambda: tracker.status()["sent"] >= {N_TERM})  # no flush
        say("sent", exp)
        expect("gone")
        until(lambda: tracker.status()["reconnects"] >= 1)  # it has read all the agent sent before closing
        say("after-term", json.dumps(tracker.status()))
        expect("more")
        for step in range({N_TERM}, 2 * {N_TERM}):
            tracker.log_metrics_batch({{"loss": float(step)}}, step=step)
        until(lambda: tracker.status()["sent"] >= 2 * {N_TERM})  # no flush
        say("sent-again")
        expect("gone")
        until(lambda: tracker.status()["reconnects"] >= 2)
        say("after-int", json.dumps(tracker.status()))
        expect("end")
        tracker.end_experiment()
        """,
        agent.url,
    )
    exp = int(trainer.line("sent"))
    assert agent.stop(signal.SIGTERM) == 0, agent.log()
    committed_at_term = len(steps_of(db, exp, "loss"))
    trainer.send("gone")
    after_term = trainer.json("after-term")
    print(f"\nSIGTERM: {committed_at_term} of {N_TERM} sent events committed; client then: {after_term}")
    assert "0 lost" in agent.log(), agent.log()
    # Every event the agent committed was acknowledged before it closed the connection ...
    assert after_term["written"] == committed_at_term, after_term
    # ... and it committed everything the trainer had sent.
    assert_exactly_once(db, exp, "loss", range(N_TERM), f"client: {after_term}\nagent log:\n{agent.log()}")

    agent.start()
    trainer.send("more")
    trainer.line("sent-again")
    assert agent.stop(signal.SIGINT) == 0, agent.log()
    committed_at_int = len(steps_of(db, exp, "loss"))
    trainer.send("gone")
    after_int = trainer.json("after-int")
    print(f"SIGINT: {committed_at_int} of {2 * N_TERM} events committed; client then: {after_int}")
    assert after_int["written"] == committed_at_int, after_int
    assert_exactly_once(db, exp, "loss", range(2 * N_TERM))
    agent.start()
    trainer.send("end")
    check_exit(trainer)
    assert agent.stop() == 0, agent.log()
    assert_exactly_once(db, exp, "loss", range(2 * N_TERM))
    assert status_of(db, exp) == "completed"


# -- 5: socket permissions -------------------------------------------------------------------------


def test_default_socket_is_private_and_explicit_socket_is_0600(tmp_path: Path, procs) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="xdg-"))  # short: AF_UNIX paths are limited to ~107 bytes
    try:
        os.chmod(runtime, 0o755)
        db = str(tmp_path / "agent.db")
        agent = procs.agent(db, [], tmp_path, XDG_RUNTIME_DIR=str(runtime))
        sock = runtime / "ml_persistence" / "agent.sock"
        assert agent.url == f"unix://{sock}"
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
        assert stat.S_IMODE(os.lstat(sock.parent).st_mode) == 0o700
        # A trainer with the same XDG_RUNTIME_DIR finds it through ML_PERSISTENCE_AGENT=default.
        trainer = procs.trainer(
            tmp_path,
            "default-socket",
            """
            tracker = ExperimentTracker()
            exp = tracker.start_experiment("default-socket")
            tracker.log_metric("loss", 1.0, step=0)
            tracker.end_experiment()
            say("exp", exp)
            """,
            "default",
            XDG_RUNTIME_DIR=str(runtime),
        )
        exp = int(trainer.line("exp"))
        check_exit(trainer)
        assert agent.stop() == 0, agent.log()
        assert not sock.exists(), "the agent left its socket file behind"
        assert steps_of(db, exp, "loss") == [0]

        # An existing runtime directory others can read is made private again.
        os.chmod(sock.parent, 0o755)
        agent = procs.agent(db, [], tmp_path, XDG_RUNTIME_DIR=str(runtime))
        assert stat.S_IMODE(os.lstat(sock.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
        assert agent.stop() == 0, agent.log()
    finally:
        import shutil

        shutil.rmtree(runtime, ignore_errors=True)

    explicit = short_socket(tmp_path, "explicit.sock")
    path = Path(explicit[len("unix://") :])
    old = os.umask(0o000)  # the agent must not rely on a strict umask
    try:
        agent = procs.agent(str(tmp_path / "agent.db"), [explicit], tmp_path)
    finally:
        os.umask(old)
    assert agent.url == explicit
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert agent.stop() == 0, agent.log()


# -- 6: tokens -------------------------------------------------------------------------------------

REFUSED_TRAINER = """
tracker = ExperimentTracker()
try:
    tracker.start_experiment("intruder-" + os.environ.get("ML_PERSISTENCE_TOKEN", "none"))
except AgentRefusedError as exc:
    say("refused", json.dumps({"permission": isinstance(exc, PermissionError), "message": str(exc)}))
else:
    say("accepted")
try:
    DatasetManager().register_dataset("intruder-data", "1")
except AgentRefusedError:
    say("refused-again")
"""


def free_port() -> int:
    """A TCP port nobody listens on right now (for agents, while port 0 is refused: see below)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_token_is_required_and_checked(tmp_path: Path, procs) -> None:
    db = str(tmp_path / "agent.db")
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-4711-0123456789\n")
    token_file.chmod(0o600)
    agent = procs.agent(db, [f"tcp://127.0.0.1:{free_port()}"], tmp_path, ("--token-file", str(token_file)))

    good = procs.trainer(
        tmp_path,
        "good-token",
        """
        tracker = ExperimentTracker()
        exp = tracker.start_experiment("good")
        for step in range(500):
            tracker.log_metric("loss", float(step), step=step)
        tracker.end_experiment()
        say("exp", exp)
        """,
        agent.url,
        ML_PERSISTENCE_TOKEN="s3cret-token-4711-0123456789",
    )
    # A refusal must come back as AgentRefusedError at once, not as the request timeout: with the
    # timeout this long, waiting for it would trip the test's hang guard instead.
    wrong = procs.trainer(
        tmp_path, "wrong-token", REFUSED_TRAINER, agent.url, ML_PERSISTENCE_TOKEN="guess", ML_PERSISTENCE_AGENT_TIMEOUT="600"
    )
    missing = procs.trainer(tmp_path, "no-token", REFUSED_TRAINER, agent.url, ML_PERSISTENCE_AGENT_TIMEOUT="600")
    exp = int(good.line("exp"))
    for trainer in (wrong, missing):
        refusal = trainer.json("refused")
        assert refusal["permission"] is True, refusal
        assert "token" in refusal["message"], refusal
        trainer.line("refused-again")
        check_exit(trainer)
    check_exit(good)
    assert agent.stop() == 0, agent.log()
    assert rows(db, "SELECT id, name, status FROM experiments") == [(exp, "good", "completed")]
    assert_exactly_once(db, exp, "loss", range(500))
    assert rows(db, "SELECT COUNT(*) FROM datasets") == [(0,)]
    assert len(rows(db, "SELECT client_id FROM agent_clients")) == 1  # the good trainer's: refused ones left nothing

    # Off loopback a token is mandatory ...
    done = subprocess.run(
        [PYTHON, "-m", "agent", "--db", db, "--listen", f"tcp://0.0.0.0:{free_port()}"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=GUARD,
        check=False,
    )
    assert done.returncode != 0, done
    assert "ready" not in done.stdout
    assert "token" in done.stderr, done.stderr
    # ... and with one the agent starts.
    agent = procs.agent(db, [f"tcp://0.0.0.0:{free_port()}"], tmp_path, ("--token-file", str(token_file)))
    assert agent.stop() == 0, agent.log()


def test_agent_on_tcp_port_zero_reports_the_port_it_bound(tmp_path: Path, procs) -> None:
    db = str(tmp_path / "agent.db")
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-4711-0123456789\n")
    token_file.chmod(0o600)
    agent = procs.agent(db, ["tcp://127.0.0.1:0"], tmp_path, ("--token-file", str(token_file)))
    assert agent.url.startswith("tcp://127.0.0.1:") and not agent.url.endswith(":0"), agent.url
    trainer = procs.trainer(
        tmp_path,
        "port-zero",
        """
        tracker = ExperimentTracker()
        exp = tracker.start_experiment("port-zero")
        tracker.log_metric("loss", 1.0, step=0)
        tracker.end_experiment()
        say("exp", exp)
        """,
        agent.url,
        ML_PERSISTENCE_TOKEN="s3cret-token-4711-0123456789",
    )
    exp = int(trainer.line("exp"))
    check_exit(trainer)
    assert agent.stop() == 0, agent.log()
    assert steps_of(db, exp, "loss") == [0]

    done = subprocess.run(
        [PYTHON, "-m", "agent", "--db", db, "--listen", "tcp://0.0.0.0:0"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=GUARD,
        check=False,
    )
    assert done.returncode != 0 and "token" in done.stderr, done.stderr
    agent = procs.agent(db, ["tcp://0.0.0.0:0"], tmp_path, ("--token-file", str(token_file)))
    assert agent.url.startswith("tcp://0.0.0.0:") and not agent.url.endswith(":0"), agent.url
    assert agent.stop() == 0, agent.log()


# -- 7: reads through the agent --------------------------------------------------------------------


def test_reads_through_the_agent_need_no_database_path(tmp_path: Path, procs) -> None:
    db = str(tmp_path / "agent.db")
    agent = procs.agent(db, [short_socket(tmp_path)], tmp_path)
    writer = procs.trainer(
        tmp_path,
        "writer",
        """
        datasets = DatasetManager()
        train = datasets.register_dataset("BTC-USD-Daily", "2023", split_type="train", num_samples=365,
                                          start_date="2023-01-01", end_date="2023-12-31")
        registry = ModelRegistry()
        ids = []
        for run, scale in ((0, 1.0), (1, 2.0)):
            tracker = ExperimentTracker()
            exp = tracker.start_experiment(f"run-{run}", experiment_type="rl", tags=["reads", f"r{run}"])
            tracker.log_hyperparameters_batch({"lr": 1e-3 * scale, "layers": [64, 64]})
            for step in range(10):
                tracker.log_metrics_batch({"train_reward": scale * step, "val_sharpe": scale * step / 10}, step=step)
            datasets.link_dataset_to_experiment(exp, train, "train")
            registry.register_model(exp, f"/ckpt/{run}-a.pt", val_metric=scale, is_best=False)
            best = registry.register_model(exp, f"/ckpt/{run}-b.pt", val_metric=scale / 2, is_best=True)
            tracker.end_experiment(notes=f"run {run}")
            ids.append({"exp": exp, "best": best})
        say("written", json.dumps({"runs": ids, "dataset": train}))
        """,
        agent.url,
    )
    written = writer.json("written")
    check_exit(writer)
    (run0, run1), train = written["runs"], written["dataset"]

    reader = procs.trainer(
        tmp_path,
        "reader",
        f"""
        e0, e1, train = {run0["exp"]}, {run1["exp"]}, {train}
        tracker, registry, metrics, datasets = ExperimentTracker(), ModelRegistry(), MetricsLogger(), DatasetManager()
        out = {{
            "db_path": tracker.db_path,
            "list": [(e["id"], e["name"], e["status"], e["tags"], e["num_checkpoints"]) for e in tracker.list_experiments()],
            "list_tagged": [e["id"] for e in tracker.list_experiments(tags=["r1"])],
            "experiment": {{k: tracker.get_experiment(e0)[k] for k in ("name", "status", "notes", "experiment_type")}},
            "hyperparameters": tracker.get_hyperparameters(e1),
            "best": {{k: registry.get_best_model(e1)[k] for k in ("id", "checkpoint_path", "is_best")}},
            "history": [(h["step"], h["value"], h["split"]) for h in metrics.get_metric_history(e1, "train_reward")],
            "compare": metrics.compare_metrics_across_experiments([e0, e1], "train_reward"),
            "summary": metrics.get_metrics_summary(e0),
            "names": metrics.list_metric_names(e0),
            "dataset": {{k: datasets.get_dataset(train)[k] for k in ("name", "version", "split_type", "num_samples")}},
            "found": datasets.find_dataset("BTC-USD-Daily", "2023", "train")["id"],
            "listed": [d["id"] for d in datasets.list_datasets()],
            "experiment_datasets": [d["id"] for d in datasets.get_experiment_datasets(e0)],
            "dataset_experiments": sorted(e["id"] for e in datasets.get_dataset_experiments(train)),
        }}
        say("read", json.dumps(out))
        """,
        agent.url,
    )
    got = reader.json("read")
    check_exit(reader)
    assert agent.stop() == 0, agent.log()

    e0, e1 = run0["exp"], run1["exp"]
    assert got["db_path"] == agent.url  # the reader never had a database path
    assert got["list"] == [[e1, "run-1", "completed", ["reads", "r1"], 2], [e0, "run-0", "completed", ["reads", "r0"], 2]]
    assert got["list_tagged"] == [e1]
    assert got["experiment"] == {"name": "run-0", "status": "completed", "notes": "run 0", "experiment_type": "rl"}
    assert got["hyperparameters"] == {"lr": 2e-3, "layers": [64, 64]}
    assert got["best"] == {"id": run1["best"], "checkpoint_path": "/ckpt/1-b.pt", "is_best": True}
    assert got["history"] == [[step, 2.0 * step, "train"] for step in range(10)]
    compare = got["compare"]
    assert set(compare) == {str(e0), str(e1)}
    assert compare[str(e0)]["count"] == 10 and compare[str(e0)]["max"] == 9.0 and compare[str(e0)]["mean"] == 4.5
    assert compare[str(e1)]["count"] == 10 and compare[str(e1)]["last"] == 18.0 and compare[str(e1)]["first"] == 0.0
    assert set(got["summary"]) == {"train_reward", "val_sharpe"}, got["summary"]
    assert got["summary"]["val_sharpe"]["count"] == 10
    assert sorted(got["names"]) == ["train_reward", "val_sharpe"]
    assert got["dataset"] == {"name": "BTC-USD-Daily", "version": "2023", "split_type": "train", "num_samples": 365}
    assert got["found"] == train and got["listed"] == [train] and got["experiment_datasets"] == [train]
    assert got["dataset_experiments"] == sorted([e0, e1])
    for trainer in (writer, reader):
        assert os.listdir(trainer.cwd) == [], f"{trainer.name} created files in its working directory"


# -- 8: events logged while the agent is down are kept, spilled past max_queue, then delivered ------

N_SPILL = 5000


def test_events_logged_while_agent_is_down_spill_and_land_after_restart(tmp_path: Path, procs) -> None:
    db = str(tmp_path / "agent.db")
    url = short_socket(tmp_path)
    agent = procs.agent(db, [url], tmp_path)
    trainer = procs.trainer(
        tmp_path,
        "spiller",
        f"""
        ml_persistence.configure(max_queue=50)  # the agent client (ML_PERSISTENCE_AGENT is set)
        tracker = ExperimentTracker()
        exp = tracker.start_experiment("spiller")  # waits for the agent: it is up
        tracker.log_metric("loss", 0.0, step=0)
        tracker.flush()
        say("started", exp)
        expect("log")
        for step in range(1, {N_SPILL} + 1):
            tracker.log_metrics_batch({{"loss": float(step)}}, step=step)
        say("logged", json.dumps(tracker.status()))
        expect("flush")
        tracker.flush()
        say("flushed", json.dumps(tracker.status()))
        tracker.end_experiment()
        """,
        agent.url,
    )
    exp = int(trainer.line("started"))
    assert agent.kill() == -signal.SIGKILL
    trainer.send("log")
    while_down = trainer.json("logged")
    assert while_down["spilled"] > 0, while_down
    assert while_down["queued"] >= N_SPILL, while_down  # every call was kept
    assert while_down["dropped"] == 0, while_down
    assert steps_of(db, exp, "loss") == [0]  # nothing of it could have landed yet
    agent.start()
    trainer.send("flush")
    flushed = trainer.json("flushed")
    check_exit(trainer)
    assert agent.stop() == 0, agent.log()
    print(f"\nwhile down: {while_down}\nafter flush: {flushed}")
    assert flushed["spooled"] == 0 and flushed["queued"] == 0, flushed
    assert flushed["dropped"] == 0 and flushed["lost"] == 0 and flushed["reconnects"] >= 1, flushed
    assert_exactly_once(db, exp, "loss", range(N_SPILL + 1))
    assert status_of(db, exp) == "completed"


# -- 9: how a trainer exits decides the run's status -----------------------------------------------

N_EXIT = 1000


def test_trainer_exit_ends_its_run_through_the_agent(tmp_path: Path, procs) -> None:
    db = str(tmp_path / "agent.db")
    agent = procs.agent(db, [short_socket(tmp_path)], tmp_path)
    start = textwrap.dedent(f"""
    tracker = ExperimentTracker()
    exp = tracker.start_experiment(os.path.basename(sys.argv[0])[:-3])
    for step in range({N_EXIT}):
        tracker.log_metrics_batch({{"loss": float(step)}}, step=step)
    say("exp", exp)
    """)
    normal = procs.trainer(tmp_path, "normal", start + "# no end_experiment(), no flush()\n", agent.url)
    crash = procs.trainer(
        tmp_path,
        "crash",
        start + "\ndef train_step():\n    raise ValueError('exploding gradient 4711')\n\ntrain_step()\n",
        agent.url,
    )
    quits = procs.trainer(tmp_path, "quits", start + "sys.exit(3)\n", agent.url)
    ids = {t.name: int(t.line("exp")) for t in (normal, crash, quits)}
    check_exit(normal, 0)
    check_exit(crash, 1)
    check_exit(quits, 3)
    assert "exploding gradient 4711" in crash.stderr
    assert agent.stop() == 0, agent.log()

    for exp in ids.values():
        assert_exactly_once(db, exp, "loss", range(N_EXIT))
    status = {name: rows(db, "SELECT status, notes, end_time FROM experiments WHERE id = ?", (exp,))[0] for name, exp in ids.items()}
    assert status["normal"][0] == "completed" and not status["normal"][1] and status["normal"][2], status
    assert status["crash"][0] == "failed", status
    assert "ValueError: exploding gradient 4711" in status["crash"][1] and "train_step" in status["crash"][1], status
    assert status["quits"][0] == "failed" and "status 3" in status["quits"][1], status


# -- 10: forked and multiprocessing children in agent mode -----------------------------------------

N_FORK = 1500


def test_forked_and_multiprocessing_children_log_their_own_runs(tmp_path: Path, procs) -> None:
    db = str(tmp_path / "agent.db")
    agent = procs.agent(db, [short_socket(tmp_path)], tmp_path)
    trainer = procs.trainer(
        tmp_path,
        "parent",
        f"""
        import multiprocessing

        def child_run(name, write):
            tracker = ExperimentTracker()
            exp = tracker.start_experiment(name)
            for step in range({N_FORK}):
                tracker.log_metrics_batch({{"loss": float(step)}}, step=step)
            os.write(write, f"{{exp}} {{tracker.status()['client_id']}}\\n".encode())
            # no flush, no end_experiment(): the child's exit hook delivers and ends its run

        def mp_child(write):
            child_run("mp-child", write)

        tracker = ExperimentTracker()
        parent = tracker.start_experiment("parent")
        for step in range({N_FORK}):
            tracker.log_metrics_batch({{"loss": float(step)}}, step=step)  # in flight while we fork

        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                child_run("fork-child", write)
                code = 0
            finally:
                sys.exit(code)  # a normal interpreter exit in the child: its atexit hooks run
        _, code = os.waitpid(pid, 0)
        assert code == 0, code

        process = multiprocessing.get_context("fork").Process(target=mp_child, args=(write,))
        process.start()
        process.join()
        assert process.exitcode == 0, process.exitcode

        with os.fdopen(read) as pipe:
            os.close(write)
            children = [line.split() for line in pipe.read().splitlines()]
        for step in range({N_FORK}, 2 * {N_FORK}):
            tracker.log_metrics_batch({{"loss": float(step)}}, step=step)  # the parent's run goes on
        tracker.end_experiment()
        say("ids", json.dumps({{"parent": [parent, tracker.status()["client_id"]], "children": children}}))
        """,
        agent.url,
    )
    ids = trainer.json("ids")
    check_exit(trainer)
    assert agent.stop() == 0, agent.log()

    parent, parent_client = ids["parent"]
    (fork_exp, fork_client), (mp_exp, mp_client) = [(int(e), c) for e, c in ids["children"]]
    assert len({parent_client, fork_client, mp_client}) == 3  # each process is its own agent client
    assert_exactly_once(db, parent, "loss", range(2 * N_FORK))
    assert_exactly_once(db, fork_exp, "loss", range(N_FORK))
    assert_exactly_once(db, mp_exp, "loss", range(N_FORK))
    got = {name: (status, pid) for name, status, pid in rows(db, "SELECT name, status, pid FROM experiments")}
    assert set(got) == {"parent", "fork-child", "mp-child"}
    assert {s for s, _ in got.values()} == {"completed"}, got
    assert len({pid for _, pid in got.values()}) == 3, got  # started by three different processes
    assert rows(db, "SELECT COUNT(*) FROM experiments") == [(3,)]
