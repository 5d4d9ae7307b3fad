"""Sync's reads and writes in the SQL both engines share; PostgreSQL's Side overrides what differs.

A Side wraps an engine Reader (its connection and dialect hooks: ``?`` placeholders everywhere,
``_is_param`` for NULL-equal comparison). Table and column names come from COLUMNS only.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import time
from typing import Any, Iterator, Optional, Sequence

# The columns sync copies, per table: every column but the row id (and, for child tables, in the
# order rows travel). Both engines have exactly these.
COLUMNS: dict[str, tuple[str, ...]] = {
    "experiments": (
        "name", "description", "experiment_type", "status", "git_commit", "git_branch", "python_version",
        "random_seed", "start_time", "end_time", "duration_seconds", "tags", "notes", "metadata", "created_at",
        "updated_at", "git_dirty", "git_diff", "platform", "hostname", "pid", "command", "packages", "uuid",
    ),
    "models": (
        "experiment_id", "name", "version", "architecture_type", "state_dim", "action_dim", "checkpoint_path",
        "checkpoint_size_mb", "episode_num", "global_step", "train_metric", "val_metric", "test_metric",
        "is_best", "hyperparameters", "metadata", "created_at",
    ),
    "hyperparameters": ("experiment_id", "model_id", "param_name", "param_value", "param_type", "created_at"),
    "metrics": (
        "experiment_id", "model_id", "metric_name", "metric_type", "episode", "step", "epoch", "value",
        "value_json", "split", "phase", "timestamp", "metadata",
    ),
    "artifacts": (
        "experiment_id", "model_id", "artifact_type", "artifact_path", "artifact_name", "file_size_mb",
        "description", "metadata", "created_at",
    ),
    "datasets": (
        "name", "version", "dataset_type", "data_path", "data_hash", "split_type", "num_samples", "start_date",
        "end_date", "feature_columns", "target_columns", "metadata", "created_at",
    ),
}
# What identifies a row of a child table when it is read again: rows are never changed in place, so a
# source whose row differs under the same id is not the one copied from (an older copy restored).
FINGERPRINT = {
    "models": ("name", "checkpoint_path", "created_at"),
    "hyperparameters": ("param_name", "param_value", "created_at"),
    "metrics": ("metric_name", "step", "timestamp"),
    "artifacts": ("artifact_path", "created_at"),
}
# The tables an experiment owns row by row, in copy order: models first, since the others point at them.
CHILD_TABLES = ("models", "hyperparameters", "metrics", "artifacts")
SYNC_TABLES = ("database_identity", "sync_marks", "sync_ids")

BUSY_WAIT = 120.0  # seconds a target transaction keeps asking for a busy SQLite file


class Side:
    """One database as sync's source or target, over an open engine Reader."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        tables = self._tables()
        self.has_uuids = "experiments" in tables and "uuid" in reader.columns("experiments")
        self.has_sync_tables = all(t in tables for t in SYNC_TABLES)

    def close(self) -> None:
        """Close the connection."""
        self.reader.close()

    # -- dialect hooks ------------------------------------------------------------------------------

    def _tables(self) -> set[str]:
        return {name for (name,) in self.reader._tuples("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _plain_rows(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        cursor = self.reader.conn.cursor()
        cursor.row_factory = None
        return cursor.execute(sql, params).fetchall()

    def _run(self, sql: str, params: Sequence[Any]) -> None:
        self.reader.conn.execute(sql, params)

    def _insert_id(self, sql: str, params: Sequence[Any]) -> int:
        return self.reader.conn.execute(sql, params).lastrowid

    def _insert_many(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        marks = ", ".join("?" * len(columns))
        self.reader.conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def _lock(self, key: str) -> None:
        """Serialize writers of ``key`` until the transaction ends (SQLite: the write lock already does)."""

    @contextlib.contextmanager
    def transaction(self, key: str) -> Iterator[None]:
        """One write transaction holding the lock of ``key`` (an experiment's uuid)."""
        self._begin()
        try:
            self._lock(key)
            yield
        except BaseException:
            self.reader.conn.execute("ROLLBACK")
            raise
        self.reader.conn.execute("COMMIT")

    def _begin(self) -> None:
        # Another writer (a trainer, a second syncer) may hold the file for a while, and SQLite's busy
        # handler can lose the race again and again to a writer that commits and begins at once.
        deadline = time.monotonic() + BUSY_WAIT
        while True:
            try:
                self.reader.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not ("locked" in str(exc) or "busy" in str(exc)) or time.monotonic() > deadline:
                    raise
            time.sleep(random.uniform(0.01, 0.1))

    # -- as a source ----------------------------------------------------------------------------

    def database_uuid(self) -> Optional[str]:
        """Return this database's own uuid (None before schema version 4)."""
        if "database_identity" not in self._tables():
            return None
        found = self._plain_rows("SELECT database_uuid FROM database_identity LIMIT 1", ())
        return found[0][0] if found else None

    def missing_uuids(self) -> bool:
        """Return True if some experiment has no uuid yet (a file not upgraded to version 4)."""
        return bool(self._plain_rows("SELECT 1 FROM experiments WHERE uuid IS NULL LIMIT 1", ()))

    def experiments(
        self, ids: Sequence[int], since: Optional[str], tags: Sequence[str], owner: Optional[tuple[int, str]]
    ) -> list[dict[str, Any]]:
        """Return the chosen experiments (every column, ``uuid`` None before version 4), oldest first."""
        where, params = [], []
        if ids:
            where.append("id IN (" + ", ".join("?" * len(ids)) + ")")
            params.extend(ids)
        if since is not None:
            where.append("start_time >= ?")
            params.append(since)
        for tag in tags:
            where.append(self.reader._has_tag("tags"))
            params.append(tag)
        if owner is not None:
            where.append("pid = ? AND hostname = ?")
            params.extend(owner)
        columns = [c for c in COLUMNS["experiments"] if c != "uuid" or self.has_uuids]
        sql = f"SELECT id, {', '.join(columns)} FROM experiments"
        found = self._plain_rows(sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id", params)
        return [{"uuid": None, **dict(zip(("id", *columns), row))} for row in found]

    def high_water(self) -> dict[str, int]:
        """Return each child table's highest committed row id; no row at or below it can still arrive.

        SQLite has one writer at a time, and a writer's ids come after every committed one.
        """
        parts = ", ".join(f"(SELECT max(id) FROM {t})" for t in CHILD_TABLES)
        row = self._plain_rows(f"SELECT {parts}", ())[0]
        return {t: value or 0 for t, value in zip(CHILD_TABLES, row)}

    def new_range(self, table: str, experiment_id: int, after: int, upto: Optional[int] = None) -> tuple[int, int]:
        """Return the lowest and highest id of the experiment's rows with after < id (<= upto) ((0, 0) if none).

        Index seeks only, whatever the run's size: metrics are found name by name (a skip scan of
        the (experiment_id, metric_name) index), the other tables' indexes end in the row id.
        """
        upto = 2**63 - 1 if upto is None else upto
        if table != "metrics":
            found = self._plain_rows(
                f"SELECT min(id), max(id) FROM {table} WHERE experiment_id = ? AND id > ? AND id <= ?",
                (experiment_id, after, upto),
            )
        else:
            found = self._plain_rows(
                "WITH RECURSIVE names(n) AS ("
                " SELECT (SELECT min(metric_name) FROM metrics WHERE experiment_id = ?)"
                " UNION ALL SELECT (SELECT min(metric_name) FROM metrics WHERE experiment_id = ? AND metric_name > names.n)"
                " FROM names WHERE n IS NOT NULL) "
                "SELECT min(low), max(high) FROM (SELECT"
                " (SELECT min(id) FROM metrics WHERE experiment_id = ? AND metric_name = n AND id > ? AND id <= ?) AS low,"
                " (SELECT max(id) FROM metrics WHERE experiment_id = ? AND metric_name = n AND id > ? AND id <= ?) AS high"
                " FROM names WHERE n IS NOT NULL) AS ranges",
                (experiment_id, experiment_id, experiment_id, after, upto, experiment_id, after, upto),
            )
        low, high = found[0]
        return (low or 0, high or 0)

    def fingerprint(self, table: str, row_id: int) -> Optional[str]:
        """Return what identifies row ``row_id`` of ``table`` (its key columns, as JSON), or None if it is gone."""
        columns = FINGERPRINT[table]
        found = self._plain_rows(f"SELECT {', '.join(columns)} FROM {table} WHERE id = ?", (row_id,))
        return json.dumps([str(v) if v is not None else None for v in found[0]]) if found else None

    def rows_by_id(self, table: str, ids: Sequence[int]) -> list[tuple]:
        """Return (id, *COLUMNS[table]) of the rows with these ids, in id order."""
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        return self._plain_rows(
            f"SELECT id, {', '.join(COLUMNS[table])} FROM {table} WHERE id IN ({marks}) ORDER BY id", list(ids)
        )

    def rows_after(self, table: str, experiment_id: int, after: int, upto: int, limit: int) -> list[tuple]:
        """Return (id, *COLUMNS[table]) of the experiment's rows with after < id <= upto, in id order."""
        # The unary + keeps SQLite off the (experiment_id, metric_name) index, which would sort every
        # row of the run for each chunk; callers narrow after/upto to the run's id range instead.
        return self._plain_rows(
            f"SELECT id, {', '.join(COLUMNS[table])} FROM {table} "
            "WHERE +experiment_id = ? AND id > ? AND id <= ? ORDER BY id LIMIT ?",
            (experiment_id, after, upto, limit),
        )

    def rows_between(
        self, table: str, experiment_id: int, after: int, upto: int, target_id: int, models: dict[int, int]
    ) -> list[tuple]:
        """Return the experiment's rows with after < id <= upto as the target stores them: COLUMNS[table]
        values with the target's experiment id and model ids (a model missing from ``models``: NULL)."""
        columns = ["?" if c == "experiment_id" else c for c in COLUMNS[table]]
        params: list[Any] = [target_id]
        if "model_id" in columns:
            columns[columns.index("model_id")] = self._mapped_model_id()
            params.append(json.dumps({str(k): v for k, v in models.items()}))
        return self._plain_rows(
            f"SELECT {', '.join(columns)} FROM {table} WHERE +experiment_id = ? AND id > ? AND id <= ? ORDER BY id",
            (*params, experiment_id, after, upto),
        )

    def model_refs(self, table: str, experiment_id: int, after: int, upto: int) -> list[int]:
        """Return the model ids the experiment's rows with after < id <= upto point at."""
        found = self._plain_rows(
            f"SELECT DISTINCT model_id FROM {table} "
            "WHERE +experiment_id = ? AND id > ? AND id <= ? AND model_id IS NOT NULL",
            (experiment_id, after, upto),
        )
        return [model_id for (model_id,) in found]

    def model_owners(self, model_ids: Sequence[int]) -> dict[int, int]:
        """Return {model id: the id of the experiment that registered it} for those that exist."""
        if not model_ids:
            return {}
        marks = ", ".join("?" * len(model_ids))
        return dict(self._plain_rows(f"SELECT id, experiment_id FROM models WHERE id IN ({marks})", list(model_ids)))

    def _mapped_model_id(self) -> str:
        """SQL for model_id looked up in a bound JSON object {source id: target id}."""
        return "CASE WHEN model_id IS NULL THEN NULL ELSE json_extract(?, '$.\"' || model_id || '\"') END"

    def count_after(self, table: str, experiment_id: int, after: int, upto: Optional[int] = None) -> int:
        """Return how many of the experiment's rows have after < id (<= upto)."""
        sql = f"SELECT count(*) FROM {table} WHERE +experiment_id = ? AND id > ?"
        params: list[Any] = [experiment_id, after]
        if upto is not None:
            sql += " AND id <= ?"
            params.append(upto)
        return self._plain_rows(sql, params)[0][0]

    def dataset_links(self, experiment_id: int) -> list[tuple[tuple, Any]]:
        """Return (dataset row as COLUMNS['datasets'], usage_type) for each of the experiment's links."""
        found = self._plain_rows(
            f"SELECT {', '.join('d.' + c for c in COLUMNS['datasets'])}, l.usage_type "
            "FROM experiment_datasets l JOIN datasets d ON d.id = l.dataset_id "
            "WHERE l.experiment_id = ? ORDER BY d.id, l.usage_type",
            (experiment_id,),
        )
        return [(tuple(row[:-1]), row[-1]) for row in found]

    # -- as a target ----------------------------------------------------------------------------

    def find(self, uuid: str) -> Optional[tuple[int, tuple]]:
        """Return (id, COLUMNS['experiments'] values) of the experiment with ``uuid``, or None."""
        if not self.has_uuids:
            return None
        found = self._plain_rows(f"SELECT id, {', '.join(COLUMNS['experiments'])} FROM experiments WHERE uuid = ?", (uuid,))
        return (found[0][0], tuple(found[0][1:])) if found else None

    def marks(self, uuid: str) -> dict[str, tuple[str, int]]:
        """Return {table: (source database uuid, last source id copied)} for the experiment."""
        if not self.has_sync_tables:
            return {}
        found = self._plain_rows(
            "SELECT table_name, source_uuid, last_id FROM sync_marks WHERE experiment_uuid = ?", (uuid,)
        )
        return {table: (source, last) for table, source, last in found}

    def forget(self, uuid: str) -> None:
        """Drop what was recorded of copying the experiment (its target copy is gone: deleted there)."""
        self._run("DELETE FROM sync_marks WHERE experiment_uuid = ?", (uuid,))
        self._run("DELETE FROM sync_ids WHERE experiment_uuid = ?", (uuid,))

    def set_mark(self, uuid: str, table: str, source_uuid: str, last_id: int,
                 last_row: Optional[tuple[int, str]] = None) -> None:
        """Record that the experiment's ``table`` is copied up to source row ``last_id``; ``last_row`` is
        the (id, fingerprint) of the last row copied, kept until a later one is given."""
        row_id, row = last_row or (None, None)
        self._run(
            "INSERT INTO sync_marks (experiment_uuid, table_name, source_uuid, last_id, last_row_id, last_row, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP) ON CONFLICT (experiment_uuid, table_name) "
            "DO UPDATE SET source_uuid = excluded.source_uuid, last_id = excluded.last_id, "
            "last_row_id = COALESCE(excluded.last_row_id, sync_marks.last_row_id), "
            "last_row = COALESCE(excluded.last_row, sync_marks.last_row), updated_at = excluded.updated_at",
            (uuid, table, source_uuid, last_id, row_id, row),
        )

    def last_row(self, uuid: str, table: str) -> Optional[tuple[int, str]]:
        """Return the (source id, fingerprint) of the last row of the experiment's ``table`` copied, or None."""
        found = self._plain_rows(
            "SELECT last_row_id, last_row FROM sync_marks WHERE experiment_uuid = ? AND table_name = ? "
            "AND last_row_id IS NOT NULL", (uuid, table),
        )
        return (found[0][0], found[0][1]) if found else None

    def stored(self, table: str, values: Sequence[Any]) -> tuple:
        """Return a row's values as this database will hold them (SQLite: as they are)."""
        return tuple(values)

    def insert_experiment(self, values: Sequence[Any]) -> int:
        """Insert an experiment row (COLUMNS['experiments'] values); return its id."""
        columns = COLUMNS["experiments"]
        return self._insert_id(
            f"INSERT INTO experiments ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", values
        )

    def update_experiment(self, experiment_id: int, values: Sequence[Any]) -> None:
        """Set every copied column of the experiment to ``values``."""
        assignments = ", ".join(f"{c} = ?" for c in COLUMNS["experiments"])
        self._run(f"UPDATE experiments SET {assignments} WHERE id = ?", (*values, experiment_id))

    def model_ids(self, uuid: str) -> dict[int, int]:
        """Return {source model id: target model id} for the experiment."""
        found = self._plain_rows(
            "SELECT source_id, target_id FROM sync_ids WHERE experiment_uuid = ? AND table_name = 'models'", (uuid,)
        )
        return dict(found)

    def insert_models(self, uuid: str, rows: list[tuple[int, tuple]]) -> dict[int, int]:
        """Insert (source id, COLUMNS['models'] values) rows not copied yet; record and return their id mapping."""
        columns = COLUMNS["models"]
        sql = f"INSERT INTO models ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        known = self.model_ids(uuid)  # copied ahead of their turn, for a row pointing at them
        mapping = {
            source_id: self._insert_id(sql, self.stored("models", values)) for source_id, values in rows if source_id not in known
        }
        self._insert_many(
            "sync_ids", ("experiment_uuid", "table_name", "source_id", "target_id"),
            [(uuid, "models", s, t) for s, t in mapping.items()],
        )
        return mapping

    def insert_rows(self, table: str, rows: list[tuple]) -> None:
        """Insert COLUMNS[table] value rows into a child table."""
        self._insert_many(table, COLUMNS[table], rows)

    def find_dataset(self, values: Sequence[Any]) -> Optional[int]:
        """Return the id of the dataset with the same name, version and split as ``values``, or None."""
        columns, values = COLUMNS["datasets"], self.stored("datasets", values)
        key = (values[columns.index("name")], values[columns.index("version")], values[columns.index("split_type")])
        same = self.reader._is_param()
        found = self._plain_rows(
            f"SELECT id FROM datasets WHERE name = ? AND version {same} AND split_type {same} ORDER BY id LIMIT 1", key
        )
        return found[0][0] if found else None

    def dataset_id(self, values: Sequence[Any]) -> tuple[int, bool]:
        """Return (id, created) of the dataset with the same name, version and split, inserting it if missing."""
        columns = COLUMNS["datasets"]
        self._lock("dataset:" + repr([values[columns.index(c)] for c in ("name", "version", "split_type")]))
        found = self.find_dataset(values)
        if found is not None:
            return found, False
        sql = f"INSERT INTO datasets ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        return self._insert_id(sql, self.stored("datasets", values)), True

    def linked(self, experiment_id: int, dataset_id: int, usage_type: Any) -> bool:
        """Return True if the experiment is linked to the dataset for ``usage_type``."""
        same = self.reader._is_param()
        return bool(self._plain_rows(
            f"SELECT 1 FROM experiment_datasets WHERE experiment_id = ? AND dataset_id = ? AND usage_type {same}",
            (experiment_id, dataset_id, usage_type),
        ))

    def link(self, experiment_id: int, dataset_id: int, usage_type: Any) -> bool:
        """Link the experiment to the dataset for ``usage_type`` unless it is; return True if it was not."""
        if self.linked(experiment_id, dataset_id, usage_type):
            return False
        self._run(
            "INSERT INTO experiment_datasets (experiment_id, dataset_id, usage_type) VALUES (?, ?, ?)",
            (experiment_id, dataset_id, usage_type),
        )
        return True


def side(db: str, create: bool) -> Side:
    """Open the SQLite file ``db`` as a sync side (``create``: create or upgrade its schema first)."""
    from .reads import Reader

    return Side(Reader.open(db, create))

