"""Maintenance commands: backup, vacuum, check, delete, recover."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sqlite3
import sys
import time
from typing import Any

from .. import recovery, schema
from ..liveness import with_liveness
from .. import queries
from . import arguments
from . import output as out
from ..readonly import ReadError, connect_read_only
from .database import CLIError, open_read, open_write

# What belongs to an experiment, children first (models last: metrics and artifacts may point at them).
OWNED_TABLES = ("metrics", "hyperparameters", "artifacts", "experiment_datasets", "legacy_imports", "models")
MODEL_REFERENCES = ("metrics", "hyperparameters", "artifacts")
OWNED_NOUNS = {"metrics": "metric row", "hyperparameters": "hyperparameter", "artifacts": "artifact",
               "experiment_datasets": "dataset link", "legacy_imports": "legacy import record", "models": "model"}


def _size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _backup_target(db: str, dest: str, force: bool) -> str:
    if os.path.isdir(dest):
        stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
        target = os.path.join(dest, f"ml_experiments_backup_{stamp}.db")
        n = 1
        while os.path.exists(target):  # two backups in one second keep both
            n += 1
            target = os.path.join(dest, f"ml_experiments_backup_{stamp}_{n}.db")
        return target
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise CLIError(f"cannot back up to {dest}: directory {parent} does not exist")
    if os.path.exists(dest) and os.path.exists(db) and os.path.samefile(dest, db):
        raise CLIError(f"{dest} is the database itself; back up to another file", 2)
    if os.path.exists(dest) and not force:
        raise CLIError(f"{dest} exists; pass --force to replace it")
    return dest


def backup(args: argparse.Namespace) -> int:
    """Copy the database consistently while writers keep going (SQLite's online backup API)."""
    target = _backup_target(args.db, args.dest, args.force)
    partial = f"{target}.partial-{os.getpid()}"
    started = time.perf_counter()
    source = open_read(args.db)
    try:
        copy = sqlite3.connect(partial, isolation_level=None)
        try:
            # One step: the copy is one read snapshot, and a WAL reader never blocks the writers.
            source.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")  # a self-contained single file
            problems = [r[0] for r in copy.execute("PRAGMA quick_check")]
            counts = {t: copy.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("experiments", "metrics")}
        finally:
            copy.close()
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    finally:
        source.close()
    if problems != ["ok"]:
        os.unlink(partial)
        raise CLIError(f"the copy failed its integrity check: {problems[0]}")
    os.replace(partial, target)
    elapsed = time.perf_counter() - started
    print(f"Backed up {args.db} to {target}: {out.plural(counts['experiments'], 'experiment')}, "
          f"{out.plural(counts['metrics'], 'metric row')}, "
          f"{_mb(os.path.getsize(target))} in {elapsed:.2f} s")
    return 0


def vacuum(args: argparse.Namespace) -> int:
    """Rebuild the file to reclaim free pages, then truncate the write-ahead log."""
    before = _size(args.db)
    conn = open_write(args.db, busy_timeout_ms=int(args.timeout * 1000))
    try:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError as exc:
        raise CLIError(f"cannot vacuum {args.db} now ({exc}); try again when no trainer is writing") from exc
    finally:
        conn.close()
    after = _size(args.db)
    print(f"Vacuumed {args.db}: {_mb(before)} -> {_mb(after)}")
    return 0


def check(args: argparse.Namespace) -> int:
    """Run SQLite's integrity and foreign-key checks; exit 1 on any problem."""
    # Opened without the schema checks of open_read: a damaged file must get a report, not an error.
    try:
        conn = connect_read_only(args.db)
    except ReadError as exc:
        raise CLIError(str(exc), exc.code) from None
    with conn:
        pragma = "quick_check" if args.quick else "integrity_check"
        try:
            version: object = schema.user_version(conn)
        except sqlite3.DatabaseError as exc:
            version = f"unreadable ({exc})"
        try:
            integrity = [r[0] for r in conn.execute(f"PRAGMA {pragma}")]
        except sqlite3.DatabaseError as exc:
            integrity = [f"{pragma} failed: {exc}"]
        try:
            foreign = [
                {"table": r[0], "rowid": r[1], "parent": r[2]} for r in conn.execute("PRAGMA foreign_key_check")
            ]
        except sqlite3.DatabaseError as exc:
            foreign = [{"table": None, "rowid": None, "parent": None, "error": f"foreign_key_check failed: {exc}"}]
    ok = integrity == ["ok"] and not foreign
    if args.json:
        out.print_json({"ok": ok, "schema_version": version, "integrity": integrity, "foreign_keys": foreign})
    else:
        print(f"{args.db}: schema version {version}")
        print(f"  integrity: {'ok' if integrity == ['ok'] else f'{len(integrity)} problem(s)'}")
        for line in integrity if integrity != ["ok"] else []:
            print(f"    {line}")
        print(f"  foreign keys: {'ok' if not foreign else f'{len(foreign)} dangling reference(s)'}")
        for f in foreign[:50]:
            print(f"    {f['error']}" if "error" in f else
                  f"    {f['table']} row {f['rowid']} points at a missing {f['parent']} row")
        if len(foreign) > 50:
            print(f"    ... and {len(foreign) - 50} more")
    return 0 if ok else 1


def _owned_counts(conn: sqlite3.Connection, experiment_id: int) -> dict[str, int]:
    return {
        t: conn.execute(f"SELECT COUNT(*) FROM {t} WHERE experiment_id = ?", (experiment_id,)).fetchone()[0]
        for t in OWNED_TABLES
    }


def _confirm(prompt: str) -> bool:
    print(prompt + " [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not answer.endswith("\n"):
        print(file=sys.stderr)  # end of input: keep the next message off the prompt's line
    return answer.strip().lower() in ("y", "yes")


def delete(args: argparse.Namespace) -> int:
    """Delete experiments and everything that belongs to them, after asking."""
    ids = list(dict.fromkeys(args.ids))
    conn = open_write(args.db)
    try:
        plan: list[tuple[dict[str, Any], dict[str, int]]] = []
        for i in ids:
            exp = queries.get_experiment(conn, i)
            if exp is None:
                raise CLIError(f"no experiment {i}")
            exp = with_liveness(conn, exp)
            if exp["status"] in ("running", "stale") and not args.force:
                raise CLIError(f"experiment {i} may still be running (status {exp['status']}, pid {exp.get('pid')} "
                               f"on {exp.get('hostname')}); end it first or pass --force")
            plan.append((exp, _owned_counts(conn, i)))
        for exp, counts in plan:
            owned = ", ".join(out.plural(n, OWNED_NOUNS[t]) for t, n in counts.items() if n) or "nothing else"
            print(f"experiment {exp['id']} '{out.text(exp['name'])}' ({exp['status']}): {owned}", file=sys.stderr)
        if not args.yes and not _confirm(f"Delete {out.plural(len(plan), 'experiment')} and everything above?"):
            raise CLIError("aborted; nothing deleted")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for i in ids:
                for table in MODEL_REFERENCES:  # rows of other experiments may name one of these models
                    conn.execute(f"UPDATE {table} SET model_id = NULL WHERE model_id IN "
                                 "(SELECT id FROM models WHERE experiment_id = ?)", (i,))
                for table in OWNED_TABLES:
                    conn.execute(f"DELETE FROM {table} WHERE experiment_id = ?", (i,))
                conn.execute("DELETE FROM experiments WHERE id = ?", (i,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    print(f"Deleted experiment(s) {', '.join(map(str, ids))}. Checkpoint and artifact files on disk were not touched.")
    return 0


def recover(args: argparse.Namespace) -> int:
    """Store the events of recovery files in their database exactly once, then delete the files."""
    for path in args.files:
        try:
            header = recovery.read_header(path)
        except FileNotFoundError:
            raise CLIError(f"{path}: no such recovery file (applied already, or never saved)") from None
        except ValueError as exc:
            raise CLIError(str(exc), 2) from None
        db = args.target_db or header.get("db") or args.db
        open_write(db).close()  # an existing ml_persistence database, never created here
        try:
            applied = recovery.apply(path, db)
        except sqlite3.OperationalError as exc:
            raise CLIError(f"cannot write to {db} now ({exc}); {path} is kept, try again") from exc
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        print(f"{path}: {out.plural(applied.stored, 'event')} stored in {db}, "
              f"{applied.skipped} already there, {applied.refused} refused by the database; file removed")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the maintenance commands to the parser."""
    p = sub.add_parser("backup", parents=[common], help="consistent copy, safe while training writes",
                       description="Copy the database with SQLite's online backup API: one consistent snapshot, "
                       "taken without blocking trainers or the agent. The copy is checked before it is kept.")
    p.add_argument("dest", metavar="DEST", help="backup file, or a directory (a timestamped file is created in it)")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    p.set_defaults(run=backup)

    p = sub.add_parser("vacuum", parents=[common], help="reclaim free space",
                       description="VACUUM the database and truncate its write-ahead log. Needs a moment with "
                       "no other writer; waits up to --timeout seconds for one.")
    p.add_argument("--timeout", type=arguments.seconds, default=30.0, help="seconds to wait for writers (default: 30)")
    p.set_defaults(run=vacuum)

    p = sub.add_parser("check", parents=[common], help="integrity and foreign-key checks (exit 1 on problems)",
                       description="Run PRAGMA integrity_check and foreign_key_check. Exit status 1 on any problem.")
    p.add_argument("--quick", action="store_true", help="PRAGMA quick_check instead (faster, less thorough)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=check)

    p = sub.add_parser("delete", parents=[common], help="delete experiments and everything they own",
                       description="Delete experiments with their metrics, hyperparameters, models, artifacts "
                       "and dataset links (datasets themselves are shared and kept). Asks first.")
    p.add_argument("ids", type=arguments.row_id, nargs="+", metavar="ID", help="experiment ids")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    p.add_argument("--force", action="store_true", help="delete even a running (or stale) experiment")
    p.set_defaults(run=delete)

    p = sub.add_parser("recover", help="store the events of a recovery file (saved at an exit deadline)",
                       description="Store the events a trainer could not write before its exit deadline (a full "
                       "disk, a locked or unavailable database) and saved to a recovery file instead. Each "
                       "event is stored exactly once, however often this runs; the file is then removed. "
                       "The next trainer that writes to the database does this by itself.")
    p.add_argument("files", nargs="+", metavar="FILE", help="recovery file(s), applied in the order given")
    p.add_argument("--db", dest="target_db", default=None, metavar="PATH",
                   help="database to store them in (default: the one the file was saved for)")
    p.set_defaults(run=recover)
