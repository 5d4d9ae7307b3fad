"""Connections from a postgresql:// URL: libpq parameters, our defaults, password-free failures."""

from __future__ import annotations

import os
import re
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..storage import display

APPLICATION_NAME = "ml_persistence"
CONNECT_TIMEOUT = 5  # seconds, unless the URL or $PGCONNECT_TIMEOUT says otherwise
# Each default applies only where neither the URL nor its libpq environment variable sets it.
# Keepalives and tcp_user_timeout notice a vanished server in about 30 s instead of hours.
_DEFAULTS = (
    ("connect_timeout", "PGCONNECT_TIMEOUT", str(CONNECT_TIMEOUT)),
    ("application_name", "PGAPPNAME", APPLICATION_NAME),
    ("keepalives_idle", None, "10"),
    ("keepalives_interval", None, "5"),
    ("keepalives_count", None, "3"),
    ("tcp_user_timeout", None, "30000"),
)
# libpq's words for a server that answered and said no: waiting will not change the answer.
_LASTING = re.compile(
    r"password authentication failed|authentication failed|no pg_hba\.conf entry|"
    r"database \".*\" does not exist|role \".*\" does not exist|permission denied|"
    r"password is required|no password supplied|certificate",
    re.IGNORECASE,
)


class ConnectError(psycopg.OperationalError):
    """The server could not be reached or refused us; ``lasting`` if retrying cannot help."""

    lasting = False


def params(db: str, **overrides: Any) -> dict[str, Any]:
    """Return the libpq connection parameters of ``db`` with our defaults filled in."""
    found: dict[str, Any] = dict(conninfo_to_dict(db))
    for key, env, value in _DEFAULTS:
        if key not in found and not (env and os.environ.get(env)):
            found[key] = value
    found.update(overrides)
    return found


def where(db: str) -> str:
    """Return 'host H, port P, database D' as libpq would resolve them (no credentials)."""
    found = conninfo_to_dict(db)
    host = found.get("host") or found.get("hostaddr") or os.environ.get("PGHOST") or "the local socket"
    port = found.get("port") or os.environ.get("PGPORT") or "5432"
    name = found.get("dbname") or os.environ.get("PGDATABASE") or found.get("user") or os.environ.get("PGUSER")
    return f"host {host}, port {port}, database {name or '(the user name)'}"


def failure(exc: BaseException, db: str) -> ConnectError:
    """Return a ConnectError naming where ``db`` points and libpq's reason, never the password."""
    reason = str(exc).strip().removeprefix("connection failed:").strip()
    reason = " ".join(reason.split())
    password = conninfo_to_dict(db).get("password")
    if password:
        reason = reason.replace(str(password), "***")
    error = ConnectError(f"cannot connect to PostgreSQL at {where(db)} ({display(db)}): {reason}")
    error.lasting = bool(_LASTING.search(reason))
    return error


def connect(db: str, **overrides: Any) -> psycopg.Connection:
    """Open a blocking autocommit connection to ``db``."""
    try:
        return psycopg.connect(autocommit=True, **params(db, **overrides))
    except psycopg.OperationalError as exc:
        raise failure(exc, db) from None


async def connect_async(db: str, **overrides: Any) -> psycopg.AsyncConnection:
    """Open an asyncio autocommit connection to ``db``."""
    try:
        return await psycopg.AsyncConnection.connect(autocommit=True, **params(db, **overrides))
    except psycopg.OperationalError as exc:
        raise failure(exc, db) from None


def translated(sql: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 - a deliberate cache
    """Return ``sql`` with psycopg's placeholders: ``?`` -> ``%s``, a literal ``%`` -> ``%%``."""
    found = cache.get(sql)
    if found is None:
        found = sql.replace("%", "%%").replace("?", "%s")
        if len(cache) < 512:
            cache[sql] = found
    return found
