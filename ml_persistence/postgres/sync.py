"""Sync on PostgreSQL: SQLite's Side with advisory locks, RETURNING ids and binary COPY of metric rows."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Iterator, Sequence

import psycopg

from ..sqlite.sync import COLUMNS, Side as SqliteSide
from . import schema
from .connect import translated
from .schema import LOCK_SQL

IN_FLIGHT_WAIT = 30.0  # seconds to wait for the source's open write transactions before giving up the pass


class SourceBusy(psycopg.OperationalError):
    """The source holds write transactions open too long to copy past them: retry later."""

# PostgreSQL's type of each copied metrics column (COLUMNS["metrics"] order).
_METRIC_TYPES = ("int8", "int8", "text", "text", "int8", "int8", "int8", "float8", "text", "text", "text", "text", "text")
_COPY_METRICS = f"COPY metrics ({', '.join(COLUMNS['metrics'])}) FROM STDIN (FORMAT BINARY)"


class Side(SqliteSide):
    """A PostgreSQL database as sync's source or target."""

    def high_water(self) -> dict[str, int]:
        """Return each child table's highest row id once no row at or below it can still arrive.

        Concurrent transactions commit ids out of order: a snapshot can see id 300 while 200 is still
        on its way. Every transaction that took an id below the highest was running when it was read,
        so this waits until each transaction that had written anything then has ended.
        """
        found = super().high_water()
        (snapshot,) = self._plain_rows("SELECT pg_current_snapshot()::text", ())[0]
        deadline = time.monotonic() + IN_FLIGHT_WAIT
        while True:
            (running,) = self._plain_rows(
                "SELECT count(*) FROM pg_snapshot_xip(?::pg_snapshot) AS x(xid) "
                "WHERE pg_xact_status(x.xid) = 'in progress'",
                (snapshot,),
            )[0]
            if not running:
                return found
            if time.monotonic() > deadline:
                raise SourceBusy(
                    f"{running} write transaction(s) on the source have been open for {IN_FLIGHT_WAIT:.0f} s; "
                    "rows they hold cannot be copied in order yet"
                )
            time.sleep(0.05)

    # Every statement runs on the connection as it is: inside a transaction, a lost connection must
    # fail the transaction, never be replaced by a fresh one (the Reader's reads reconnect; ours don't).
    def _conn(self) -> psycopg.Connection:
        return self.reader.conn if self._in_transaction else self.reader._live()

    _in_transaction = False

    def _tables(self) -> set[str]:
        return set(schema.tables(self._conn()))

    def _plain_rows(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        with self._conn().cursor() as cursor:
            cursor.execute(translated(sql), params)
            return cursor.fetchall()

    def _run(self, sql: str, params: Sequence[Any]) -> None:
        self._conn().execute(translated(sql), params)

    def _insert_id(self, sql: str, params: Sequence[Any]) -> int:
        return self._plain_rows(sql + " RETURNING id", params)[0][0]

    def _insert_many(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        marks = ", ".join(["%s"] * len(columns))
        with self._conn().cursor() as cursor:
            cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def _mapped_model_id(self) -> str:
        return "CASE WHEN model_id IS NULL THEN NULL ELSE (?::jsonb ->> model_id::text)::bigint END"

    def _lock(self, key: str) -> None:
        self._conn().execute(LOCK_SQL, ("ml_persistence.sync:" + key,))

    @contextlib.contextmanager
    def transaction(self, key: str) -> Iterator[None]:
        with self.reader._live().transaction():
            self._in_transaction = True
            try:
                self._lock(key)
                yield
            finally:
                self._in_transaction = False

    def insert_rows(self, table: str, rows: list[tuple]) -> None:
        if table != "metrics":
            return super().insert_rows(table, rows)
        try:
            with self._conn().transaction():  # a savepoint: a row COPY cannot type is retried coerced
                self._copy_metrics(rows)
        except (psycopg.DataError, TypeError, ValueError, OverflowError):
            with self._conn().transaction():
                self._copy_metrics([_coerced(row) for row in rows])

    def _copy_metrics(self, rows: list[tuple]) -> None:
        with self._conn().cursor() as cursor, cursor.copy(_COPY_METRICS) as copy:
            copy.set_types(_METRIC_TYPES)
            write = copy.write_row
            for row in rows:
                write(row)


def _coerced(row: tuple) -> tuple:
    """Return a metrics row with each value in its column's PostgreSQL type, as SQLite's affinity would read it."""
    return tuple(_as(kind, value) for kind, value in zip(_METRIC_TYPES, row))


def _as(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "text":
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return text.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None if kind == "int8" else math.nan
    if kind == "float8":
        return number
    return int(number) if math.isfinite(number) and number == int(number) and abs(number) < 2**63 else None


def side(db: str, create: bool) -> Side:
    """Open the database at URL ``db`` as a sync side (``create``: create or upgrade its schema first)."""
    from .reads import Reader

    return Side(Reader.open(db, create))

