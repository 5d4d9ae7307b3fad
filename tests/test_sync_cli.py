"""`ml-persistence sync` run as a user runs it: real processes, SQLite files written with the library,
PostgreSQL where $ML_PERSISTENCE_TEST_POSTGRES names a server.

Live trainers are driven line by line over stdin and the syncer's progress is read from its output
lines, so nothing here waits on the clock.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

import pytest

from conftest import rows, subprocess_env
from pg import pg_rows

# Two ended experiments written through the whole API; COUNTS is what they hold.
SEED = r'''
import sys

import ml_persistence
from ml_persistence import DatasetManager, ExperimentTracker, ModelRegistry

db = sys.argv[1]
t, reg, ds = ExperimentTracker(db), ModelRegistry(db), DatasetManager(db)
train = ds.register_dataset("BTC-USD-Daily", "2023", split_type="train", num_samples=365)
test = ds.register_dataset("BTC-USD-Daily", "2023", split_type="test", num_samples=182)
e1 = t.start_experiment("ppo-a", experiment_type="rl", tags=["rl", "ppo"], random_seed=1)
t.log_hyperparameters_batch({"learning_rate": 3e-4, "gamma": 0.99, "batch_size": 128})
ds.link_dataset_to_experiment(e1, train, "train")
ds.link_dataset_to_experiment(e1, test, "test")
for episode in range(5):
    t.log_metrics_batch({"train_return": episode / 10, "loss": 1 / (episode + 1)}, episode=episode)
reg.register_model(e1, "models/a0.pth", episode_num=0, val_metric=1.0)
reg.register_model(e1, "models/a1.pth", episode_num=1, val_metric=2.0, is_best=True)
t.log_artifact("plots/a.png", "plot")
t.end_experiment("completed")
e2 = t.start_experiment("dqn-b", experiment_type="rl", tags=["rl"])
t.log_hyperparameters_batch({"learning_rate": 1e-3, "eps": 0.1})
ds.link_dataset_to_experiment(e2, train, "train")
for step in range(4):
    t.log_metric("loss", 0.5 - step / 10, step=step)
reg.register_model(e2, "models/b0.pth", episode_num=0)
t.end_experiment("failed")
ml_persistence.shutdown()
'''
COUNTS = {"experiments": 2, "models": 3, "hyperparameters": 5, "metrics": 14, "artifacts": 1, "datasets": 2,
          "experiment_datasets": 3}
DQN_ONLY = {"experiments": 1, "models": 1, "hyperparameters": 2, "metrics": 4, "artifacts": 0, "datasets": 1,
            "experiment_datasets": 1}
NOTHING = dict.fromkeys(COUNTS, 0)

# A trainer driven over stdin: prints its experiment id; per "step" line logs one metric row, flushes
# and prints "ok"; "end" ends the experiment and prints "ended"; EOF exits.
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
        tracker.log_metric("loss", 1.0 / (step + 1), step=step)
        tracker.flush()
        print("ok", flush=True)
    elif line.strip() == "end":
        tracker.end_experiment("completed")
        print("ended", flush=True)
'''
SECRET = "mlp-secret"


# -- helpers ------------------------------------------------------------------------------------


def env() -> dict[str, str]:
    """The child environment: no default database, no automatic upload, no terminal width."""
    found = subprocess_env()
    for name in ("ML_PERSISTENCE_DB", "ML_PERSISTENCE_SYNC_TO", "COLUMNS", "LINES"):
        found.pop(name, None)
    return found


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ml_persistence", "sync", *args], cwd=cwd, env=env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (done.args, done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done


def report(done: subprocess.CompletedProcess) -> dict[str, Any]:
    return json.loads(ok(done).stdout)


def counts(db: str) -> dict[str, int]:
    """Rows per copied table, read with the database's own driver."""
    if db.startswith("postgresql://"):
        return {t: pg_rows(db, f"SELECT count(*) FROM {t}")[0][0] for t in COUNTS}
    return {t: rows(db, f"SELECT count(*) FROM {t}")[0][0] for t in COUNTS}


def actions(summary: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["action"] for e in summary["experiments"]}


