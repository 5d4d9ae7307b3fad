"""The ml-persistence command line, run as a user would: a real process against a real database file.

The databases are written with the library (in a subprocess); live trainers are real processes driven
line by line over stdin, so nothing here waits on the clock.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pytest

from conftest import rows, subprocess_env

from ml_persistence.sqlite.schema import SCHEMA_VERSION

LONG_NAME = "dqn-with-a-really-long-descriptive-experiment-name-for-clipping"

# The sample database: four ended experiments, written through the whole API.
BUILD = r'''
import math
import sys

import ml_persistence
from ml_persistence import DatasetManager, ExperimentTracker, ModelRegistry

db = sys.argv[1]
t, reg, ds = ExperimentTracker(db), ModelRegistry(db), DatasetManager(db)
train = ds.register_dataset("BTC-USD-Daily", "2023", split_type="train", start_date="2023-01-01",
                            end_date="2023-12-31", num_samples=365)
test = ds.register_dataset("BTC-USD-Daily", "2023", split_type="test", start_date="2024-01-01",
                           end_date="2024-06-30", num_samples=182)

e1 = t.start_experiment("ppo-baseline", experiment_type="rl", description="PPO on BTC-USD",
                        tags=["rl", "ppo", "btc"], random_seed=42)
t.log_hyperparameters_batch({"learning_rate": 0.0003, "gamma": 0.99, "batch_size": 128, "use_gae": True,
                             "layers": [64, 64], "optimizer": "adam", "scheduler": None})
ds.link_dataset_to_experiment(e1, train, "train")
ds.link_dataset_to_experiment(e1, test, "test")
for episode, (ret, sharpe) in enumerate([(0.1, 1.25), (0.2, -0.5), (0.35, 2.0)]):
    t.log_metrics_batch({"train_return": ret}, episode=episode)
    t.log_metric("val_sharpe", sharpe, episode=episode)
for step, value in enumerate([math.nan, math.inf, -math.inf, 0.1 + 0.2]):
    t.log_metric("odd", value, step=step)
t.log_metric("loss", 0.9, step=1, split="train")
t.log_metric("loss", 0.8, step=1, split="val")
t.log_metric("loss", 0.7, step=2, split="train")
reg.register_model(e1, "models/e1_ep0.pth", episode_num=0, global_step=100, train_metric=0.1, val_metric=1.5,
                   test_metric=0.7)
reg.register_model(e1, "models/e1_ep1.pth", episode_num=1, global_step=200, val_metric=2.5, test_metric=0.2,
                   is_best=True)
reg.register_model(e1, "models/e1_ep2.pth", episode_num=2, global_step=300, val_metric=0.5, test_metric=0.9)
t.log_artifact("plots/returns.png", "plot", artifact_name="returns-plot", description="returns")
t.end_experiment("completed", notes="Training completed successfully")

e2 = t.start_experiment("ppo-tuned-lr", experiment_type="rl", tags=["rl", "ppo"], random_seed=7)
t.log_hyperparameters_batch({"learning_rate": 0.001, "gamma": 0.99, "batch_size": "128", "clip": 0.2})
t.log_metrics_batch({"train_return": 0.5}, episode=0)
t.log_metrics_batch({"train_return": 0.7}, episode=1)
t.log_metric("val_sharpe", 3.0, episode=1)
reg.register_model(e2, "models/e2_ep0.pth", episode_num=0, val_metric=3.0, test_metric=0.1, is_best=True)
reg.register_model(e2, "models/e2_ep1.pth", episode_num=1, val_metric=1.0, test_metric=5.0)
t.end_experiment("failed", notes="diverged")

t.start_experiment(sys.argv[2], experiment_type="dqn", tags=["rl", "dqn"])
t.end_experiment("completed")

e4 = t.start_experiment("lstm-forecast", experiment_type="supervised", tags=["supervised"])
reg.register_model(e4, "models/lstm.pth", test_metric=9.0)
t.end_experiment("interrupted")
ml_persistence.shutdown()
'''

# A trainer driven over stdin: prints its experiment id, then per "step" line logs one `loss` row
# (value step + 0.125), flushes and prints "ok"; "end" ends the experiment; EOF exits normally.
TRAINER = r'''
import sys

from ml_persistence import ExperimentTracker

tracker = ExperimentTracker(sys.argv[1])
experiment_id = tracker.start_experiment("live-trainer", experiment_type="rl")
tracker.log_metric("loss", 1.0, step=0)
tracker.flush()
print(experiment_id, flush=True)
step = 0
for line in sys.stdin:
    if line.strip() == "step":
        step += 1
        tracker.log_metric("loss", step + 0.125, step=step)
        tracker.flush()
        print("ok", flush=True)
    elif line.strip() == "end":
        tracker.end_experiment("completed")
        print("ended", flush=True)
'''

# Logs metric rows as fast as it can (committing every 10) until a line arrives on stdin, then
# ends its experiment and prints how many rows it logged in all.
WRITER = r'''
import sys
import threading

from ml_persistence import ExperimentTracker

tracker = ExperimentTracker(sys.argv[1])
tracker.start_experiment("writer")
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
n = 0
while not stop.is_set():
    tracker.log_metrics_batch({"a": float(n), "b": -float(n)}, step=n)
    n += 1
    if n % 10 == 0:
        tracker.flush()
        if n == 200:
            print("ready", flush=True)
tracker.end_experiment("completed")
print(2 * n, flush=True)
'''


# -- helpers ------------------------------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    """The child environment, without a terminal width or default database unless a test sets one."""
    env = subprocess_env(**extra)
    for name in ("COLUMNS", "LINES", "ML_PERSISTENCE_DB"):
        if name not in extra:
            env.pop(name, None)
    return env


def cli(*args: str, cwd: Path, env: Optional[dict[str, str]] = None, input: Optional[str] = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ml_persistence", *args], cwd=cwd, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout, input=input,
                          stdin=subprocess.DEVNULL if input is None else None)


def cli_many(argvs: Sequence[Sequence[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Run several independent commands at once (they only read)."""
    procs = [subprocess.Popen([sys.executable, "-m", "ml_persistence", *a], cwd=cwd, env=cli_env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a in argvs]
    try:
        done = []
        for argv, proc in zip(argvs, procs):
            out, err = proc.communicate(timeout=120)
            done.append(subprocess.CompletedProcess(list(argv), proc.returncode, out, err))
        return done
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_script(script: str, cwd: Path) -> None:
    """Run a Python script that uses the library, in a child process; it must succeed."""
    made = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (done.args, done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done


def failed(done: subprocess.CompletedProcess, code: int) -> str:
    """Assert an expected failure: exit ``code``, one line on stderr, no traceback; return that line."""
    assert done.returncode == code, (done.args, done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines, done.stderr
    if code == 1:
        assert len(lines) == 1, done.stderr
    return lines[-1]


def _no_constants(name: str) -> Any:
    raise AssertionError(f"not strict JSON: {name}")


def strict_json(text: str) -> Any:
    """Parse JSON rejecting the NaN / Infinity extensions Python's json module accepts."""
    return json.loads(text, parse_constant=_no_constants)


def ls_json(db: str, cwd: Path, *args: str) -> list[dict[str, Any]]:
    return strict_json(ok(cli("ls", "--db", db, "--json", *args, cwd=cwd)).stdout)


def ids_of(records: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in records]


def clone(source: str, dest: Path) -> str:
    """A private copy of a database (SQLite's backup API)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return str(dest)


def execute(path: str, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def stamp(moment: dt.datetime) -> str:
    """A timestamp as the library stores it (local time)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def sections(text: str) -> dict[str, list[str]]:
    """Split `show`/`compare` output into {title: body lines} by its underlined headings."""
    found: dict[str, list[str]] = {}
    lines = text.splitlines()
    for i in range(1, len(lines)):
        if lines[i] and set(lines[i]) == {"-"} and len(lines[i]) == len(lines[i - 1]):
            body = []
            for line in lines[i + 1:]:
                if not line.strip():
                    break
                body.append(line)
            found[lines[i - 1]] = body
    return found


class Lines:
    """Lines of a child's output stream, read by a thread, so a test can wait for one with a timeout."""

    def __init__(self, stream: Any) -> None:
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next(self, timeout: float = 60) -> Optional[str]:
        """Return the next line, or None at end of stream."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout} s") from None

    def rest(self, timeout: float = 60) -> list[str]:
        """Return every remaining line, up to end of stream."""
        out = []
        while (line := self.next(timeout)) is not None:
            out.append(line)
        return out


def _default_sigint() -> None:
    # A shell runs background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt
    # handler: give each child the disposition of a program started from a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def child(argv: Sequence[str], cwd: Path, python_script: Optional[str] = None) -> Iterator[tuple[subprocess.Popen, Lines]]:
    """A child process with piped stdin/stdout (stderr to a file), killed if still running at the end."""
    err = open(cwd / f"child-{len(list(cwd.glob('child-*')))}.err", "w")
    command = [sys.executable, "-c", python_script, *argv] if python_script is not None else list(argv)
    proc = subprocess.Popen(command, cwd=cwd, env=cli_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=err, text=True, bufsize=1, preexec_fn=_default_sigint)
    try:
        yield proc, Lines(proc.stdout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        err.close()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def tell(proc: subprocess.Popen, line: str) -> None:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


@contextmanager
def trainer(db: str, cwd: Path) -> Iterator[tuple[subprocess.Popen, Lines, int]]:
    """A live trainer process (see TRAINER) with its experiment id."""
    with child([db], cwd, python_script=TRAINER) as (proc, lines):
        first = lines.next()
        assert first is not None and first.isdigit(), first
        yield proc, lines, int(first)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The sample database (read-only for the tests that use it directly; clone it to change it)."""
    folder = tmp_path_factory.mktemp("sample")
    path = str(folder / "sample.db")
    done = subprocess.run([sys.executable, "-c", BUILD, path, LONG_NAME], cwd=folder, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture
def copy(sample: str, tmp_path: Path) -> str:
    return clone(sample, tmp_path / "copy.db")


# -- init, demo, usage (the original three) -----------------------------------------------------


def test_demo_writes_a_complete_training_run(tmp_path: Path) -> None:
    db = str(tmp_path / "demo.db")
    done = cli("demo", "--db", db, "--episodes", "12", "--steps", "50", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout
    assert rows(db, "SELECT status, experiment_type FROM experiments") == [("completed", "rl")]
    # 12 episodes x (5 logging steps x 4 + 4 episode metrics) + 1 action distribution
    assert rows(db, "SELECT COUNT(*) FROM metrics") == [(12 * (5 * 4 + 4) + 1,)]
    assert rows(db, "SELECT COUNT(*), SUM(is_best) >= 1, MIN(checkpoint_size_mb) > 0 FROM models") == [(3, 1, 1)]
    assert rows(db, "SELECT usage_type FROM experiment_datasets ORDER BY 1") == [("test",), ("train",)]
    assert rows(db, "SELECT COUNT(*) FROM hyperparameters") == [(5,)]


def test_init_creates_then_reports_up_to_date(tmp_path: Path) -> None:
    first = cli("init", "--db", "x.db", cwd=tmp_path)
    assert first.returncode == 0 and "Created" in first.stdout
    second = cli("init", "--db", "x.db", cwd=tmp_path)
    assert second.returncode == 0 and "up to date" in second.stdout


def test_usage_error_exits_2(tmp_path: Path) -> None:
    done = cli("no-such-command", cwd=tmp_path)
    assert done.returncode == 2 and "usage" in done.stderr


# -- ls -----------------------------------------------------------------------------------------


def test_ls_json_lists_newest_first_with_database_column_names(sample: str, tmp_path: Path) -> None:
    found = ls_json(sample, tmp_path)
    assert ids_of(found) == [4, 3, 2, 1]
    first = found[-1]
    for key in ("id", "name", "experiment_type", "status", "start_time", "duration_seconds", "num_checkpoints",
                "best_val_metric", "tags"):
        assert key in first, key
    assert (first["name"], first["experiment_type"], first["status"], first["tags"]) == (
        "ppo-baseline", "rl", "completed", ["rl", "ppo", "btc"])
    assert first["num_checkpoints"] == 3 and first["best_val_metric"] == 2.5  # the marked model's, not the max
    assert isinstance(first["duration_seconds"], float) and first["duration_seconds"] >= 0
    assert dt.datetime.fromisoformat(first["start_time"])
    assert [(e["name"], e["status"], e["num_checkpoints"], e["best_val_metric"]) for e in found[:3]] == [
        ("lstm-forecast", "interrupted", 1, None), (LONG_NAME, "completed", 0, None), ("ppo-tuned-lr", "failed", 2, 3.0)]


@pytest.mark.parametrize(("filters", "expected"), [
    (["--type", "rl"], [2, 1]),
    (["--type", "nope"], []),
    (["--status", "failed"], [2]),
    (["--status", "completed"], [3, 1]),
    (["--status", "running"], []),
    (["--tag", "rl"], [3, 2, 1]),
    (["--tag", "rl", "--tag", "ppo"], [2, 1]),
    (["--tag", "ppo", "--tag", "btc"], [1]),
    (["--tag", "ppo", "--tag", "dqn"], []),
    (["--name", "ppo"], [2, 1]),
    (["--name", "tuned"], [2]),
    (["--limit", "2"], [4, 3]),
    (["--limit", "0"], []),
    (["--type", "rl", "--limit", "1"], [2]),
    (["--status", "completed", "--limit", "1"], [3]),
    (["--tag", "rl", "--name", "dqn", "--status", "completed"], [3]),
])
def test_ls_filters(sample: str, tmp_path: Path, filters: list[str], expected: list[int]) -> None:
    assert ids_of(ls_json(sample, tmp_path, *filters)) == expected


def test_ls_table_has_headers_and_one_aligned_line_per_experiment(sample: str, tmp_path: Path) -> None:
    lines = ok(cli("ls", "--db", sample, cwd=tmp_path)).stdout.splitlines()
    header, body = lines[0], lines[1:]
    assert header.split() == ["ID", "NAME", "TYPE", "STATUS", "START", "DURATION", "CKPTS", "BEST", "VAL", "TAGS"]
    assert [line.split()[0] for line in body] == ["4", "3", "2", "1"]
    assert LONG_NAME in body[1] and "…" not in "".join(lines)  # piped, no COLUMNS: nothing clipped
    at = header.index("STATUS")
    assert [line[at:].split()[0] for line in body] == ["interrupted", "completed", "failed", "completed"]
    at = header.index("TAGS")
    assert [line[at:] for line in body] == ["supervised", "rl,dqn", "rl,ppo", "rl,ppo,btc"]
    end = header.index("BEST VAL") + len("BEST VAL")
    assert [line[:end].split()[-1] for line in body] == ["-", "-", "3", "2.5"]  # right-aligned under BEST VAL


def test_ls_clips_long_names_to_the_terminal_width(sample: str, tmp_path: Path) -> None:
    lines = ok(cli("ls", "--db", sample, cwd=tmp_path, env=cli_env(COLUMNS="60"))).stdout.splitlines()
    assert len(lines) == 5
    assert LONG_NAME not in "".join(lines)
    name = lines[2].split()[1]
    assert name.endswith("…") and LONG_NAME.startswith(name[:-1]), name
    assert lines[2].split()[3] == "completed"  # the fixed columns are never clipped


def test_ls_empty_and_no_match(tmp_path: Path, sample: str) -> None:
    ok(cli("init", "--db", "empty.db", cwd=tmp_path))
    assert ok(cli("ls", "--db", "empty.db", cwd=tmp_path)).stdout.strip() == "no experiments"
    assert ls_json("empty.db", tmp_path) == []
    assert ok(cli("ls", "--db", sample, "--type", "nope", cwd=tmp_path)).stdout.strip() == "no experiments match"


# -- liveness: crashed, stale, pid reuse ------------------------------------------------------------


def test_killed_trainer_shows_as_crashed(tmp_path: Path) -> None:
    db = str(tmp_path / "live.db")
    with trainer(db, tmp_path) as (proc, _lines, exp_id):
        [alive] = ls_json(db, tmp_path)
        assert (alive["id"], alive["status"], alive["stored_status"]) == (exp_id, "running", "running")
        assert alive["pid"] == proc.pid and alive["hostname"] == socket.gethostname()
        assert ids_of(ls_json(db, tmp_path, "--status", "running")) == [exp_id]
        proc.kill()
        proc.wait(timeout=60)
    [dead] = ls_json(db, tmp_path)
    assert (dead["status"], dead["stored_status"]) == ("crashed", "running")
    assert ids_of(ls_json(db, tmp_path, "--status", "crashed")) == [exp_id]
    assert ls_json(db, tmp_path, "--status", "running") == []
    table = ok(cli("ls", "--db", db, cwd=tmp_path)).stdout.splitlines()
    assert table[1].split()[3] == "crashed"
    shown = ok(cli("show", str(exp_id), "--db", db, cwd=tmp_path)).stdout
    assert re.search(r"^  status +crashed \(recorded as running\)$", shown, re.M), shown
    assert rows(db, "SELECT status FROM experiments") == [("running",)]  # reads never write the verdict
    # Following a crashed run stops at once.
    followed = ok(cli("tail", str(exp_id), "--db", db, "--json", cwd=tmp_path, timeout=60))
    assert [strict_json(line)["value"] for line in followed.stdout.splitlines()] == [1.0]
    assert f"experiment {exp_id} is crashed" in followed.stderr


def test_trainer_that_exits_normally_shows_completed(tmp_path: Path) -> None:
    db = str(tmp_path / "live.db")
    with trainer(db, tmp_path) as (proc, lines, exp_id):
        tell(proc, "step")
        assert lines.next() == "ok"
        proc.stdin.close()  # EOF: the script returns without end_experiment; exit ends it
        assert lines.rest() == []
        assert proc.wait(timeout=60) == 0
    [done] = ls_json(db, tmp_path)
    assert (done["id"], done["status"], done["stored_status"]) == (exp_id, "completed", "completed")
    assert ls_json(db, tmp_path, "--status", "crashed") == []


RESUMER = r'''
import sys

from ml_persistence import ExperimentTracker

tracker = ExperimentTracker(sys.argv[1])
tracker.resume_experiment(int(sys.argv[2]))
tracker.log_metric("loss", 2.5, step=100)
tracker.flush()
print("resumed", flush=True)
sys.stdin.readline()
'''


def test_a_resumed_run_belongs_to_the_resuming_process(tmp_path: Path) -> None:
    db = str(tmp_path / "live.db")
    with trainer(db, tmp_path) as (proc, _lines, exp_id):
        proc.kill()
        proc.wait(timeout=60)
    assert _status(db, tmp_path, exp_id) == "crashed"
    with child([db, str(exp_id)], tmp_path, python_script=RESUMER) as (resumer, lines):
        assert lines.next() == "resumed"
        [alive] = ls_json(db, tmp_path)
        assert (alive["status"], alive["pid"]) == ("running", resumer.pid)
        refused = cli("delete", str(exp_id), "--yes", "--db", db, cwd=tmp_path)
        assert refused.returncode == 1 and "--force" in refused.stderr
        tell(resumer, "done")
        assert resumer.wait(timeout=60) == 0
    # The resuming process ended the run at its exit, as if it had started it.
    assert rows(db, "SELECT status, COUNT(*) FROM experiments") == [("completed", 1)]


def _set_running(db: str, exp_id: int, hostname: str, pid: int, started: dt.datetime) -> None:
    execute(db, "UPDATE experiments SET status = 'running', end_time = NULL, duration_seconds = NULL, "
            "hostname = ?, pid = ?, start_time = ?, updated_at = ? WHERE id = ?",
            (hostname, pid, stamp(started), stamp(started), exp_id))


def _status(db: str, cwd: Path, exp_id: int) -> str:
    return strict_json(ok(cli("show", str(exp_id), "--db", db, "--json", cwd=cwd)).stdout)["status"]


def test_run_on_another_host_goes_stale_after_an_hour_without_activity(copy: str, tmp_path: Path) -> None:
    now = dt.datetime.now()
    # Experiment 3 logged nothing: only its start time tells.
    _set_running(copy, 3, "another-machine", 4242, now - dt.timedelta(hours=2))
    # Experiment 1 started long ago but logged metrics, models and artifacts just now (the build).
    _set_running(copy, 1, "another-machine", 4242, now - dt.timedelta(hours=2))
    # Experiment 2 started a minute ago.
    _set_running(copy, 2, "another-machine", 4242, now - dt.timedelta(minutes=1))
    statuses = {e["id"]: (e["status"], e["stored_status"]) for e in ls_json(copy, tmp_path)}
    assert statuses == {1: ("running", "running"), 2: ("running", "running"), 3: ("stale", "running"),
                        4: ("interrupted", "interrupted")}
    assert ids_of(ls_json(copy, tmp_path, "--status", "stale")) == [3]
    assert ids_of(ls_json(copy, tmp_path, "--status", "running")) == [2, 1]


def test_reused_pid_does_not_keep_a_dead_run_alive(copy: str, tmp_path: Path) -> None:
    # A process that started after the experiment is not its trainer, whatever its pid.
    with child([sys.executable, "-c", "import sys; sys.stdin.readline()"], tmp_path) as (other, _):
        _set_running(copy, 3, socket.gethostname(), other.pid, dt.datetime.now() - dt.timedelta(hours=1))
        assert _status(copy, tmp_path, 3) == "crashed"
        # The same process, recorded by an experiment that started after it: alive.
        _set_running(copy, 3, socket.gethostname(), other.pid, dt.datetime.now())
        assert _status(copy, tmp_path, 3) == "running"
        other.stdin.close()
        assert other.wait(timeout=60) == 0
    assert _status(copy, tmp_path, 3) == "crashed"


# -- show -----------------------------------------------------------------------------------------


def test_show_prints_every_section_with_the_values(sample: str, tmp_path: Path) -> None:
    text = ok(cli("show", "1", "--db", sample, cwd=tmp_path)).stdout
    assert text.splitlines()[0] == "Experiment 1: ppo-baseline"
    for fact in (r"type +rl", r"status +completed", r"description +PPO on BTC-USD", r"tags +rl,ppo,btc",
                 r"checkpoints +3", r"best val metric +2\.5", r"best test metric +0\.2"):
        assert re.search(rf"^  {fact}$", text, re.M), fact
    parts = sections(text)
    assert list(parts) == ["Reproducibility", "Hyperparameters", "Datasets", "Metrics", "Models (* = best)",
                           "Artifacts", "Notes"]
    repro = "\n".join(parts["Reproducibility"])
    for fact in (rf"host +{re.escape(socket.gethostname())}", r"random seed +42", r"python +3\.\d+\.\d+",
                 r"pid +\d+", r"packages +\d+ recorded"):
        assert re.search(rf"^  {fact}$", repro, re.M), fact
    hp = {line.split()[0]: line.split(None, 1)[1] for line in parts["Hyperparameters"][1:]}
    assert hp == {"batch_size": "128", "gamma": "0.99", "layers": "64,64", "learning_rate": "0.0003",
                  "optimizer": "adam", "scheduler": "-", "use_gae": "yes"}
    assert [line.split() for line in parts["Datasets"]] == [
        ["ID", "USAGE", "NAME", "VERSION", "SPLIT", "SAMPLES", "FROM", "TO"],
        ["1", "train", "BTC-USD-Daily", "2023", "train", "365", "2023-01-01", "2023-12-31"],
        ["2", "test", "BTC-USD-Daily", "2023", "test", "182", "2024-01-01", "2024-06-30"]]
    assert [line.split() for line in parts["Metrics"]] == [
        ["NAME", "COUNT", "FIRST", "LAST", "MIN", "MAX"],
        ["loss", "3", "0.9", "0.7", "0.7", "0.9"],
        ["odd", "4", "nan", "0.3", "-inf", "inf"],
        ["train_return", "3", "0.1", "0.35", "0.1", "0.35"],
        ["val_sharpe", "3", "1.25", "2", "-0.5", "2"]]
    models = parts["Models (* = best)"]
    assert models[0].split() == ["ID", "BEST", "ALIASES", "EPISODE", "STEP", "TRAIN", "VAL", "TEST", "CHECKPOINT"]
    assert [line.split() for line in models[1:]] == [
        ["1", "0", "100", "0.1", "1.5", "0.7", "models/e1_ep0.pth"],
        ["2", "*", "1", "200", "-", "2.5", "0.2", "models/e1_ep1.pth"],
        ["3", "2", "300", "-", "0.5", "0.9", "models/e1_ep2.pth"]]
    at = models[0].index("BEST")
    assert [line[at] for line in models[1:]] == [" ", "*", " "]
    assert [line.split() for line in parts["Artifacts"]] == [
        ["ID", "TYPE", "NAME", "PATH", "MB"], ["1", "plot", "returns-plot", "plots/returns.png", "-"]]
    assert parts["Notes"] == ["  Training completed successfully"]


def test_show_empty_sections_say_none(sample: str, tmp_path: Path) -> None:
    parts = sections(ok(cli("show", "3", "--db", sample, cwd=tmp_path)).stdout)
    for title in ("Hyperparameters", "Datasets", "Metrics", "Models (* = best)", "Artifacts", "Notes"):
        assert parts[title] == ["  (none)"], title


def test_show_json_keeps_types_and_is_strict(sample: str, tmp_path: Path) -> None:
    exp = strict_json(ok(cli("show", "1", "--db", sample, "--json", cwd=tmp_path)).stdout)
    assert (exp["id"], exp["name"], exp["status"], exp["random_seed"]) == (1, "ppo-baseline", "completed", 42)
    hp = exp["hyperparameters"]
    assert hp == {"learning_rate": 0.0003, "gamma": 0.99, "batch_size": 128, "use_gae": True, "layers": [64, 64],
                  "optimizer": "adam", "scheduler": None}
    assert type(hp["batch_size"]) is int and type(hp["use_gae"]) is bool and type(hp["learning_rate"]) is float
    assert sorted((d["name"], d["split_type"], d["usage_type"]) for d in exp["datasets"]) == [
        ("BTC-USD-Daily", "test", "test"), ("BTC-USD-Daily", "train", "train")]
    metrics = exp["metrics"]
    assert sorted(metrics) == ["loss", "odd", "train_return", "val_sharpe"]
    tr = metrics["train_return"]
    assert {k: tr[k] for k in ("count", "first", "last", "min", "max")} == {
        "count": 3, "first": 0.1, "last": 0.35, "min": 0.1, "max": 0.35}
    assert tr["mean"] == pytest.approx(0.65 / 3)
    odd = metrics["odd"]
    assert {k: odd[k] for k in ("count", "first", "last", "min", "max")} == {
        "count": 4, "first": None, "last": 0.1 + 0.2, "min": "-Infinity", "max": "Infinity"}
    assert [m["id"] for m in exp["models"]] == [1, 2, 3]
    assert [m["is_best"] for m in exp["models"]] == [False, True, False]
    assert exp["best_model_id"] == 2
    assert [(a["artifact_type"], a["artifact_name"], a["artifact_path"]) for a in exp["artifacts"]] == [
        ("plot", "returns-plot", "plots/returns.png")]
    assert exp["notes"] == "Training completed successfully"
    two = strict_json(ok(cli("show", "2", "--db", sample, "--json", cwd=tmp_path)).stdout)
    assert two["best_model_id"] == 4 and two["hyperparameters"]["batch_size"] == "128"


def test_show_split_summarizes_only_that_split(sample: str, tmp_path: Path) -> None:
    exp = strict_json(ok(cli("show", "1", "--db", sample, "--json", "--split", "val", cwd=tmp_path)).stdout)
    assert {n: (s["count"], s["last"]) for n, s in exp["metrics"].items()} == {"loss": (1, 0.8), "val_sharpe": (3, 2.0)}


def test_show_unknown_experiment_exits_1(sample: str, tmp_path: Path) -> None:
    done = cli("show", "999", "--db", sample, cwd=tmp_path)
    assert failed(done, 1) == "ml-persistence: no experiment 999"
    assert done.stdout == ""


# -- compare --------------------------------------------------------------------------------------


def test_compare_marks_differing_hyperparameters(sample: str, tmp_path: Path) -> None:
    text = ok(cli("compare", "1", "2", "--db", sample, cwd=tmp_path)).stdout
    head = text.splitlines()[0]
    assert "#1 ppo-baseline" in head and "#2 ppo-tuned-lr" in head
    assert re.search(r"^status +completed +failed$", text, re.M)
    parts = sections(text)
    hp = parts["Hyperparameters (* = differs)"]
    assert hp[0].split() == ["NAME", "#1", "#2"]
    grid = {line[3:].split()[0]: (line[:1], line[3:].split()[1:]) for line in hp[1:]}
    assert grid == {
        "batch_size": ("*", ["128", "128"]),  # int 128 vs str "128": they differ
        "clip": ("*", ["(unset)", "0.2"]),
        "gamma": (" ", ["0.99", "0.99"]),
        "layers": ("*", ["64,64", "(unset)"]),
        "learning_rate": ("*", ["0.0003", "0.001"]),
        "optimizer": ("*", ["adam", "(unset)"]),
        "scheduler": ("*", ["-", "(unset)"]),
        "use_gae": ("*", ["yes", "(unset)"]),
    }
    assert "Metrics" in parts
    after = text[text.index("\nMetrics\n"):]
    # The metric with the most points both runs share comes first, then the rest by name.
    assert re.findall(r"^(\w+) +#1 +#2$", after, re.M) == ["train_return", "loss", "odd", "val_sharpe"]
    assert re.search(r"^count +3 +2$", after, re.M) and re.search(r"^last +0\.35 +0\.7$", after, re.M)
    assert re.search(r"^odd +#1 +#2$", after, re.M) and re.search(r"^count +4 +0$", after, re.M)


def test_compare_metric_and_split(sample: str, tmp_path: Path) -> None:
    text = ok(cli("compare", "1", "2", "--metric", "val_sharpe", "--db", sample, cwd=tmp_path)).stdout
    after = text[text.index("\nMetrics\n"):]
    assert re.findall(r"^(\w+) +#1 +#2$", after, re.M) == ["val_sharpe"]
    assert re.search(r"^first +1\.25 +3$", after, re.M)
    text = ok(cli("compare", "1", "2", "--metric", "loss", "--split", "val", "--db", sample, cwd=tmp_path)).stdout
    after = text[text.index("\nMetrics (split val)\n"):]
    assert re.search(r"^count +1 +0$", after, re.M) and re.search(r"^last +0\.8 +-$", after, re.M)


def test_compare_three_json(sample: str, tmp_path: Path) -> None:
    data = strict_json(ok(cli("compare", "1", "2", "3", "--json", "--db", sample, cwd=tmp_path)).stdout)
    assert sorted(data) == ["default_metric", "experiments", "hyperparameters", "metrics"]
    # Run 3 logged none; runs 1 and 2 share train_return (3 and 2 points) and val_sharpe (3 and 1): not `loss`,
    # the alphabetically first, which only run 1 has.
    assert data["default_metric"] == "train_return"
    assert [e["id"] for e in data["experiments"]] == [1, 2, 3]
    assert all("git_diff" not in e for e in data["experiments"])
    hp = {r["param_name"]: r for r in data["hyperparameters"]}
    assert hp["learning_rate"] == {"param_name": "learning_rate", "differs": True,
                                   "values": {"1": 0.0003, "2": 0.001, "3": None}}
    assert hp["batch_size"]["values"] == {"1": 128, "2": "128", "3": None}
    two = strict_json(ok(cli("compare", "1", "2", "--json", "--db", sample, cwd=tmp_path)).stdout)
    assert {r["param_name"]: r["differs"] for r in two["hyperparameters"]}["gamma"] is False
    by = {(m["metric_name"], m["experiment_id"]): m for m in data["metrics"]}
    assert set(by) == {(n, i) for n in ("loss", "odd", "train_return", "val_sharpe") for i in (1, 2, 3)}
    assert {k: by[("train_return", 2)][k] for k in ("count", "first", "last", "min", "max")} == {
        "count": 2, "first": 0.5, "last": 0.7, "min": 0.5, "max": 0.7}
    assert by[("train_return", 3)]["count"] == 0 and by[("train_return", 3)]["mean"] is None
    assert by[("odd", 1)]["max"] == "Infinity"


def test_compare_usage_and_missing(sample: str, tmp_path: Path) -> None:
    one, same, missing = cli_many([["compare", "1", "--db", sample], ["compare", "1", "1", "--db", sample],
                                   ["compare", "1", "999", "--db", sample]], tmp_path)
    assert "at least two" in failed(one, 2)
    assert "at least two" in failed(same, 2)
    assert failed(missing, 1) == "ml-persistence: no experiment 999"


# -- best -----------------------------------------------------------------------------------------


def _best(sample: str, cwd: Path, *args: str) -> list[dict[str, Any]]:
    return strict_json(ok(cli("best", "--db", sample, "--json", *args, cwd=cwd)).stdout)


@pytest.mark.parametrize(("args", "expected"), [
    ([], [4, 2, 1, 5, 3, 6]),  # val_metric, highest first, unscored last
    (["--experiment", "1"], [2, 1, 3]),
    (["--experiment", "1", "--experiment", "4"], [2, 1, 3, 6]),
    (["--limit", "2"], [4, 2]),
    (["--by", "test_metric"], [6, 5, 3, 1, 2, 4]),
    (["--marked"], [4, 2]),
    (["--marked", "--experiment", "2"], [4]),
])
def test_best_ranks_models(sample: str, tmp_path: Path, args: list[str], expected: list[int]) -> None:
    assert [m["id"] for m in _best(sample, tmp_path, *args)] == expected


def test_best_json_and_table(sample: str, tmp_path: Path) -> None:
    top = _best(sample, tmp_path, "--limit", "1")[0]
    assert (top["experiment_id"], top["experiment_name"], top["val_metric"], top["is_best"], top["checkpoint_path"]) == (
        2, "ppo-tuned-lr", 3.0, True, "models/e2_ep0.pth")
    lines = ok(cli("best", "--db", sample, "--by", "test_metric", cwd=tmp_path)).stdout.splitlines()
    assert lines[0].split() == ["MODEL", "EXP", "EXPERIMENT", "BEST", "ALIASES", "EPISODE", "STEP", "TEST", "METRIC",
                                "CHECKPOINT"]
    assert [line.split()[0] for line in lines[1:]] == ["6", "5", "3", "1", "2", "4"]
    assert lines[1].split() == ["6", "4", "lstm-forecast", "-", "-", "9", "models/lstm.pth"]
    at = lines[0].index("BEST")
    assert [line[at] for line in lines[1:]] == [" ", " ", " ", " ", "*", "*"]


def test_best_errors(sample: str, tmp_path: Path) -> None:
    missing, by, limit = cli_many([["best", "--experiment", "999", "--db", sample],
                                   ["best", "--by", "bogus", "--db", sample],
                                   ["best", "--limit", "-1", "--db", sample]], tmp_path)
    assert failed(missing, 1) == "ml-persistence: no experiment 999"
    assert "invalid choice" in failed(by, 2)
    failed(limit, 2)
    assert ok(cli("best", "--db", sample, "--experiment", "3", cwd=tmp_path)).stdout.strip() == "no models"


# -- metrics --------------------------------------------------------------------------------------


def test_metrics_csv_round_trips_exact_values(sample: str, tmp_path: Path) -> None:
    text = ok(cli("metrics", "1", "train_return", "--format", "csv", "--db", sample, cwd=tmp_path)).stdout
    got = list(csv.DictReader(io.StringIO(text)))
    assert list(got[0]) == ["episode", "step", "epoch", "value", "value_json", "split", "phase", "timestamp"]
    assert [(r["episode"], float(r["value"]), r["split"]) for r in got] == [
        ("0", 0.1, "train"), ("1", 0.2, "train"), ("2", 0.35, "train")]
    odd = list(csv.DictReader(io.StringIO(ok(cli("metrics", "1", "odd", "--format", "csv", "--db", sample,
                                                    cwd=tmp_path)).stdout)))
    assert [r["value"] for r in odd] == ["nan", "inf", "-inf", "0.30000000000000004"]
    assert float(odd[3]["value"]) == 0.1 + 0.2 and [r["step"] for r in odd] == ["0", "1", "2", "3"]
    assert all(dt.datetime.fromisoformat(r["timestamp"]) for r in odd)


def test_metrics_json_is_strict(sample: str, tmp_path: Path) -> None:
    for flag in (["--json"], ["--format", "json"]):
        got = strict_json(ok(cli("metrics", "1", "odd", *flag, "--db", sample, cwd=tmp_path)).stdout)
        assert [r["value"] for r in got] == [None, "Infinity", "-Infinity", 0.1 + 0.2]
        assert [r["step"] for r in got] == [0, 1, 2, 3]
    empty = strict_json(ok(cli("metrics", "1", "loss", "--json", "--split", "test", "--db", sample,
                               cwd=tmp_path)).stdout)
    assert empty == []


def test_metrics_split_and_table(sample: str, tmp_path: Path) -> None:
    got = strict_json(ok(cli("metrics", "1", "loss", "--split", "train", "--json", "--db", sample,
                             cwd=tmp_path)).stdout)
    assert [(r["step"], r["value"], r["split"]) for r in got] == [(1, 0.9, "train"), (2, 0.7, "train")]
    lines = ok(cli("metrics", "1", "loss", "--db", sample, cwd=tmp_path)).stdout.splitlines()
    assert lines[0].split() == ["EPISODE", "STEP", "EPOCH", "VALUE", "SPLIT", "PHASE", "TIMESTAMP"]
    assert [line.split()[:5] for line in lines[1:]] == [
        ["-", "1", "-", "0.9", "train"], ["-", "1", "-", "0.8", "val"], ["-", "2", "-", "0.7", "train"]]
    at = lines[0].index("VALUE") + len("VALUE")
    assert [line[:at].split()[-1] for line in lines[1:]] == ["0.9", "0.8", "0.7"]  # right-aligned under VALUE
    odd = ok(cli("metrics", "1", "odd", "--db", sample, cwd=tmp_path)).stdout.splitlines()
    assert [line.split()[3] for line in odd[1:]] == ["nan", "inf", "-inf", "0.3"]


def test_metrics_unknown_name_lists_the_known_ones(sample: str, tmp_path: Path) -> None:
    line = failed(cli("metrics", "1", "nope", "--db", sample, cwd=tmp_path), 1)
    assert "nope" in line and "loss, odd, train_return, val_sharpe" in line
    assert "none" in failed(cli("metrics", "3", "nope", "--db", sample, cwd=tmp_path), 1)
    assert failed(cli("metrics", "999", "loss", "--db", sample, cwd=tmp_path), 1) == "ml-persistence: no experiment 999"


# -- tail -----------------------------------------------------------------------------------------


def test_tail_of_an_ended_experiment_prints_the_last_rows_and_exits(sample: str, tmp_path: Path) -> None:
    done = ok(cli("tail", "1", "-n", "2", "--metric", "train_return", "--json", "--db", sample, cwd=tmp_path))
    got = [strict_json(line) for line in done.stdout.splitlines()]
    assert [(r["metric_name"], r["episode"], r["value"]) for r in got] == [
        ("train_return", 1, 0.2), ("train_return", 2, 0.35)]
    assert "experiment 1 is completed" in done.stderr
    done = ok(cli("tail", "1", "-n", "3", "--db", sample, cwd=tmp_path))
    assert [line.split()[-3:] for line in done.stdout.splitlines()] == [
        ["loss", "0.9", "[train]"], ["loss", "0.8", "[val]"], ["loss", "0.7", "[train]"]]
    assert "METRIC" in done.stderr  # the header goes to stderr, so stdout pipes clean rows
    odd = ok(cli("tail", "1", "--metric", "odd", "--json", "--db", sample, cwd=tmp_path))
    assert [strict_json(line)["value"] for line in odd.stdout.splitlines()] == [None, "Infinity", "-Infinity", 0.1 + 0.2]


def test_tail_follows_a_live_trainer_until_it_ends(tmp_path: Path) -> None:
    db = str(tmp_path / "live.db")
    with trainer(db, tmp_path) as (proc, lines, exp_id):
        tell(proc, "step")
        assert lines.next() == "ok"
        with child([sys.executable, "-m", "ml_persistence", "tail", str(exp_id), "--json", "--interval", "0.05",
                    "--db", db], tmp_path) as (follower, followed):
            history = [strict_json(followed.next()) for _ in range(2)]
            assert [(r["metric_name"], r["step"], r["value"]) for r in history] == [("loss", 0, 1.0), ("loss", 1, 1.125)]
            for step in (2, 3):
                tell(proc, "step")
                assert lines.next() == "ok"
                row = strict_json(followed.next())
                assert (row["metric_name"], row["step"], row["value"]) == ("loss", step, step + 0.125)
            tell(proc, "step")  # logged right before the end: tail must still print it
            assert lines.next() == "ok"
            tell(proc, "end")
            assert lines.next() == "ended"
            proc.stdin.close()
            assert proc.wait(timeout=60) == 0
            rest = [strict_json(line) for line in followed.rest()]
            assert [r["value"] for r in rest] == [4.125]
            assert follower.wait(timeout=60) == 0
    assert f"experiment {exp_id} is completed" in (tmp_path / "child-1.err").read_text()


def test_ctrl_c_stops_tail_cleanly(tmp_path: Path) -> None:
    db = str(tmp_path / "live.db")
    with trainer(db, tmp_path) as (_proc, _lines, exp_id):
        with child([sys.executable, "-m", "ml_persistence", "tail", str(exp_id), "--json", "--interval", "0.05",
                    "--db", db], tmp_path) as (follower, followed):
            assert strict_json(followed.next())["value"] == 1.0  # following now
            follower.send_signal(signal.SIGINT)
            assert follower.wait(timeout=30) == 0
            assert followed.rest() == []
    assert "Traceback" not in (tmp_path / "child-1.err").read_text()


def test_tail_usage_errors(sample: str, tmp_path: Path) -> None:
    interval, lines, missing = cli_many([["tail", "1", "--interval", "0", "--db", sample],
                                         ["tail", "1", "-n", "-1", "--db", sample],
                                         ["tail", "999", "--db", sample]], tmp_path)
    failed(interval, 2)
    failed(lines, 2)
    assert failed(missing, 1) == "ml-persistence: no experiment 999"


# -- backup ---------------------------------------------------------------------------------------


def test_backup_while_a_trainer_writes(tmp_path: Path) -> None:
    db = str(tmp_path / "busy.db")
    target = tmp_path / "copy.db"
    with child([db], tmp_path, python_script=WRITER) as (writer, said):
        assert said.next() == "ready"
        done = ok(cli("backup", str(target), "--db", db, cwd=tmp_path))
        tell(writer, "stop")
        total = int(said.next())
        assert writer.wait(timeout=60) == 0
    assert re.match(rf"Backed up {re.escape(db)} to {re.escape(str(target))}: 1 experiment, \d+ metric rows", done.stdout)
    assert sorted(p.name for p in tmp_path.glob("copy.db*")) == ["copy.db"]  # one file, no -wal, no partial
    ok(cli("check", "--db", str(target), cwd=tmp_path))
    (copied,) = rows(str(target), "SELECT COUNT(*) FROM metrics")[0]
    assert 400 <= copied <= total
    assert f"{copied} metric rows" in done.stdout
    assert rows(str(target), "PRAGMA journal_mode") == [("delete",)]
    assert rows(db, "SELECT COUNT(*) FROM metrics") == [(total,)]  # the trainer lost nothing to the backup
    # A consistent snapshot: whole batches (a and b logged together), in order.
    assert rows(str(target), "SELECT COUNT(*) FROM metrics WHERE metric_name = 'a'") == [(copied // 2,)]
    assert rows(str(target), "SELECT MAX(step) + 1 FROM metrics") == [(copied // 2,)]


def test_backup_into_a_directory_and_overwrite_rules(sample: str, tmp_path: Path) -> None:
    folder = tmp_path / "backups"
    folder.mkdir()
    ok(cli("backup", str(folder), "--db", sample, cwd=tmp_path))
    [made] = list(folder.iterdir())
    assert re.fullmatch(r"ml_experiments_backup_\d{8}_\d{6}\.db", made.name), made.name
    assert rows(str(made), "SELECT COUNT(*) FROM experiments") == [(4,)]
    dest = tmp_path / "kept.db"
    dest.write_bytes(b"precious")
    assert "--force" in failed(cli("backup", str(dest), "--db", sample, cwd=tmp_path), 1)
    assert dest.read_bytes() == b"precious"
    ok(cli("backup", str(dest), "--force", "--db", sample, cwd=tmp_path))
    assert rows(str(dest), "SELECT COUNT(*) FROM metrics") == [(16,)]
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []


def test_two_backups_into_a_directory_in_the_same_second_keep_both(sample: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from ml_persistence.cli import main, maintain

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> "Frozen":
            return cls(2024, 5, 1, 12, 0, 0)

    monkeypatch.setattr(maintain, "dt", types.SimpleNamespace(datetime=Frozen))
    folder = tmp_path / "backups"
    folder.mkdir()
    first = main(["backup", str(folder), "--db", sample])
    second = main(["backup", str(folder), "--db", sample])
    assert first == 0
    assert len(list(folder.iterdir())) == 2 or second != 0


def test_a_restored_backup_is_used_in_wal_mode(sample: str, tmp_path: Path) -> None:
    restored = tmp_path / "restored.db"
    ok(cli("backup", str(restored), "--db", sample, cwd=tmp_path))
    script = ("import sys\nfrom ml_persistence import ExperimentTracker\n"
              "t = ExperimentTracker(sys.argv[1])\nt.start_experiment('after restore')\nt.end_experiment()\n")
    done = subprocess.run([sys.executable, "-c", script, str(restored)], env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert rows(str(restored), "PRAGMA journal_mode") == [("wal",)]


# -- check, vacuum --------------------------------------------------------------------------------


def test_check_good_database(sample: str, tmp_path: Path) -> None:
    text = ok(cli("check", "--db", sample, cwd=tmp_path)).stdout
    assert text.splitlines() == [f"{sample}: schema version {SCHEMA_VERSION}", "  integrity: ok", "  foreign keys: ok"]
    report = strict_json(ok(cli("check", "--json", "--db", sample, cwd=tmp_path)).stdout)
    assert report == {"ok": True, "schema_version": SCHEMA_VERSION, "integrity": ["ok"], "foreign_keys": []}
    ok(cli("check", "--quick", "--db", sample, cwd=tmp_path))


def test_check_reports_a_dangling_reference(copy: str, tmp_path: Path) -> None:
    execute(copy, "INSERT INTO metrics (experiment_id, metric_name, value) VALUES (999, 'orphan', 1.0)")
    (orphan,) = rows(copy, "SELECT id FROM metrics WHERE metric_name = 'orphan'")[0]
    done = cli("check", "--db", copy, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "  foreign keys: 1 dangling reference(s)" in done.stdout.splitlines()
    assert f"metrics row {orphan} points at a missing experiments row" in done.stdout
    done = cli("check", "--json", "--db", copy, cwd=tmp_path)
    assert done.returncode == 1
    report = strict_json(done.stdout)
    assert report["ok"] is False and report["integrity"] == ["ok"]
    assert report["foreign_keys"] == [{"table": "metrics", "rowid": orphan, "parent": "experiments"}]


def test_check_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_text("not a database, just text\n" * 200)
    assert "not an SQLite database" in failed(cli("check", "--db", "junk.db", cwd=tmp_path), 1)


def test_vacuum_keeps_the_data(copy: str, tmp_path: Path) -> None:
    before = ls_json(copy, tmp_path)
    counts = rows(copy, "SELECT (SELECT COUNT(*) FROM metrics), (SELECT COUNT(*) FROM models)")
    done = ok(cli("vacuum", "--db", copy, cwd=tmp_path))
    assert re.fullmatch(rf"Vacuumed {re.escape(copy)}: [\d.]+ MB -> [\d.]+ MB\n", done.stdout), done.stdout
    assert ls_json(copy, tmp_path) == before
    assert rows(copy, "SELECT (SELECT COUNT(*) FROM metrics), (SELECT COUNT(*) FROM models)") == counts
    ok(cli("check", "--db", copy, cwd=tmp_path))


# -- delete ---------------------------------------------------------------------------------------

OWNED = ("metrics", "hyperparameters", "models", "artifacts", "experiment_datasets")


def _owned(db: str, exp_id: int) -> dict[str, int]:
    return {t: rows(db, f"SELECT COUNT(*) FROM {t} WHERE experiment_id = ?", (exp_id,))[0][0] for t in OWNED}


def test_delete_asks_first(copy: str, tmp_path: Path) -> None:
    before = {i: _owned(copy, i) for i in (1, 2)}
    assert before[1] == {"metrics": 13, "hyperparameters": 7, "models": 3, "artifacts": 1, "experiment_datasets": 2}
    for answer in ("n\n", "", "maybe\n"):
        done = cli("delete", "1", "--db", copy, cwd=tmp_path, input=answer)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "[y/N]" in done.stderr and "nothing deleted" in done.stderr
        assert "experiment 1 'ppo-baseline' (completed)" in done.stderr
        assert _owned(copy, 1) == before[1]
    done = ok(cli("delete", "1", "--db", copy, cwd=tmp_path, input="y\n"))
    assert done.stdout.startswith("Deleted experiment(s) 1.")
    assert _owned(copy, 1) == dict.fromkeys(OWNED, 0)
    assert [r[0] for r in rows(copy, "SELECT id FROM experiments ORDER BY id")] == [2, 3, 4]
    assert _owned(copy, 2) == before[2]
    assert rows(copy, "SELECT COUNT(*) FROM datasets") == [(2,)]  # shared: kept
    assert ids_of(ls_json(copy, tmp_path)) == [4, 3, 2]
    ok(cli("check", "--db", copy, cwd=tmp_path))  # nothing left dangling


def test_delete_yes_several_and_unknown(copy: str, tmp_path: Path) -> None:
    assert failed(cli("delete", "2", "999", "--yes", "--db", copy, cwd=tmp_path), 1) == "ml-persistence: no experiment 999"
    assert _owned(copy, 2)["models"] == 2  # all or nothing
    done = ok(cli("delete", "2", "4", "-y", "--db", copy, cwd=tmp_path))
    assert "[y/N]" not in done.stderr
    assert ids_of(ls_json(copy, tmp_path)) == [3, 1]
    assert rows(copy, "SELECT COUNT(*) FROM models") == [(3,)]
    ok(cli("check", "--db", copy, cwd=tmp_path))


def test_delete_refuses_a_running_experiment_unless_forced(tmp_path: Path) -> None:
    db = str(tmp_path / "live.db")
    with trainer(db, tmp_path) as (_proc, _lines, exp_id):
        line = failed(cli("delete", str(exp_id), "--yes", "--db", db, cwd=tmp_path), 1)
        assert "may still be running" in line and "--force" in line
        assert rows(db, "SELECT COUNT(*) FROM experiments") == [(1,)]
        ok(cli("delete", str(exp_id), "--yes", "--force", "--db", db, cwd=tmp_path))
        assert rows(db, "SELECT COUNT(*) FROM experiments") == [(0,)]
        assert rows(db, "SELECT COUNT(*) FROM metrics") == [(0,)]


# -- the database argument, missing and legacy files --------------------------------------------------


def test_db_option_before_or_after_the_command_and_from_the_environment(sample: str, tmp_path: Path) -> None:
    assert ids_of(strict_json(ok(cli("--db", sample, "ls", "--json", cwd=tmp_path)).stdout)) == [4, 3, 2, 1]
    env = cli_env(ML_PERSISTENCE_DB=sample)
    assert ids_of(strict_json(ok(cli("ls", "--json", cwd=tmp_path, env=env)).stdout)) == [4, 3, 2, 1]
    # --db wins over the environment.
    env = cli_env(ML_PERSISTENCE_DB=str(tmp_path / "nowhere.db"))
    assert ids_of(strict_json(ok(cli("ls", "--json", "--db", sample, cwd=tmp_path, env=env)).stdout)) == [4, 3, 2, 1]
    # Default: ./ml_experiments.db
    clone(sample, tmp_path / "ml_experiments.db")
    assert ids_of(strict_json(ok(cli("ls", "--json", cwd=tmp_path)).stdout)) == [4, 3, 2, 1]


def test_reading_commands_never_create_a_database(tmp_path: Path) -> None:
    commands = [["ls"], ["show", "1"], ["compare", "1", "2"], ["best"], ["metrics", "1", "loss"], ["tail", "1"],
                ["check"], ["backup", "b.db"], ["vacuum"], ["delete", "1", "--yes"]]
    for command, done in zip(commands, cli_many([[*c, "--db", "missing.db"] for c in commands], tmp_path)):
        assert "no database at missing.db" in failed(done, 1), command
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "adir").mkdir()
    assert "is a directory" in failed(cli("ls", "--db", "adir", cwd=tmp_path), 2)


def _legacy(path: Path) -> str:
    from ml_persistence.sqlite.schema import ORIGINAL_TABLES

    conn = sqlite3.connect(path)
    try:
        conn.executescript(ORIGINAL_TABLES)
        conn.execute("INSERT INTO experiments (name, experiment_type, status, start_time, tags) "
                     "VALUES ('old run', 'rl', 'completed', '2023-05-01 10:00:00', '[\"rl\"]')")
        conn.execute("INSERT INTO experiments (name, experiment_type, status, start_time) "
                     "VALUES ('old unfinished', 'rl', 'running', '2023-05-02 10:00:00')")
        conn.execute("INSERT INTO metrics (experiment_id, metric_name, value, episode) VALUES (1, 'reward', 1.5, 0)")
        conn.execute("INSERT INTO hyperparameters (experiment_id, param_name, param_value, param_type) "
                     "VALUES (1, 'lr', '0.001', 'float')")
        conn.commit()
    finally:
        conn.close()
    return str(path)


def test_reading_a_database_of_the_original_schema_leaves_it_untouched(tmp_path: Path) -> None:
    db = _legacy(tmp_path / "legacy.db")
    assert rows(db, "PRAGMA user_version") == [(0,)]
    before = hashlib.sha256(Path(db).read_bytes()).hexdigest()
    done = ok(cli("ls", "--json", "--db", db, cwd=tmp_path))
    assert done.stderr == ""
    found = strict_json(done.stdout)
    # The unfinished run has no pid (the original recorded none) and no activity since 2023: stale.
    assert [(e["id"], e["name"], e["status"], e["tags"]) for e in found] == [
        (2, "old unfinished", "stale", []), (1, "old run", "completed", ["rl"])]
    again = ok(cli("show", "1", "--db", db, cwd=tmp_path))
    assert again.stderr == ""
    parts = sections(again.stdout)
    assert parts["Reproducibility"] == ["  (nothing recorded)"]
    assert [line.split() for line in parts["Hyperparameters"]] == [["NAME", "VALUE"], ["lr", "0.001"]]
    assert [line.split()[:2] for line in parts["Metrics"]] == [["NAME", "COUNT"], ["reward", "1"]]
    ok(cli("check", "--db", db, cwd=tmp_path))
    exported = ok(cli("export", "--what", "metrics", "--db", db, cwd=tmp_path)).stdout.splitlines()
    assert exported[0].split(",")[-1] == "metadata" and len(exported) == 2
    assert hashlib.sha256(Path(db).read_bytes()).hexdigest() == before
    assert rows(db, "PRAGMA user_version") == [(0,)]
    # A writing command upgrades it, as the library does.
    ok(cli("init", "--db", db, cwd=tmp_path))
    assert rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_show_an_experiment_without_a_status(copy: str, tmp_path: Path) -> None:
    execute(copy, "UPDATE experiments SET status = NULL WHERE id = 3")
    assert re.search(r"^  status +-$", ok(cli("show", "3", "--db", copy, cwd=tmp_path)).stdout, re.M)


def test_reading_an_unrelated_sqlite_database_does_not_change_it(tmp_path: Path) -> None:
    execute(str(tmp_path / "other.db"), "CREATE TABLE inventory (item TEXT)")
    done = cli("ls", "--db", "other.db", cwd=tmp_path)
    assert rows(str(tmp_path / "other.db"), "SELECT name FROM sqlite_master") == [("inventory",)]
    assert done.returncode == 1 and "Traceback" not in done.stderr


# -- usage, help ----------------------------------------------------------------------------------


def test_usage_errors_exit_2(sample: str, tmp_path: Path) -> None:
    cases = [["ls", "--bogus"], ["show"], ["show", "abc"], ["ls", "--limit", "-1"], ["ls", "--limit", "x"],
             ["metrics", "1"], ["metrics", "1", "loss", "--format", "xml"], ["compare"], ["delete"], ["backup"],
             []]
    for argv, done in zip(cases, cli_many([[*c, "--db", sample] if c else [] for c in cases], tmp_path)):
        assert done.returncode == 2, (argv, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == ""
        assert done.stderr.startswith("usage: ml-persistence") or done.stderr.startswith("ml-persistence: "), argv


HELP = {
    "": ["--version", "--help", "ls", "show", "compare", "best", "metrics", "tail", "backup", "vacuum", "check",
         "delete", "init", "demo", "agent", "--db"],
    "init": ["--db"],
    "demo": ["--episodes", "--steps", "--seed", "--db"],
    "ls": ["--type", "--status", "--tag", "--name", "--limit", "--json", "--db", "crashed"],
    "show": ["id", "--split", "--json", "--db"],
    "compare": ["ID", "--metric", "--split", "--json", "--db"],
    "best": ["--experiment", "--by", "--marked", "--limit", "--json", "--db"],
    "metrics": ["id", "name", "--split", "--format", "--json", "--db"],
    "tail": ["id", "--metric", "--lines", "--interval", "--json", "--db"],
    "backup": ["DEST", "--force", "--db"],
    "vacuum": ["--timeout", "--db"],
    "check": ["--quick", "--json", "--db"],
    "delete": ["ID", "--yes", "--force", "--db"],
}


def test_help_for_every_command(tmp_path: Path) -> None:
    commands = list(HELP)
    for command, done in zip(commands, cli_many([[c, "--help"] if c else ["--help"] for c in commands], tmp_path)):
        ok(done)
        assert done.stdout.startswith(f"usage: ml-persistence {command}".rstrip()), command
        for word in HELP[command]:
            assert word in done.stdout, (command, word)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_version_and_agent_help(tmp_path: Path) -> None:
    from ml_persistence import __version__

    version, agent = cli_many([["--version"], ["agent", "--help"]], tmp_path)
    assert ok(version).stdout.strip() == f"ml-persistence {__version__}"
    assert ok(agent).stdout.startswith("usage: ml-persistence-agent")
    assert "--listen" in agent.stdout


def test_agent_after_global_db_option(tmp_path: Path) -> None:
    done = cli("--db", "x.db", "agent", "--help", cwd=tmp_path)
    assert ok(done).stdout.startswith("usage: ml-persistence-agent")


def test_control_characters_in_stored_text_never_reach_the_terminal(tmp_path: Path) -> None:
    db = str(tmp_path / "esc.db")
    script = (
        "from ml_persistence import ExperimentTracker\n"
        f"t = ExperimentTracker({db!r})\n"
        "t.start_experiment('\\x1b[2J\\x1b]0;pwned\\x07run', tags=['\\x1b[31mred'], metadata={'\\x1b[31mkey': 1})\n"
        "t.log_metric('\\x1b[1mloss', 1.0, episode=0, split='\\x1b[4mval')\n"
        "t.end_experiment('completed', notes='line one\\n\\x1b[5mline two')\n"
    )
    run_script(script, tmp_path)
    for args in (["ls"], ["show", "1"], ["compare", "1", "1"], ["metrics", "1", "\x1b[1mloss"], ["tail", "1"]):
        done = cli(*args, "--db", db, cwd=tmp_path)
        assert "\x1b" not in done.stdout + done.stderr, args
    shown = ok(cli("show", "1", "--db", db, cwd=tmp_path)).stdout
    assert "\\x1b[2J\\x1b]0;pwned\\x07run" in shown and "  \\x1b[5mline two" in shown


# -- found by a hostile review ------------------------------------------------------------------


def test_agent_command_never_runs_an_agent_py_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text("print('the user agent.py ran')\n")
    done = ok(cli("agent", "--help", cwd=tmp_path))
    assert "the user agent.py ran" not in done.stdout and "--listen" in done.stdout


@pytest.mark.parametrize("args", [
    ["show", str(2**64)], ["metrics", str(2**63), "loss"], ["compare", "1", str(2**70)], ["ls", "--limit", "-1"],
    ["best", "--limit", str(2**64)], ["tail", "1", "--interval", "nan"], ["tail", "1", "--interval", "inf"],
    ["delete", str(2**64)], ["export", "--experiment", str(2**64)], ["vacuum", "--timeout", "0"],
    ["demo", "--episodes", "0"],
])
def test_out_of_range_numbers_are_usage_errors(copy: str, tmp_path: Path, args: list[str]) -> None:
    done = cli(*args, "--db", copy, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


def test_delete_unlinks_rows_of_other_experiments_that_named_its_models(tmp_path: Path) -> None:
    db = str(tmp_path / "links.db")
    script = (
        "from ml_persistence import ExperimentTracker, ModelRegistry\n"
        f"t, r = ExperimentTracker({db!r}), ModelRegistry({db!r})\n"
        "a = t.start_experiment('a')\n"
        "m = r.register_model(a, 'a.pt', val_metric=1.0)\n"
        "t.end_experiment()\n"
        "b = t.start_experiment('b')\n"
        "t.log_metric('eval_of_a', 0.5, step=1, model_id=m)\n"
        "t.log_artifact('cmp.png', 'plot', model_id=m)\n"
        "t.end_experiment()\n"
    )
    run_script(script, tmp_path)
    ok(cli("delete", "1", "--yes", "--db", db, cwd=tmp_path))
    ok(cli("check", "--db", db, cwd=tmp_path))
    assert rows(db, "SELECT metric_name, model_id FROM metrics") == [("eval_of_a", None)]
    assert rows(db, "SELECT artifact_path, model_id FROM artifacts") == [("cmp.png", None)]


def test_backup_onto_the_database_itself_is_refused(copy: str, tmp_path: Path) -> None:
    before = hashlib.sha256(Path(copy).read_bytes()).hexdigest()
    done = cli("backup", copy, "--force", "--db", copy, cwd=tmp_path)
    assert done.returncode == 2 and "the database itself" in done.stderr
    assert hashlib.sha256(Path(copy).read_bytes()).hexdigest() == before


def test_check_reports_a_corrupt_file_instead_of_failing(copy: str, tmp_path: Path) -> None:
    size = Path(copy).stat().st_size
    assert size > 8192
    with open(copy, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * 4096)  # a page in the middle of the file
    done = cli("check", "--json", "--db", copy, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    report = strict_json(done.stdout)
    assert report["ok"] is False and (report["integrity"] != ["ok"] or report["foreign_keys"])


def test_ls_orders_by_start_time_across_imported_runs(copy: str, tmp_path: Path) -> None:
    from test_legacy import build_legacy

    legacy = build_legacy(tmp_path / "experiments.db")
    ok(cli("migrate-legacy", str(legacy), "--db", copy, cwd=tmp_path))
    listed = ls_json(copy, tmp_path)
    starts = [e["start_time"] for e in listed]
    assert starts == sorted(starts, reverse=True) and listed[0]["name"] == "lstm-forecast"
