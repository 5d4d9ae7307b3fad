"""The write side: apply decoded events to PostgreSQL through psycopg, one transaction per batch.

Exactly once across a lost COMMIT: every transaction also moves this Store's own mark (the
agent_clients row 'writer:<uuid>') to the call's sequence number. When a call fails with its
outcome unknown (the connection broke), the Store remembers that number, the ``events`` object and
the call's result; when the writer retries the same object, the Store first waits on the mark's row
(an old transaction still committing holds it) and, if the mark reached the number, returns the
remembered result instead of applying the events again.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from typing import Any, Awaitable, Callable, Optional, Sequence

import msgspec
import psycopg

from . import connect, schema
from .connect import translated
from ..sqlite import store as sqlite_store
from ..events import (
    AliasDeleted,
    AliasSet,
    ArtifactLogged,
    DatasetRegistered,
    Event,
    ExperimentEnded,
    ExperimentReopened,
    ExperimentResumed,
    ExperimentStarted,
    MetricsLogged,
    ModelRegistered,
)
from .. import rows
from ..rows import local_text, split_of
from ..storage import BUSY, ENVIRONMENT, FATAL, REFUSED, display

# A server that stops hearing from us mid-transaction ends it (and frees its locks) after this.
_IDLE_IN_TRANSACTION_MS = 60_000

_METRIC_COLUMNS = (
    "experiment_id", "metric_type", "timestamp", "metric_name", "value", "split",
    "model_id", "episode", "step", "epoch", "value_json", "phase", "metadata",
)
_METRIC_TYPES = (
    "int8", "text", "text", "text", "float8", "text", "int8", "int8", "int8", "int8", "text", "text", "text",
)
_COPY_METRICS = f"COPY metrics ({', '.join(_METRIC_COLUMNS)}) FROM STDIN (FORMAT BINARY)"

# SQLSTATE (class or full code) -> what it means for a write; the longest match wins.
SQLSTATES = {
    "08": ENVIRONMENT,  # connection exception
    "53": ENVIRONMENT,  # insufficient resources: disk full, out of memory, too many connections
    "57P01": ENVIRONMENT,  # admin shutdown
    "57P02": ENVIRONMENT,  # crash shutdown
    "57P03": ENVIRONMENT,  # cannot connect now (starting up)
    "58": ENVIRONMENT,  # system error: I/O error, undefined file
    "25006": ENVIRONMENT,  # read-only transaction: a standby, until failover ends
    "40001": BUSY,  # serialization failure
    "40P01": BUSY,  # deadlock detected
    "55P03": BUSY,  # lock not available (lock_timeout, our busy timeout)
    "23": REFUSED,  # integrity constraint violation
    "22": REFUSED,  # data exception: out of range, NUL in text, bad encoding
    "54": REFUSED,  # program limit exceeded: a value too large to index or store
}

# Errors raised before the server sees the event, by psycopg binding its values: the event itself is bad.
REFUSED_EXCEPTIONS = (
    psycopg.DataError,  # e.g. a NUL in a text value
    psycopg.IntegrityError,
    psycopg.ProgrammingError,  # e.g. a value psycopg cannot adapt
    OverflowError,  # an integer past 64 bits in COPY
    UnicodeError,  # a lone surrogate
    ValueError,
    TypeError,
)


def classify(exc: BaseException) -> str:
    """Return what a write's failure means: BUSY, ENVIRONMENT, REFUSED or FATAL (see SQLSTATES)."""
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state:
            for key in (state, state[:2]):
                if key in SQLSTATES:
                    return SQLSTATES[key]
            return FATAL
        if isinstance(exc, connect.ConnectError):
            return FATAL if exc.lasting else ENVIRONMENT
        if isinstance(exc, psycopg.OperationalError):  # the connection broke, client side
            return ENVIRONMENT
    if isinstance(exc, REFUSED_EXCEPTIONS):
        return REFUSED
    if isinstance(exc, (OSError, MemoryError)):
        return ENVIRONMENT
    return FATAL


