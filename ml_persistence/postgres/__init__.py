"""The PostgreSQL engine: psycopg 3 (libpq), async writes by binary COPY, sync reads."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import psycopg

NAME = "postgresql"
ERRORS: tuple[type[BaseException], ...] = (psycopg.Error,)


def store_for(db: str, busy_timeout_ms: int) -> Any:
    """Return an unopened write Store for the database at URL ``db``."""
    from .store import Store

    return Store(db, busy_timeout_ms)


def reader(db: str, create: bool = True) -> Any:
    """Return a read connection; ``create=False`` never creates or upgrades the schema."""
    from .reads import Reader

    return Reader.open(db, create)


def end_experiments_now(db: str, events: Sequence[Any], timeout: float) -> None:
    """End experiments with a plain blocking connection: for interpreter exit, when no thread may start."""
    from .store import end_experiments_now as end

    end(db, events, timeout)


def ensure(db: str) -> dict[str, Any]:
    """Create or upgrade the schema of ``db``; return {created, before, after, done, counts}."""
    from . import connect, schema
    from ..storage import display

    conn = connect.connect(db)
    try:
        before = schema.version(conn)
        created = before == 0 and "experiments" not in schema.tables(conn)
        done = schema.ensure(conn, display(db))
        after = schema.version(conn)
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in schema.TABLES}
    finally:
        conn.close()
    return {"created": created, "before": before, "after": after, "done": done, "counts": counts}


def describe(exc: BaseException, db: str) -> Optional[str]:
    """Return a one-line, password-free explanation of a driver error for a command's user, or None."""
    from .connect import ConnectError, where
    from ..storage import display, redact

    if isinstance(exc, ConnectError):
        return redact(str(exc))
    from .sync import SourceBusy

    if isinstance(exc, SourceBusy):
        return f"{display(db)}: {exc}"
    if not isinstance(exc, psycopg.Error):
        return None
    first = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    state = exc.sqlstate or ""
    if state.startswith("08") or state in ("57P01", "57P02", "57P03") or isinstance(exc, psycopg.OperationalError):
        return f"lost the connection to PostgreSQL at {where(db)} ({display(db)}): {first}"
    if state in ("40001", "40P01", "55P03"):
        return f"{display(db)} is busy ({first}); try again"
    if state == "42501":
        return f"{display(db)}: permission denied ({first})"
    return f"{display(db)}: {first}"


def check(db: str, quick: bool = False) -> dict[str, Any]:
    """Check the database's integrity (the report `ml-persistence check` prints)."""
    from .maintenance import check as run

    return run(db, quick)
