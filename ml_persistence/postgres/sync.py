"""Sync on PostgreSQL: SQLite's Side with advisory locks, RETURNING ids and binary COPY of metric rows."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import psycopg

from ..sqlite.sync import COLUMNS, Side as SqliteSide
from . import schema
from .connect import translated
from .schema import LOCK_SQL

# PostgreSQL's type of each copied metrics column (COLUMNS["metrics"] order).
_METRIC_TYPES = ("int8", "int8", "text", "text", "int8", "int8", "int8", "float8", "text", "text", "text", "text", "text")
_COPY_METRICS = f"COPY metrics ({', '.join(COLUMNS['metrics'])}) FROM STDIN (FORMAT BINARY)"


class Side(SqliteSide):
    """A PostgreSQL database as sync's source or target."""

    # Concurrent transactions commit ids out of order: a snapshot can see id 300 while 200 is still on
    # its way. One run's rows come from one writer, in order, so a chunk ends at its last row instead.
    committed_in_id_order = False

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