class Store:
    """One psycopg AsyncConnection that writes events; used only from the writer's event loop."""

    classify = staticmethod(classify)
    open_grace = 10.0  # seconds a writer retries an unreachable server at open (a restart) before it reports

    def __init__(self, db: str, busy_timeout_ms: int = 5000) -> None:
        self.db = db
        self.path = display(db)
        self.busy_timeout_ms = busy_timeout_ms
        self.conn: Optional[psycopg.AsyncConnection] = None
        self.client_id = f"writer:{uuid.uuid4()}"
        self._seq = 0
        # (events, seq, result) of the last call whose outcome is unknown; result is _UNSET if the
        # call failed before its work was done (it then cannot have committed).
        self._pending: Optional[tuple[Any, int, Any]] = None

    async def open(self) -> None:
        """Connect, creating or upgrading the schema (processes racing to create it wait, not fail)."""
        conn = connect.connect(self.db)
        try:
            schema.ensure(conn, self.path)
        finally:
            conn.close()
        await self._connection()

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.close()

    def abandon(self) -> None:
        """From another thread, while the writer's loop is stuck: cut the connection under it."""
        conn = self.conn
        if conn is None or conn.closed:
            return
        try:
            fd = os.dup(conn.pgconn.socket)
        except (OSError, psycopg.Error):
            return
        with socket.socket(fileno=fd) as sock:  # shutting down a duplicate cuts the shared connection
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    async def checkpoint(self) -> None:
        """Nothing to do: the server manages its write-ahead log."""

    async def keep_wal_small(self) -> None:
        """Nothing to do: the server manages its write-ahead log."""

    async def client_mark(self, client_id: str) -> int:
        """Return the last sequence number stored for an agent client (0 if none)."""
        conn = await self._connection()
        try:
            cursor = await conn.execute("SELECT last_seq FROM agent_clients WHERE client_id = %s", (client_id,))
            row = await cursor.fetchone()
        except BaseException as exc:
            await self._after_failure(exc)
            raise
        return row[0] if row else 0

    async def apply(
        self,
        events: Sequence[Event],
        marks: Optional[dict[str, int]] = None,
        keys: Optional[Sequence[tuple[str, int]]] = None,
    ) -> None:
        """Apply ``events`` in one transaction, with agent clients' new high-water ``marks``: all land or none do.

        With ``keys`` (each event's agent (client id, seq)), events at or below their client's
        stored mark are skipped: a recovery file applied meanwhile may have stored them.
        """

        async def work(conn: psycopg.AsyncConnection) -> None:
            await self._apply(conn, events if keys is None else await _above_marks(conn, events, keys))
            if marks:
                await _set_marks(conn, marks)

        await self._once(events, work)

    async def apply_keyed(self, events: Sequence[Event], keys: Sequence[tuple[str, int]]) -> int:
        """Apply, in one transaction, the events whose (client id, seq) key is above its client's mark.

        The marks move to the highest keys given, so a second call with the same keys applies
        nothing. Return how many events were applied.
        """

        async def work(conn: psycopg.AsyncConnection) -> int:
            fresh = await _above_marks(conn, events, keys)
            await self._apply(conn, fresh)
            marks: dict[str, int] = {}
            for client, seq in keys:
                marks[client] = max(marks.get(client, 0), seq)
            await _set_marks(conn, marks)
            return len(fresh)

        return await self._once(events, work)

    async def apply_requests(
        self, events: Sequence[Event], keys: Optional[Sequence[Optional[tuple[str, int]]]] = None
    ) -> list[Optional[int]]:
        """Apply id-returning events in one transaction; return each one's row id.

        An event with a (client id, seq) key that was already applied is not applied again: its
        first row id is returned (an agent client replaying after a reconnect).
        """

        async def work(conn: psycopg.AsyncConnection) -> list[Optional[int]]:
            ids: list[Optional[int]] = []
            for event, key in zip(events, keys if keys is not None else [None] * len(events)):
                if key is not None:
                    cursor = await conn.execute(
                        "SELECT row_id FROM agent_requests WHERE client_id = %s AND seq = %s", key
                    )
                    done = await cursor.fetchone()
                    if done:
                        ids.append(done[0])
                        continue
                row_id = await self._insert_one(conn, event)
                if key is not None:
                    await conn.execute(
                        "INSERT INTO agent_requests (client_id, seq, row_id) VALUES (%s, %s, %s)", (*key, row_id)
                    )
                ids.append(row_id)
            return ids

        return await self._once(events, work)

    async def _connection(self) -> psycopg.AsyncConnection:
        """Return the open connection, connecting again after a failure broke or closed it."""
        conn = self.conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            self.conn = None
            await _close_quietly(conn)
        conn = await connect.connect_async(self.db)
        try:
            await conn.execute(
                "SELECT set_config('lock_timeout', %s, false), "
                "set_config('idle_in_transaction_session_timeout', %s, false)",
                (f"{int(self.busy_timeout_ms)}ms", f"{_IDLE_IN_TRANSACTION_MS}ms"),
            )
        except BaseException:
            await _close_quietly(conn)
            raise
        self.conn = conn
        return conn

    async def _once(self, events: Any, work: Callable[[psycopg.AsyncConnection], Awaitable[Any]]) -> Any:
        """Run ``work`` and move this Store's mark in one transaction; exactly once per ``events`` object.

        A call whose COMMIT may have landed is remembered until a retry with the same ``events``
        has read the mark and so learned whether it did; a retry that fails before knowing (the
        server still restarting) keeps that memory for the next one.
        """
        pending = self._pending
        if pending is not None and pending[0] is not events:
            pending = self._pending = None  # the writer moved on (those events were saved elsewhere)
        self._seq += 1
        seq = self._seq
        result: Any = _UNSET
        known = pending is None or pending[2] is _UNSET  # a call that never finished its work cannot have committed
        try:
            conn = await self._connection()
            await conn.execute("BEGIN")
            if not known:
                assert pending is not None
                landed = await _mark_of(conn, self.client_id) >= pending[1]  # waits for a COMMIT still under way
                known = True
                self._pending = None
                if landed:
                    await conn.execute("ROLLBACK")
                    return pending[2]
            self._pending = None
            result = await work(conn)
            await _set_marks(conn, {self.client_id: seq})
            await conn.execute("COMMIT")
            return result
        except BaseException as exc:
            unknown = await self._after_failure(exc)
            if known:  # else the earlier call's doubt stands, and this one sent no COMMIT
                self._pending = (events, seq, result) if unknown else None
            raise

    async def _after_failure(self, exc: BaseException) -> bool:
        """End the failed transaction; drop a broken connection. Return True if a COMMIT may have landed."""
        conn = self.conn
        if conn is None:
            return False
        # An Exception other than a lost connection was raised by the server or by psycopg binding
        # a value, and means no COMMIT took effect; anything else (a cancellation) may have hit mid-COMMIT.
        if isinstance(exc, Exception) and classify(exc) != ENVIRONMENT and not conn.closed and not conn.broken:
            try:
                await conn.execute("ROLLBACK")
                return False
            except psycopg.Error:
                pass
        self.conn = None  # the next call connects again
        await _close_quietly(conn)
        return True

    async def _apply(self, conn: psycopg.AsyncConnection, events: Sequence[Event]) -> None:
        batch = rows.SortedBatch(events)
        for event in batch.singles:
            if type(event) is ExperimentEnded:
                await conn.execute(END_EXPERIMENT_SQL, rows.end_values(event))
            elif type(event) is ExperimentResumed:
                await conn.execute(RESUME_EXPERIMENT_SQL, rows.resume_values(event))
            elif type(event) is ExperimentReopened:
                await conn.execute(REOPEN_EXPERIMENT_SQL, rows.resume_values(event))
            else:
                await self._insert_one(conn, event)
        await _copy_metrics(conn, batch.metrics)
        hyper_rows, link_rows = batch.hyperparameters, batch.links
        if hyper_rows:
            await conn.execute(
                "INSERT INTO hyperparameters (experiment_id, model_id, param_name, param_value, param_type, "
                "created_at) SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], "
                "%s::text[], %s::text[])",
                [list(column) for column in zip(*hyper_rows)],
            )
        if link_rows:
            await conn.execute(
                "INSERT INTO experiment_datasets (experiment_id, dataset_id, usage_type) "
                "SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) ON CONFLICT DO NOTHING",
                [list(column) for column in zip(*link_rows)],
            )

    async def _insert_one(self, conn: psycopg.AsyncConnection, event: Event) -> Optional[int]:
        if type(event) is ExperimentStarted:
            return await _returning(
                conn,
                "INSERT INTO experiments (name, description, experiment_type, status, git_commit, "
                "git_branch, python_version, random_seed, start_time, tags, metadata, created_at, "
                "updated_at, git_dirty, git_diff, platform, hostname, pid, command, packages) "
                "VALUES (%s, %s, %s, 'running', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s) RETURNING id",
                rows.experiment_values(event),
            )
        if type(event) is ModelRegistered:
            if event.version is None:  # numbered by count, as SQLite's one writer at a time would
                await conn.execute(schema.LOCK_SQL, (f"models:{event.experiment_id}:{event.name}",))
            return await _returning(
                conn,
                "INSERT INTO models (experiment_id, name, version, architecture_type, state_dim, "
                "action_dim, checkpoint_path, checkpoint_size_mb, episode_num, global_step, "
                "train_metric, val_metric, test_metric, is_best, hyperparameters, metadata, created_at) "
                "VALUES (%s, %s, COALESCE(%s::text, (SELECT CAST(COUNT(*) + 1 AS TEXT) FROM models "
                "WHERE experiment_id = %s AND name IS NOT DISTINCT FROM %s::text)), %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                rows.model_values(event),
            )
        if type(event) is DatasetRegistered:
            key = (event.name, event.version, event.split_type)
            # One registration at a time per key, so racing writers find one row, as on SQLite.
            await conn.execute(schema.LOCK_SQL, ("datasets:" + msgspec.json.encode(key).decode(),))
            cursor = await conn.execute(
                "SELECT id FROM datasets WHERE name = %s AND version = %s AND split_type IS NOT DISTINCT "
                "FROM %s::text ORDER BY id LIMIT 1",
                key,
            )
            existing = await cursor.fetchone()
            if existing:
                return existing[0]
            return await _returning(
                conn,
                "INSERT INTO datasets (name, version, dataset_type, data_path, data_hash, split_type, "
                "num_samples, start_date, end_date, feature_columns, target_columns, metadata, "
                "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                rows.dataset_values(event),
            )
        if type(event) is ArtifactLogged:
            return await _returning(
                conn,
                "INSERT INTO artifacts (experiment_id, model_id, artifact_type, artifact_path, "
                "artifact_name, file_size_mb, description, metadata, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                rows.artifact_values(event),
            )
        if type(event) is AliasSet:
            stamp = local_text(event.ts)
            cursor = await conn.execute(SET_ALIAS_SQL, (event.alias, stamp, stamp, event.model_id))
            return event.model_id if cursor.rowcount else None
        if type(event) is AliasDeleted:
            cursor = await conn.execute("DELETE FROM model_aliases WHERE alias = %s", (event.alias,))
            return cursor.rowcount
        await self._apply(conn, [event])
        return None


