"""The write side: apply decoded events to SQLite through aiosqlite, one transaction per batch."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Any, AsyncIterator, Optional, Sequence

import aiosqlite

from . import schema
from .. import rows
from ..rows import local_text, split_of
from ..storage import BUSY, ENVIRONMENT, FATAL, REFUSED
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

_METRIC_WIDTH = 13  # columns a metric row can have (the most it binds)
_METRIC_ALWAYS = ("experiment_id", "metric_type", "timestamp", "metric_name", "value", "split")
_METRIC_OPTIONAL = ("model_id", "episode", "step", "epoch", "value_json", "phase", "metadata")
_MAX_ROWS_PER_INSERT = 2500
# sqlite3 caches 128 prepared statements per connection by default; a 2500-row INSERT is ~3.5 MB
# prepared, and batch tails come in every size, so the default cache grows RSS by ~200 MB.
_CACHED_STATEMENTS = 8
_WAL_SIZE_LIMIT = 8 << 20  # bytes (about twice the WAL of an automatic checkpoint's 1000 pages)



# SQLite primary result codes (https://sqlite.org/rescode.html) -> what they mean for a write.
RESULT_CODES = {
    1: REFUSED,  # SQLITE_ERROR: the statement failed (e.g. too many terms)
    2: FATAL,  # SQLITE_INTERNAL
    3: ENVIRONMENT,  # SQLITE_PERM: access permission denied
    4: ENVIRONMENT,  # SQLITE_ABORT: the transaction was aborted by another action
    5: BUSY,  # SQLITE_BUSY
    6: BUSY,  # SQLITE_LOCKED
    7: ENVIRONMENT,  # SQLITE_NOMEM
    8: ENVIRONMENT,  # SQLITE_READONLY: a read-only file or directory, or a moved file
    9: ENVIRONMENT,  # SQLITE_INTERRUPT
    10: ENVIRONMENT,  # SQLITE_IOERR: includes a write past a file-size limit (EFBIG)
    11: FATAL,  # SQLITE_CORRUPT
    12: FATAL,  # SQLITE_NOTFOUND
    13: ENVIRONMENT,  # SQLITE_FULL: the disk is full
    14: ENVIRONMENT,  # SQLITE_CANTOPEN: the file (or its journal) cannot be opened now
    15: BUSY,  # SQLITE_PROTOCOL: a locking race
    16: FATAL,  # SQLITE_EMPTY
    17: BUSY,  # SQLITE_SCHEMA: the schema changed under the statement; running it again works
    18: REFUSED,  # SQLITE_TOOBIG: this event's string or blob is too large
    19: REFUSED,  # SQLITE_CONSTRAINT
    20: REFUSED,  # SQLITE_MISMATCH
    21: FATAL,  # SQLITE_MISUSE
    22: ENVIRONMENT,  # SQLITE_NOLFS: the file grew past what the system supports
    23: FATAL,  # SQLITE_AUTH
    24: FATAL,  # SQLITE_FORMAT
    25: REFUSED,  # SQLITE_RANGE: a bound parameter out of range
    26: FATAL,  # SQLITE_NOTADB
}

# Python 3.10 has no sqlite3.Error.sqlite_errorcode: the result code from SQLite's own message text.
RESULT_MESSAGES = (
    ("database is locked", 5),
    ("database table is locked", 6),
    ("database schema is locked", 6),
    ("database or disk is full", 13),
    ("disk i/o error", 10),
    ("attempt to write a readonly database", 8),
    ("unable to open database file", 14),
    ("out of memory", 7),
    ("locking protocol", 15),
    ("database schema has changed", 17),
    ("interrupted", 9),
    ("access permission denied", 3),
    ("large file support is disabled", 22),
    ("database disk image is malformed", 11),
    ("file is not a database", 26),
    ("string or blob too big", 18),
    ("datatype mismatch", 20),
    ("constraint failed", 19),
    ("bad parameter or other api misuse", 21),
    ("column index out of range", 25),
)

# Errors raised before SQLite sees the event, by Python binding its values: the event itself is bad.
REFUSED_EXCEPTIONS = (
    sqlite3.IntegrityError,  # a constraint
    sqlite3.DataError,
    sqlite3.InterfaceError,  # a value sqlite3 cannot bind
    sqlite3.ProgrammingError,  # e.g. a NUL in the statement, a wrong number of bindings
    OverflowError,  # an integer past 64 bits
    UnicodeError,  # a lone surrogate
    ValueError,
    TypeError,
)


def result_code(exc: BaseException) -> Optional[int]:
    """Return the SQLite primary result code of ``exc`` (from its message on Python 3.10), or None."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(exc).lower()
    code = next((code for message, code in RESULT_MESSAGES if message in text), None)
    if code is None and isinstance(exc, sqlite3.OperationalError):
        return 1  # SQLITE_ERROR, the code of every other message (no such table, too many terms, ...)
    return code


