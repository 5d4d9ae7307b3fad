"""Review of issue 13 (PostgreSQL backend): each test here demonstrates one defect found in review.

Every test fails on the code as reviewed; each names the promise it checks (nothing logged is lost,
the same output on both engines, a restart mid-run is survived, passwords are redacted without
damaging data).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

import ml_persistence
from conftest import subprocess_env
from ml_persistence import ExperimentTracker, MetricsLogger, storage
from ml_persistence import recovery
from pg import drop_database, pg_rows, with_database


@pytest.fixture
def db(any_db: str):
    yield any_db
    ml_persistence.shutdown(timeout=30)


def _terminate_other_connections(url: str) -> int:
    """Cut every connection to ``url``'s database but this one, as a server restart does."""
    name = url.rsplit("/", 1)[1].split("?")[0]
    admin = os.environ["ML_PERSISTENCE_TEST_POSTGRES"]
    (n,), = pg_rows(admin, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
    return n


# -- redaction damages user data (both engines: validate.json_text / storage.redact) ---------------------

def test_metadata_holding_a_passwordless_url_and_an_at_sign_is_stored_intact(db: str) -> None:
    """storage._PASSWORD takes 'host:5432/db","owner":"a' for user:password (it does not stop at '/'),
    so redaction rewrites the JSON text and the 'owner' key is lost."""
    metadata = {"db": "postgresql://db.internal:5432/experiments", "owner": "alice@example.com"}
    t = ExperimentTracker(db)
    e = t.start_experiment(name="meta", metadata=metadata)
    t.end_experiment()
    assert t.get_experiment(e)["metadata"] == metadata


def test_metadata_holding_a_password_query_parameter_keeps_its_other_keys(db: str) -> None:
    """storage._PASSWORD_PARAM runs to the next '&', '#' or space: inside JSON it eats the closing
    quote and every key after it, leaving text that is no longer JSON."""
    t = ExperimentTracker(db)
    e = t.start_experiment(name="meta", metadata={"db": "postgresql://h/db?password=pw", "lr": 0.1})
    t.end_experiment()
    assert t.get_experiment(e)["metadata"] == {"db": "postgresql://h/db?password=***", "lr": 0.1}


def test_redacting_a_password_parameter_keeps_the_text_after_it() -> None:
    assert storage.redact("(postgresql://h/db?password=pw): refused") == "(postgresql://h/db?password=***): refused"


# -- identity() of a URL whose first parameter is the password ------------------------------------------

def test_identity_of_a_url_whose_first_parameter_is_the_password_still_names_the_database() -> None:
    """identity() drops '?password=pw' with its '?', leaving 'db&sslmode=require': libpq then reads the
    database name as 'db&sslmode=require', so the printed `recover --db` command opens the wrong database."""
    url = "postgresql://alice@db.internal:5432/experiments?password=pw&sslmode=require"
    assert storage.identity(url) == "postgresql://alice@db.internal:5432/experiments?sslmode=require"
    assert "experiments?sslmode=require" in recovery.command("/tmp/x.mlrecovery", url)


# -- metric statistics overflow on PostgreSQL (sqlite/reads.py metric_stats) ----------------------------

@pytest.mark.parametrize("values", [[1.7e308, 1.7e308], [1.0, 1e200]])
def test_metric_summary_of_large_values_is_read_on_both_engines(db: str, values: list[float]) -> None:
    """PostgreSQL raises 'value out of range: overflow' where SQLite returns inf: AVG(value) of two
    1.7e308 and AVG((value - mean) * (value - mean)) of 1 and 1e200 overflow float8. `show ID`,
    `compare` and MetricsLogger.get_metrics_summary() then fail on PostgreSQL only."""
    t = ExperimentTracker(db)
    e = t.start_experiment(name="big")
    for step, value in enumerate(values):
        t.log_metric("x", value, step=step)
    t.end_experiment()
    summary = MetricsLogger(db).get_metrics_summary(e)
    assert summary["x"]["count"] == 2
    assert summary["x"]["max"] == max(values)


# -- text with a NUL character: stored on SQLite, refused (lost) on PostgreSQL ----------------------------

def test_a_nul_character_in_a_hyperparameter_and_in_notes_is_treated_alike_on_both_engines(db: str) -> None:
    """PostgreSQL's text cannot hold a NUL: both engines refuse it at the call, and the run still ends."""
    t = ExperimentTracker(db)
    e = t.start_experiment(name="nul")
    with pytest.raises(ml_persistence.errors.InvalidValueError, match="NUL"):
        t.log_hyperparameter("h", "a\x00b")
    with pytest.raises(ml_persistence.errors.InvalidValueError, match="NUL"):
        t.end_experiment(notes="a\x00b")
    t.end_experiment(notes="ab")
    assert t.get_experiment(e)["status"] == "completed"
    assert t.get_hyperparameters(e) == {}


# -- a lost connection breaks reads for ever (Backend._reader / Agent._reader) ---------------------------

def test_public_reads_work_again_after_the_server_cut_the_connection(pg_db: str) -> None:
    """The writer reconnects after a restart, but the Backend's reader keeps its dead connection:
    every later read raises 'the connection is closed' for the rest of the process."""
    t = ExperimentTracker(pg_db)
    e = t.start_experiment(name="reads")
    assert t.get_experiment(e)["name"] == "reads"
    assert _terminate_other_connections(pg_db) >= 1
    t.log_metric("x", 1.0, step=1)
    for _ in range(2):  # the first read may fail with the cut connection; the next one must not
        try:
            found = t.get_experiment(e)
        except Exception:  # noqa: BLE001
            continue
        break
    else:
        pytest.fail("reads never recover after the connection was cut")
    assert found["name"] == "reads"
    t.end_experiment()


def test_agent_admits_a_new_client_after_the_server_cut_its_connections(pg_db: str, tmp_path: Path) -> None:
    """The agent answers each new client's Hello from its one long-lived reader (client_mark); once
    the server restarted, every Hello fails with 'the connection is closed' and no trainer can
    connect to the agent again until it is restarted."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "--db", pg_db, "--listen", f"unix://{sock}"],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    try:
        for line in agent.stdout:  # type: ignore[union-attr]
            if "ready" in line:
                break
        else:
            pytest.fail("the agent did not start")
        # Keep draining its output: it logs a traceback per refused Hello, and a full pipe would block it.
        threading.Thread(target=agent.stdout.read, daemon=True).start()  # type: ignore[union-attr]
        assert _terminate_other_connections(pg_db) >= 1
        script = (
            "from ml_persistence import ExperimentTracker\n"
            f"t = ExperimentTracker(agent='unix://{sock}')\n"
            "e = t.start_experiment(name='after-cut')\n"
            "t.log_metric('x', 1.0, step=1)\n"
            "t.end_experiment(); t.close(); print('ok', e)\n"
        )
        done = subprocess.run([sys.executable, "-c", script], env=subprocess_env(ML_PERSISTENCE_AGENT_TIMEOUT="15"),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(timeout=10)


# -- ordering follows the server's collation on PostgreSQL, bytes on SQLite -------------------------------

def test_metric_names_are_listed_in_the_same_order_as_on_sqlite_whatever_the_collation(postgres_url: str) -> None:
    """metric_names() walks MIN(metric_name) / metric_name > ?, which on PostgreSQL follow the database's
    collation (en_US on most servers): ['_u', 'a_b', 'ab', 'B', 'Zeta'] instead of SQLite's byte order,
    so `show`'s Metrics table and get_metrics_summary() differ between engines."""
    name = "mlp_t_" + uuid.uuid4().hex
    try:
        pg_rows(postgres_url, f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
                              "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"cannot create an ICU en-US database here: {exc}")
    url = with_database(postgres_url, name)
    try:
        t = ExperimentTracker(url)
        e = t.start_experiment(name="collation")
        names = ["Zeta", "B", "_u", "a_b", "ab"]
        t.log_metrics_batch({n: 1.0 for n in names}, step=1)
        t.end_experiment()
        assert MetricsLogger(url).list_metric_names(e) == sorted(names)
        ml_persistence.shutdown(timeout=30)
    finally:
        ml_persistence.shutdown(timeout=30)
        drop_database(postgres_url, name)
