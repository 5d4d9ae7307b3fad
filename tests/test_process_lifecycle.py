"""Process lifecycle, end to end: real child processes, checked through the SQLite file afterwards.

Every test writes a small script to ``tmp_path``, runs it with ``sys.executable`` (the repository
root on PYTHONPATH, ML_PERSISTENCE_DB inside ``tmp_path``) and then opens the database with the
stdlib ``sqlite3`` module, as a user would, to see what landed.

Synchronisation is by the child's stdout lines, the test's writes to the child's stdin and
process exit; subprocess timeouts (``GUARD``) are only there to turn a hang into a failure.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GUARD = 60.0  # seconds: a hang guard, never a synchronisation device

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and fork")


# -- helpers ---------------------------------------------------------------------------------------


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "experiments.db"


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["ML_PERSISTENCE_DB"] = str(db_path(tmp_path))
    env.pop("ML_PERSISTENCE_EXIT_TIMEOUT", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


PRELUDE = """\
import json, os, signal, sys, threading, time
from ml_persistence import ExperimentTracker, MetricsLogger

def say(*parts):
    print(*parts, flush=True)

def expect(line):
    got = sys.stdin.readline().strip()
    assert got == line, f"expected {line!r} on stdin, got {got!r}"
"""


def write_script(tmp_path: Path, body: str, name: str = "child.py") -> Path:
    script = tmp_path / name
    script.write_text(PRELUDE + textwrap.dedent(body))
    return script


def run_script(tmp_path: Path, body: str, *, name: str = "child.py", **env: str) -> subprocess.CompletedProcess:
    """Run a script to completion; a hang past GUARD fails the test."""
    script = write_script(tmp_path, body, name)
    try:
        return subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=child_env(tmp_path, **env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=GUARD,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{name} hung for {GUARD} s at exit\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}")


class Child:
    """An interactive child: read its stdout line by line (with a hang guard), write to its stdin."""

    def __init__(self, tmp_path: Path, body: str, *, name: str = "child.py", **env: str) -> None:
        script = write_script(tmp_path, body, name)
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=child_env(tmp_path, **env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr = ""
        self._out = threading.Thread(target=self._pump_stdout, daemon=True)
        self._err = threading.Thread(target=self._pump_stderr, daemon=True)
        self._out.start()
        self._err.start()

    def _pump_stdout(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.stdout.append(line)
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        self.stderr = self.proc.stderr.read()  # type: ignore[union-attr]

    def read_line(self, prefix: str) -> str:
        """Return the next stdout line starting with ``prefix`` (after it); fail on EOF or hang."""
        deadline = time.monotonic() + GUARD
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                pytest.fail(f"no {prefix!r} line within {GUARD} s; stderr:\n{self.stderr}")
            if line is None:
                self.wait()
                pytest.fail(
                    f"child exited ({self.proc.returncode}) before printing {prefix!r}\n"
                    f"stdout:\n{''.join(self.stdout)}\nstderr:\n{self.stderr}"
                )
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def wait(self) -> int:
        """Wait for exit (hang guard GUARD) and return the exit code."""
        try:
            code = self.proc.wait(timeout=GUARD)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"child did not exit within {GUARD} s; stderr:\n{self.stderr}")
        self._out.join(GUARD)
        self._err.join(GUARD)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.join(5)

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


@pytest.fixture
def children():
    """Kill and reap every interactive child a test started, pass or fail."""
    started: list[Child] = []
    yield started
    for child in started:
        child.close()


def connect(tmp_path: Path) -> sqlite3.Connection:
    path = db_path(tmp_path)
    assert path.exists(), f"{path} was never created"
    conn = sqlite3.connect(str(path), timeout=GUARD)
    conn.row_factory = sqlite3.Row
    return conn


def experiment(tmp_path: Path, experiment_id: int) -> dict[str, Any]:
    conn = connect(tmp_path)
    try:
        row = conn.execute("SELECT * FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"experiment {experiment_id} not in the database"
    return dict(row)


def metric_steps(tmp_path: Path, experiment_id: int, name: str) -> list[int]:
    """Every logged step of one metric, in id order (duplicates kept: they are what we look for)."""
    conn = connect(tmp_path)
    try:
        rows = conn.execute(
            "SELECT step FROM metrics WHERE experiment_id = ? AND metric_name = ? ORDER BY id",
            (experiment_id, name),
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


def assert_exactly_once(steps: list[int], n: int, what: str) -> None:
    missing = sorted(set(range(n)) - set(steps))
    duplicated = len(steps) - len(set(steps))
    assert len(steps) == n and not missing and not duplicated, (
        f"{what}: {len(steps)} rows for {n} logged; {len(missing)} missing "
        f"(first {missing[:5]}), {duplicated} duplicated"
    )


def result_json(done: subprocess.CompletedProcess) -> dict[str, Any]:
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    pytest.fail(f"no RESULT line (exit {done.returncode})\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")


# -- 1-3: ending without end_experiment() ----------------------------------------------------------

N_EXIT = 3000


def test_normal_exit_commits_everything_and_completes(tmp_path: Path) -> None:
    done = run_script(
        tmp_path,
        f"""
        t = ExperimentTracker()
        eid = t.start_experiment("normal-exit")
        for i in range({N_EXIT}):
            t.log_metric("loss", 1.0 / (i + 1), step=i)
        t.log_metrics_batch({{"acc": 0.5, "f1": 0.25}}, step=0)
        say("RESULT", json.dumps({{"eid": eid}}))
        # no end_experiment(), no flush(): the exit hook must commit, end and close
        """,
    )
    assert done.returncode == 0, done.stderr
    eid = result_json(done)["eid"]
    assert_exactly_once(metric_steps(tmp_path, eid, "loss"), N_EXIT, "loss")
    assert metric_steps(tmp_path, eid, "acc") == [0]
    assert metric_steps(tmp_path, eid, "f1") == [0]
    row = experiment(tmp_path, eid)
    assert row["status"] == "completed"
    assert row["end_time"] is not None
    assert not row["notes"]
    assert "ml_persistence" not in done.stderr, done.stderr


def test_unhandled_exception_fails_experiment_with_traceback(tmp_path: Path) -> None:
    done = run_script(
        tmp_path,
        f"""
        t = ExperimentTracker(capture_environment=False)
        eid = t.start_experiment("crash")
        for i in range({N_EXIT}):
            t.log_metric("loss", float(i), step=i)
        say("RESULT", json.dumps({{"eid": eid}}))

        def train_step():
            raise ValueError("exploding gradient 4711")

        train_step()
        """,
    )
    assert done.returncode == 1, done.stderr
    assert "exploding gradient 4711" in done.stderr  # the user's traceback is still printed
    eid = result_json(done)["eid"]
    assert_exactly_once(metric_steps(tmp_path, eid, "loss"), N_EXIT, "loss")
    row = experiment(tmp_path, eid)
    assert row["status"] == "failed"
    notes = row["notes"] or ""
    assert "Traceback (most recent call last)" in notes, notes
    assert "train_step" in notes, notes
    assert "ValueError: exploding gradient 4711" in notes, notes


def test_sys_exit_nonzero_fails_experiment(tmp_path: Path) -> None:
    done = run_script(
        tmp_path,
        """
        t = ExperimentTracker(capture_environment=False)
        eid = t.start_experiment("sys-exit")
        for i in range(100):
            t.log_metric("loss", float(i), step=i)
        say("RESULT", json.dumps({"eid": eid}))
        sys.exit(3)
        """,
    )
    assert done.returncode == 3, done.stderr
    eid = result_json(done)["eid"]
    assert_exactly_once(metric_steps(tmp_path, eid, "loss"), 100, "loss")
    row = experiment(tmp_path, eid)
    assert row["status"] == "failed"
    assert "3" in (row["notes"] or ""), row["notes"]
    assert "status 3" in (row["notes"] or ""), row["notes"]


def test_sys_exit_zero_completes_experiment(tmp_path: Path) -> None:
    done = run_script(
        tmp_path,
        """
        t = ExperimentTracker(capture_environment=False)
        eid = t.start_experiment("sys-exit-0")
        t.log_metric("loss", 1.0, step=0)
        say("RESULT", json.dumps({"eid": eid}))
        sys.exit(0)
        """,
    )
    assert done.returncode == 0, done.stderr
    eid = result_json(done)["eid"]
    assert metric_steps(tmp_path, eid, "loss") == [0]
    assert experiment(tmp_path, eid)["status"] == "completed"


def test_exit_waits_for_a_training_thread_that_is_still_logging(tmp_path: Path, children: list) -> None:
    # The main thread returns while a (non-daemon) training thread still logs; Python waits for
    # that thread, so the run is not over: its rows must land and the end comes after them.
    child = Child(
        tmp_path,
        """
        t = ExperimentTracker(capture_environment=False)
        eid = t.start_experiment("training-thread")

        def train():
            expect("go")
            for i in range(1000):
                t.log_metric("loss", float(i), step=i)
            say("trained")

        threading.Thread(target=train, name="training").start()
        say("main done", eid)
        """,
    )
    children.append(child)
    eid = int(child.read_line("main done"))
    child.send("go")  # only now, after the main thread has finished, does the training log
    child.read_line("trained")
    assert child.wait() == 0, child.stderr
    assert "Exception in thread" not in child.stderr, child.stderr
    assert_exactly_once(metric_steps(tmp_path, eid, "loss"), 1000, "loss")
    assert experiment(tmp_path, eid)["status"] == "completed"


def test_exit_with_an_idle_thread_pool_does_not_hang(tmp_path: Path) -> None:
    # ThreadPoolExecutor workers are non-daemon and only stopped by their own exit hook.
    done = run_script(
        tmp_path,
        """
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(2)
        t = ExperimentTracker(capture_environment=False)
        eid = t.start_experiment("pool")
        for i, value in enumerate(pool.map(float, range(500))):
            t.log_metric("loss", value, step=i)
        say("RESULT", json.dumps({"eid": eid}))
        # the pool is never shut down
        """,
    )
    assert done.returncode == 0, done.stderr
    eid = result_json(done)["eid"]
    assert_exactly_once(metric_steps(tmp_path, eid, "loss"), 500, "loss")
    assert experiment(tmp_path, eid)["status"] == "completed"


# -- 4-5: signals --------------------------------------------------------------------------------

N_SIGNAL = 5000


def test_sigterm_commits_queued_rows_and_dies_of_sigterm(tmp_path: Path, children: list) -> None:
    child = Child(
        tmp_path,
        f"""
        t = ExperimentTracker(capture_environment=False)
        eid = t.start_experiment("sigterm")
        for i in range({N_SIGNAL}):
            t.log_metric("loss", float(i), step=i)
        say("ready", json.dumps({{"eid": eid, "queued": t.status()["queued"]}}))
        threading.Event().wait()  # blocked "training" until the signal
        say("UNREACHABLE")
        """,
    )
    children.append(child)
    ready = json.loads(child.read_line("ready"))
    child.proc.send_signal(signal.SIGTERM)
    code = child.wait()
    assert code == -signal.SIGTERM, f"exit {code}; stderr:\n{child.stderr}"
    assert not any("UNREACHABLE" in line for line in child.stdout)
    eid = ready["eid"]
    # ready["queued"]: events still only in memory when the signal was sent
    assert_exactly_once(metric_steps(tmp_path, eid, "loss"), N_SIGNAL, f"loss ({ready['queued']} queued at the signal)")
    row = experiment(tmp_path, eid)
    assert row["status"] == "interrupted"
    assert "SIGTERM" in (row["notes"] or ""), row["notes"]


def test_sigterm_chains_to_the_users_own_handler(tmp_path: Path, children: list) -> None:
    child = Child(
        tmp_path,
        f"""
        stop = threading.Event()

        def on_term(signum, frame):  # installed before ml_persistence is used
            say("user handler ran", signum)
            stop.set()

        signal.signal(signal.SIGTERM, on_term)
        t = ExperimentTracker(capture_environment=False)
        eid = t.start_experiment("sigterm-chained")
        for i in range({N_SIGNAL}):
            t.log_metric("loss", float(i), step=i)
        say("ready", json.dumps({{"eid": eid}}))
        stop.wait()
        say("main loop stopped")
        # the script then ends normally, as a graceful-shutdown handler intends
        """,
    )
    children.append(child)
    eid = json.loads(child.read_line("ready"))["eid"]
    child.proc.send_signal(signal.SIGTERM)
    assert child.read_line("user handler ran") == str(int(signal.SIGTERM))
    child.read_line("main loop stopped")
    code = child.wait()
    assert code == 0, child.stderr
    assert_exactly_once(metric_steps(tmp_path, eid, "loss"), N_SIGNAL, "loss")
    assert experiment(tmp_path, eid)["status"] == "interrupted"


def test_sigint_keyboard_interrupt_commits_and_interrupts(tmp_path: Path, children: list) -> None:
    child = Child(
        tmp_path,
        f"""
        t = ExperimentTracker(capture_environment=False)
        eid = t.start_experiment("sigint")
        for i in range({N_SIGNAL}):
            t.log_metric("loss", float(i), step=i)
        say("ready", json.dumps({{"eid": eid}}))
        threading.Event().wait()
        """,
    )
    children.append(child)
    eid = json.loads(child.read_line("ready"))["eid"]
    child.proc.send_signal(signal.SIGINT)
    code = child.wait()
    # Python re-raises SIGINT on an unhandled KeyboardInterrupt (3.8+): the shell sees Ctrl-C.
    assert code == -signal.SIGINT, f"exit {code}; stderr:\n{child.stderr}"
    assert "KeyboardInterrupt" in child.stderr
    assert_exactly_once(metric_steps(tmp_path, eid, "loss"), N_SIGNAL, "loss")
    row = experiment(tmp_path, eid)
    assert row["status"] == "interrupted"
    assert "KeyboardInterrupt" in (row["notes"] or "")


# -- 6: the context-manager form -----------------------------------------------------------------


def test_context_manager_exception_fails_and_clean_block_completes(tmp_path: Path) -> None:
    done = run_script(
        tmp_path,
        """
        with ExperimentTracker(capture_environment=False) as t:
            clean = t.start_experiment("clean")
            for i in range(200):
                t.log_metric("loss", float(i), step=i)
        say("RESULT", json.dumps({"clean": clean}))
        with ExperimentTracker(capture_environment=False) as t:
            broken = t.start_experiment("broken")
            for i in range(200):
                t.log_metric("loss", float(i), step=i)
            say("RESULT", json.dumps({"clean": clean, "broken": broken}))
            raise ValueError("bad batch 99")
        """,
    )
    assert done.returncode == 1, done.stderr
    ids = [json.loads(x[len("RESULT ") :]) for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    clean, broken = ids["clean"], ids["broken"]
    for eid in (clean, broken):
        assert_exactly_once(metric_steps(tmp_path, eid, "loss"), 200, f"experiment {eid}")
    clean_row, broken_row = experiment(tmp_path, clean), experiment(tmp_path, broken)
    assert clean_row["status"] == "completed"
    assert not clean_row["notes"]
    assert broken_row["status"] == "failed"
    notes = broken_row["notes"] or ""
    assert "ValueError: bad batch 99" in notes, notes
    assert notes.count("ValueError: bad batch 99") == 1, notes  # not ended twice (block, then exit hook)


# -- 7: fork ------------------------------------------------------------------------------------
#
# The parent keeps logging from a training thread while the main thread forks: each fork happens
# right after a burst of events was queued, i.e. while the parent's writer is (about to be) in a
# transaction. A child that inherits SQLite's lock state mid-transaction cannot write, ever.

PARENT_TRAINING = """
N_BURSTS, PER_BURST = {bursts}, 2000
N_PARENT = N_BURSTS * PER_BURST
burst_queued = threading.Semaphore(0)

