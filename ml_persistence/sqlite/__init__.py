"""The SQLite engine: one plain file, written through aiosqlite, read with sqlite3."""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Optional, Sequence

NAME = "sqlite"
ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error,)


def store_for(db: str, busy_timeout_ms: int) -> Any:
    """Return an unopened write Store for the file ``db``."""
    from .store import Store

    return Store(db, busy_timeout_ms)


def reader(db: str, create: bool = True) -> Any:
    """Return a read connection; ``create=False`` never creates, upgrades or writes the file."""
    from .reads import Reader

    return Reader.open(db, create)


def end_experiments_now(db: str, events: Sequence[Any], timeout: float) -> None:
    """End experiments with a plain blocking connection: for interpreter exit, when no thread may start."""
    from .store import end_experiments_now as end

    end(db, events, timeout)


def ensure(db: str) -> dict[str, Any]:
    """Create or upgrade ``db``; return {created, before, after, done, counts}."""
    from . import schema

    created = not os.path.exists(db)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        schema.configure(conn)
        before = schema.user_version(conn)
        done = schema.ensure(conn)
        after = schema.user_version(conn)
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in schema.TABLES}
    finally:
        conn.close()
    return {"created": created, "before": before, "after": after, "done": done, "counts": counts}


def describe(exc: BaseException, db: str) -> Optional[str]:
    """Return a one-line explanation of a driver error for a command's user, or None."""
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return f"{db} is locked by another writer ({exc}); try again"
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
        return f"{db} is not an SQLite database"
    return None


def check(db: str, quick: bool = False) -> dict[str, Any]:
    """Check the database's integrity (the report `ml-persistence check` prints)."""
    from .maintenance import check as run

    return run(db, quick)
