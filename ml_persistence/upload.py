"""Automatic upload: an `ml-persistence sync SRC DST --follow` process beside the trainer (or agent).

The uploader is a process of its own, started from this installation's ml_persistence (a ``-c``
bootstrap, never whatever sits in the working directory), in a session of its own. It holds the
read end of a pipe only its owner can write to: when the owner closes it, exits or dies (even by
SIGKILL), the pipe reads end-of-file and the uploader makes a final pass, then exits. Nothing in
the log path touches it: it reads what the writer committed to the local database. It keeps its
state in a 0600 JSON file in a fresh 0700 directory: {"pid", "state", "error", "pending",
"pending_experiments", "last_pass", "command"}.

A trainer starts one uploader per (database, target), at its first ``start_experiment`` (or
resume) with ``sync_to`` set; it selects the runs this process started (``--owner-pid``). At exit,
once the local writes are committed, the trainer closes the pipe and waits for the uploader at
most ``$ML_PERSISTENCE_SYNC_EXIT_TIMEOUT`` seconds (default 10); what is still not uploaded then
is named in one message on stderr, with the command that uploads it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterable, Optional, Union
from urllib.parse import parse_qsl, unquote, urlsplit

from . import lifeline, storage
from .errors import InvalidTypeError, InvalidValueError, MLPersistenceError

log = logging.getLogger("ml_persistence")

SYNC_TO_ENV = "ML_PERSISTENCE_SYNC_TO"
SYNC_EXIT_TIMEOUT_ENV = "ML_PERSISTENCE_SYNC_EXIT_TIMEOUT"
DEFAULT_SYNC_EXIT_TIMEOUT = 10.0
TERM_GRACE = 2.0  # seconds a late uploader has, after SIGTERM, to stop between chunks and write its state


class UploadStartError(MLPersistenceError):
    """The uploader process could not be started here."""


def exit_timeout() -> float:
    """Return the seconds an owner waits for its uploader's final pass ($ML_PERSISTENCE_SYNC_EXIT_TIMEOUT, default 10)."""
    try:
        return max(0.0, float(os.environ.get(SYNC_EXIT_TIMEOUT_ENV, DEFAULT_SYNC_EXIT_TIMEOUT)))
    except ValueError:
        return DEFAULT_SYNC_EXIT_TIMEOUT


def target_for(sync_to: Union[str, "os.PathLike[str]", None], source: str, *, environment: bool = True) -> Optional[str]:
    """Return the upload target ``sync_to`` names (None: $ML_PERSISTENCE_SYNC_TO), checked without connecting.

    Empty means no upload. Raise InvalidValueError for what cannot be a target: an in-memory or URI
    database, a missing directory, a URL whose driver is not installed, or ``source`` itself.
    """
    from_environment = sync_to is None and environment
    if from_environment:
        sync_to = os.environ.get(SYNC_TO_ENV, "")
    if sync_to is None:
        return None
    if not isinstance(sync_to, (str, os.PathLike)):
        raise InvalidTypeError(f"sync_to: expected a database path or a postgresql:// URL, got {sync_to!r:.60}")
    target = os.fspath(sync_to).strip()
    if not target:
        return None
    if "\x00" in target:
        raise InvalidValueError("sync_to: a database path or URL cannot contain NUL")
    if storage.is_url(target):
        parts = urlsplit(target)
        if not parts.netloc and not parts.path.strip("/") and not parts.query:
            raise InvalidValueError(f"sync_to: {storage.display(target)} names no server or database")
        if importlib.util.find_spec("psycopg") is None:
            raise InvalidValueError(
                f"sync_to: {storage.display(target)} is a PostgreSQL database, which needs psycopg: "
                "pip install 'ml_persistence[postgres]'"
            )
    else:
        if target == ":memory:" or target.startswith("file:"):
            raise InvalidValueError("sync_to: needs a database file path or a postgresql:// URL, not an in-memory or URI database")
        directory = os.path.dirname(os.path.abspath(target))
        if not os.path.isdir(directory):
            raise InvalidValueError(f"sync_to: cannot upload to {target}: directory {directory} does not exist")
        if os.path.isdir(target):
            raise InvalidValueError(f"sync_to: cannot upload to {target}: it is a directory")
    if storage.identity(target) == storage.identity(source):
        if from_environment:  # set for every job; this one already writes to the target itself
            return None
        raise InvalidValueError(f"sync_to: {storage.display(target)} is the database this process writes to")
    return target


