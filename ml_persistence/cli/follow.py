"""`tail`: follow an experiment's metrics as they are committed, until it ends or Ctrl-C."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from ..liveness import with_liveness
from . import arguments
from . import output as out
from .database import CLIError, USAGE, experiment, open_read

# The columns of Reader.recent_metric_rows and metric_rows_after: what is printed, then value_json.
_COLUMNS = ("id", "timestamp", "episode", "step", "metric_name", "value", "split")
LIVENESS_EVERY = 2.0


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
    reader = open_read(args.db)
    names = args.metric or None
    try:
        exp = experiment(reader, args.id)
        with reader.snapshot():  # the history and the first id to follow from agree
            last = reader.newest_metric_id()
            recent = reader.recent_metric_rows(args.id, names, args.lines)
        if not args.json:
            print(f"{'TIME':>8}  {'EPISODE':>7}  {'STEP':>9}  {'METRIC':<24}  {'VALUE':>14}", file=sys.stderr)
        _print(recent, args.json)
        checked = time.monotonic()
        if exp["status"] == "stale":
            print(f"ml-persistence: experiment {args.id} is stale (started elsewhere, nothing logged for an hour); "
                  "following anyway, Ctrl-C to stop", file=sys.stderr)
        while exp["status"] in ("running", "stale"):
            time.sleep(args.interval)
            rows = reader.metric_rows_after(args.id, last, names)
            if rows:
                last = rows[-1][0]
                _print(rows, args.json)
            if time.monotonic() - checked >= LIVENESS_EVERY or not rows:
                exp = with_liveness(reader, reader.get_experiment(args.id) or {"id": args.id, "status": "deleted"})
                checked = time.monotonic()
        # An experiment's end commits after everything it logged: one last read catches the rest.
        _print(reader.metric_rows_after(args.id, last, names), args.json)
        print(f"ml-persistence: experiment {args.id} is {exp['status']}", file=sys.stderr)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one stops following: not an error
    finally:
        reader.close()
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
