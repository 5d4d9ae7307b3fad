"""The ``ml-persistence-agent`` command line."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import stat
import sys
import threading
import time
from typing import Optional, Sequence

import anyio

from ml_persistence import address as addr
from ml_persistence import storage, upload
from ml_persistence.backend import default_db_path
from ml_persistence.errors import MLPersistenceError
from ml_persistence.protocol import is_loopback

from .server import Agent

log = logging.getLogger("ml_persistence.agent")


def parser() -> argparse.ArgumentParser:
    """Return the argument parser."""
    ap = argparse.ArgumentParser(
        prog="ml-persistence-agent",
        description="Own an ml_persistence database and write what trainer processes send over sockets.",
    )
    ap.add_argument("--db", default=None, help="database file or postgresql:// URL (default: $ML_PERSISTENCE_DB or ml_experiments.db)")
    ap.add_argument(
        "--listen",
        action="append",
        metavar="URL",
        help="unix:///path/to.sock or tcp://HOST:PORT; repeatable "
        f"(default: {addr.default_address()})",
    )
    ap.add_argument(
        "--token-file",
        help="file holding the token TCP clients must present: yours alone (mode 0600), at least 22 characters "
        "(32 if hex); required off loopback. Without it, a TCP agent makes a token and writes it where this "
        "user's clients on this machine find it",
    )
    ap.add_argument(
        "--allow-uid",
        type=int,
        action="append",
        default=[],
        metavar="UID",
        help="also admit Unix socket peers running as UID (repeatable); others than the agent's user are refused",
    )
    ap.add_argument("--max-frame-mb", type=int, default=64, help="largest frame accepted from a client")
    ap.add_argument("--hello-timeout", type=float, default=10.0, help="seconds a new connection has to say Hello")
    ap.add_argument(
        "--frame-timeout", type=float, default=30.0, help="seconds a client has to finish a frame it started"
    )
    ap.add_argument(
        "--max-connections", type=int, default=1024, help="authenticated connections served at once; more are closed"
    )
    ap.add_argument(
        "--max-unread-mb", type=int, default=16, help="answers a connection may leave unread; past this it is closed"
    )
    ap.add_argument(
        "--max-partial-mb",
        type=int,
        default=128,
        help="unfinished frames held across all connections; the connection that would pass this is closed",
    )
    ap.add_argument(
        "--stop-timeout",
        type=float,
        default=30.0,
        help="seconds to write what clients sent at shutdown; the rest stays unacknowledged and is replayed",
    )
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    ap.add_argument(
        "--status-file",
        metavar="PATH",
        help="keep the writer's state (the condition holding writes back, busy retries) in this JSON file: "
        "how a trainer's private writer process tells its trainer's status()",
    )
    ap.add_argument(
        "--private-dir",
        metavar="DIR",
        help="a directory made for this agent alone (its socket, its status file): removed when it exits",
    )
    ap.add_argument(
        "--exit-with-fd",
        type=int,
        metavar="FD",
        help="stop (writing what clients sent) when this inherited descriptor reads end-of-file: how a "
        "trainer's private writer process ends with its trainer",
    )
    ap.add_argument(
        "--sync-to",
        metavar="URL",
        help="upload everything this agent writes to this database (a postgresql:// URL or a file), a few seconds "
        "behind, by an `ml-persistence sync --follow` process the agent keeps running; a password in the URL "
        "reaches it through its environment",
    )
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the agent until SIGTERM or SIGINT; return the exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s ml-persistence-agent %(levelname)s %(message)s"
    )
    db = args.db or default_db_path()
    try:
        addresses = [addr.parse(u, listen=True) for u in (args.listen or ["default"])]
        token = addr.read_token(args.token_file)
        generated = token is None and any(a.kind == "tcp" for a in addresses)
        if generated:
            for address in addresses:
                if address.kind == "tcp" and not is_loopback(address.host):
                    raise PermissionError(f"listening on {address} (not loopback) requires a token: pass --token-file")
            token = addr.new_token()
        if not storage.is_url(db):
            _check_database_path(db)
        target = upload.target_for(args.sync_to, db, environment=False) if args.sync_to is not None else None
        agent = Agent(
            storage.Database(db),
            addresses,
            token=token,
            max_frame=args.max_frame_mb << 20,
            hello_timeout=args.hello_timeout,
            frame_timeout=args.frame_timeout,
            max_connections=args.max_connections,
            max_unread_bytes=args.max_unread_mb << 20,
            max_partial_bytes=args.max_partial_mb << 20,
            stop_timeout=args.stop_timeout,
            allowed_uids=frozenset(args.allow_uid),
            token_generated=generated,
        )
    except (MLPersistenceError, OSError) as exc:
        return _startup_failed(exc, db)
    # Up to a million queued events are live container objects; the default collector thresholds
    # would spend about a quarter of the agent's CPU re-scanning them (bench_agent.py).
    gc.set_threshold(100_000, 50, 100)
    _raise_open_file_limit()
    if hasattr(signal, "SIGXFSZ"):  # past a file-size limit a write fails with EFBIG, waited out like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if args.exit_with_fd is not None:
        _stop_at_end_of_file(args.exit_with_fd)
    published: list[tuple[str, int]] = []  # (IP, port) of each token file this agent wrote
    ready: list[bool] = []
    upload_timeout = min(args.stop_timeout, upload.exit_timeout())
    uploading = Uploading(agent.database.db, target, upload_timeout) if target is not None else None
    try:
        anyio.run(
            _serve, agent, token if generated else None, published, ready, args.status_file, uploading, backend="asyncio"
        )
    except Exception as exc:  # noqa: BLE001 - reported in one line, whatever it is
        cause = _sole_cause(exc)
        if not isinstance(cause, (MLPersistenceError, OSError, *storage.database_errors())):
            raise
        if not ready:
            return _startup_failed(cause, db)
        print(f"ml-persistence-agent: {_describe(cause, db)}", file=sys.stderr)
        return 1
    finally:
        if uploading is not None:  # the writes are committed (or given up on): the uploader's final pass
            uploading.finish(upload_timeout)
        for host, port in published:
            addr.unpublish_token(host, port, token)  # type: ignore[arg-type]
        if args.private_dir is not None:
            _remove_private_dir(args.private_dir, args.status_file)
    return 0


def _remove_private_dir(directory: str, status_file: Optional[str]) -> None:
    """Remove the agent's own files from ``directory``, then the directory if that leaves it empty."""
    for path in (status_file, f"{status_file}.tmp" if status_file else None):
        if path is not None and os.path.dirname(os.path.abspath(path)) == os.path.abspath(directory):
            try:
                os.unlink(path)
            except OSError:
                pass
    try:
        os.rmdir(directory)  # the socket is gone already; anything else someone put there stays
    except OSError:
        pass


