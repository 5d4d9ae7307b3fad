"""The `ml-persistence` command line: look at, compare, export and maintain the experiment database.

Exit status: 0 on success, 1 when something asked for does not exist (or a check fails), 2 on usage
errors. Expected errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .. import storage
from ..backend import default_db_path
from ..errors import MLPersistenceError, ReadError
from . import aliases, browse, follow, maintain, programs, sync, transfer
from .database import CLIError
from .output import printable

EXAMPLES = """\
examples:
  ml-persistence demo                      # a synthetic training run into ml_experiments.db
  ml-persistence ls --status running       # what is training now (crashed runs show as crashed)
  ml-persistence show 3                    # everything about experiment 3
  ml-persistence compare 3 4 --metric val_sharpe
  ml-persistence best --limit 5
  ml-persistence alias set production 7    # name model 7 "production" (moved from its last model)
  ml-persistence tail 3                    # follow experiment 3's metrics live
  ml-persistence export --what metrics --experiment 3 --out metrics.csv
  ml-persistence backup backups/

every command takes --db PATH or --db postgresql://USER@HOST/DB
(default: $ML_PERSISTENCE_DB, else ./ml_experiments.db; a URL's password can come from $PGPASSWORD or ~/.pgpass)
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, metavar="PATH",
                        help="database file or postgresql:// URL (default: $ML_PERSISTENCE_DB, else ml_experiments.db)")
    parser = argparse.ArgumentParser(
        prog="ml-persistence", description="Look at, compare, export and maintain ml_persistence experiments.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", default=None, metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (programs, browse, aliases, follow, transfer, sync, maintain):
        module.register(sub, common)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


# Run as `python -c`, minus the current directory on sys.path: `-m agent` would run any agent.py
# that happens to sit in the user's working directory.
_AGENT_PROGRAM = (
    "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "from agent.cli import main; sys.exit(main())"
)


def _run_agent(argv: Sequence[str]) -> int:
    # The agent imports ml_persistence, never the reverse: it runs as its own program in this process.
    os.execv(sys.executable, [sys.executable, "-c", _AGENT_PROGRAM, *argv])
    return 1  # not reached


def _agent_arguments(argv: list[str]) -> Optional[list[str]]:
    """Return the agent's arguments if the command is `agent` (a leading --db is passed on), else None."""
    db: list[str] = []
    if argv[:1] == ["--db"] and len(argv) >= 2:
        db, argv = argv[:2], argv[2:]
    elif argv[:1] and argv[0].startswith("--db="):
        db, argv = ["--db", argv[0][5:]], argv[1:]
    if argv[:1] != ["agent"]:
        return None
    return [*db, *argv[1:]]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `ml-persistence` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    agent_args = _agent_arguments(argv)
    if agent_args is not None:
        return _run_agent(agent_args)
    args = _parser().parse_args(argv)
    args.db = args.db or default_db_path()
    try:
        return args.run(args)
    except (CLIError, ReadError) as exc:
        print(f"ml-persistence: {printable(storage.redact(exc))}", file=sys.stderr)
        return exc.code
    except (MLPersistenceError, OSError, *storage.database_errors()) as exc:
        if isinstance(exc, BrokenPipeError):
            return _quiet_broken_pipe()
        print(f"ml-persistence: error: {printable(storage.redact(_describe(exc, args.db)))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


def _describe(exc: BaseException, db: str) -> str:
    if isinstance(exc, storage.database_errors()):
        described = storage.engine(db).describe(exc, storage.display(db))
        if described:
            return described
    return str(exc) or type(exc).__name__


def _quiet_broken_pipe() -> int:
    # The reader went away (`... | head`): stop quietly, and keep Python from complaining at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