# As on SQLite: one statement moves the alias, or (no such model) changes nothing.
SET_ALIAS_SQL = (
    "INSERT INTO model_aliases (alias, model_id, experiment_id, created_at, updated_at) "
    "SELECT %s::text, id, experiment_id, %s::text, %s::text FROM models WHERE id = %s "
    "ON CONFLICT (alias) DO UPDATE SET model_id = EXCLUDED.model_id, experiment_id = EXCLUDED.experiment_id, "
    "updated_at = EXCLUDED.updated_at"
)


_UNSET: Any = object()


async def _returning(conn: psycopg.AsyncConnection, sql: str, params: Sequence[Any]) -> int:
    cursor = await conn.execute(sql, params)
    row = await cursor.fetchone()
    assert row is not None
    return row[0]


async def _close_quietly(conn: psycopg.AsyncConnection) -> None:
    try:
        await conn.close()
    except (psycopg.Error, OSError):
        pass


async def _copy_metrics(conn: psycopg.AsyncConnection, events: list[MetricsLogged]) -> None:
    """Write the batch's metric rows, in logging order, with one binary COPY (NaN as NULL)."""
    if not events:
        return
    cursor = conn.cursor()
    async with cursor.copy(_COPY_METRICS) as copy:
        copy.set_types(_METRIC_TYPES)
        write = copy.write_row
        for event in events:
            head = (event.experiment_id, "json" if event.value_json is not None else "scalar", local_text(event.ts))
            tail = (
                event.model_id, event.episode, event.step, event.epoch, event.value_json, event.phase, event.metadata
            )
            split = event.split
            for name, value in zip(event.names, event.values):
                # NaN as NULL and -0.0 as 0.0: what SQLite stores, so both engines read back the same.
                await write((*head, name, value + 0.0 if value == value else None, split or split_of(name), *tail))


