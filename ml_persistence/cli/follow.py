"""`tail`: follow an experiment's metrics as they are committed, until it ends or Ctrl-C."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any, Optional

from ..liveness import with_liveness
from .. import queries
from . import arguments
from . import output as out
from .database import CLIError, USAGE, experiment, open_read

_COLUMNS = ("id", "timestamp", "episode", "step", "metric_name", "value", "split")
LIVENESS_EVERY = 2.0


def _select(names: Optional[list[str]]) -> tuple[str, list[Any]]:
    # `+experiment_id` keeps SQLite on the rowid range (new rows only) instead of the experiment's index.
    sql = ("SELECT id, timestamp, episode, step, metric_name, value, split, value_json FROM metrics "
           "WHERE id > ? AND +experiment_id = ?")
    params: list[Any] = []
    if names:
        sql += " AND metric_name IN (SELECT value FROM json_each(?))"
        params.append(out.json_line(names))
    return sql, params


def _print(rows: list[tuple[Any, ...]], as_json: bool) -> None:
    for row in rows:
        value = math.nan if row[5] is None else row[5]
        if as_json:
            record = dict(zip(_COLUMNS, (*row[:5], value, row[6])))
            if row[7] is not None:
                record["value_json"] = out.decoded_json(row[7])
            print(out.json_line(record))
        else:
            shown = out.number(value) if row[7] is None else out.text(row[7])
            print(f"{str(row[1])[11:19]:>8}  {out.text(row[2]):>7}  {out.text(row[3]):>9}  "
                  f"{out.text(row[4]):<24}  {shown:>14}" + (f"  [{out.text(row[6])}]" if row[6] else ""))
    sys.stdout.flush()


def tail(args: argparse.Namespace) -> int:
    """Print the last rows, then new ones as they are committed, until the run ends or Ctrl-C."""
    if args.lines < 0 or args.interval <= 0:
        raise CLIError("--lines must be >= 0 and --interval > 0", USAGE)
    conn = open_read(args.db)
    try:
        exp = experiment(conn, args.id)
        sql, extra = _select(args.metric)
        conn.execute("BEGIN")  # one snapshot: the history and the first id to follow from agree
        (last,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM metrics").fetchone()
        recent = conn.execute(sql + " ORDER BY id DESC LIMIT ?", [0, args.id, *extra, args.lines]).fetchall()
        conn.execute("COMMIT")
        if not args.json:
            print(f"{'TIME':>8}  {'EPISODE':>7}  {'STEP':>9}  {'METRIC':<24}  {'VALUE':>14}", file=sys.stderr)
        _print([tuple(r) for r in reversed(recent)], args.json)
        checked = time.monotonic()
        if exp["status"] == "stale":
            print(f"ml-persistence: experiment {args.id} is stale (started elsewhere, nothing logged for an hour); "
                  "following anyway, Ctrl-C to stop", file=sys.stderr)
        while exp["status"] in ("running", "stale"):
            time.sleep(args.interval)
            rows = conn.execute(sql + " ORDER BY id", [last, args.id, *extra]).fetchall()
            if rows:
                last = rows[-1][0]
                _print([tuple(r) for r in rows], args.json)
            if time.monotonic() - checked >= LIVENESS_EVERY or not rows:
                exp = with_liveness(conn, queries.get_experiment(conn, args.id) or {"id": args.id, "status": "deleted"})
                checked = time.monotonic()
        # An experiment's end commits after everything it logged: one last read catches the rest.
        rows = conn.execute(sql + " ORDER BY id", [last, args.id, *extra]).fetchall()
        _print([tuple(r) for r in rows], args.json)
        print(f"ml-persistence: experiment {args.id} is {exp['status']}", file=sys.stderr)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one stops following: not an error
    finally:
        conn.close()
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the tail command to the parser."""
    p = sub.add_parser("tail", parents=[common], help="follow an experiment's metrics live",
                       description="Print the last metric rows of an experiment, then every new row as it "
                       "is committed, until the experiment ends (or crashes) or you press Ctrl-C.")
    p.add_argument("id", type=arguments.row_id, metavar="ID", help="experiment id")
    p.add_argument("--metric", action="append", metavar="NAME", help="only this metric (repeatable)")
    p.add_argument("-n", "--lines", type=arguments.count, default=10, help="rows of history to print first (default: 10)")
    p.add_argument("--interval", type=arguments.seconds, default=0.5, help="seconds between polls (default: 0.5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(run=tail)
