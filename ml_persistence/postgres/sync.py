"""Sync on PostgreSQL: SQLite's Side with advisory locks, RETURNING ids and binary COPY of metric rows."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Iterator, Sequence

import psycopg

from ..sqlite.sync import CHILD_TABLES, COLUMNS, Side as SqliteSide
from . import schema
from .connect import translated
from .schema import LOCK_SQL

IN_FLIGHT_WAIT = 30.0  # seconds to wait for the source's open write transactions before giving up the pass


# The transactions (server pid, transaction id) holding a write lock on one of these tables of this database.
_WRITERS = (
    "SELECT DISTINCT x.pid, x.transactionid::text FROM pg_locks AS r "
    "JOIN pg_locks AS x ON x.pid = r.pid AND x.locktype = 'transactionid' AND x.mode = 'ExclusiveLock' AND x.granted "
    "WHERE r.locktype = 'relation' AND r.mode = 'RowExclusiveLock' AND r.pid <> pg_backend_pid() "
    "AND r.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND r.relation IN (SELECT c.oid FROM pg_class AS c WHERE c.oid = ANY (SELECT to_regclass(t) FROM unnest(?::text[]) AS t))"
)


class SourceBusy(psycopg.OperationalError):
    """The source holds write transactions open too long to copy past them: retry later."""

# The columns PostgreSQL types as bigint and double precision (the rest are text), by table.
_INTEGERS = {
    "experiments": {"random_seed", "git_dirty", "pid"},
    "models": {"experiment_id", "state_dim", "action_dim", "episode_num", "global_step", "is_best"},
    "metrics": {"experiment_id", "model_id", "episode", "step", "epoch"},
    "hyperparameters": {"experiment_id", "model_id"},
    "artifacts": {"experiment_id", "model_id"},
    "datasets": {"num_samples"},
}
_REALS = {
    "experiments": {"duration_seconds"},
    "models": {"checkpoint_size_mb", "train_metric", "val_metric", "test_metric"},
    "metrics": {"value"},
    "artifacts": {"file_size_mb"},
}
# PostgreSQL's type of each copied column, in COLUMNS order.
_TYPES = {
    table: tuple(
        "int8" if c in _INTEGERS.get(table, ()) else "float8" if c in _REALS.get(table, ()) else "text"
        for c in columns
    )
    for table, columns in COLUMNS.items()
}
_METRIC_TYPES = _TYPES["metrics"]
_COPY_METRICS = f"COPY metrics ({', '.join(COLUMNS['metrics'])}) FROM STDIN (FORMAT BINARY)"


class Side(SqliteSide):
    """A PostgreSQL database as sync's source or target."""

    def high_water(self) -> dict[str, int]:
        """Return each child table's highest row id once no row at or below it can still arrive.

        Concurrent transactions commit ids out of order: a snapshot can see id 300 while 200 is still
        on its way. Every transaction that took an id below the highest was writing to that table when
        it was read, so this waits until each transaction then holding a write lock on one has ended.
        """
        found = super().high_water()
        writers = set(self._plain_rows(_WRITERS, (list(CHILD_TABLES),)))
        deadline = time.monotonic() + IN_FLIGHT_WAIT
        while writers:
            writers &= set(self._plain_rows(_WRITERS, (list(CHILD_TABLES),)))  # (pid, xid): that transaction
            if not writers:
                break
            if time.monotonic() > deadline:
                raise SourceBusy(
                    f"{len(writers)} write transaction(s) on the source have been open for {IN_FLIGHT_WAIT:.0f} s "
                    f"(server pids {', '.join(str(pid) for pid, _ in sorted(writers))}); "
                    "rows they hold cannot be copied in order yet"
                )
            time.sleep(0.05)
        return found

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

    def stored(self, table: str, values: Sequence[Any]) -> tuple:
        """Return a row's values as PostgreSQL will hold them (an SQLite cell may hold any type)."""
        return tuple(_as(kind, value) for kind, value in zip(_TYPES[table], values))

    def insert_rows(self, table: str, rows: list[tuple]) -> None:
        if table != "metrics":  # few rows: each converted to the column types
            return super().insert_rows(table, [self.stored(table, row) for row in rows])
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
    """Return a metrics row with each value in its column's PostgreSQL type."""
    return tuple(_as(kind, value) for kind, value in zip(_METRIC_TYPES, row))


def _as(kind: str, value: Any) -> Any:
    """Return ``value`` in PostgreSQL type ``kind``: numbers from numeric text, NULL for what is no number."""
    if value is None:
        return None
    if kind == "text":
        if isinstance(value, str):
            return value.replace("\x00", "\ufffd") if "\x00" in value else value  # text cannot hold NUL
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return text.replace("\x00", "\ufffd")
    if kind == "int8" and type(value) is int and abs(value) < 2**63:
        return value
    if kind == "float8" and type(value) is float:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if kind == "float8":
        return number
    return int(number) if math.isfinite(number) and number == int(number) and abs(number) < 2**63 else None


def side(db: str, create: bool) -> Side:
    """Open the database at URL ``db`` as a sync side (``create``: create or upgrade its schema first)."""
    from .reads import Reader

    return Side(Reader.open(db, create))