async def _above_marks(
    conn: psycopg.AsyncConnection, events: Sequence[Event], keys: Sequence[tuple[str, int]]
) -> Sequence[Event]:
    """Return the events whose (client id, seq) key is above its client's stored mark (inside a transaction)."""
    clients = list(dict.fromkeys(client for client, _ in keys))
    stored = dict.fromkeys(clients, 0)
    cursor = await conn.execute(
        "SELECT client_id, last_seq FROM agent_clients WHERE client_id = ANY(%s::text[])", (clients,)
    )
    stored.update((client, seq) for client, seq in await cursor.fetchall())
    if all(seq > stored[client] for client, seq in keys):
        return events
    return [event for event, (client, seq) in zip(events, keys) if seq > stored[client]]


async def _set_marks(conn: psycopg.AsyncConnection, marks: dict[str, int]) -> None:
    """Move each client's high-water mark up to ``marks`` (never down)."""
    await conn.execute(
        "INSERT INTO agent_clients (client_id, last_seq, updated_at) "
        f"SELECT client_id, last_seq, {_UTC_NOW} FROM unnest(%s::text[], %s::bigint[]) AS m(client_id, last_seq) "
        "ON CONFLICT (client_id) DO UPDATE SET last_seq = GREATEST(agent_clients.last_seq, excluded.last_seq), "
        "updated_at = excluded.updated_at",
        (list(marks), list(marks.values())),
    )


