"""Opening the database for a command: read-only for reads, never created by accident."""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any
from urllib.parse import quote

from .. import queries, schema
from ..liveness import with_liveness

NOT_FOUND = 1
USAGE = 2


class CLIError(Exception):
    """An expected failure: printed as one line on stderr, exit status ``code``."""

    def __init__(self, message: str, code: int = NOT_FOUND) -> None:
        super().__init__(message)
        self.code = code


def _require_file(path: str) -> None:
    if not os.path.exists(path):
        raise CLIError(f"no database at {path} (create one with `ml-persistence init --db {path}`)")
    if os.path.isdir(path):
        raise CLIError(f"{path} is a directory, not a database file", USAGE)


def _upgrade_if_old(path: str) -> None:
    probe = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True)
    try:
        version = schema.user_version(probe)
        ours = probe.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'experiments'").fetchone()
    finally:
        probe.close()
    if version == 0 and not ours:
        raise CLIError(f"{path} is not an ml_persistence database (it has no experiments table)")
    if version > schema.SCHEMA_VERSION:
        raise CLIError(
            f"{path} has schema version {version}, newer than this ml_persistence supports "
            f"({schema.SCHEMA_VERSION}); upgrade ml_persistence"
        )
    if version < schema.SCHEMA_VERSION:
        # The library upgrades a file in place on open; reading commands do the same, once.
        try:
            schema.connect(path).close()
        except sqlite3.Error as exc:
            raise CLIError(
                f"{path} has schema version {version} and could not be upgraded to "
                f"{schema.SCHEMA_VERSION}: {exc}"
            ) from exc
        print(f"ml-persistence: upgraded {path} from schema version {version} to {schema.SCHEMA_VERSION}",
              file=sys.stderr)


def open_read(path: str) -> sqlite3.Connection:
    """Open an existing database read-only (WAL readers never block writers), rows as sqlite3.Row."""
    _require_file(path)
    _upgrade_if_old(path)
    conn = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.row_factory = sqlite3.Row
    return conn


def open_write(path: str, busy_timeout_ms: int = 10_000) -> sqlite3.Connection:
    """Open an existing database for a maintenance write, schema ensured."""
    _require_file(path)
    conn = schema.connect(path, busy_timeout_ms)
    conn.row_factory = sqlite3.Row
    return conn


def experiment(conn: sqlite3.Connection, experiment_id: int) -> dict[str, Any]:
    """Return one experiment with its effective status, or raise CLIError (exit 1)."""
    found = queries.get_experiment(conn, experiment_id)
    if found is None:
        raise CLIError(f"no experiment {experiment_id}")
    return with_liveness(conn, found)
