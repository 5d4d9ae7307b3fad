"""Opening a database to read it: read-only, never created, never upgraded, older schemas included."""

from __future__ import annotations

import os
import sqlite3
from urllib.parse import quote

from . import schema
from ..errors import ReadError


def require_file(path: str) -> None:
    """Raise ReadError unless ``path`` is an existing file (never create one by opening it)."""
    if not os.path.exists(path):
        raise ReadError(f"no database at {path} (create one with `ml-persistence init --db {path}`)")
    if os.path.isdir(path):
        raise ReadError(f"{path} is a directory, not a database file", 2)


def connect_read_only(path: str) -> sqlite3.Connection:
    """Open an existing file read-only, without looking at what it holds (a damaged file opens too)."""
    require_file(path)
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    # check_same_thread off: sync reads its next chunk on a second thread (one at a time).
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        if os.path.exists(path + "-wal"):
            raise
        # A WAL file on a read-only medium: no writer can be active (it would have a -wal file), so
        # the file can be read as immutable instead of failing to create its shared-memory index.
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
    return conn


def _read_as_current(conn: sqlite3.Connection, path: str) -> None:
    """Check the schema; make an older one read like the current one, without writing the file."""
    version = schema.user_version(conn)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    reason = schema.not_ours(conn, path)
    if reason is not None:
        raise ReadError(reason)
    if "experiments" not in tables:
        raise ReadError(f"{path} is not an ml_persistence database (it has no experiments table)")
    if version > schema.SCHEMA_VERSION:
        raise ReadError(
            f"{path} has schema version {version}, newer than this ml_persistence supports "
            f"({schema.SCHEMA_VERSION}); upgrade ml_persistence"
        )
    missing = [t for t in schema.TABLES if t not in tables]
    if missing:
        raise ReadError(f"{path} is not an ml_persistence database (no {', '.join(missing)} table)")
    added: dict[str, list[str]] = {}
    for table, column, _ in [*schema.ADDED_COLUMNS_V1, *schema.ADDED_COLUMNS_V4]:
        if column not in schema.columns(conn, table):
            added.setdefault(table, []).append(column)
    # Columns newer versions add read as NULL through temporary views, which shadow the tables for
    # this connection only: a file of the original implementation is read without being upgraded.
    for table, names in added.items():
        nulls = ", ".join(f"NULL AS {name}" for name in names)
        conn.execute(f"CREATE TEMP VIEW {table} AS SELECT *, {nulls} FROM main.{table}")
    # A table a newer version adds reads as empty, the same way.
    if "model_aliases" not in tables:
        conn.execute(
            "CREATE TEMP VIEW model_aliases AS SELECT NULL AS alias, NULL AS model_id, NULL AS experiment_id, "
            "NULL AS created_at, NULL AS updated_at WHERE 0"
        )


def open_read_only(path: str) -> sqlite3.Connection:
    """Open an existing database read-only (WAL readers never block writers), rows as sqlite3.Row."""
    conn = connect_read_only(path)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        _read_as_current(conn, path)
    except BaseException:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn
