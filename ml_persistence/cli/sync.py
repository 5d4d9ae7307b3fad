"""`sync`: copy experiments from one database into another, exactly once; `--follow` keeps copying."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Iterable, NoReturn, Optional

from .. import storage
from ..liveness import process_alive
from ..errors import MLPersistenceError
from . import arguments
from . import output as out
from .database import CLIError, USAGE

SIGNALS = (signal.SIGINT, signal.SIGTERM)
FIRST_RETRY = 0.5
LAST_RETRY = 5.0
_SINCE = re.compile(r"\d{4}-\d{2}-\d{2}( \d{2}:\d{2}(:\d{2})?)?")

DESCRIPTION = """\
Copy experiments, with everything they own (hyperparameters, metrics, models, datasets and their
links, artifact records), from SRC into DST. Each side is a database file or a postgresql:// URL.
Every experiment is copied exactly once: a second sync copies nothing, a sync after the run logged
more copies only the new rows, and a sync killed at any point resumes where it stopped.
"""

EPILOG = """\
output:
  a progress display on stderr when it is a terminal (or with --progress); a summary on stdout at
  the end. --json prints the summary as one JSON document instead; with --follow, one JSON line per
  pass that copied something, plus one for the last pass.

--follow:
  a pass every --interval seconds until every selected run has ended and all of it is copied
  (with --all: until stopped, picking up new runs). If a database cannot be reached it says so once,
  retries (every 0.5 s to 5 s) and says when it is back. SIGTERM stops after the current chunk
  (exit 0), Ctrl-C too (exit 130).

exit status: 0 done; 1 error (one line on stderr); 2 usage error.

examples:
  ml-persistence sync ml_experiments.db postgresql://me@team-db/ml
  ml-persistence sync run.db team.db --experiment 3 --follow
  ml-persistence sync run.db postgresql://me@team-db/ml --since 2024-06-01 --tag ppo --dry-run
