"""PostgreSQL under faults, with real processes: concurrency, a server restart, an unreachable server,
a database that goes away before exit, credentials, and the agent killed mid-stream.

Every database is a fresh one (``pg_db``); what landed is counted with ``pg_rows`` per
(experiment, step), so a duplicate or a gap is seen. Children synchronise through their stdout
lines and the test's lines on their stdin; subprocess timeouts only turn a hang into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from agent_process import AgentProcess, short_socket
from contract_helpers import GUARD, child_env, children, cli, ok, steps_once  # noqa: F401
from pg import SERIAL, pg_rows, restart_postgres

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and Unix sockets")

# The test role's password, as $ML_PERSISTENCE_TEST_POSTGRES gives it: what must never show up anywhere.
PASSWORD = urlsplit(os.environ.get("ML_PERSISTENCE_TEST_POSTGRES", "")).password or ""


def dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


@pytest.fixture(autouse=True)
def _password_is_known(postgres_url: str) -> None:
    if len(PASSWORD) < 8 or urlsplit(postgres_url).password != PASSWORD:
        message = "these tests need a password of 8 characters or more in $ML_PERSISTENCE_TEST_POSTGRES's URL"
        if os.environ.get("ML_PERSISTENCE_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)


# -- 1: eight processes at once -----------------------------------------------------------------------

N_POINTS = 20_000
WRITERS = 8

WRITER = """
import json, os, sys
from ml_persistence import ExperimentTracker
worker = int(sys.argv[1])
t = ExperimentTracker()
exp = t.start_experiment(f"writer-{worker}", tags=["concurrent"])
print("started", exp, flush=True)
sys.stdin.readline()  # go: all write at once
for step in range(N_POINTS):
    t.log_metrics_batch({"loss": step + worker / 10, "reward": -step}, step=step)
t.end_experiment()
print("done", json.dumps({"exp": exp, "pid": os.getpid(), "status": t.status()}), flush=True)
""".replace("N_POINTS", str(N_POINTS))


def test_eight_processes_store_every_point_exactly_once(pg_db: str, tmp_path: Path, children) -> None:
    procs = [children.start(tmp_path, WRITER, str(i), name=f"writer{i}.py", env=child_env(pg_db))
             for i in range(WRITERS)]
    started = [int(p.line("started")) for p in procs]
    for p in procs:
        p.send("go")
    results = [json.loads(p.line("done")) for p in procs]
    for p in procs:
        assert p.wait() == 0, p.describe()
    assert [r["exp"] for r in results] == started and len(set(started)) == WRITERS
    for i, r in enumerate(results):
        assert r["status"]["lost"] == r["status"]["dropped"] == r["status"]["rejected"] == 0, r["status"]
        assert pg_rows(pg_db, "SELECT name, pid, status FROM experiments WHERE id = %s", (r["exp"],)) == [
            (f"writer-{i}", r["pid"], "completed")]
        for metric in ("loss", "reward"):
            steps_once(pg_db, r["exp"], metric, range(N_POINTS))
        # each value belongs to its own process: no row went to another experiment
        assert pg_rows(pg_db, "SELECT count(*) FROM metrics WHERE experiment_id = %s AND metric_name = 'loss' "
                              "AND value <> step + %s", (r["exp"], i / 10)) == [(0,)]
    assert pg_rows(pg_db, "SELECT count(*) FROM metrics") == [(WRITERS * N_POINTS * 2,)]


# -- 2: the server restarts while four processes log ----------------------------------------------------

N_BEFORE = 2000
N_AFTER = 2000

LOGGER = """
import json, sys, threading
from ml_persistence import ExperimentTracker
t = ExperimentTracker(capture_environment=False)
exp = t.start_experiment("through-a-restart-" + sys.argv[1])
step = 0
for _ in range(N_BEFORE):
    t.log_metric("loss", float(step), step=step); step += 1