def command(source: str, target: str) -> str:
    """Return the shell command that uploads what ``source`` holds to ``target`` (no password in it)."""
    return f"ml-persistence sync {shlex.quote(storage.identity(source))} {shlex.quote(storage.identity(target))}"


class Uploader:
    """Starts, watches and finishes one uploader process: ``ml-persistence sync SOURCE TARGET --follow --all``.

    ``owner_pid``: upload only the runs that process started (a trainer's own); None: every run
    (an agent). ``final_timeout``: what the owner waits for the final pass; the uploader's own
    deadline is later. Methods are called by the owner's threads under its own lock.
    """

    def __init__(self, source: str, target: str, *, owner_pid: Optional[int], final_timeout: float) -> None:
        self.source = source  # as named, to connect: a URL may carry a password, never put on a command line
        self.target = target
        self.owner_pid = owner_pid
        self.final_timeout = final_timeout
        self.experiments: set[int] = set()  # experiment ids the owner asked to upload, for the exit message
        self.starts = 0
        self._process: Optional[subprocess.Popen] = None
        self._lifeline: Optional[int] = None  # our end of the pipe the process watches
        self._directory: Optional[str] = None
        self._start_error: Optional[str] = None
        self._last: dict[str, Any] = {}  # the state file as last read

    def __repr__(self) -> str:
        return f"<Uploader {storage.display(self.source)} -> {storage.display(self.target)} pid={self.pid}>"

    @property
    def pid(self) -> Optional[int]:
        """The uploader process's pid while it runs (or until it is waited for)."""
        process = self._process
        return process.pid if process is not None else None

    @property
    def running(self) -> bool:
        """True while the uploader process has not exited."""
        process = self._process
        return process is not None and process.poll() is None

    @property
    def status_file(self) -> Optional[str]:
        """Where the uploader keeps its state."""
        return os.path.join(self._directory, "status.json") if self._directory is not None else None

    def ensure(self) -> bool:
        """Start the uploader unless it is running; return True if this call started it.

        Raise UploadStartError if it cannot be started (remembered for the exit message).
        """
        if self.running:
            return False
        if self._process is not None:
            self._last = self.state() or self._last
            self._release(remove=True)
        try:
            self._start()
        except UploadStartError as exc:
            self._start_error = str(exc)
            raise
        self._start_error = None
        return True

    def _start(self) -> None:
        if not sys.executable or getattr(sys, "frozen", False):
            raise UploadStartError("no Python interpreter to start an uploader with (a frozen application)")

        def arguments(fd: int, directory: str) -> list[str]:
            args = [
                *lifeline.program("ml_persistence.cli"), "sync",
                storage.identity(self.source), storage.identity(self.target), "--follow", "--all",
                "--exit-with-fd", str(fd), "--status-file", os.path.join(directory, "status.json"),
                "--private-dir", directory, "--owner-process", str(os.getpid()),
                # Its own final deadline comes after the owner's: an owner still there stops it (SIGTERM, no
                # message of its own) and says what is left; after an owner that died it stops by itself.
                "--final-timeout", f"{self.final_timeout + TERM_GRACE + 1:g}", "--quiet",
            ]
            return args + (["--owner-pid", str(self.owner_pid)] if self.owner_pid is not None else [])

        try:
            # stdout to /dev/null: its summary is for people; its state is in the status file.
            child = lifeline.spawn(arguments, self._environment, "ml_persistence-upload-")
        except OSError as exc:
            raise UploadStartError(f"cannot start the uploader ({exc})") from exc
        self._process, self._lifeline, self._directory = child.process, child.lifeline, child.directory
        self.starts += 1

    def _environment(self, directory: str) -> dict[str, str]:
        """Return the uploader's environment: passwords from the URLs go here, never on its command line."""
        env = dict(os.environ)
        for name in (SYNC_TO_ENV, "ML_PERSISTENCE_AGENT", "ML_PERSISTENCE_WRITER"):
            env.pop(name, None)
        urls = [db for db in (self.source, self.target) if storage.is_url(db)]
        secrets = {db: _password(db) or os.environ.get("PGPASSWORD") for db in urls}
        passwords = {p for p in secrets.values() if p is not None}
        if len(passwords) == 1 and all(p is not None for p in secrets.values()):
            env["PGPASSWORD"] = passwords.pop()
        elif passwords:  # different passwords (or one side relying on the user's own): a passfile names each
            env.pop("PGPASSWORD", None)
            env["PGPASSFILE"] = _passfile(directory, secrets, os.environ.get("PGPASSFILE"))
        return env

    def state(self) -> dict[str, Any]:
        """Return the uploader's state file as last written ({} before its first write)."""
        path = self.status_file
        if path is None:
            return dict(self._last)
        try:
            with open(path) as f:
                found = json.load(f)
        except (OSError, ValueError):
            return dict(self._last)
        if isinstance(found, dict):
            self._last = found
        return dict(self._last)

    def status(self) -> dict[str, Any]:
        """Return {"target", "pid", "state", "pending", "error"} for a status() entry."""
        found = self.state()
        state = found.get("state")
        if self._start_error is not None:
            state, error = "failed", self._start_error
        else:
            error = found.get("error")
            if state is None:
                state = "starting" if self.running else None
        return {
            "target": storage.identity(self.target),
            "pid": self.pid if self.running else None,
            "state": state,
            "pending": sum(_rows(found.get("pending"))),
            "error": error,
        }

    def finish(self, timeout: float, shown: Optional[float] = None) -> Optional[str]:
        """Close the lifeline, wait at most ``timeout`` s for the final pass; return what was not
        uploaded as one message (None when everything was), with the command that uploads it.

        An uploader still running then is sent SIGTERM (it stops between chunks: what it
        committed stays) and given TERM_GRACE seconds to say where it stopped.
        """
        process = self._process
        start_error = self._start_error
        if process is None:
            self._release(remove=True)
            return self._message(None, start_error) if start_error is not None and self.experiments else None
        if self._lifeline is not None:
            os.close(self._lifeline)  # end-of-file: the uploader makes its final pass
            self._lifeline = None
        late = False
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            late = True
            try:
                process.send_signal(signal.SIGTERM)
                process.wait(TERM_GRACE)
            except subprocess.TimeoutExpired:  # stuck in one statement: what it committed stays, once
                process.kill()
                process.wait()
            except OSError:
                pass
        found = self.state()
        code = process.poll()
        self._release(remove=True)
        if found.get("state") == "done":
            return None
        if found.get("error"):  # the database could not be reached, or refused
            reason = str(found["error"])
        elif late:
            reason = f"still uploading after {timeout if shown is None else shown:g} s (${SYNC_EXIT_TIMEOUT_ENV})"
        elif found:
            reason = f"the uploader stopped in state {found.get('state')!r}"
        else:
            reason = f"the uploader exited with status {code} before its first pass"
        return self._message(found, reason)

    def _message(self, found: Optional[dict[str, Any]], reason: str) -> str:
        found = found or {}
        listed = found.get("pending_experiments")
        ids = sorted({int(i) for i in listed}) if isinstance(listed, list) and listed else sorted(self.experiments)
        rows = found.get("pending")
        which = f"experiment(s) {', '.join(map(str, ids))}" if ids else (
            "this process's experiments" if self.owner_pid is not None else "its experiments"
        )
        count = sum(_rows(rows))
        what = f"{count} rows of {which} were not uploaded" if count else f"{which} were not fully uploaded"
        password = " (the password from $PGPASSWORD or ~/.pgpass)" if any(
            storage.is_url(db) and _password(db) is not None for db in (self.source, self.target)
        ) else ""
        return (
            f"ml_persistence: {what} to {storage.identity(self.target)} "
            f"({storage.redact(reason)}); upload them with: {command(self.source, self.target)}{password}"
        )

    def forget(self) -> None:
        """In a forked child: drop this copy of the lifeline, so the parent's exit still ends the uploader."""
        if self._lifeline is not None:
            os.close(self._lifeline)
        self._lifeline = None
        self._process = None
        self._directory = None
        self.experiments = set()

    def _release(self, remove: bool = False) -> None:
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self._directory is not None and remove:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
        if remove:
            self._process = None