"""


def since(text: str) -> str:
    """A start-time bound: YYYY-MM-DD or 'YYYY-MM-DD HH:MM[:SS]' (local time)."""
    if _SINCE.fullmatch(text):
        try:
            dt.datetime.strptime(text, {10: "%Y-%m-%d", 16: "%Y-%m-%d %H:%M", 19: "%Y-%m-%d %H:%M:%S"}[len(text)])
            return text
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD or 'YYYY-MM-DD HH:MM[:SS]', got {text!r}")




def _unfinished(experiments: Iterable[Any]) -> list[Any]:
    """Return the experiments not wholly copied yet: still running, or rows pending (never the skipped)."""
    return [e for e in experiments if e.action != "skipped" and (not e.ended or any(e.pending.values()))]


def _rows(counts: dict[str, int]) -> str:
    return ", ".join(f"{table} {rows:,}" for table, rows in counts.items() if rows)


class Progress:
    """Rows per table of the experiment being copied, on one stderr line rewritten in place."""

    def __init__(self) -> None:
        self.current: Optional[int] = None
        self.counts: dict[str, int] = {}
        self.total = 0
        self.shown = 0

    def __call__(self, experiment: Any, table: str, rows: int) -> None:
        if experiment.source_id != self.current:
            self.current, self.counts = experiment.source_id, {}
        self.total += rows - self.counts.get(table, 0)
        self.counts[table] = rows
        line = (f"{out.plural(self.total, 'row')} copied; "
                f"#{experiment.source_id} {out.text(experiment.name)}: {_rows(self.counts) or '-'}")
        self._show(out.clip(line, shutil.get_terminal_size((100, 24)).columns - 1))

    def _show(self, line: str) -> None:
        sys.stderr.write("\r" + line.ljust(self.shown))
        sys.stderr.flush()
        self.shown = len(line)

    def clear(self) -> None:
        """Erase the line, ready for the next pass."""
        if self.shown:
            self._show("")
            sys.stderr.write("\r")
        self.current, self.counts, self.total, self.shown = None, {}, 0, 0


class Syncer:
    """One `sync` command: its passes, its waits, how it is stopped, and what it says."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ..sync import Selection

        self.args = args
        self.selection = Selection(experiments=args.experiment or (), since=args.since, tags=args.tag or (),
                                   owner_pid=args.owner_pid)
        self.stop = threading.Event()  # ends a pass between chunks: a signal, or the final deadline
        self.wake = threading.Event()  # ends a wait: a signal, or the owner gone
        self.owner_gone = threading.Event()
        self.signal: Optional[int] = None
        self.progress = Progress() if args.progress or (sys.stderr.isatty() and not args.quiet) else None
        self.last: Optional[Any] = None  # the last pass's SyncReport
        self.cut = False
        self.known: dict[int, Any] = {}  # source id -> its latest ExperimentReport (a cut pass misses some)
        self.last_pass: Optional[float] = None
        self.printed_last = False
        self.error: Optional[str] = None
        self.passes = 0
        self.copied: dict[str, int] = {}
        # Runnable as shown: no password (libpq takes it from $PGPASSWORD or ~/.pgpass), a file's full path.
        self.command = "ml-persistence sync " + " ".join(shlex.quote(storage.identity(db))
                                                         for db in (args.source, args.target))

    def interrupt(self, signum: int) -> None:
        """Stop after the current chunk; a second signal stops at once."""
        if self.signal is not None:
            os._exit(128 + signum)
        self.signal = signum
        self.stop.set()
        self.wake.set()

    def catch_signals(self) -> None:
        """Route SIGINT and SIGTERM to interrupt()."""
        if not hasattr(signal, "pthread_sigmask"):
            for signum in SIGNALS:
                signal.signal(signum, lambda s, _frame: self.interrupt(s))
            return
        # Taken by a thread (sigwait), not a handler: a handler setting an Event can deadlock on the
        # Event's own lock when the signal lands while the main thread holds it. Blocked before any
        # other thread starts, so every later thread inherits the mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)

        def take() -> None:
            while True:
                self.interrupt(signal.sigwait(SIGNALS))

        threading.Thread(target=take, name="sync-signals", daemon=True).start()

    def watch_owner(self, fd: int) -> None:
        """Set owner_gone when ``fd`` reaches end of file (the owner exited or closed it)."""
        def read() -> None:
            try:
                while os.read(fd, 4096):
                    pass
            except OSError:
                pass
            self.owner_gone.set()
            self.wake.set()

        threading.Thread(target=read, name="sync-owner", daemon=True).start()

    def one_pass(self) -> Any:
        """Run one pass; remember its report."""
        from ..sync import sync

        try:
            report = sync(self.args.source, self.args.target, self.selection, dry_run=self.args.dry_run,
                          progress=self.progress, stop=self.stop)
        finally:
            if self.progress is not None:
                self.progress.clear()
        self.last, self.last_pass, self.printed_last, self.error = report, time.time(), False, None
        self.cut = self.stop.is_set()  # a stopped pass leaves out the experiments it did not reach
        self.known = {**(self.known if self.cut else {}), **{e.source_id: e for e in report.experiments}}
        self.passes += 1
        for table, rows in report.totals().items():
            self.copied[table] = self.copied.get(table, 0) + rows
        return report

    def retryable(self, exc: BaseException) -> bool:
        """Return True if retrying may help: a database busy or out of reach, as its engine's writer judges it."""
        if isinstance(exc, MLPersistenceError):
            return False
        if isinstance(exc, storage.database_errors()):
            for db in (self.args.target, self.args.source):
                if isinstance(exc, storage.engine(db).ERRORS):
                    return storage.Database(db).store(0).classify(exc) in (storage.BUSY, storage.ENVIRONMENT)
        return isinstance(exc, OSError)

    def out_of_reach(self, exc: BaseException) -> bool:
        """Return True for a server or network that cannot be reached (not a database that is only busy)."""
        if isinstance(exc, OSError):
            return True
        for db in (self.args.target, self.args.source):
            if isinstance(exc, storage.engine(db).ERRORS):
                return storage.Database(db).store(0).classify(exc) == storage.ENVIRONMENT
        return False

    def describe(self, exc: BaseException) -> str:
        """Return a one-line, password-free account of an error."""
        text = str(exc).strip()
        text = text.splitlines()[0] if text else type(exc).__name__
        if isinstance(exc, storage.database_errors()):
            # Named after the side whose driver raised it; both, when both sides have that engine.
            sides = [db for db in dict.fromkeys((self.args.target, self.args.source))
                     if isinstance(exc, storage.engine(db).ERRORS)]
            if len(sides) == 1:
                name = storage.display(sides[0])
                text = storage.engine(sides[0]).describe(exc, name) or f"{name}: {text}"
            else:
                text = f"{storage.display(self.args.source)} -> {storage.display(self.args.target)}: {text}"
        return out.printable(storage.redact(text))

    def fail(self, exc: BaseException, state: str) -> NoReturn:
        """End the command on ``exc``: status ``state``, one line on stderr (a bug keeps its traceback)."""
        if not isinstance(exc, (MLPersistenceError, OSError, *storage.database_errors())):
            raise exc
        self.error = self.describe(exc)
        self.write_status(state)
        raise CLIError(f"error: {self.error}") from None

    def write_status(self, state: str) -> None:
        """Replace the --status-file atomically with where things stand (mode 0600)."""
        path = self.args.status_file
        if path is None:
            return
        left = _unfinished(self.known.values())
        pending: dict[str, int] = {}
        for experiment in left:
            for table, rows in experiment.pending.items():
                pending[table] = pending.get(table, 0) + rows
        status = {"pid": os.getpid(), "state": state, "error": self.error, "pending": pending,
                  "pending_experiments": [e.source_id for e in left], "last_pass": self.last_pass,
                  "command": self.command}
        try:
            fd, temp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".sync-status-")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(out.json_line(status) + "\n")
                os.replace(temp, path)
            except BaseException:
                os.unlink(temp)
                raise
        except OSError:
            pass  # its reader (the owner) may have removed the directory: nobody is left to tell

    def retrying(self, exc: BaseException) -> None:
        """Record a reachability error, saying so on stderr the first time."""
        first, self.error = self.error is None, self.describe(exc)
        self.write_status("following")
        if first:
            print(f"ml-persistence: {self.error}; retrying", file=sys.stderr, flush=True)

    def show_pass(self, report: Any) -> None:
        """Print a --follow pass that copied something (a JSON line, or one human line)."""
        changed = [e for e in report.experiments if e.action in ("created", "updated") or any(e.rows.values())]
        if not changed:
            return
        self.printed_last = True
        if self.args.json:
            print(out.json_line(report.to_dict()), flush=True)
        elif not self.args.quiet:
            print(time.strftime("%H:%M:%S  ") + "; ".join(
                f"{e.action} #{e.source_id} {out.text(e.name)} ({out.text(e.status)})"
                + (f": {_rows(e.rows)}" if any(e.rows.values()) else "") for e in changed), flush=True)

    def summary(self, report: Any) -> list[str]:
        """Return the human summary of one pass."""
        verb = "Would copy" if report.dry_run else "Copied"
        lines = [f"{verb} {out.printable(storage.display(self.args.source))} -> "
                 f"{out.printable(storage.display(self.args.target))}"
                 + (" (dry run: nothing written)" if report.dry_run else "")]
        unchanged = [f"#{e.source_id}" for e in report.experiments if e.action == "unchanged"]
        for e in report.experiments:
            if e.action != "unchanged":
                target = f" -> #{e.target_id}" if e.target_id is not None else ""
                what = e.reason if e.action == "skipped" else _rows(e.rows)
                lines.append(f"  {e.action:<9}  #{e.source_id}{target}  {out.text(e.name)} ({out.text(e.status)})"
                             + (f": {out.text(what)}" if what else ""))
        if unchanged:
            more = f" and {len(unchanged) - 20} more" if len(unchanged) > 20 else ""
            lines.append(f"  {'unchanged':<9}  {', '.join(unchanged[:20])}{more}")
        if not report.experiments:
            lines.append("  no experiment matches")
        total = sum(report.totals().values())
        rate = f" at {total / report.seconds:,.0f} rows/s" if total and report.seconds > 0 else ""
        lines.append(f"Rows: {_rows(report.totals()) or 'none'} "
                     f"({out.plural(total, 'row')} in {report.seconds:.2f} s{rate})")
        return lines

    def not_uploaded(self) -> str:
        """Return the stderr line saying what is not in DST yet and how to copy it later."""
        left = []
        for e in _unfinished(self.known.values()):
            why = ([] if e.ended else [out.text(e.status)]) + ([f"{_rows(e.pending)} rows pending"]
                                                                if any(e.pending.values()) else [])
            left.append(f"#{e.source_id} {out.text(e.name)} ({', '.join(why)})")
        if self.cut:
            left.append("the last pass was cut short")
        what = "; ".join(left) if self.last is not None else "nothing was uploaded"
        error = f" ({self.error})" if self.error else ""
        return (f"ml-persistence: not all uploaded to {out.printable(storage.display(self.args.target))}{error}: "
                f"{what}; upload it later with: {out.printable(self.command)}")

    def once(self) -> int:
        """Run a single pass and print its summary."""
        try:
            report = self.one_pass()
        except Exception as exc:
            self.fail(exc, "behind" if self.retryable(exc) else "failed")
        self.write_status("behind" if self.cut or _unfinished(report.experiments) else "done")
        if self.args.json:
            out.print_json(report.to_dict())
        elif not self.args.quiet:
            print("\n".join(self.summary(report)))
        return self.exit_code()

    def exit_code(self) -> int:
        return 130 if self.signal == signal.SIGINT else 0

    def follow(self) -> int:
        """Pass after pass until done or stopped; once the owner is gone, until its runs are copied or time is up."""
        failures = 0
        deadline: Optional[float] = None
        stops_when_done = not (self.args.all or self.args.exit_with_fd is not None)
        while self.signal is None:
            if deadline is None and self.owner_gone.is_set():
                deadline = time.monotonic() + self.args.final_timeout
                timer = threading.Timer(self.args.final_timeout, self.stop.set)  # cuts a long last pass short
                timer.daemon = True
                timer.start()
            try:
                report = self.one_pass()
            except Exception as exc:
                if not self.retryable(exc):
                    self.fail(exc, "failed")
                failures += 1
                self.retrying(exc)
                delay = min(LAST_RETRY, FIRST_RETRY * 2 ** (failures - 1))
                if deadline is not None and failures >= 2 and self.out_of_reach(exc):
                    break  # offline at exit: the owner is waiting, and the next `sync` uploads the rest
            else:
                if failures:
                    print(f"ml-persistence: {out.printable(storage.display(self.args.target))} is reachable again",
                          file=sys.stderr, flush=True)
                    failures = 0
                done = not self.cut and not _unfinished(report.experiments)
                finished = done and (stops_when_done or deadline is not None)
                if not finished:
                    self.write_status("following")  # before the pass is shown: a reader of both sees them agree
                self.show_pass(report)
                if finished:
                    break
                delay = self.args.interval
            if deadline is None:
                self.wake.wait(delay)
            elif self.stop.wait(max(0.0, min(delay, deadline - time.monotonic()))) or time.monotonic() >= deadline:
                break
        return self.finish(final=deadline is not None and self.signal is None)

    def finish(self, final: bool) -> int:
        """Write the last status, print the last report, and return the exit status."""
        behind = self.error is not None or self.last is None or self.cut or bool(_unfinished(self.known.values()))
        self.write_status("behind" if behind else "done")
        if self.signal is not None:
            reason = "interrupted" if self.signal == signal.SIGINT else "SIGTERM"
        elif final:
            reason = "the owner exited" + ("; out of time" if behind else "")
        else:
            reason = "every selected run has ended"
        if self.args.json:
            if self.last is not None and not self.printed_last:
                print(out.json_line(self.last.to_dict()), flush=True)
        elif not self.args.quiet:
            copied = _rows(self.copied)
            print(f"Stopped following ({reason}): {out.plural(sum(self.copied.values()), 'row')} copied in "
                  f"{self.passes} pass{'' if self.passes == 1 else 'es'}" + (f" ({copied})" if copied else ""))
        if final and behind:
            if not (self.args.owner_process and process_alive(self.args.owner_process)):
                print(self.not_uploaded(), file=sys.stderr)  # an owner still there says it once, itself
            return 1
        return self.exit_code()