t.flush()
go = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), go.set()), daemon=True).start()
print("logged", exp, flush=True)
while not go.is_set():  # keep logging, committing every 200, while the server restarts
    for _ in range(200):
        t.log_metric("loss", float(step), step=step); step += 1
    t.flush()
for _ in range(N_AFTER):
    t.log_metric("loss", float(step), step=step); step += 1
print("total", json.dumps({"exp": exp, "n": step, "status": t.status()}), flush=True)
""".replace("N_BEFORE", str(N_BEFORE)).replace("N_AFTER", str(N_AFTER))


@SERIAL
def test_server_restart_mid_run_stores_every_event_exactly_once(pg_db: str, tmp_path: Path, children) -> None:
    procs = [children.start(tmp_path, LOGGER, str(i), name=f"logger{i}.py", env=child_env(pg_db)) for i in range(4)]
    for p in procs:
        p.line("logged")
    restart_postgres()
    for p in procs:
        p.send("go")
    totals = [json.loads(p.line("total")) for p in procs]
    for p in procs:
        assert p.wait() == 0, p.describe()
    for p, total in zip(procs, totals):
        print(f"{p.name}: {total['n']} events, status {total['status']}\nstderr:\n{p.stderr}")
        steps_once(pg_db, total["exp"], "loss", range(total["n"]))
        assert pg_rows(pg_db, "SELECT status FROM experiments WHERE id = %s", (total["exp"],)) == [("completed",)]
        assert PASSWORD not in p.stderr


# -- 3: the server cannot be reached at start_experiment ---------------------------------------------------

START = """
import sys
from ml_persistence import ExperimentTracker
t = ExperimentTracker(sys.argv[1])
try:
    t.start_experiment("never")
except Exception as exc:
    print("error", type(exc).__name__, str(exc).replace("\\n", " "), flush=True)
    raise
print("started", flush=True)
"""


@pytest.mark.parametrize("case", ["closed-port", "wrong-password"])
def test_unreachable_server_at_start_gives_a_clear_error_without_the_password(
        case: str, pg_db: str, tmp_path: Path) -> None:
    if case == "closed-port":
        secret = PASSWORD
        url = f"postgresql://mlp:{secret}@127.0.0.1:1/{dbname(pg_db)}"
        host, port = "127.0.0.1", "1"
    else:
        secret = "wrong-pw-4711"
        url = pg_db.replace(f":{PASSWORD}@", f":{secret}@")
        host, port = "127.0.0.1", str(urlsplit(pg_db).port)
    env = child_env(PGPASSFILE=str(tmp_path / "no-pgpass"), ML_PERSISTENCE_EXIT_TIMEOUT="5")
    (tmp_path / "start.py").write_text(START)
    try:
        done = subprocess.run([sys.executable, "start.py", url], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=GUARD, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"start_experiment on an unreachable server did not return within {GUARD} s: {exc.stderr}")
    print(f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    assert done.returncode != 0 and "started" not in done.stdout
    (message,) = [line for line in done.stdout.splitlines() if line.startswith("error")]
    for part in (host, port, dbname(pg_db)):
        assert re.search(rf"\b{re.escape(part)}\b", message), (part, message)
    if case == "wrong-password":
        assert "password" in message.lower() or "authentication" in message.lower(), message
    assert secret not in done.stdout + done.stderr
    assert PASSWORD not in done.stdout + done.stderr

    listed = cli("ls", "--db", url, cwd=tmp_path, env=env, timeout=GUARD)
    assert listed.returncode in (1, 2) and "Traceback" not in listed.stderr, listed.stderr
    assert len(listed.stderr.strip().splitlines()) == 1, listed.stderr
    for part in (host, port, dbname(pg_db)):
        assert re.search(rf"\b{re.escape(part)}\b", listed.stderr), (part, listed.stderr)
    assert secret not in listed.stdout + listed.stderr


# -- 4: the database goes away before the process exits --------------------------------------------------

CUT_OFF = """
import sys
from ml_persistence import ExperimentTracker
t = ExperimentTracker(capture_environment=False)
exp = t.start_experiment("cut-off")
for i in range(100):
    t.log_metric("loss", float(i), step=i)