def _rows(pending: Any) -> Iterable[int]:
    if not isinstance(pending, dict):
        return ()
    return (int(n) for n in pending.values() if isinstance(n, (int, float)))


def _password(url: str) -> Optional[str]:
    """Return the password a PostgreSQL URL carries (in its authority or as ?password=), or None."""
    parts = urlsplit(url)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() == "password":
            return value
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        return unquote(userinfo.partition(":")[2])
    return None


def _passfile(directory: str, secrets: dict[str, Optional[str]], existing: Optional[str]) -> str:
    """Write a libpq password file (0600) naming each URL's password, then the user's own entries."""
    lines = []
    for url, password in secrets.items():
        if password is not None:
            lines.extend(":".join(_pass_escape(f) for f in (*entry, password)) for entry in _endpoints(url))
    path = existing or os.path.join(os.path.expanduser("~"), ".pgpass")
    try:
        with open(path) as f:
            lines.extend(line.rstrip("\n") for line in f)
    except OSError:
        pass
    passfile = os.path.join(directory, "pgpass")
    with open(os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write("\n".join(lines) + "\n")
    return passfile


def _endpoints(url: str) -> list[tuple[str, str, str, str]]:
    """Return the (host, port, database, user) a PostgreSQL URL connects to, as a password file matches them."""
    parts = urlsplit(url)
    params = {k.lower(): v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user = params.get("user") or unquote(userinfo.partition(":")[0]) or os.environ.get("PGUSER") or "*"
    database = params.get("dbname") or unquote(parts.path.lstrip("/")) or user
    found = []
    for item in (params["host"].split(",") if params.get("host") else hostlist.split(",")):
        host, port = item, ""
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest.lstrip(":")
        elif ":" in item:
            host, _, port = item.rpartition(":")
        found.append((unquote(host) or "*", params.get("port") or port or "*", database, user))
    return found


def _pass_escape(field: str) -> str:
    return field.replace("\\", "\\\\").replace(":", "\\:")


# -- the trainer's uploaders: one per (database, target) per process ---------------------------

_uploaders: dict[tuple[str, str], Uploader] = {}
_holders: dict[tuple[str, str], set[int]] = {}  # id()s of the open trackers uploading through each
_lock = threading.Lock()


def _key(source: str, target: str) -> tuple[str, str]:
    return storage.identity(source), storage.identity(target)


def start(source: str, target: str, experiment_id: int, holder: object) -> Optional[Uploader]:
    """Make sure this process's uploader of ``source`` to ``target`` runs, uploading ``experiment_id``.

    Called by start_experiment/resume_experiment, never by a log call. A failure to start is
    logged once and named again at exit; training goes on.
    """
    key = _key(source, target)
    with _lock:
        uploader = _uploaders.get(key)
        if uploader is None:
            uploader = _uploaders[key] = Uploader(source, target, owner_pid=os.getpid(), final_timeout=exit_timeout())
        uploader.experiments.add(experiment_id)
        _holders.setdefault(key, set()).add(id(holder))
        try:
            uploader.ensure()
        except UploadStartError as exc:
            if uploader.starts == 0:
                log.warning("ml_persistence: %s; %s", exc, "runs stay in the local database only")
        return uploader


def status(source: str, target: str) -> Optional[dict[str, Any]]:
    """Return the upload entry of a tracker's status(), or None before its uploader started."""
    with _lock:
        uploader = _uploaders.get(_key(source, target))
    return uploader.status() if uploader is not None else None


def release(source: str, target: str, holder: object, busy: bool) -> None:
    """A tracker closed: finish the uploader once no open tracker uses it, unless ``busy`` (this
    process still has a run going on that database, which the exit hook ends and uploads)."""
    key = _key(source, target)
    with _lock:
        holders = _holders.get(key)
        if holders is None:
            return
        holders.discard(id(holder))
        if holders or busy:
            return
        uploader = _uploaders.pop(key, None)
        del _holders[key]
    if uploader is not None:
        _report(uploader.finish(exit_timeout()))


def finish_all(timeout: Optional[float] = None) -> None:
    """Finish every uploader of this process (at exit, after the local writes are committed).

    Each is waited for at most ``timeout`` s ($ML_PERSISTENCE_SYNC_EXIT_TIMEOUT); the lifelines
    are all closed first, so the final passes run side by side.
    """
    with _lock:
        uploaders = list(_uploaders.values())
        _uploaders.clear()
        _holders.clear()
    if not uploaders:
        return
    limit = exit_timeout() if timeout is None else timeout
    for uploader in uploaders:
        if uploader._lifeline is not None:
            os.close(uploader._lifeline)
            uploader._lifeline = None
    deadline = time.monotonic() + limit
    for uploader in uploaders:
        _report(uploader.finish(max(0.0, deadline - time.monotonic()), shown=limit))


def _report(message: Optional[str]) -> None:
    if message is not None:
        try:
            print(message, file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass


def _forget_after_fork() -> None:
    """In a forked child: the parent's uploaders are not ours; a run started here gets its own."""
    global _lock
    _lock = threading.Lock()
    for uploader in _uploaders.values():
        uploader.forget()
    _uploaders.clear()
    _holders.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
