"""PostgreSQL fixtures: a fresh database per test on the server named by $ML_PERSISTENCE_TEST_POSTGRES.

The URL is an admin URL (a role with CREATEDB). Tests that need it skip where it is unset, unless
$ML_PERSISTENCE_REQUIRE_POSTGRES=1 (CI sets it), where a missing or unreachable server fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

URL_VAR = "ML_PERSISTENCE_TEST_POSTGRES"
REQUIRE_VAR = "ML_PERSISTENCE_REQUIRE_POSTGRES"
CLUSTER_VAR = "ML_PERSISTENCE_TEST_POSTGRES_CLUSTER"  # "15 main" unless set (.ci/run sets it)
DB_PREFIX = "mlp_t_"
# Marker for tests that restart the shared server: they must not run alongside any other test.
SERIAL = pytest.mark.serial


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "serial: restarts the shared PostgreSQL server; never run in parallel with other tests"
    )


def _required() -> bool:
    return os.environ.get(REQUIRE_VAR) == "1"


def _unavailable(reason: str) -> None:
    if _required():
        pytest.fail(f"{reason} ({REQUIRE_VAR}=1)", pytrace=False)
    pytest.skip(reason)


def redact(url: str) -> str:
    """Return the URL with its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(url: str, name: str) -> str:
    """Return the URL with its database name replaced by name (credentials and options kept)."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _connect(url: str, **kwargs):
    import psycopg

    return psycopg.connect(url, connect_timeout=5, autocommit=True, **kwargs)


def pg_rows(url: str, sql: str, params: tuple | list = ()) -> list[tuple]:
    """Run one statement (%s placeholders) on its own connection; return all rows as tuples."""
    with _connect(url) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The admin URL from $ML_PERSISTENCE_TEST_POSTGRES, checked to accept a connection."""
    url = os.environ.get(URL_VAR, "").strip()
    if not url:
        _unavailable(f"needs a PostgreSQL server: set {URL_VAR}=postgresql://user:password@host:port/db")
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        pytest.fail(f"{URL_VAR} must be a postgresql:// URL, got {redact(url)}", pytrace=False)
    try:
        import psycopg
    except ImportError:
        _unavailable("needs psycopg: pip install 'psycopg[binary]>=3.1'")
    try:
        pg_rows(url, "SELECT 1")
    except psycopg.Error as exc:
        _unavailable(f"cannot use PostgreSQL at {redact(url)}: {exc}".strip())
    return url


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Create database mlp_t_<hex> through admin_url; yield its URL; drop it on exit."""
    from psycopg import sql

    name = DB_PREFIX + uuid.uuid4().hex
    with _connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(admin_url, name)
    finally:
        drop_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name``, ending the connections a test leaked into it first.

    Not WITH (FORCE) straight away: a role that is not superuser may not terminate an autovacuum
    worker, which a plain DROP DATABASE stops by itself.
    """
    import psycopg
    from psycopg import sql

    statement = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
    with _connect(admin_url) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND usename = current_user "
            "AND pid <> pg_backend_pid()",
            (name,),
        )
        try:
            conn.execute(statement)
        except psycopg.errors.ObjectInUse:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def pg_db(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database mlp_t_<hex> for this test (same credentials); dropped afterwards."""
    with fresh_database(postgres_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database: a SQLite file path under tmp_path, or a PostgreSQL URL (from pg_db).

    Like db_path, it is also made the default through ML_PERSISTENCE_DB, with tmp_path as cwd.
    """
    if request.param == "sqlite":
        db = str(tmp_path / "ml_experiments.db")
    else:
        db = request.getfixturevalue("pg_db")
    monkeypatch.setenv("ML_PERSISTENCE_DB", db)
    monkeypatch.chdir(tmp_path)
    return db


def restart_postgres(url: str | None = None, timeout: float = 60) -> None:
    """Restart the local cluster ($ML_PERSISTENCE_TEST_POSTGRES_CLUSTER, default "15 main") as root;
    return once url (default: the admin URL) accepts connections again.

    Every open connection is cut. Mark tests that call this with pg.SERIAL.
    """
    import psycopg

    url = url or os.environ.get(URL_VAR, "")
    if os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None:
        _unavailable("restarting PostgreSQL needs root and pg_ctlcluster")
    cluster = os.environ.get(CLUSTER_VAR, "15 main").split()
    done = subprocess.run(["pg_ctlcluster", *cluster, "restart"], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctlcluster {' '.join(cluster)} restart failed: {done.stderr.strip()}")
    # pg_ctlcluster waits for startup; this bounded poll only covers a server still leaving recovery.
    deadline = time.monotonic() + timeout
    while True:
        try:
            pg_rows(url, "SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
