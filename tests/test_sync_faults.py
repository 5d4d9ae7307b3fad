"""`ml-persistence sync` under faults, as a user runs it: the real command line in child processes.

SIGKILL mid-copy then rerun, two syncers at once (different runs, and the same run), and a
PostgreSQL restart while `--follow` copies a trainer that is still logging. What landed is
compared with the source row by row (tests/test_sync.py's snapshot: every column, model ids
mapped), so a row copied twice or lost is seen. There is no event to wait on while a sync copies,
so the kill waits by reading DST's row count; everything else waits on process exits and lines.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from contract_helpers import GUARD, child_env, children, engine_of  # noqa: F401
from pg import SERIAL, restart_postgres
from test_sync import assert_same, assert_whole_target, counts, populate, query, uuid_of
from ml_persistence import ExperimentTracker

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

BIG = 300_000  # metric rows of the big run: a few chunks, enough for a kill to land between two of them


def big_source(path: str, points: int, name: str = "big", seed: int = 0) -> int:
    """A file made by the library with one run of ``points`` metric rows, bulk-inserted like logged ones."""
    t = ExperimentTracker(path, capture_environment=False)
    exp = t.start_experiment(name, experiment_type="rl", tags=["big"])
    t.log_hyperparameters_batch({"lr": 3e-4, "seed": seed})
    t.end_experiment()
    base = datetime.datetime(2024, 3, 1, 12, 0, 0)
    names = ("train_loss", "train_return", "val_loss", "lr")

    def rows():
        for i in range(points):
            step = i // len(names)
            stamp = (base + datetime.timedelta(milliseconds=step)).strftime("%Y-%m-%d %H:%M:%S.%f")
            yield exp, "scalar", names[i % len(names)], step, (i * 7919 % 1000) / 997 + seed, "train", stamp

    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:
            conn.executemany("INSERT INTO metrics (experiment_id, metric_type, metric_name, step, value, split, "
                             "timestamp) VALUES (?, ?, ?, ?, ?, ?, ?)", rows())
    finally:
        conn.close()
    return exp


def sync_argv(src: str, dst: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "ml_persistence", "sync", src, dst, *args]


def start_sync(src: str, dst: str, cwd: Path, *args: str, name: str = "sync") -> subprocess.Popen:
    out = open(cwd / f"{name}.out", "w")
    err = open(cwd / f"{name}.err", "w")
    return subprocess.Popen(sync_argv(src, dst, *args), cwd=cwd, env=child_env(), stdin=subprocess.DEVNULL,
                            stdout=out, stderr=err, text=True)


def output(cwd: Path, name: str = "sync") -> str:
    return f"stdout:\n{(cwd / f'{name}.out').read_text()}\nstderr:\n{(cwd / f'{name}.err').read_text()}"


def finish(proc: subprocess.Popen, timeout: float = 600) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(GUARD)
        pytest.fail(f"{proc.args} did not exit within {timeout} s")


def run_sync(src: str, dst: str, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(sync_argv(src, dst, *args), cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    print(f"sync {' '.join(args)} -> {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done


def metric_rows(dst: str) -> int:
    """DST's metric rows as a reader sees them now; 0 while the database or table does not exist yet."""
    if engine_of(dst) == "postgresql":
        import psycopg

        try:
            with psycopg.connect(dst, autocommit=True, connect_timeout=5) as conn:
                return conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0
    if not os.path.exists(dst):
        return 0
    conn = sqlite3.connect(f"file:{dst}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        conn.close()


def kill_mid_copy(proc: subprocess.Popen, dst: str, already: int, total: int) -> int:
    """SIGKILL the syncer once DST holds more metric rows than ``already`` but not ``total``; return what stayed."""
    while proc.poll() is None:
        n = metric_rows(dst)
        if already < n < total:
            proc.send_signal(signal.SIGKILL)
            break
    code = proc.wait(GUARD)
    assert code == -signal.SIGKILL, (
        f"the sync exited ({code}) before it could be killed mid-copy ({metric_rows(dst)} of {total} rows): "
        "make BIG larger")
    left = metric_rows(dst)
    assert already < left < total, (already, left, total)
    return left


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "team.db")
    return request.getfixturevalue("pg_db")


def test_sigkill_mid_copy_then_rerun_stores_every_row_once(tmp_path: Path, target: str) -> None:
    src = str(tmp_path / "laptop.db")
    small = populate(src, "ppo")
    big = big_source(src, BIG)
    total = sum(n for (n,) in query(src, "SELECT COUNT(*) FROM metrics")[1])
    left = 0
    for attempt in range(2):  # killed twice, at two points of the copy
        proc = start_sync(src, target, tmp_path, "--quiet", name=f"killed{attempt}")
        left = kill_mid_copy(proc, target, left, total)
        print(f"attempt {attempt}: killed with {left} of {total} metric rows in DST\n{output(tmp_path, f'killed{attempt}')}")
    done = run_sync(src, target, tmp_path, "--json")
    summary = json.loads(done.stdout)
    assert isinstance(summary, dict)
    assert metric_rows(target) == total
    for i in (small, big):
        assert_same(src, target, i)
    assert_whole_target(target, [(src, [small, big])])
    settled = counts(target)
    run_sync(src, target, tmp_path)
    assert counts(target) == settled