def _stop_at_end_of_file(fd: int) -> None:
    """Send this process SIGTERM (the draining stop) once ``fd`` reads end-of-file: its writer has exited."""

    def watch() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-fd", daemon=True).start()


def _check_database_path(db: str) -> None:
    """Refuse a database path that cannot work before anything starts (its directory must exist)."""
    directory = os.path.dirname(os.path.abspath(db))
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        raise FileNotFoundError(f"cannot open database {db}: directory {directory} does not exist") from None
    except PermissionError:
        raise PermissionError(f"cannot open database {db}: permission denied (on {directory})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"cannot open database {db}: {directory} is not a directory")
    if os.path.isdir(db):
        raise IsADirectoryError(f"cannot open database {db}: it is a directory")


def _startup_failed(exc: BaseException, db: str) -> int:
    """Print why the agent cannot start, in one line; return the exit status 2."""
    print(f"ml-persistence-agent: {_describe(exc, db)}", file=sys.stderr)
    return 2


def _describe(exc: BaseException, db: str) -> str:
    text = storage.redact(str(exc).replace("\n", " "))
    shown = storage.display(db)
    if isinstance(exc, storage.database_errors()) and storage.is_url(db):
        return text if shown in text else f"cannot open database {shown}: {text}"
    if isinstance(exc, storage.database_errors()):
        if "not a database" in text:
            return f"{db} is not an SQLite database"
        if "unable to open" in text or "readonly" in text:
            target = db if os.path.exists(db) else os.path.dirname(os.path.abspath(db))
            if not os.access(target, os.R_OK | os.W_OK):
                return f"cannot open database {db}: permission denied"
        return f"cannot open database {db}: {text}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return text or type(exc).__name__


def _sole_cause(exc: BaseException) -> BaseException:
    """Return the one exception inside (nested) exception groups of one, or ``exc`` itself."""
    while isinstance(getattr(exc, "exceptions", None), tuple) and len(exc.exceptions) == 1:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


def _raise_open_file_limit() -> None:
    """Allow as many connections as the hard limit does (the soft default is often 1024)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


async def _serve(
    agent: Agent,
    generated: Optional[str],
    published: list[tuple[str, int]],
    started: list[bool],
    status_file: Optional[str],
    uploading: Optional["Uploading"] = None,
) -> None:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_stop_on_signal, agent, tasks.cancel_scope)
        if status_file is not None:
            tasks.start_soon(StatusFile(agent, status_file).keep)

        def ready(urls: list[str]) -> None:
            # Runs before the first accept: a client that finds the token file finds this agent's token.
            if generated is not None:
                for host, port in agent.bound_tcp:
                    if (host, port) not in published:
                        path = addr.publish_token(host, port, generated)
                        published.append((host, port))
                        log.info("token for %s in %s (this user's clients read it there)", addr.Address("tcp", host=host, port=port), path)
            if uploading is not None:  # the database exists now: the uploader finds its source
                uploading.start()
            print(f"ml-persistence-agent: ready, listening on {' '.join(urls)} (database {agent.db_path})", flush=True)
            started.append(True)

        await agent.run(ready)
        tasks.cancel_scope.cancel()


class Uploading:
    """The agent's uploader (--sync-to): started once the database is ready, started again when it dies."""

    FIRST_BACKOFF = 1.0
    MAX_BACKOFF = 60.0
    STEADY = 60.0  # seconds an uploader must have run for its next death to start from the first backoff again

    def __init__(self, db: str, target: str, final_timeout: float) -> None:
        # Every run, not one owner's. At shutdown a run still training (its trainer outlives this agent) is
        # copied as far as committed; the next agent's uploader goes on with it.
        self.uploader = upload.Uploader(db, target, owner_pid=None, final_timeout=final_timeout)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # ensure() and finish() never overlap

    def start(self) -> None:
        """Start the uploader and the thread that keeps it running (event loop thread)."""
        threading.Thread(target=self._keep, name="uploader", daemon=True).start()

    def _keep(self) -> None:
        backoff = self.FIRST_BACKOFF
        shown = storage.identity(self.uploader.target)
        while True:
            with self._lock:
                if self._stop.is_set():
                    return
                started = time.monotonic()
                try:
                    self.uploader.ensure()
                    process = self.uploader._process
                    log.info("uploading to %s (uploader pid %s)", shown, self.uploader.pid)
                except upload.UploadStartError as exc:
                    process = None
                    log.error("%s", exc)
            code = process.wait() if process is not None else None
            if self._stop.is_set():
                return
            if time.monotonic() - started >= self.STEADY:
                backoff = self.FIRST_BACKOFF
            error = self.uploader.state().get("error")
            log.warning(
                "the uploader to %s exited (status %s%s); starting it again in %.0f s",
                shown, code, f": {storage.redact(error)}" if error else "", backoff,
            )
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.MAX_BACKOFF)

    def finish(self, timeout: float) -> None:
        """Stop restarting it; give it ``timeout`` s for its final pass; log what it did not upload."""
        self._stop.set()
        with self._lock:
            message = self.uploader.finish(timeout)
        if message is not None:
            log.warning("%s", message.removeprefix("ml_persistence: "))