def classify(exc: BaseException) -> str:
    """Return what a write's failure means: BUSY, ENVIRONMENT, REFUSED or FATAL (see the tables above)."""
    if isinstance(exc, sqlite3.Error):
        code = result_code(exc)
        if code is not None and code in RESULT_CODES:
            return RESULT_CODES[code]
    if isinstance(exc, REFUSED_EXCEPTIONS):
        return REFUSED
    if isinstance(exc, (OSError, MemoryError)):  # the file system or the machine, outside SQLite
        return ENVIRONMENT
    return FATAL


class Store:
    """One aiosqlite connection that writes events; used only from the writer's event loop."""

    classify = staticmethod(classify)
    open_grace = 0.0  # seconds a writer retries an environment failure at open: a file that cannot open is reported

    def __init__(self, path: str, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.conn: Any = None
        self.rows_per_insert = 1
        self._insert_sql: dict[tuple[tuple[bool, ...], int], str] = {}

    async def open(self) -> None:
        """Open the file, creating or upgrading its schema."""
        max_variables = _prepare(self.path)
        self.rows_per_insert = max(1, min(max_variables // _METRIC_WIDTH, _MAX_ROWS_PER_INSERT))
        conn = await aiosqlite.connect(self.path, isolation_level=None, cached_statements=_CACHED_STATEMENTS)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            await conn.execute("PRAGMA synchronous = NORMAL")
            # After a checkpoint, the write-ahead log shrinks back to this instead of keeping its
            # largest size for good: on a nearly full device, that space is the database's room.
            await conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
        except BaseException:
            await conn.close()
            raise
        self.conn = conn

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self.conn is not None:
            await self.conn.close()

    def abandon(self) -> None:
        """From another thread, while the writer's loop is stuck: end aiosqlite's thread."""
        if self.conn is not None:
            self.conn.stop()

    async def client_mark(self, client_id: str) -> int:
        """Return the last sequence number stored for an agent client (0 if none)."""
        rows = await self.conn.execute_fetchall(
            "SELECT last_seq FROM agent_clients WHERE client_id = ?", (client_id,)
        )
        return next((seq for (seq,) in rows), 0)

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
        async with self._transaction():
            await self._apply(events if keys is None else await self._above_marks(events, keys))
            if marks:
                await self.conn.executemany(_MARK_SQL, list(marks.items()))

    async def apply_batches(
        self, parts: Sequence[tuple[str, Sequence[int], Sequence[Event]]], marks: dict[str, int]
    ) -> None:
        """Apply agent clients' runs of events, each (client id, increasing seqs, events), with ``marks``,
        in one transaction; events at or below their client's stored mark are skipped, as in apply()."""
        async with self._transaction():
            stored = await self._stored_marks(list(dict.fromkeys(client for client, _, _ in parts)))
            events: list[Event] = []
            for client, seqs, run in parts:
                mark = stored[client]
                if not run or seqs[-1] <= mark:
                    continue
                if seqs[0] > mark:
                    events.extend(run)
                else:
                    events.extend(event for event, seq in zip(run, seqs) if seq > mark)
            await self._apply(events)
            await self.conn.executemany(_MARK_SQL, list(marks.items()))

    async def _above_marks(self, events: Sequence[Event], keys: Sequence[tuple[str, int]]) -> Sequence[Event]:
        """Return the events whose (client id, seq) key is above its client's stored mark (inside a transaction)."""
        stored = await self._stored_marks(list(dict.fromkeys(client for client, _ in keys)))
        if all(seq > stored[client] for client, seq in keys):
            return events
        return [event for event, (client, seq) in zip(events, keys) if seq > stored[client]]

    async def _stored_marks(self, clients: list[str]) -> dict[str, int]:
        """Return each client's stored high-water mark (0 if none)."""
        stored = dict.fromkeys(clients, 0)
        for start in range(0, len(clients), 500):
            part = clients[start : start + 500]
            found = await self.conn.execute_fetchall(
                f"SELECT client_id, last_seq FROM agent_clients WHERE client_id IN ({', '.join('?' * len(part))})",
                part,
            )
            stored.update((client, seq) for client, seq in found)
        return stored

    async def apply_keyed(self, events: Sequence[Event], keys: Sequence[tuple[str, int]]) -> int:
        """Apply, in one transaction, the events whose (client id, seq) key is above its client's mark.

        The marks move to the highest keys given, so a second call with the same keys applies
        nothing. Return how many events were applied.
        """
        async with self._transaction():
            fresh = await self._above_marks(events, keys)
            await self._apply(fresh)
            marks: dict[str, int] = {}
            for client, seq in keys:
                marks[client] = max(marks.get(client, 0), seq)
            await self.conn.executemany(_MARK_SQL, list(marks.items()))
            return len(fresh)

    async def checkpoint(self) -> None:
        """Copy the write-ahead log into the database and truncate it to zero bytes (best effort)."""
        with contextlib.suppress(sqlite3.Error):
            await self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def keep_wal_small(self) -> None:
        """Checkpoint when the write-ahead log nears half its device's free space.

        Past that, the log could fill the device and a checkpoint, which needs room for the pages
        it copies, could never empty it again. On a roomy disk this never triggers.
        """
        try:
            wal = os.path.getsize(self.path + "-wal")
            info = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return
        if wal * 2 > info.f_bavail * info.f_frsize:
            await self.checkpoint()

    async def apply_requests(
        self, events: Sequence[Event], keys: Optional[Sequence[Optional[tuple[str, int]]]] = None
    ) -> list[Optional[int]]:
        """Apply id-returning events in one transaction; return each one's row id.

        An event with a (client id, seq) key that was already applied is not applied again: its
        first row id is returned (an agent client replaying after a reconnect).
        """
        async with self._transaction():
            if keys is None:
                return [await self._insert_one(event) for event in events]
            ids = []
            for event, key in zip(events, keys):
                if key is not None:
                    done = await self.conn.execute_fetchall(
                        "SELECT row_id FROM agent_requests WHERE client_id = ? AND seq = ?", key
                    )
                    if done:
                        ids.append(next(iter(done))[0])
                        continue
                row_id = await self._insert_one(event)
                if key is not None:
                    await self.conn.execute(
                        "INSERT INTO agent_requests (client_id, seq, row_id) VALUES (?, ?, ?)", (*key, row_id)
                    )
                ids.append(row_id)
            return ids

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        if self.conn.in_transaction:  # an earlier ROLLBACK failed (an I/O error): end that one first
            await self.conn.execute("ROLLBACK")
        await self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            await self.conn.execute("COMMIT")
        except BaseException:
            try:
                await self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # no transaction was open
            raise

    async def _apply(self, events: Sequence[Event]) -> None:
        batch = rows.SortedBatch(events)
        for event in batch.singles:
            if type(event) is ExperimentEnded:
                await self._end_experiment(event)
            elif type(event) is ExperimentResumed:
                await self.conn.execute(RESUME_EXPERIMENT_SQL, rows.resume_values(event))
            elif type(event) is ExperimentReopened:
                await self.conn.execute(REOPEN_EXPERIMENT_SQL, rows.resume_values(event))
            else:
                await self._insert_one(event)
        await self._insert_metrics(batch.metrics)
        hyper_rows, link_rows = batch.hyperparameters, batch.links
        if hyper_rows:
            await self.conn.executemany(
                "INSERT INTO hyperparameters (experiment_id, model_id, param_name, param_value, "
                "param_type, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                hyper_rows,
            )
        if link_rows:
            await self.conn.executemany(
                "INSERT OR IGNORE INTO experiment_datasets (experiment_id, dataset_id, usage_type) "
                "VALUES (?, ?, ?)",
                link_rows,
            )

    async def _insert_metrics(self, events: list[MetricsLogged]) -> None:
        """Insert the batch's metric rows, in logging order, with few large multi-row INSERTs.

        Each statement is one GIL hand-off, not one per row. Optional columns that are NULL in
        every row of the batch are left out of the statement instead of being bound as None:
        sqlite3 binds None ~15x slower than a number, with the GIL held, which stalls the
        training thread.
        """
        if not events:
            return
        present, values = rows.metric_rows(events, _METRIC_OPTIONAL)
        width = len(_METRIC_ALWAYS) + sum(present)
        pos = 0
        for n in _chunk_sizes(len(values) // width, self.rows_per_insert):
            await self.conn.execute(self._metric_sql(present, n), values[pos : pos + n * width])
            pos += n * width

    def _metric_sql(self, present: tuple[bool, ...], rows: int) -> str:
        sql = self._insert_sql.get((present, rows))
        if sql is None:
            columns = list(_METRIC_ALWAYS) + [c for c, p in zip(_METRIC_OPTIONAL, present) if p]
            # split is never '' (an empty split falls back to the name's prefix): '' means NULL.
            row = "(?,?,?,?,?,NULLIF(?,'')" + ",?" * (len(columns) - len(_METRIC_ALWAYS)) + ")"
            sql = f"INSERT INTO metrics ({', '.join(columns)}) VALUES " + ",".join([row] * rows)
            if len(self._insert_sql) < 16:
                self._insert_sql[(present, rows)] = sql
        return sql

    async def _end_experiment(self, event: ExperimentEnded) -> None:
        await self.conn.execute(END_EXPERIMENT_SQL, rows.end_values(event))

    async def _insert_one(self, event: Event) -> Optional[int]:
        if type(event) is ExperimentStarted:
            cursor = await self.conn.execute(
                "INSERT INTO experiments (name, description, experiment_type, status, git_commit, "
                "git_branch, python_version, random_seed, start_time, tags, metadata, created_at, "
                "updated_at, git_dirty, git_diff, platform, hostname, pid, command, packages) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows.experiment_values(event),
            )
            return cursor.lastrowid
        if type(event) is ModelRegistered:
            cursor = await self.conn.execute(
                "INSERT INTO models (experiment_id, name, version, architecture_type, state_dim, "
                "action_dim, checkpoint_path, checkpoint_size_mb, episode_num, global_step, "
                "train_metric, val_metric, test_metric, is_best, hyperparameters, metadata, created_at) "
                "VALUES (?, ?, COALESCE(?, (SELECT CAST(COUNT(*) + 1 AS TEXT) FROM models "
                "WHERE experiment_id = ? AND name IS ?)), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows.model_values(event),
            )
            return cursor.lastrowid
        if type(event) is DatasetRegistered:
            key = (event.name, event.version, event.split_type)
            found = await self.conn.execute_fetchall(
                "SELECT id FROM datasets WHERE name = ? AND version = ? AND split_type IS ? "
                "ORDER BY id LIMIT 1",
                key,
            )
            for (existing,) in found:
                return existing
            cursor = await self.conn.execute(
                "INSERT INTO datasets (name, version, dataset_type, data_path, data_hash, split_type, "
                "num_samples, start_date, end_date, feature_columns, target_columns, metadata, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows.dataset_values(event),
            )
            return cursor.lastrowid
        if type(event) is ArtifactLogged:
            cursor = await self.conn.execute(
                "INSERT INTO artifacts (experiment_id, model_id, artifact_type, artifact_path, "
                "artifact_name, file_size_mb, description, metadata, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows.artifact_values(event),
            )
            return cursor.lastrowid
        if type(event) is AliasSet:
            stamp = local_text(event.ts)
            cursor = await self.conn.execute(SET_ALIAS_SQL, (event.alias, stamp, stamp, event.model_id))
            return event.model_id if cursor.rowcount else None
        if type(event) is AliasDeleted:
            cursor = await self.conn.execute("DELETE FROM model_aliases WHERE alias = ?", (event.alias,))
            return cursor.rowcount
        await self._apply([event])
        return None


def _chunk_sizes(rows: int, full: int) -> list[int]:
    """Split ``rows`` into chunks of ``full`` rows and one shorter tail."""
    sizes = [full] * (rows // full)
    if rows % full:
        sizes.append(rows % full)
    return sizes


_MARK_SQL = (
    "INSERT INTO agent_clients (client_id, last_seq, updated_at) VALUES (?, ?, CURRENT_TIMESTAMP) "
    "ON CONFLICT (client_id) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq), "
    "updated_at = excluded.updated_at"
)

# Moving an alias is this one statement: it names the model, or (no such model) nothing changes.
SET_ALIAS_SQL = (
    "INSERT INTO model_aliases (alias, model_id, experiment_id, created_at, updated_at) "
    "SELECT ?, id, experiment_id, ?, ? FROM models WHERE id = ? "
    "ON CONFLICT (alias) DO UPDATE SET model_id = excluded.model_id, experiment_id = excluded.experiment_id, "
    "updated_at = excluded.updated_at"
)

END_EXPERIMENT_SQL = (
    "UPDATE experiments SET status = ?, end_time = ?, updated_at = ?, "
    "duration_seconds = (julianday(?) - julianday(start_time)) * 86400.0, "
    "notes = CASE WHEN ? IS NULL THEN notes WHEN notes IS NULL OR notes = '' THEN ? "
    "ELSE notes || char(10) || ? END WHERE id = ?"
)


# The resuming process becomes the run's owner: liveness then checks its pid, claimed at updated_at.
RESUME_EXPERIMENT_SQL = (
    "UPDATE experiments SET hostname = ?, pid = ?, updated_at = ? WHERE id = ? AND status = 'running'"
)
# An ended run is running again (as MLflow reopens a finished run) until it is ended once more.
REOPEN_EXPERIMENT_SQL = (
    "UPDATE experiments SET status = 'running', end_time = NULL, duration_seconds = NULL, "
    "hostname = ?, pid = ?, updated_at = ? WHERE id = ?"
)


def end_experiments_now(path: str, events: Sequence[ExperimentEnded], timeout: float) -> None:
    """End experiments with a plain blocking connection: for interpreter exit, when no thread may start."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(END_EXPERIMENT_SQL, [rows.end_values(e) for e in events])
        conn.execute("COMMIT")
    finally:
        conn.close()


def _prepare(path: str) -> int:
    """Create or upgrade the schema; return SQLite's bound-variable limit."""
    conn = schema.connect(path)
    try:
        if hasattr(conn, "getlimit"):
            return conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        return 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    finally:
        conn.close()
