"""PostgreSQL schema upgrades: a database an older version created is upgraded in place, rows kept."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from pg import pg_rows

from ml_persistence.postgres import schema

psycopg = pytest.importorskip("psycopg")


def _create_at_version_1(url: str) -> None:
    from ml_persistence.postgres import connect, schema

    conn = connect.connect(url)
    try:
        with conn.transaction():
            schema.MIGRATIONS[1](conn)
            conn.execute(schema.VERSION_TABLE_SQL)
            conn.execute(f"INSERT INTO {schema.VERSION_TABLE} (version) VALUES (1)")
            conn.execute("INSERT INTO experiments (name, experiment_type, start_time) VALUES ('old', 'rl', '2026-01-02 03:04:05.000000')")
    finally:
        conn.close()


def test_a_version_1_database_is_upgraded_in_place_by_first_use(pg_db: str) -> None:
    from ml_persistence import ExperimentTracker
    from ml_persistence.postgres import schema

    _create_at_version_1(pg_db)
    tables = {name for (name,) in pg_rows(pg_db, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    assert "agent_clients" not in tables and "legacy_imports" not in tables
    tracker = ExperimentTracker(pg_db)
    new = tracker.start_experiment("new")
    tracker.log_metric("loss", 0.5, step=1)
    tracker.end_experiment()
    assert pg_rows(pg_db, f"SELECT version FROM {schema.VERSION_TABLE}") == [(schema.SCHEMA_VERSION,)]
    tables = {name for (name,) in pg_rows(pg_db, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    assert {"agent_clients", "agent_requests", "legacy_imports"} <= tables
    assert [(e["name"], e["status"]) for e in tracker.list_experiments()] == [("new", "completed"), ("old", "running")]
    assert tracker.get_experiment(new)["status"] == "completed"


def test_init_reports_the_upgrade(pg_db: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    from conftest import PYTHON, subprocess_env

    _create_at_version_1(pg_db)
    done = subprocess.run([PYTHON, "-m", "ml_persistence", "init", "--db", pg_db], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"from schema version 1 to {schema.SCHEMA_VERSION}" in done.stdout and "created tables agent_clients, agent_requests" in done.stdout
    assert urlsplit(pg_db).password not in done.stdout + done.stderr
    again = subprocess.run([PYTHON, "-m", "ml_persistence", "init", "--db", pg_db], cwd=tmp_path, env=subprocess_env(),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f"up to date (schema version {schema.SCHEMA_VERSION})" in again.stdout, again.stdout + again.stderr