def _yield_to_training() -> None:
    """Lower a background uploader's CPU priority: where cores are short, the trainer it serves goes first."""
    try:
        os.nice(10)
    except OSError:
        pass


def run(args: argparse.Namespace) -> int:
    """Copy SRC's selected experiments into DST once, or pass after pass with --follow."""
    follow = args.follow or args.exit_with_fd is not None
    if args.all and not follow:
        raise CLIError("--all only applies with --follow", USAGE)
    if args.dry_run and follow:
        raise CLIError("--dry-run writes nothing, so there is nothing to follow: drop --follow", USAGE)
    if args.exit_with_fd is not None:
        try:
            os.fstat(args.exit_with_fd)
        except OSError:
            raise CLIError(f"--exit-with-fd {args.exit_with_fd}: not an open file descriptor", USAGE) from None
    syncer = Syncer(args)
    syncer.catch_signals()
    if args.exit_with_fd is not None:
        syncer.watch_owner(args.exit_with_fd)
        _yield_to_training()
    try:
        return syncer.follow() if follow else syncer.once()
    finally:
        # An owner still there reads the status file and removes its directory itself; after an owner
        # that died nobody else would.
        if args.private_dir and not (args.owner_process and process_alive(args.owner_process)):
            shutil.rmtree(args.private_dir, ignore_errors=True)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the sync command to the parser (it takes SRC and DST, not --db)."""
    p = sub.add_parser("sync", help="copy experiments into another database, exactly once",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SRC", help="the database to copy from (a file or a postgresql:// URL)")
    p.add_argument("target", metavar="DST", help="the database to copy into (created if it does not exist)")
    p.add_argument("--experiment", type=arguments.row_id, action="append", metavar="ID",
                   help="only this experiment (SRC's id; repeatable)")
    p.add_argument("--since", type=since, metavar="DATE",
                   help="only experiments started at or after DATE: YYYY-MM-DD or 'YYYY-MM-DD HH:MM[:SS]' (local time)")
    p.add_argument("--tag", action="append", metavar="TAG", help="only experiments with this tag (repeatable: all of them)")
    p.add_argument("--follow", action="store_true", help="keep copying until every selected run has ended")
    p.add_argument("--all", action="store_true", help="with --follow: never stop, and pick up new runs too")
    p.add_argument("--interval", type=arguments.seconds, default=2.0, metavar="SECONDS",
                   help="with --follow: seconds between passes (default: 2)")
    p.add_argument("--dry-run", action="store_true", help="say what would be copied; write nothing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (see below)")
    p.add_argument("--quiet", action="store_true", help="print no progress or human summary (--json still prints), only errors")
    p.add_argument("--progress", action="store_true", help="show the progress display even if stderr is not a terminal")
    # For the automatic upload, which runs this command in the background:
    p.add_argument("--exit-with-fd", type=arguments.count, metavar="FD", help=argparse.SUPPRESS)
    p.add_argument("--status-file", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--owner-pid", type=arguments.positive, metavar="PID", help=argparse.SUPPRESS)
    p.add_argument("--final-timeout", type=arguments.seconds, default=10.0, metavar="SECONDS", help=argparse.SUPPRESS)
    p.add_argument("--private-dir", metavar="DIR", help=argparse.SUPPRESS)  # removed at exit, unless the owner lives
    p.add_argument("--owner-process", type=arguments.positive, metavar="PID", help=argparse.SUPPRESS)
    p.set_defaults(run=run)
