"""`python -m ml_persistence.core [--db PATH]`: create or upgrade the database and say what was done."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from typing import Optional, Sequence

from . import schema
from .backend import default_db_path


def run(db: str) -> int:
    """Create or upgrade ``db`` and print a one-paragraph report."""
    existed = os.path.exists(db)
    try:
        conn = sqlite3.connect(db, isolation_level=None)
    except sqlite3.Error as exc:
        print(f"error: cannot open {db}: {exc}", file=sys.stderr)
        return 1
    try:
        schema.configure(conn)
        before = schema.user_version(conn)
        done = schema.ensure(conn)
        after = schema.user_version(conn)
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in schema.TABLES}
    except (schema.SchemaError, sqlite3.Error) as exc:
        print(f"error: {db}: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    where = os.path.abspath(db)
    if not existed:
        print(f"Created {where} (schema version {after}).")
    elif done:
        print(f"Upgraded {where} from schema version {before} to {after}:")
        for line in done:
            print(f"  - {line}")
    else:
        print(f"{where} is up to date (schema version {after}); nothing to do.")
    print("  rows: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m ml_persistence.core", description=__doc__)
    parser.add_argument("--db", default=None, help="database file (default: $ML_PERSISTENCE_DB or ml_experiments.db)")
    args = parser.parse_args(argv)
    return run(args.db or default_db_path())


if __name__ == "__main__":
    sys.exit(main())