def test_sigkill_during_the_first_rows_of_a_fresh_target_then_rerun(tmp_path: Path, target: str) -> None:
    """Killed as early as a reader can see anything in DST: the schema, the experiment row, the first chunk."""
    src = str(tmp_path / "laptop.db")
    big = big_source(src, BIG)
    proc = start_sync(src, target, tmp_path, "--quiet")
    while proc.poll() is None:
        if engine_of(target) == "sqlite" and os.path.exists(target) or engine_of(target) == "postgresql" and query(
                target, "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'experiments'")[1][0][0]:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(GUARD)
    print(f"killed: {proc.returncode}, {metric_rows(target)} metric rows in DST")
    run_sync(src, target, tmp_path)
    assert_same(src, target, big)
    assert_whole_target(target, [(src, [big])])


def test_two_syncers_of_different_runs_into_one_target_both_succeed(tmp_path: Path, target: str) -> None:
    sources = [str(tmp_path / f"machine{i}.db") for i in range(2)]
    ids = []
    for i, src in enumerate(sources):
        ids.append([populate(src, "ppo", seed=i),  # same name, same datasets on both machines
                    big_source(src, BIG // 2, name="big", seed=i)])
    procs = [start_sync(src, target, tmp_path, "--quiet", name=f"machine{i}") for i, src in enumerate(sources)]
    codes = [finish(p) for p in procs]
    for i in range(2):
        print(f"machine{i}: {codes[i]}\n{output(tmp_path, f'machine{i}')}")
    assert codes == [0, 0]
    for src, exps in zip(sources, ids):
        for exp in exps:
            assert_same(src, target, exp, dataset_rows=False)
    assert_whole_target(target, list(zip(sources, ids)))
    assert counts(target)["experiments"] == 4
    assert len({uuid_of(src, exp) for src, exps in zip(sources, ids) for exp in exps}) == 4


def test_two_syncers_of_the_same_source_copy_each_row_once(tmp_path: Path, target: str) -> None:
    src = str(tmp_path / "laptop.db")
    ids = [populate(src, "ppo"), big_source(src, BIG), populate(src, "sac", seed=2)]
    procs = [start_sync(src, target, tmp_path, "--quiet", name=f"twin{i}") for i in range(2)]
    codes = [finish(p) for p in procs]
    for i in range(2):
        print(f"twin{i}: {codes[i]}\n{output(tmp_path, f'twin{i}')}")
    assert codes == [0, 0]
    for exp in ids:
        assert_same(src, target, exp)
    assert_whole_target(target, [(src, ids)])


# -- a PostgreSQL restart while --follow copies a running trainer ----------------------------------------------

STREAMER = """
import json, sys, threading
from ml_persistence import ExperimentTracker, ModelRegistry
db = sys.argv[1]
t = ExperimentTracker(db)
exp = t.start_experiment("follow-me", experiment_type="rl", tags=["live"])
t.log_hyperparameters_batch({"lr": 0.01})
step = 0
def chunk(n):
    global step
    for _ in range(n):
        t.log_metrics_batch({"loss": 1.0 / (step + 1), "reward": float(step)}, step=step)
        step += 1
    t.flush()
chunk(2000)
print("logged", exp, step, flush=True)
assert sys.stdin.readline().strip() == "stream"
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
print("streaming", flush=True)
while not stop.is_set():  # keep logging while the server restarts
    chunk(200)
    if step % 2000 == 0:
        model = ModelRegistry(db).register_model(exp, f"ckpt_{step}.pth", is_best=True, global_step=step)
        t.log_metric("val", float(step), step=step, model_id=model)
chunk(1000)
t.end_experiment()
print("ended", json.dumps({"exp": exp, "steps": step}), flush=True)
"""


@SERIAL
def test_postgresql_restart_during_follow_of_a_running_trainer(tmp_path: Path, pg_db: str, children) -> None:
    src = str(tmp_path / "laptop.db")
    trainer = children.start(tmp_path, STREAMER, src, name="trainer.py", env=child_env())
    exp = int(trainer.line("logged").split()[0])
    follow = start_sync(src, pg_db, tmp_path, "--follow", "--interval", "0.2", name="follow")
    try:
        while metric_rows(pg_db) < 4000:  # the first pass landed (no event to wait on: read DST)
            assert follow.poll() is None, output(tmp_path, "follow")
        trainer.send("stream")
        trainer.line("streaming")
        restart_postgres()
        trainer.send("stop")
        ended = json.loads(trainer.line("ended"))
        assert trainer.wait() == 0, trainer.describe()
        code = finish(follow, timeout=120)  # it ends by itself after the pass that sees the run ended
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait(GUARD)
    print(output(tmp_path, "follow"))
    assert code == 0, output(tmp_path, "follow")
    assert ended["exp"] == exp
    dst_id = assert_same(src, pg_db, exp)
    assert_whole_target(pg_db, [(src, [exp])])
    steps = query(pg_db, "SELECT COUNT(DISTINCT step), COUNT(*) FROM metrics WHERE experiment_id = ? "
                         "AND metric_name = 'loss'", (dst_id,))[1][0]
    assert steps == (ended["steps"], ended["steps"])
    assert query(pg_db, "SELECT status FROM experiments WHERE id = ?", (dst_id,))[1] == [("completed",)]


# -- --follow of a trainer that is SIGKILLed -----------------------------------------------------------------

KILLED = """
import sys
from ml_persistence import ExperimentTracker
t = ExperimentTracker(sys.argv[1])
exp = t.start_experiment("killed-trainer")
step = 0
while True:
    for _ in range(500):
        t.log_metrics_batch({"loss": 1.0 / (step + 1), "acc": step / 1e6}, step=step)
        step += 1
    t.flush()
    print("logged", exp, step, flush=True)
    if sys.stdin.readline().strip() != "more":
        break
"""


def test_follow_stops_by_itself_when_the_trainer_is_sigkilled(tmp_path: Path, target: str, children) -> None:
    """A crashed run has ended too: --follow copies what it committed, then stops (exit 0), nothing twice."""
    src = str(tmp_path / "laptop.db")
    trainer = children.start(tmp_path, KILLED, src, name="trainer.py", env=child_env())
    exp, steps = map(int, trainer.line("logged").split())
    follow = start_sync(src, target, tmp_path, "--follow", "--interval", "0.2", name="follow")
    try:
        for _ in range(3):
            while metric_rows(target) < 2 * steps:  # no event to wait on: read DST
                assert follow.poll() is None, output(tmp_path, "follow")
            trainer.send("more")
            exp, steps = map(int, trainer.line("logged").split())
        trainer.kill()  # SIGKILL: the run stays 'running' in SRC, its process is gone
        code = finish(follow, timeout=GUARD)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait(GUARD)
    print(output(tmp_path, "follow"))
    assert code == 0, output(tmp_path, "follow")
    assert metric_rows(target) == 2 * steps
    assert_same(src, target, exp)
    assert_whole_target(target, [(src, [exp])])


# -- two ranks writing one run of a PostgreSQL source while --follow copies it -----------------------------

RANK = """
import sys
from ml_persistence import ExperimentTracker
db, rank = sys.argv[1], int(sys.argv[2])
t = ExperimentTracker(db, capture_environment=False)
if rank == 0:
    exp = t.start_experiment("ddp")
    print("exp", exp, flush=True)
else:
    exp = t.resume_experiment(int(sys.stdin.readline()), claim=False)  # joins, rank 0 ends it
    print("joined", flush=True)
sys.stdin.readline()  # go
for step in range(N_STEPS):
    t.log_metrics_batch({f"loss_rank{rank}": 1.0 / (step + 1), f"grad_rank{rank}": float(step)}, step=step)
    if step % 20 == 19:
        t.flush()
t.flush()
print("done", flush=True)
if rank == 0:
    sys.stdin.readline()  # rank 1 is done too
    t.end_experiment()
    print("ended", flush=True)
""".replace("N_STEPS", "6000")


def test_follow_of_two_ranks_writing_one_postgresql_run_copies_every_row_once(tmp_path: Path, pg_db: str,
                                                                               children) -> None:
    """Two processes' writers commit interleaved ids into one run: no row committed late may be passed over."""
    from contract_helpers import steps_once

    ranks = [children.start(tmp_path, RANK, pg_db, "0", name="rank0.py", env=child_env())]
    exp = int(ranks[0].line("exp"))
    ranks.append(children.start(tmp_path, RANK, pg_db, "1", name="rank1.py", env=child_env()))
    ranks[1].send(str(exp))
    ranks[1].line("joined")
    dst = str(tmp_path / "copy.db")
    follow = start_sync(pg_db, dst, tmp_path, "--follow", "--interval", "0.05", name="follow")
    try:
        for r in ranks:
            r.send("go")
        for r in ranks:
            r.line("done")
        ranks[0].send("end")
        ranks[0].line("ended")
        for r in ranks:
            assert r.wait() == 0, r.describe()
        code = finish(follow, timeout=120)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait(GUARD)
    print(output(tmp_path, "follow"))
    assert code == 0, output(tmp_path, "follow")
    dst_id = assert_same(pg_db, dst, exp)
    for rank in range(2):
        for name in (f"loss_rank{rank}", f"grad_rank{rank}"):
            steps_once(dst, dst_id, name, range(6000))