STATUS_EVERY = 0.2  # seconds between looks at the writer's state for --status-file


class StatusFile(logging.Handler):
    """Keeps the writer's condition and busy retries in a JSON file (mode 0600, replaced whole).

    Rewritten whenever they change: looked at every STATUS_EVERY seconds, and at once when the
    writer logs, so the file says why writing stalled before the warning reaches anyone's screen.
    """

    def __init__(self, agent: Agent, path: str) -> None:
        super().__init__()
        self.agent = agent
        self.path = path
        self._shown: Optional[str] = None
        self._write_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        self.publish()

    def publish(self) -> None:
        """Write the file if the writer's state changed since it was last written (any thread)."""
        writer = getattr(self.agent, "_writer", None)
        text = json.dumps({
            "condition": writer.condition if writer is not None else None,
            "busy_retries": writer.busy_retries if writer is not None else 0,
        })
        with self._write_lock:
            if text == self._shown:
                return
            temporary = f"{self.path}.tmp"
            try:
                with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                    f.write(text)
                os.replace(temporary, self.path)
            except OSError:
                return  # nobody can read it now (its directory is gone): the writing itself goes on
            self._shown = text

    async def keep(self) -> None:
        logging.getLogger("ml_persistence").addHandler(self)
        while True:
            self.publish()
            await anyio.sleep(STATUS_EVERY)


async def _stop_on_signal(agent: Agent, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            agent.stop()
            return