def parent_training():
    step = 0
    for _ in range(N_BURSTS):
        for _ in range(PER_BURST):
            t.log_metric("parent", float(step), step=step)
            step += 1
        burst_queued.release()
        t.flush()

trainer = threading.Thread(target=parent_training, name="parent-training")
trainer.start()
"""


def test_multiprocessing_fork_child_logs_to_parents_experiment(tmp_path: Path, children: list) -> None:
    n_kids, n_child = 4, 500
    child = Child(
        tmp_path,
        textwrap.dedent(
            """
            import multiprocessing as mp

            t = ExperimentTracker(capture_environment=False)
            eid = t.start_experiment("fork-mp")
            """
        )
        + PARENT_TRAINING.format(bursts=n_kids + 2)
        + textwrap.dedent(f"""
        def child_main(k):
            # the inherited tracker, still pointing at the parent's experiment
            for i in range({n_child}):
                t.log_metric(f"child{{k}}", float(i), step=i)
            # no flush(): the child's exit (multiprocessing leaves by os._exit) must commit it

        ctx = mp.get_context("fork")
        kids = []
        for k in range({n_kids}):
            burst_queued.acquire()  # fork right after the parent queued a burst
            p = ctx.Process(target=child_main, args=(k,))
            p.start()
            kids.append(p)
        codes, deadline = [], time.monotonic() + 40
        for p in kids:
            p.join(max(0.0, deadline - time.monotonic()))
            codes.append(p.exitcode)
            if p.exitcode is None:
                p.kill()
        trainer.join()
        t.flush(timeout=30)
        say("children", json.dumps({{"eid": eid, "codes": codes, "n_parent": N_PARENT}}))
        expect("end")
        t.end_experiment()
        say("ended")
        """),
        # Bounds a child that cannot write; committing 500 rows needs far less.
        ML_PERSISTENCE_EXIT_TIMEOUT="5",
    )
    children.append(child)
    report = json.loads(child.read_line("children"))
    assert report["codes"] == [0] * n_kids, f"fork children exit codes {report['codes']}; stderr:\n{child.stderr}"
    eid, n_parent = report["eid"], report["n_parent"]
    # The children have exited: their rows are in, and their exit did not end the parent's run.
    rows = {k: metric_steps(tmp_path, eid, f"child{k}") for k in range(n_kids)}
    stored = {k: len(v) for k, v in rows.items()}
    for k in range(n_kids):
        assert_exactly_once(rows[k], n_child, f"child{k} (rows stored per child: {stored})")
    assert_exactly_once(metric_steps(tmp_path, eid, "parent"), n_parent, "parent")
    assert experiment(tmp_path, eid)["status"] == "running"
    child.send("end")
    child.read_line("ended")
    assert child.wait() == 0, child.stderr
    assert experiment(tmp_path, eid)["status"] == "completed"
    assert_exactly_once(metric_steps(tmp_path, eid, "parent"), n_parent, "parent")
    assert "Traceback" not in child.stderr, child.stderr


def test_os_fork_child_flushes_then_os_exit(tmp_path: Path) -> None:
    n_forks, n_child = 8, 200
    done = run_script(
        tmp_path,
        textwrap.dedent(
            """
            import sqlite3, traceback

            t = ExperimentTracker(capture_environment=False)
            eid = t.start_experiment("fork-os")
            """
        )
        + PARENT_TRAINING.format(bursts=n_forks + 2)
        + textwrap.dedent(f"""
        codes = []
        for k in range({n_forks}):
            burst_queued.acquire()  # fork right after the parent queued a burst
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    for i in range({n_child}):
                        t.log_metric(f"child{{k}}", float(i), step=i)
                    t.flush(timeout=10)
                except BaseException:
                    traceback.print_exc()
                    code = 1
                os._exit(code)  # skips every exit hook: only what was flushed is guaranteed
            _, wait_status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(wait_status))
            if codes[-1] != 0:
                break  # one stuck child is enough; do not spend 10 s on each
        trainer.join()
        t.flush(timeout=30)
        conn = sqlite3.connect(os.environ["ML_PERSISTENCE_DB"])
        (status,) = conn.execute("SELECT status FROM experiments WHERE id = ?", (eid,)).fetchone()
        conn.close()
        say("RESULT", json.dumps({{"eid": eid, "codes": codes, "n_parent": N_PARENT, "status_after_children": status}}))
        """),
    )
    assert done.returncode == 0, done.stderr
    result = result_json(done)
    assert result["codes"] == [0] * n_forks, f"fork children exit codes {result['codes']}; stderr:\n{done.stderr}"
    assert result["status_after_children"] == "running"
    eid = result["eid"]
    for k in range(n_forks):
        assert_exactly_once(metric_steps(tmp_path, eid, f"child{k}"), n_child, f"child{k}")
    assert_exactly_once(metric_steps(tmp_path, eid, "parent"), result["n_parent"], "parent")
    assert experiment(tmp_path, eid)["status"] == "completed"


def test_os_fork_child_exiting_normally_commits_without_ending_parents_run(tmp_path: Path) -> None:
    done = run_script(
        tmp_path,
        """
        import sqlite3

        t = ExperimentTracker(capture_environment=False)
        eid = t.start_experiment("fork-os-exit")
        for i in range(1000):
            t.log_metric("parent", float(i), step=i)
        pid = os.fork()
        if pid == 0:
            for i in range(300):
                t.log_metric("child", float(i), step=i)
            sys.exit(0)  # a normal exit, no flush(): the child's exit hooks must commit its rows
        _, wait_status = os.waitpid(pid, 0)
        t.flush(timeout=30)
        conn = sqlite3.connect(os.environ["ML_PERSISTENCE_DB"])
        (status,) = conn.execute("SELECT status FROM experiments WHERE id = ?", (eid,)).fetchone()
        conn.close()
        say("RESULT", json.dumps({"eid": eid, "child_exit": os.waitstatus_to_exitcode(wait_status),
                                  "status_after_child": status}))
        """,
    )
    assert done.returncode == 0, done.stderr
    result = result_json(done)
    assert result["child_exit"] == 0, done.stderr
    assert result["status_after_child"] == "running"
    eid = result["eid"]
    assert_exactly_once(metric_steps(tmp_path, eid, "child"), 300, "child")
    assert_exactly_once(metric_steps(tmp_path, eid, "parent"), 1000, "parent")
    assert experiment(tmp_path, eid)["status"] == "completed"


# -- 8-9: a locked database ----------------------------------------------------------------------

def test_log_calls_do_not_block_on_a_locked_database(tmp_path: Path, children: list) -> None:
    # The child "trains" (a little CPU work per step, logging each step) until its writer has hit
    # our lock twice (two of SQLite's 1 s busy waits, so the lock is held for 2 s or more);
    # the log calls must go on meanwhile. The test holds the lock until the child says "logged",
    # so a log call that waited for the lock would never return: that is a hang, not a slow test.
    child = Child(
        tmp_path,
        """
        t = ExperimentTracker(capture_environment=False)
        eid = t.start_experiment("locked")
        t.flush()
        say("started", eid)
        expect("locked")
        worst, n, clock = 0.0, 0, time.perf_counter
        while n < 400_000:  # below the queue bound (500k), in case the writer never notices
            sum(range(3000))  # the training step
            t0 = clock()
            t.log_metric("loss", float(n), step=n)
            worst = max(worst, clock() - t0)
            n += 1
            if n % 500 == 0 and t.status()["busy_retries"] >= 2:
                break
        for i in range(100):
            t0 = clock()
            t.log_metrics_batch({"a": 1.0, "b": 2.0}, step=i)
            worst = max(worst, clock() - t0)
        s = t.status()
        say("logged", json.dumps({"n": n, "max_call_s": worst, "queued": s["queued"],
                                  "busy_retries": s["busy_retries"], "written": s["written"]}))
        expect("released")
        t.flush(timeout=30)
        say("flushed", json.dumps(t.status()))
        """,
    )
    children.append(child)
    eid = int(child.read_line("started"))
    holder = sqlite3.connect(str(db_path(tmp_path)), timeout=GUARD, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        child.send("locked")
        logged = json.loads(child.read_line("logged"))
        (committed,) = holder.execute("SELECT COUNT(*) FROM metrics WHERE experiment_id = ?", (eid,)).fetchone()
        assert committed == 0  # we hold the only write lock
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    print(f"max log call latency under lock: {logged['max_call_s'] * 1e3:.2f} ms; {logged}")
    assert logged["busy_retries"] >= 2, f"the writer never waited on the lock: {logged}"
    # No wall-clock bound here (noisy machines): the child logged on while its writer retried.
    child.send("released")
    child.read_line("flushed")
    assert child.wait() == 0, child.stderr
    assert_exactly_once(metric_steps(tmp_path, eid, "loss"), logged["n"], "loss")
    assert_exactly_once(metric_steps(tmp_path, eid, "a"), 100, "a")
    assert_exactly_once(metric_steps(tmp_path, eid, "b"), 100, "b")
    assert experiment(tmp_path, eid)["status"] == "completed"


def test_exit_gives_up_on_a_database_locked_past_the_deadline(tmp_path: Path, children: list) -> None:
    child = Child(
        tmp_path,
        """
        t = ExperimentTracker(capture_environment=False)
        eid = t.start_experiment("locked-at-exit")
        t.flush()
        say("started", eid)
        expect("locked")
        for i in range(1000):
            t.log_metric("loss", float(i), step=i)
        say("logged")
        # the script ends here; the database stays locked past the exit deadline
        """,
        ML_PERSISTENCE_EXIT_TIMEOUT="1",
    )
    children.append(child)
    eid = int(child.read_line("started"))
    holder = sqlite3.connect(str(db_path(tmp_path)), timeout=GUARD, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        child.send("locked")
        child.read_line("logged")
        t0 = time.monotonic()
        code = child.wait()  # the lock is still held: the child must exit anyway
        exit_seconds = time.monotonic() - t0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    print(f"exit with the database locked took {exit_seconds:.2f} s; stderr:\n{child.stderr}")
    assert code == 0, child.stderr
    assert "unwritten" in child.stderr, child.stderr
    # It says how many: the 1000 metrics (and possibly the end-of-experiment event).
    assert {"1000", "1001"} & set(re.findall(r"\d+", child.stderr)), child.stderr
    # Nothing could be written; the experiment is left as it was.
    assert metric_steps(tmp_path, eid, "loss") == []
    assert experiment(tmp_path, eid)["status"] == "running"


# -- 10: read-your-writes across processes -------------------------------------------------------


def test_fresh_process_reads_what_an_exited_process_logged(tmp_path: Path) -> None:
    wrote = run_script(
        tmp_path,
        """
        t = ExperimentTracker(capture_environment=False)
        eid = t.start_experiment("writer")
        for i in range(50):
            t.log_metric("val_loss", 1.0 / (i + 1), step=i, epoch=i // 10)
        say("RESULT", json.dumps({"eid": eid}))
        """,
        name="writer.py",
    )
    assert wrote.returncode == 0, wrote.stderr
    eid = result_json(wrote)["eid"]
    read = run_script(
        tmp_path,
        f"""
        history = MetricsLogger().get_metric_history({eid}, "val_loss")
        status = ExperimentTracker(capture_environment=False).get_experiment({eid})["status"]
        say("RESULT", json.dumps({{"history": history, "status": status}}))
        """,
        name="reader.py",
    )
    assert read.returncode == 0, read.stderr
    result = result_json(read)
    assert result["status"] == "completed"
    history = result["history"]
    assert [h["step"] for h in history] == list(range(50))
    assert [h["value"] for h in history] == pytest.approx([1.0 / (i + 1) for i in range(50)])
    assert [h["epoch"] for h in history] == [i // 10 for i in range(50)]
    assert {h["split"] for h in history} == {"val"}


def test_resuming_an_ended_experiment_reopens_it_until_it_ends_again(tmp_path: Path) -> None:
    done = run_script(tmp_path, """
        tracker = ExperimentTracker()
        exp = tracker.start_experiment("twice")
        tracker.end_experiment("failed", "first attempt")
        say(exp)
    """, name="first.py")
    assert done.returncode == 0, done.stderr
    exp = int(done.stdout)
    first_end = experiment(tmp_path, exp)["end_time"]
    child = Child(tmp_path, f"""
        tracker = ExperimentTracker()
        tracker.resume_experiment({exp})
        tracker.log_metric("loss", 0.5, step=1)
        tracker.flush()
        say("resumed")
        expect("exit")
    """, name="second.py")
    child.read_line("resumed")
    # While the resuming process runs, the run is its own: running, its pid, no end yet.
    during = experiment(tmp_path, exp)
    assert (during["status"], during["pid"], during["end_time"]) == ("running", child.proc.pid, None)
    child.send("exit")
    assert child.wait() == 0
    after = experiment(tmp_path, exp)
    assert after["status"] == "completed" and after["end_time"] > first_end  # ended again at its exit
    assert after["notes"] == "first attempt"
