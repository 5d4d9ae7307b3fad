"""Opening the database for a command: read-only for reads, never created by accident."""

from __future__ import annotations

import sqlite3
from typing import Any

from .. import queries, schema
from ..liveness import with_liveness
from ..readonly import ReadError, open_read_only, require_file

NOT_FOUND = 1
USAGE = 2


class CLIError(Exception):
    """An expected failure: printed as one line on stderr, exit status ``code``."""

    def __init__(self, message: str, code: int = NOT_FOUND) -> None:
        super().__init__(message)
        self.code = code


def open_read(path: str) -> sqlite3.Connection:
    """Open an existing database read-only (see readonly.open_read_only), errors as CLIError."""
    try:
        return open_read_only(path)
    except ReadError as exc:
        raise CLIError(str(exc), exc.code) from None


def open_write(path: str, busy_timeout_ms: int = 10_000) -> sqlite3.Connection:
    """Open an existing database for a maintenance write, schema ensured."""
    try:
        require_file(path)
    except ReadError as exc:
        raise CLIError(str(exc), exc.code) from None
    conn = schema.connect(path, busy_timeout_ms)
    conn.row_factory = sqlite3.Row
    return conn


def experiment(conn: sqlite3.Connection, experiment_id: int) -> dict[str, Any]:
    """Return one experiment with its effective status, or raise CLIError (exit 1)."""
    found = queries.get_experiment(conn, experiment_id)
    if found is None:
        raise CLIError(f"no experiment {experiment_id}")
    return with_liveness(conn, found)