t.flush()
print("started", exp, flush=True)
sys.stdin.readline()  # the database is unreachable now
for i in range(100, 1100):
    t.log_metric("loss", float(i), step=i)
print("logged", flush=True)
# the script ends: the exit deadline passes with the database still refusing connections
"""


def _allow_connections(admin_url: str, name: str, allow: bool) -> None:
    from psycopg import sql

    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allow else "false")))
        if not allow:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                         "AND pid <> pg_backend_pid()", (name,))


def test_database_unreachable_at_exit_saves_the_events_and_recover_stores_them_once(
        pg_db: str, postgres_url: str, tmp_path: Path, children) -> None:
    state = tmp_path / "state"
    env = child_env(pg_db, ML_PERSISTENCE_EXIT_TIMEOUT="2", XDG_STATE_HOME=str(state))
    child = children.start(tmp_path, CUT_OFF, name="cutoff.py", env=env)
    exp = int(child.line("started"))
    name = dbname(pg_db)
    try:
        _allow_connections(postgres_url, name, False)
        child.send("go")
        child.line("logged")
        code = child.wait()
    finally:
        _allow_connections(postgres_url, name, True)
    stderr = child.stderr
    print(f"stderr:\n{stderr}")
    assert code == 0, child.describe()
    assert "unwritten" in stderr or "not written" in stderr, stderr
    assert {"1000", "1001"} & set(re.findall(r"\d+", stderr)), stderr  # how many: the metrics (+ the end)
    found = re.search(r"saved to (\S+\.mlrecovery)", stderr)
    assert found, stderr
    path = found.group(1)
    assert f"ml-persistence recover {path}" in stderr, stderr
    assert PASSWORD not in stderr and PASSWORD not in "".join(child.stdout)
    assert os.stat(path).st_mode & 0o077 == 0
    assert PASSWORD.encode() not in Path(path).read_bytes()
    stored = sorted(s for (s,) in pg_rows(pg_db, "SELECT step FROM metrics WHERE experiment_id = %s", (exp,)))
    assert stored == list(range(100))  # nothing after the cut got in

    spare = tmp_path / "spare.mlrecovery"
    shutil.copy(path, spare)
    recovered = ok(cli("recover", path, "--db", pg_db, cwd=tmp_path, env=child_env(XDG_STATE_HOME=str(state))))
    assert PASSWORD not in recovered.stdout + recovered.stderr
    steps_once(pg_db, exp, "loss", range(1100))
    assert pg_rows(pg_db, "SELECT status FROM experiments WHERE id = %s", (exp,)) == [("completed",)]
    assert not os.path.exists(path)
    again = ok(cli("recover", str(spare), "--db", pg_db, cwd=tmp_path, env=child_env(XDG_STATE_HOME=str(state))))
    assert "0 events stored" in again.stdout, again.stdout
    steps_once(pg_db, exp, "loss", range(1100))


# -- 5: credentials never stored or shown ---------------------------------------------------------------

CREDENTIALS = """
import json, sys
from ml_persistence import DatasetManager, ExperimentTracker, MetricsLogger, ModelRegistry
url = sys.argv[1]
t = ExperimentTracker(url)
exp = t.start_experiment("with-credentials", metadata={"db": url, "nested": {"urls": [url]}})
t.log_hyperparameters_batch({"db_url": url, "urls": [url], "cfg": {"db": url}})
t.log_hyperparameter("database", url)
t.log_metric("loss", 1.0, step=0, metadata={"db": url})
ds = DatasetManager(url)
d = ds.register_dataset("data", "1", split_type="train", metadata={"db": url})
ds.link_dataset_to_experiment(exp, d, "train")
m = ModelRegistry(url).register_model(exp, "m.pth", metadata={"db": url}, hyperparameters={"db": url})
t.log_artifact("plot.png", "plot", metadata={"db": url})
print("status", json.dumps(t.status(), default=str), flush=True)
print("repr", repr(t), repr(ds), repr(MetricsLogger(url)), flush=True)
print("experiment", json.dumps(t.get_experiment(exp), default=str), flush=True)
print("params", json.dumps(t.get_hyperparameters(exp), default=str), flush=True)
print("history", json.dumps(MetricsLogger(url).get_metric_history(exp, "loss"), default=str), flush=True)
try:
    ExperimentTracker(url.rsplit(":", 1)[0] + ":1/nowhere").start_experiment("x")