async def _mark_of(conn: psycopg.AsyncConnection, client_id: str) -> int:
    """Return ``client_id``'s mark, locking its row: waits until a transaction moving it has ended."""
    cursor = await conn.execute(
        "INSERT INTO agent_clients (client_id, last_seq, updated_at) VALUES (%s, 0, " + _UTC_NOW + ") "
        "ON CONFLICT (client_id) DO UPDATE SET last_seq = agent_clients.last_seq RETURNING last_seq",
        (client_id,),
    )
    row = await cursor.fetchone()
    return row[0] if row else 0


# SQLite's CURRENT_TIMESTAMP text: UTC, whole seconds.
_UTC_NOW = "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"

# duration_seconds as SQLite computes it from the two local-time texts (see schema.FUNCTIONS_V1).
END_EXPERIMENT_SQL = (
    "UPDATE experiments SET status = %s, end_time = %s, updated_at = %s, "
    "duration_seconds = (ml_persistence_julianday(%s) - ml_persistence_julianday(start_time)) * 86400.0, "
    "notes = CASE WHEN %s::text IS NULL THEN notes WHEN notes IS NULL OR notes = '' THEN %s "
    "ELSE notes || chr(10) || %s END WHERE id = %s"
)
# Resuming and reopening are SQLite's statements, word for word.
RESUME_EXPERIMENT_SQL = translated(sqlite_store.RESUME_EXPERIMENT_SQL)
REOPEN_EXPERIMENT_SQL = translated(sqlite_store.REOPEN_EXPERIMENT_SQL)


def end_experiments_now(db: str, events: Sequence[ExperimentEnded], timeout: float) -> None:
    """End experiments with a plain blocking connection: for interpreter exit, when no thread may start."""
    conn = connect.connect(db, connect_timeout=str(max(1, math.ceil(timeout))))
    try:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{max(1, int(timeout * 1000))}ms",))
        conn.execute("BEGIN")
        with conn.cursor() as cursor:
            cursor.executemany(END_EXPERIMENT_SQL, [rows.end_values(e) for e in events])
        conn.execute("COMMIT")
    finally:
        conn.close()
