"""PostgreSQL versions of the maintenance reads (sqlite/maintenance.py): vacuum, backup and check differ.

Deleting experiments and counting rows are the same SQL on both engines, so they are inherited.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from psycopg.conninfo import make_conninfo

from ..errors import ReadError
from ..storage import redact

# (table, column, parent table, key shown for a row): the references SQLite declares (and its
# foreign_key_check checks); nothing enforces them on either engine.
REFERENCES = (
    ("models", "experiment_id", "experiments", "id"),
    ("metrics", "experiment_id", "experiments", "id"),
    ("metrics", "model_id", "models", "id"),
    ("hyperparameters", "experiment_id", "experiments", "id"),
    ("hyperparameters", "model_id", "models", "id"),
    ("artifacts", "experiment_id", "experiments", "id"),
    ("artifacts", "model_id", "models", "id"),
    ("experiment_datasets", "experiment_id", "experiments",
     "'experiment_id=' || experiment_id || ', dataset_id=' || dataset_id || ', usage_type=' || COALESCE(usage_type, 'NULL')"),
    ("experiment_datasets", "dataset_id", "datasets",
     "'experiment_id=' || experiment_id || ', dataset_id=' || dataset_id || ', usage_type=' || COALESCE(usage_type, 'NULL')"),
    ("legacy_imports", "experiment_id", "experiments", "legacy_key"),
    ("model_aliases", "model_id", "models", "alias"),
    ("model_aliases", "experiment_id", "experiments", "alias"),
)
FUNCTIONS = ("ml_persistence_jsonb", "ml_persistence_julianday")
# The connection parameters handed to pg_dump: those every libpq since 10 knows (a newer libpq's
# psycopg reports more, such as sslcertmode, which an older pg_dump refuses).
_DUMP_PARAMETERS = ("host", "hostaddr", "port", "dbname", "user", "options", "passfile", "sslmode", "sslcert",
                    "sslkey", "sslrootcert", "sslcrl", "target_session_attrs", "connect_timeout")


class Maintenance:
    """Overrides of sqlite.maintenance.Maintenance for PostgreSQL."""

    backup_suffix = ".dump"  # pg_dump's custom format: restore with pg_restore

    def vacuum(self, timeout: float) -> tuple[int, int]:
        raise ReadError("PostgreSQL vacuums itself (autovacuum); nothing to do", 2)

    def backup_to(self, target: str) -> dict[str, int]:
        """Dump the database to ``target`` with pg_dump --format=custom, from one snapshot; return its counts."""
        program = shutil.which("pg_dump")
        if program is None:
            raise ReadError("backing up a PostgreSQL database needs pg_dump on PATH (the PostgreSQL client "
                            "package); or back it up with your server's own tools", 2)
        info = self.conn.info
        found = info.get_parameters()  # never the password
        dsn = make_conninfo(**{k: v for k, v in found.items() if k in _DUMP_PARAMETERS})
        env = dict(os.environ)
        if info.password:
            env["PGPASSWORD"] = info.password  # never on the command line, where ps shows it
        # The counts and the dump read the same snapshot: pg_dump imports the one exported here.
        with self.snapshot():
            (snapshot,) = self._first("SELECT pg_export_snapshot()")
            counts = self.table_counts()
            done = subprocess.run(
                [program, "--format=custom", f"--file={target}", f"--snapshot={snapshot}", f"--dbname={dsn}"],
                env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            )
        if done.returncode != 0:
            reason = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
            raise ReadError(redact(f"pg_dump failed: {reason}").replace(info.password or "\0", "***"))
        return counts

    def check_report(self, quick: bool = False) -> dict[str, Any]:
        """Return {ok, schema_version, integrity: [problems, or "ok"], foreign_keys: [{table, rowid, parent}]}.

        Integrity here is the schema: its version, tables and helper functions. ``quick`` changes nothing.
        """
        from .schema import OUR_TABLES, SCHEMA_VERSION, VERSION_TABLE

        (version,) = self._first(f"SELECT max(version) FROM {VERSION_TABLE}")
        problems = []
        if version != SCHEMA_VERSION:
            problems.append(f"schema version {version}, but this ml_persistence uses {SCHEMA_VERSION}")
        tables = {name for (name,) in self._tuples("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        problems += [f"table {t} is missing" for t in sorted(OUR_TABLES - tables)]
        functions = {name for (name,) in self._tuples(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = current_schema()")}
        problems += [f"function {f} is missing" for f in FUNCTIONS if f not in functions]
        foreign: list[dict[str, Any]] = []
        for table, column, parent, key in REFERENCES:
            if table not in tables or parent not in tables:
                continue
            for (rowid,) in self._tuples(
                f"SELECT {key} FROM {table} c WHERE c.{column} IS NOT NULL "
                f"AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.id = c.{column}) ORDER BY 1"
            ):
                foreign.append({"table": table, "rowid": rowid, "parent": parent})
        integrity = problems or ["ok"]
        return {"ok": not problems and not foreign, "schema_version": version, "integrity": integrity,
                "foreign_keys": foreign}


def check(db: str, quick: bool = False) -> dict[str, Any]:
    """Check the database at URL ``db`` (see Maintenance.check_report)."""
    from . import reader

    found = reader(db, create=False)
    try:
        return found.check_report(quick)
    finally:
        found.close()