except Exception as exc:
    print("unreachable", type(exc).__name__, str(exc).replace("\\n", " "), flush=True)
t.end_experiment()
print("exp", exp, flush=True)
"""


def test_the_password_is_never_stored_printed_or_shown(pg_db: str, tmp_path: Path) -> None:
    (tmp_path / "creds.py").write_text(CREDENTIALS)
    done = subprocess.run([sys.executable, "creds.py", pg_db], cwd=tmp_path, env=child_env(ML_PERSISTENCE_EXIT_TIMEOUT="5"),
                          capture_output=True, text=True, timeout=GUARD, stdin=subprocess.DEVNULL)
    print(f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    assert "unreachable" in done.stdout
    exp = int(re.search(r"^exp (\d+)$", done.stdout, re.M).group(1))

    leaks = []
    tables = [t for (t,) in pg_rows(pg_db, "SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")]
    assert {"experiments", "hyperparameters", "metrics", "models", "datasets", "artifacts"} <= set(tables)
    for table in tables:
        for (text,) in pg_rows(pg_db, f'SELECT CAST(x AS text) FROM "{table}" AS x'):
            if PASSWORD in text:
                leaks.append(f"{table}: {text[:300]}")
    assert not leaks, "the password is stored:\n" + "\n".join(leaks)
    redacted = pg_db.replace(f":{PASSWORD}@", ":***@")
    (command,) = pg_rows(pg_db, "SELECT command FROM experiments WHERE id = %s", (exp,))[0:1]
    assert redacted in command[0], command
    params = dict(pg_rows(pg_db, "SELECT param_name, param_value FROM hyperparameters WHERE experiment_id = %s", (exp,)))
    assert params["db_url"] == redacted and params["database"] == redacted, params
    (meta,) = pg_rows(pg_db, "SELECT metadata FROM experiments WHERE id = %s", (exp,))[0]
    assert "***" in meta

    for argv in (["ls"], ["show", str(exp)], ["show", str(exp), "--json"], ["ls", "--json"],
                 ["export", "--what", "hyperparameters", "--format", "jsonl"], ["show", "999"]):
        shown = cli(*argv, "--db", pg_db, cwd=tmp_path)
        assert shown.returncode in (0, 1), (argv, shown.stderr)
        assert PASSWORD not in shown.stdout + shown.stderr, argv
    shown = ok(cli("show", str(exp), "--db", pg_db, cwd=tmp_path)).stdout
    assert f"{urlsplit(pg_db).username}:***@" in shown, shown  # the captured command line, redacted


# -- 6: the agent on PostgreSQL ----------------------------------------------------------------------------

TRAINER = """
import json, os, sys
from ml_persistence import ExperimentTracker
def say(*parts):
    print(*parts, flush=True)
def expect(word):
    got = sys.stdin.readline().strip()
    assert got == word, (word, got)
tracker = ExperimentTracker()
exp = tracker.start_experiment("agent-" + sys.argv[1])
step = 0
for _ in range(N_FIRST):
    tracker.log_metrics_batch({"reward": float(step)}, step=step); step += 1
tracker.flush()
say("first", exp)
expect("burst")
for _ in range(N_BURST):
    tracker.log_metrics_batch({"reward": float(step)}, step=step); step += 1
