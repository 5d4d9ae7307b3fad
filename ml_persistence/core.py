"""`python -m ml_persistence.core [--db PATH]`: create or upgrade the database and say what was done."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from . import storage
from .backend import default_db_path
from .errors import MLPersistenceError


def run(db: str) -> int:
    """Create or upgrade ``db`` and print a one-paragraph report."""
    shown = storage.display(db)
    try:
        engine = storage.engine(db)
        report = engine.ensure(db)
    except (MLPersistenceError, *storage.database_errors()) as exc:
        print(f"error: {shown}: {storage.redact(exc)}", file=sys.stderr)
        return 1
    where = shown if storage.is_url(db) else os.path.abspath(db)
    before, after = report["before"], report["after"]
    if report["created"]:
        print(f"Created {where} (schema version {after}).")
    elif report["done"]:
        print(f"Upgraded {where} from schema version {before} to {after}:")
        for line in report["done"]:
            print(f"  - {line}")
    else:
        print(f"{where} is up to date (schema version {after}); nothing to do.")
    print("  rows: " + ", ".join(f"{t} {n}" for t, n in report["counts"].items()))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m ml_persistence.core", description=__doc__)
    parser.add_argument("--db", default=None, help="database file or postgresql:// URL (default: $ML_PERSISTENCE_DB or ml_experiments.db)")
    args = parser.parse_args(argv)
    return run(args.db or default_db_path())


if __name__ == "__main__":
    sys.exit(main())