class Lines:
    """Lines of a child's stream, read by a thread, so a test can wait for the next one with a timeout."""

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
        found = []
        while (line := self.next(timeout)) is not None:
            found.append(line)
        return found


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored; give the child a terminal program's disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def spawn(argv: list[str], cwd: Path, pass_fds: tuple[int, ...] = ()) -> Iterator[tuple[subprocess.Popen, Lines, Lines]]:
    """A child with piped stdin, stdout and stderr (read by threads), killed if still running at the end."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1, pass_fds=pass_fds,
                            preexec_fn=_default_sigint)
    try:
        yield proc, Lines(proc.stdout), Lines(proc.stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        proc.stdin.close()


def syncer(*args: str, cwd: Path, pass_fds: tuple[int, ...] = ()):
    return spawn([sys.executable, "-m", "ml_persistence", "sync", *args], cwd, pass_fds)


@contextmanager
def trainer(db: str, cwd: Path) -> Iterator[tuple[subprocess.Popen, Lines, int]]:
    """A live trainer (see TRAINER) and its experiment id."""
    with spawn([sys.executable, "-c", TRAINER, db], cwd) as (proc, out, _err):
        first = out.next()
        assert first is not None and first.isdigit(), first
        yield proc, out, int(first)


def tell(proc: subprocess.Popen, out: Lines, line: str, answer: str) -> None:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    assert out.next() == answer


def command(src: str, dst: str) -> str:
    return f"ml-persistence sync {shlex.quote(os.path.realpath(src))} {shlex.quote(os.path.realpath(dst))}"


def status_of(path: Path) -> dict[str, Any]:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seed") / "seed.db"
    made = subprocess.run([sys.executable, "-c", SEED, str(path)], cwd=path.parent, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert counts(str(path)) == COUNTS
    return path


@pytest.fixture
def src(seeded: Path, tmp_path: Path) -> str:
    """A private copy of the seeded database (a sync upgrades its source's schema in place)."""
    path = tmp_path / "src.db"
    source, dest = sqlite3.connect(seeded), sqlite3.connect(path)
    try:
        source.backup(dest)
    finally:
        source.close()
        dest.close()
    return str(path)


# -- usage --------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--since", "yesterday"], ["--since", "2024-13-01"], ["--since", "2024-1-5"], ["--since", "2024-01-01T10:00"],
    ["--since", "2024-01-01 25:00"], ["--all"], ["--dry-run", "--follow"], ["--follow", "--interval", "0"],
    ["--experiment", "x"],
])
def test_usage_errors_exit_2(src: str, tmp_path: Path, args: list[str]) -> None:
    done = cli(src, str(tmp_path / "dst.db"), *args, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and done.stderr.strip()
    assert not (tmp_path / "dst.db").exists()


def test_missing_source_is_one_line_exit_1(tmp_path: Path) -> None:
    done = cli(str(tmp_path / "absent.db"), str(tmp_path / "dst.db"), cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "absent.db" in done.stderr


# -- one pass -----------------------------------------------------------------------------------


def test_json_counts_every_row_and_a_second_run_copies_nothing(src: str, tmp_path: Path) -> None:
    dst = str(tmp_path / "dst.db")
    first = report(cli(src, dst, "--json", cwd=tmp_path))
    assert first["dry_run"] is False and first["source"] == src and first["target"] == dst
    assert first["rows"] == COUNTS and first["rows_total"] == sum(COUNTS.values())
    assert first["pending"] == NOTHING
    assert actions(first) == {"ppo-a": "created", "dqn-b": "created"}
    assert {e["name"]: e["ended"] for e in first["experiments"]} == {"ppo-a": True, "dqn-b": True}
    assert counts(dst) == COUNTS

    second = report(cli(src, dst, "--json", cwd=tmp_path))
    assert second["rows"] == NOTHING and actions(second) == {"ppo-a": "unchanged", "dqn-b": "unchanged"}
    assert counts(dst) == COUNTS


def test_human_summary(src: str, tmp_path: Path) -> None:
    dst = str(tmp_path / "dst.db")
    done = ok(cli(src, dst, cwd=tmp_path))
    assert done.stderr == ""  # no progress display: stderr is not a terminal
    lines = done.stdout.splitlines()
    assert lines[0] == f"Copied {src} -> {dst}"
    assert any(line.split()[:2] == ["created", "#1"] and "ppo-a (completed)" in line and "metrics 10" in line
               for line in lines)
    assert any(line.split()[:2] == ["created", "#2"] and "dqn-b (failed)" in line for line in lines)
    assert lines[-1].startswith("Rows: experiments 2, models 3, hyperparameters 5, metrics 14, artifacts 1, "
                                "datasets 2, experiment_datasets 3 (30 rows in ")
    assert "rows/s" in lines[-1]
    again = ok(cli(src, dst, cwd=tmp_path)).stdout.splitlines()
    assert again[1].split() == ["unchanged", "#1,", "#2"] and again[-1].startswith("Rows: none (0 rows")
    assert ok(cli(src, dst, "--quiet", cwd=tmp_path)).stdout == ""


def test_progress_display_on_request(src: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "ml_persistence", "sync", src, str(tmp_path / "dst.db"), "--progress",
                           "--quiet"], cwd=tmp_path, env=env(), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=120)  # bytes: text mode would turn each \r into a newline
    assert done.returncode == 0 and done.stdout == b"", done.stderr
    shown = done.stderr.decode().split("\r")
    assert "\n" not in done.stderr.decode()  # one line, rewritten in place
    assert any("#1 ppo-a:" in part and "metrics 10" in part for part in shown), shown
    assert shown[-1] == "" and shown[-2].strip() == ""  # erased at the end


def test_dry_run_writes_nothing(src: str, tmp_path: Path) -> None:
    dst = tmp_path / "dst.db"
    before = Path(src).read_bytes()
    preview = report(cli(src, str(dst), "--dry-run", "--json", cwd=tmp_path))
    assert preview["dry_run"] is True and preview["rows"] == COUNTS
    assert not dst.exists() and Path(src).read_bytes() == before
    assert "dry run" in ok(cli(src, str(dst), "--dry-run", cwd=tmp_path)).stdout.splitlines()[0]
    assert not dst.exists()

    ok(cli(src, str(dst), "--experiment", "2", cwd=tmp_path))
    assert counts(str(dst)) == DQN_ONLY
    preview = report(cli(src, str(dst), "--dry-run", "--json", cwd=tmp_path))
    assert actions(preview) == {"ppo-a": "created", "dqn-b": "unchanged"}
    assert preview["rows"]["metrics"] == 10 and preview["rows"]["experiments"] == 1
    assert counts(str(dst)) == DQN_ONLY


def test_selection(src: str, tmp_path: Path) -> None:
    by_id = report(cli(src, str(tmp_path / "a.db"), "--experiment", "2", "--json", cwd=tmp_path))
    assert actions(by_id) == {"dqn-b": "created"} and by_id["rows"] == DQN_ONLY
    by_tag = report(cli(src, str(tmp_path / "b.db"), "--tag", "ppo", "--tag", "rl", "--json", cwd=tmp_path))
    assert actions(by_tag) == {"ppo-a": "created"}
    later = report(cli(src, str(tmp_path / "c.db"), "--since", "2999-01-01 00:00", "--json", cwd=tmp_path))
    assert later["experiments"] == [] and later["rows_total"] == 0
    earlier = report(cli(src, str(tmp_path / "d.db"), "--since", "2000-01-01", "--json", cwd=tmp_path))
    assert earlier["rows"] == COUNTS


# -- --follow -----------------------------------------------------------------------------------


def test_follow_of_ended_runs_stops_by_itself(src: str, tmp_path: Path) -> None:
    dst = str(tmp_path / "dst.db")
    done = ok(subprocess.run([sys.executable, "-m", "ml_persistence", "sync", src, dst, "--follow", "--json",
                              "--interval", "0.05"], cwd=tmp_path, env=env(), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=120))
    passes = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(passes) == 1 and passes[0]["rows"] == COUNTS
    assert counts(dst) == COUNTS
    human = ok(cli(src, dst, "--follow", "--interval", "0.05", cwd=tmp_path))
    assert human.stdout.startswith("Stopped following (every selected run has ended): 0 rows copied in 1 pass")


def test_follow_copies_a_live_run_until_it_ends(tmp_path: Path) -> None:
    src, dst = str(tmp_path / "live.db"), str(tmp_path / "dst.db")
    with trainer(src, tmp_path) as (train, train_out, experiment_id):
        with syncer(src, dst, "--follow", "--json", "--interval", "0.05", cwd=tmp_path) as (proc, out, err):
            first = json.loads(out.next())
            assert first["experiments"][0]["source_id"] == experiment_id
            assert first["experiments"][0]["ended"] is False and first["experiments"][0]["action"] == "created"
            for _ in range(3):
                tell(train, train_out, "step", "ok")
            tell(train, train_out, "end", "ended")
            assert proc.wait(timeout=120) == 0, err.rest()
            passes = [first, *(json.loads(line) for line in out.rest())]
        assert passes[-1]["experiments"][0]["ended"] is True and passes[-1]["pending"]["metrics"] == 0
        assert sum(p["rows"]["metrics"] for p in passes) == 4
    assert counts(dst)["metrics"] == 4 == counts(src)["metrics"]
    assert rows(dst, "SELECT status FROM experiments") == [("completed",)]


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signal_stops_follow(src: str, tmp_path: Path, signum: int, code: int) -> None:
    dst = str(tmp_path / "dst.db")
    status = tmp_path / "status.json"
    with syncer(src, dst, "--follow", "--all", "--json", "--interval", "30", "--status-file", str(status),
                cwd=tmp_path) as (proc, out, err):
        assert json.loads(out.next())["rows"] == COUNTS  # the first pass; then it waits 30 s
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == code
        assert out.rest() == [] and "Traceback" not in "\n".join(err.rest())
    assert counts(dst) == COUNTS
    assert status_of(status)["state"] == "done"


# -- --exit-with-fd and --status-file -----------------------------------------------------------


def test_owner_exit_runs_a_final_pass(src: str, tmp_path: Path) -> None:
    dst, status = str(tmp_path / "dst.db"), tmp_path / "status.json"
    read_end, write_end = os.pipe()
    try:
        with syncer(src, dst, "--follow", "--all", "--json", "--interval", "30", "--exit-with-fd", str(read_end),
                    "--status-file", str(status), cwd=tmp_path, pass_fds=(read_end,)) as (proc, out, err):
            os.close(read_end)
            read_end = -1
            assert json.loads(out.next())["rows"] == COUNTS
            following = status_of(status)
            assert following["state"] == "following" and following["pid"] == proc.pid
            os.close(write_end)  # the owner exits
            write_end = -1
            assert proc.wait(timeout=60) == 0, err.rest()
            final = [json.loads(line) for line in out.rest()]
            assert len(final) == 1 and final[0]["rows"] == NOTHING and err.rest() == []
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    done = status_of(status)
    assert done["state"] == "done" and done["error"] is None and done["pending_experiments"] == []
    assert set(done) == {"pid", "state", "error", "pending", "pending_experiments", "last_pass", "command"}
    assert done["command"] == command(src, dst) and done["last_pass"] >= following["last_pass"]
    assert counts(dst) == COUNTS


def test_owner_exit_with_a_run_still_going_names_the_command(tmp_path: Path) -> None:
    src, dst, status = str(tmp_path / "live.db"), str(tmp_path / "dst.db"), tmp_path / "status.json"
    read_end, write_end = os.pipe()
    with trainer(src, tmp_path) as (train, train_out, experiment_id):
        with syncer(src, dst, "--follow", "--all", "--json", "--interval", "0.05", "--exit-with-fd", str(read_end),
                    "--final-timeout", "0.2", "--status-file", str(status), cwd=tmp_path,
                    pass_fds=(read_end,)) as (proc, out, err):
            os.close(read_end)
            assert json.loads(out.next())["experiments"][0]["ended"] is False
            tell(train, train_out, "step", "ok")
            os.close(write_end)
            assert proc.wait(timeout=60) == 1
            message = err.rest()
        assert len(message) == 1 and f"#{experiment_id} live-trainer (running" in message[0]
        assert message[0].endswith(f"upload it later with: {command(src, dst)}")
        behind = status_of(status)
        assert behind["state"] == "behind" and behind["pending_experiments"] == [experiment_id]
        tell(train, train_out, "end", "ended")
    named = shlex.split(message[0].rsplit("upload it later with: ", 1)[1])
    assert named[:2] == ["ml-persistence", "sync"]
    ok(cli(*named[2:], cwd=tmp_path))  # the command as named, run from elsewhere
    assert counts(dst) == counts(src) and counts(dst)["metrics"] == 2


# -- errors and passwords -----------------------------------------------------------------------


def test_unreachable_target_one_line_without_password(src: str, tmp_path: Path) -> None:
    url = f"postgresql://mlp:{SECRET}@127.0.0.1:1/mlp"
    done = cli(src, url, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert SECRET not in done.stdout + done.stderr and "127.0.0.1" in done.stderr


def test_follow_says_once_that_the_target_is_unreachable(src: str, tmp_path: Path) -> None:
    url, status = f"postgresql://mlp:{SECRET}@127.0.0.1:1/mlp", tmp_path / "status.json"
    with syncer(src, url, "--follow", "--status-file", str(status), cwd=tmp_path) as (proc, out, err):
        first = err.next()
        assert "127.0.0.1" in first and first.endswith("retrying") and SECRET not in first
        following = status_of(status)
        assert following["state"] == "following" and following["error"] and following["last_pass"] is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        rest = err.rest()
        printed = out.rest()
    assert first not in rest and not any("Traceback" in line for line in rest)
    assert printed == ["Stopped following (SIGTERM): 0 rows copied in 0 passes"]
    final = status_of(status)
    assert final["state"] == "behind" and final["command"] == f"ml-persistence sync {os.path.realpath(src)} postgresql://mlp@127.0.0.1:1/mlp"
    assert SECRET not in status.read_text()


def test_postgresql_target_never_shows_the_password(src: str, tmp_path: Path, pg_db: str) -> None:
    secret = urlsplit(pg_db).password
    assert secret
    status = tmp_path / "status.json"
    first = ok(cli(src, pg_db, "--json", "--progress", "--status-file", str(status), cwd=tmp_path))
    assert json.loads(first.stdout)["rows"] == COUNTS and counts(pg_db) == COUNTS
    human = ok(cli(src, pg_db, "--progress", cwd=tmp_path))
    follow = ok(cli(src, pg_db, "--follow", "--interval", "0.05", "--status-file", str(status), cwd=tmp_path))
    assert counts(pg_db) == COUNTS
    shown = [first.stdout, first.stderr, human.stdout, human.stderr, follow.stdout, follow.stderr, status.read_text()]
    assert not any(secret in text for text in shown)
    assert json.loads(first.stdout)["target"] == pg_db.replace(f":{secret}@", ":***@")
    assert status_of(status)["state"] == "done"


def test_follow_says_when_the_target_is_back(src: str, tmp_path: Path) -> None:
    dst = tmp_path / "later" / "dst.db"  # its directory does not exist yet: SQLite cannot open it
    with syncer(src, str(dst), "--follow", "--interval", "0.05", cwd=tmp_path) as (proc, out, err):
        first = err.next()
        assert first.startswith(f"ml-persistence: {src} -> {dst}: ") and first.endswith("; retrying"), first
        dst.parent.mkdir()
        assert err.next() == f"ml-persistence: {dst} is reachable again"
        assert proc.wait(timeout=60) == 0
        assert err.rest() == []
        assert out.rest()[-1].startswith("Stopped following (every selected run has ended): 30 rows copied in 1 pass")
    assert counts(str(dst)) == COUNTS


def test_owner_pid_selects_the_runs_of_that_process(tmp_path: Path) -> None:
    src, dst = str(tmp_path / "shared.db"), str(tmp_path / "dst.db")
    made = subprocess.run([sys.executable, "-c", SEED, src], cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    with trainer(src, tmp_path) as (train, _out, experiment_id):
        mine = report(cli(src, dst, "--owner-pid", str(train.pid), "--json", cwd=tmp_path))
    assert [(e["source_id"], e["name"]) for e in mine["experiments"]] == [(experiment_id, "live-trainer")]
    assert counts(dst)["experiments"] == 1


def test_wrong_password_ends_follow_at_once(src: str, tmp_path: Path, postgres_url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_url)
    url = postgres_url.replace(f":{parts.password}@", ":not-the-password@", 1)
    done = cli(src, url, "--follow", cwd=tmp_path)  # retrying cannot help: exit 1, not a retry loop
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "not-the-password" not in done.stderr


def test_follow_gives_up_at_once_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("not a database, and retrying will not make it one\n" * 100)
    done = cli(str(junk), str(tmp_path / "dst.db"), "--follow", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and f"{junk} is not an SQLite database" in done.stderr
