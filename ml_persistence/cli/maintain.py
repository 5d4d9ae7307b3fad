"""Maintenance commands: backup, vacuum, check, delete, recover."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from typing import Any

from .. import recovery, storage
from . import arguments
from . import output as out
from .database import CLIError, experiment, open_read, open_write

OWNED_NOUNS = {"metrics": "metric row", "hyperparameters": "hyperparameter", "artifacts": "artifact",
               "experiment_datasets": "dataset link", "legacy_imports": "legacy import record",
               "model_aliases": "model alias", "models": "model"}


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _backup_target(db: str, dest: str, force: bool, suffix: str) -> str:
    if os.path.isdir(dest):
        stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
        target = os.path.join(dest, f"ml_experiments_backup_{stamp}{suffix}")
        n = 1
        while os.path.exists(target):  # two backups in one second keep both
            n += 1
            target = os.path.join(dest, f"ml_experiments_backup_{stamp}_{n}{suffix}")
        return target
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise CLIError(f"cannot back up to {dest}: directory {parent} does not exist")
    if not storage.is_url(db) and os.path.exists(dest) and os.path.exists(db) and os.path.samefile(dest, db):
        raise CLIError(f"{dest} is the database itself; back up to another file", 2)
    if os.path.exists(dest) and not force:
        raise CLIError(f"{dest} exists; pass --force to replace it")
    return dest


def backup(args: argparse.Namespace) -> int:
    """Copy the database consistently while writers keep going (SQLite: online backup API; PostgreSQL: pg_dump)."""
    started = time.perf_counter()
    source = open_read(args.db)
    try:
        target = _backup_target(args.db, args.dest, args.force, source.backup_suffix)
        partial = f"{target}.partial-{os.getpid()}"
        try:
            counts = source.backup_to(partial)
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise
    finally:
        source.close()
    os.replace(partial, target)
    elapsed = time.perf_counter() - started
    print(f"Backed up {storage.display(args.db)} to {target}: {out.plural(counts['experiments'], 'experiment')}, "
          f"{out.plural(counts['metrics'], 'metric row')}, "
          f"{_mb(os.path.getsize(target))} in {elapsed:.2f} s")
    return 0


def vacuum(args: argparse.Namespace) -> int:
    """Rebuild the file to reclaim free pages, then truncate the write-ahead log."""
    reader = open_write(args.db)
    try:
        before, after = reader.vacuum(args.timeout)
    finally:
        reader.close()
    print(f"Vacuumed {storage.display(args.db)}: {_mb(before)} -> {_mb(after)}")
    return 0


def check(args: argparse.Namespace) -> int:
    """Check the database (SQLite: integrity and foreign keys; PostgreSQL: schema and orphan rows); exit 1 on problems."""
    # Each engine's maintenance.check opens the database itself: a damaged file must get a report, not an error.
    engine = storage.engine(args.db)
    report = engine.check(args.db, args.quick)
    integrity, foreign = report["integrity"], report["foreign_keys"]
    if args.json:
        out.print_json(report)
    else:
        print(f"{storage.display(args.db)}: schema version {report['schema_version']}")
        print(f"  integrity: {'ok' if integrity == ['ok'] else f'{len(integrity)} problem(s)'}")
        for line in integrity if integrity != ["ok"] else []:
            print(f"    {line}")
        print(f"  foreign keys: {'ok' if not foreign else f'{len(foreign)} dangling reference(s)'}")
        for f in foreign[:50]:
            print(f"    {f['error']}" if "error" in f else
                  f"    {f['table']} row {f['rowid']} points at a missing {f['parent']} row")
        if len(foreign) > 50:
            print(f"    ... and {len(foreign) - 50} more")
    return 0 if report["ok"] else 1


def _owned(count: int, noun: str) -> str:
    """Return '1 model alias', '2 model aliases', '3 models'."""
    return out.plural(count, noun) if not noun.endswith("s") or count == 1 else f"{count} {noun}es"


def _confirm(prompt: str) -> bool:
    print(prompt + " [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not answer.endswith("\n"):
        print(file=sys.stderr)  # end of input: keep the next message off the prompt's line
    return answer.strip().lower() in ("y", "yes")


def delete(args: argparse.Namespace) -> int:
    """Delete experiments and everything that belongs to them, after asking."""
    ids = list(dict.fromkeys(args.ids))
    reader = open_write(args.db)
    try:
        plan: list[tuple[dict[str, Any], dict[str, int]]] = []
        for i in ids:
            exp = experiment(reader, i)
            if exp["status"] in ("running", "stale") and not args.force:
                raise CLIError(f"experiment {i} may still be running (status {exp['status']}, pid {exp.get('pid')} "
                               f"on {exp.get('hostname')}); end it first or pass --force")
            plan.append((exp, reader.owned_counts(i)))
        for exp, counts in plan:
            owned = ", ".join(_owned(n, OWNED_NOUNS[t]) for t, n in counts.items() if n) or "nothing else"
            print(f"experiment {exp['id']} '{out.text(exp['name'])}' ({exp['status']}): {owned}", file=sys.stderr)
        if not args.yes and not _confirm(f"Delete {out.plural(len(plan), 'experiment')} and everything above?"):
            raise CLIError("aborted; nothing deleted")
        reader.delete_experiments(ids)
    finally:
        reader.close()
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
        except storage.database_errors() as exc:
            raise CLIError(f"cannot write to {storage.display(db)} now ({exc}); {path} is kept, try again") from exc
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        print(f"{path}: {out.plural(applied.stored, 'event')} stored in {storage.display(db)}, "
              f"{applied.skipped} already there, {applied.refused} refused by the database; file removed")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the maintenance commands to the parser."""
    p = sub.add_parser("backup", parents=[common], help="consistent copy, safe while training writes",
                       description="Copy the database with SQLite's online backup API: one consistent snapshot, "
                       "taken without blocking trainers or the agent. The copy is checked before it is kept. "
                       "A PostgreSQL database is dumped with pg_dump --format=custom (restore it with pg_restore); "
                       "pg_dump must be on PATH.")
    p.add_argument("dest", metavar="DEST", help="backup file, or a directory (a timestamped file is created in it)")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    p.set_defaults(run=backup)

    p = sub.add_parser("vacuum", parents=[common], help="reclaim free space",
                       description="VACUUM the database and truncate its write-ahead log. Needs a moment with "
                       "no other writer; waits up to --timeout seconds for one. SQLite only: PostgreSQL "
                       "vacuums itself (autovacuum).")
    p.add_argument("--timeout", type=arguments.seconds, default=30.0, help="seconds to wait for writers (default: 30)")
    p.set_defaults(run=vacuum)

    p = sub.add_parser("check", parents=[common], help="integrity and foreign-key checks (exit 1 on problems)",
                       description="Run PRAGMA integrity_check and foreign_key_check. On PostgreSQL: check the "
                       "schema version and tables, and look for rows whose experiment, model or dataset is "
                       "missing. Exit status 1 on any problem.")
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
                   help="database file or postgresql:// URL to store them in (default: the one the file was saved for)")
    p.set_defaults(run=recover)