say("burst")
expect("down")
for _ in range(N_DOWN):
    tracker.log_metrics_batch({"reward": float(step)}, step=step); step += 1
say("logged")
expect("finish")
tracker.flush()
tracker.end_experiment()
say("status", json.dumps({"n": step, "status": tracker.status()}))
"""


def _trainer_body(first: int, burst: int, down: int) -> str:
    return TRAINER.replace("N_FIRST", str(first)).replace("N_BURST", str(burst)).replace("N_DOWN", str(down))


@pytest.fixture
def agents():
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait(GUARD)


def _trainers(tmp_path: Path, url: str, body: str, children, n: int = 2) -> list:
    env = child_env(ML_PERSISTENCE_AGENT=url)
    out = []
    for i in range(n):
        cwd = tmp_path / f"trainer{i}"  # empty: the events can only reach the database through the agent
        cwd.mkdir()
        out.append(children.start(cwd, body, str(i), name="trainer.py", env=env))
    return out


def test_two_trainers_through_an_agent_on_postgresql(pg_db: str, tmp_path: Path, children, agents) -> None:
    agent = AgentProcess(pg_db, [short_socket(tmp_path)], tmp_path)
    agents.append(agent)
    agent.start()
    trainers = _trainers(tmp_path, agent.url, _trainer_body(3000, 3000, 3000), children)
    exps = [int(t.line("first")) for t in trainers]
    for word in ("burst", "down", "finish"):
        for t in trainers:
            t.send(word)
    results = [json.loads(t.line("status")) for t in trainers]
    for t in trainers:
        assert t.wait() == 0, t.describe()
    assert agent.stop() == 0, agent.log()
    assert len(set(exps)) == 2
    for exp, result in zip(exps, results):
        assert result["status"]["lost"] == result["status"]["dropped"] == 0, result
        steps_once(pg_db, exp, "reward", range(result["n"]))
        assert pg_rows(pg_db, "SELECT status FROM experiments WHERE id = %s", (exp,)) == [("completed",)]
    marks = pg_rows(pg_db, "SELECT client_id, last_seq FROM agent_clients WHERE client_id NOT LIKE 'writer:%%'")
    assert len(marks) >= 2 and all(seq > 0 for _, seq in marks), marks
    assert PASSWORD not in agent.log()
    for t in trainers:
        assert sorted(os.listdir(t.stderr_path.parent)) == ["trainer.py", "trainer.py.stderr"]


def test_agent_sigkill_and_restart_on_postgresql_stores_every_event_once(pg_db: str, tmp_path: Path, children,
                                                                         agents) -> None:
    agent = AgentProcess(pg_db, [short_socket(tmp_path)], tmp_path)
    agents.append(agent)
    agent.start()
    trainers = _trainers(tmp_path, agent.url, _trainer_body(2000, 20000, 5000), children)
    exps = [int(t.line("first")) for t in trainers]
    for t in trainers:
        t.send("burst")
    for t in trainers:
        t.line("burst")
    assert agent.kill() == -signal.SIGKILL  # mid-stream: the bursts are in flight
    for t in trainers:
        t.send("down")
    for t in trainers:
        t.line("logged")
    agent.start()  # same database, same socket: the trainers reconnect and replay
    for t in trainers:
        t.send("finish")
    results = [json.loads(t.line("status")) for t in trainers]
    for t in trainers:
        assert t.wait() == 0, t.describe()
    assert agent.stop() == 0, agent.log()
    for exp, result in zip(exps, results):
        status = result["status"]
        print(f"experiment {exp}: {result['n']} events, client status {status}")
        assert status["reconnects"] >= 1 and status["lost"] == status["dropped"] == 0, status
        steps_once(pg_db, exp, "reward", range(result["n"]))
        assert result["n"] == 27000
        assert pg_rows(pg_db, "SELECT status FROM experiments WHERE id = %s", (exp,)) == [("completed",)]
    assert PASSWORD not in agent.log()
