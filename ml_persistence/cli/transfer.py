"""Moving data in and out: export, migrate-legacy."""

from __future__ import annotations

import argparse
import os
import sys
from typing import BinaryIO

from .. import storage
from ..filtering.nodes import And
from . import arguments, selection
from . import output as out
from .database import CLIError, open_read

WHATS = ("experiments", "metrics", "models", "hyperparameters", "datasets", "artifacts")
FORMATS = ("csv", "jsonl", "parquet")


def _format_of(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    ext = os.path.splitext(args.out or "")[1].lower().lstrip(".")
    return {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(ext, ext) if ext in (*FORMATS, "json", "ndjson", "pq") else "csv"


def export(args: argparse.Namespace) -> int:
    """Stream a table to CSV, JSON lines or Parquet."""
    from ..export import ExportError, export_rows

    fmt = _format_of(args)
    if fmt == "parquet" and not args.out and sys.stdout.isatty():
        raise CLIError("parquet is binary: pass --out FILE or redirect stdout", 2)
    if args.metric and args.what != "metrics":
        raise CLIError("--metric only applies to --what metrics", 2)
    choosing = selection.selecting(args) or args.limit is not None
    node = selection.condition(args) if choosing else None  # checked before the database opens
    reader = open_read(args.db)
    try:
        ids = list(args.experiment or ())
        for i in ids:
            if not reader.experiment_exists(i):
                raise CLIError(f"no experiment {i}")
        if choosing:
            if ids:
                node = selection.ids_condition(ids) if node is None else And((selection.ids_condition(ids), node))
            # No experiment has id 0 (ids start at 1): a selection of none exports no rows, not all.
            ids = [e["id"] for e in selection.search(reader, node, args.order_by, args.limit)] or [0]

        def write(target: BinaryIO) -> int:
            try:
                return export_rows(reader, args.what, target, fmt, ids, args.metric or ())
            except ExportError as exc:
                raise CLIError(str(exc)) from exc

        if not args.out:
            write(sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return 0
        parent = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(parent):
            raise CLIError(f"cannot write {args.out}: directory {parent} does not exist")
        partial = f"{args.out}.partial-{os.getpid()}"  # a failed export leaves no half-written file behind
        try:
            with open(partial, "wb") as target:
                count = write(target)
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise
    finally:
        reader.close()
    os.replace(partial, args.out)
    print(f"Exported {count} {args.what} rows to {args.out} ({fmt})", file=sys.stderr)
    return 0


def migrate_legacy(args: argparse.Namespace) -> int:
    """Import an older experiments.db into the database; safe to run again."""
    if storage.is_url(args.db):
        raise CLIError(f"migrate-legacy needs an SQLite target (--db FILE), not {storage.display(args.db)}", 2)
    from ..sqlite.legacy import LegacyFormatError, migrate_legacy as migrate

    if not os.path.isfile(args.legacy_db):
        raise CLIError(f"no legacy database at {args.legacy_db}")
    if os.path.exists(args.db) and os.path.samefile(args.db, args.legacy_db):
        raise CLIError("the legacy database and --db are the same file", 2)
    try:
        report = migrate(args.legacy_db, args.db)
    except LegacyFormatError as exc:
        raise CLIError(str(exc)) from exc
    if args.json:
        out.print_json({k: v for k, v in vars(report).items()})
    else:
        print("\n".join(report.lines()))
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add export and migrate-legacy to the parser."""
    p = sub.add_parser("export", parents=[common], help="stream a table to CSV, JSON lines or Parquet",
                       description="Export one kind of row, streamed (constant memory however many rows). "
                       "Columns are the database's own column names.")
    p.add_argument("--what", choices=WHATS, default="experiments", help="what to export (default: experiments)")
    p.add_argument("--experiment", type=arguments.row_id, action="append", metavar="ID", help="only this experiment (repeatable)")
    p.add_argument("--metric", action="append", metavar="NAME", help="with --what metrics: only this metric (repeatable)")
    selection.add_arguments(p)
    p.add_argument("--limit", type=arguments.count,
                   help="only the first N experiments selected (by --order-by; rows are still written in id order)")
    p.add_argument("--format", choices=FORMATS,
                   help="csv, jsonl or parquet (default: from --out's extension, else csv); "
                   "parquet needs `pip install 'ml_persistence[parquet]'`")
    p.add_argument("--out", metavar="PATH", help="write here instead of stdout")
    p.set_defaults(run=export)

    p = sub.add_parser("migrate-legacy", parents=[common], help="import an older experiments.db",
                       description="Import the older experiments.db format (experiments, episodes, "
                       "regime_analysis, hyperparameters) into the database. The legacy file is only read. "
                       "Running it again imports only what is new. The target must be an SQLite file.")
    p.add_argument("legacy_db", metavar="LEGACY_DB", help="the legacy experiments.db")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(run=migrate_legacy)
