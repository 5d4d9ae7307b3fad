"""Maintenance of an SQLite file: delete experiments, vacuum, back up, check.

``Maintenance`` is a mixin of Reader (delete, counts, vacuum, backup_to, check_report); ``check()``
opens a file without the schema checks of a read, so a damaged file still gets a report.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Sequence

from ..errors import ReadError

# What belongs to an experiment, children first (models last: metrics, artifacts and aliases point at them).
OWNED_TABLES = (
    "metrics", "hyperparameters", "artifacts", "experiment_datasets", "legacy_imports", "model_aliases", "models",
)
MODEL_REFERENCES = ("metrics", "hyperparameters", "artifacts")


class Maintenance:
    """Reader methods for the maintenance commands (delete needs a Reader opened with create=True)."""

    backup_suffix = ".db"  # of a backup file named by the CLI

    def owned_counts(self, experiment_id: int) -> dict[str, int]:
        """Return {table: rows belonging to the experiment} for each table of OWNED_TABLES."""
        return {
            t: self._first(f"SELECT COUNT(*) FROM {t} WHERE experiment_id = ?", (experiment_id,))[0]
            for t in OWNED_TABLES
        }

    def table_counts(self, tables: Sequence[str] = ("experiments", "metrics")) -> dict[str, int]:
        """Return {table: row count} (``tables``: names of ml_persistence tables)."""
        return {t: self._first(f"SELECT COUNT(*) FROM {t}")[0] for t in tables}

    def delete_experiments(self, experiment_ids: Sequence[int]) -> None:
        """Delete experiments and every row they own, in one transaction (model references elsewhere become NULL)."""
        with self.transaction():
            for i in experiment_ids:
                for table in MODEL_REFERENCES:  # rows of other experiments may name one of these models
                    self._execute(f"UPDATE {table} SET model_id = NULL WHERE model_id IN "
                                  "(SELECT id FROM models WHERE experiment_id = ?)", (i,))
                for table in OWNED_TABLES:
                    self._execute(f"DELETE FROM {table} WHERE experiment_id = ?", (i,))
                self._execute("DELETE FROM experiments WHERE id = ?", (i,))

    def _size(self) -> int:
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))

    def vacuum(self, timeout: float) -> tuple[int, int]:
        """Rebuild the file to reclaim free pages and truncate the WAL, waiting up to ``timeout`` s for writers.

        Returns the file's size (with its WAL) before and after.
        """
        before = self._size()
        try:
            self._execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._execute("VACUUM")
            self._execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:
            raise ReadError(f"cannot vacuum {self.path} now ({exc}); try again when no trainer is writing") from exc
        return before, self._size()

    def backup_to(self, target: str) -> dict[str, int]:
        """Copy the database to the new file ``target`` (one read snapshot; writers keep going); return its counts.

        The copy is a self-contained single file, checked before this returns (ReadError if it fails).
        """
        copy = sqlite3.connect(target, isolation_level=None)
        try:
            # One step: the copy is one read snapshot, and a WAL reader never blocks the writers.
            self.conn.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")
            problems = [r[0] for r in copy.execute("PRAGMA quick_check")]
            counts = {t: copy.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("experiments", "metrics")}
        finally:
            copy.close()
        if problems != ["ok"]:
            raise ReadError(f"the copy failed its integrity check: {problems[0]}")
        return counts

    def check_report(self, quick: bool = False) -> dict[str, Any]:
        """Return {ok, schema_version, integrity: [problems, or "ok"], foreign_keys: [{table, rowid, parent}]}."""
        from .schema import user_version

        pragma = "quick_check" if quick else "integrity_check"
        try:
            version: object = user_version(self.conn)
        except sqlite3.DatabaseError as exc:
            version = f"unreadable ({exc})"
        try:
            integrity = [r[0] for r in self._tuples(f"PRAGMA {pragma}")]
        except sqlite3.DatabaseError as exc:
            integrity = [f"{pragma} failed: {exc}"]
        try:
            foreign: list[dict[str, Any]] = [
                {"table": r[0], "rowid": r[1], "parent": r[2]} for r in self._tuples("PRAGMA foreign_key_check")
            ]
        except sqlite3.DatabaseError as exc:
            foreign = [{"table": None, "rowid": None, "parent": None, "error": f"foreign_key_check failed: {exc}"}]
        return {"ok": integrity == ["ok"] and not foreign, "schema_version": version, "integrity": integrity,
                "foreign_keys": foreign}


def check(db: str, quick: bool = False) -> dict[str, Any]:
    """Check the file ``db`` (see Maintenance.check_report), opened read-only without the schema checks of a read."""
    from .readonly import connect_read_only
    from .reads import Reader

    reader = Reader(connect_read_only(db), db)
    try:
        return reader.check_report(quick)
    finally:
        reader.close()
