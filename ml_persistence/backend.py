"""One Backend per database file per process: the buffer, its writer, and a read connection."""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Optional, Union

from . import storage
from .buffer import EventBuffer
from .errors import (
    ClosedError,
    EventsDroppedError,
    EventsSavedError,
    FlushTimeoutError,
    InvalidValueError,
    WriterError,
)
from .writer import Writer, WriterOptions


DEFAULT_DB = "ml_experiments.db"
_backends: dict[str, "Backend"] = {}
_registry_lock = threading.Lock()
_abandoned: list[Any] = []  # a forked child keeps its parent's objects alive and never touches them


def default_db_path() -> str:
    """Return the database used when none is given (or 'ml_experiments.db' is): $ML_PERSISTENCE_DB or ./ml_experiments.db."""
    return os.environ.get("ML_PERSISTENCE_DB") or DEFAULT_DB


def backend_for(
    db_path: Optional[str | os.PathLike[str]],
    agent: Union[str, bool, None] = None,
    token: Optional[str] = None,
) -> Any:
    """Return this process's shared backend; cheap, starts no thread.

    With ``agent`` (a URL, or True for the default socket), or $ML_PERSISTENCE_AGENT when
    ``agent`` is None, events go to that agent and ``db_path`` is the agent's business; with
    ``agent=False``, or neither, they go straight into ``db_path``.
    """
    if agent is None:
        agent = os.environ.get("ML_PERSISTENCE_AGENT") or False
    if agent is not False:
        return _agent_backend("default" if agent is True else str(agent), token)
    path = os.fspath(db_path) if db_path is not None else default_db_path()
    if path == DEFAULT_DB:
        # The seed's examples name the default file outright; $ML_PERSISTENCE_DB moves them all.
        path = default_db_path()
    if path == ":memory:" or path.startswith("file:"):
        raise InvalidValueError("ml_persistence needs a database file path, not an in-memory or URI database")
    storage.engine(path)  # a PostgreSQL URL without its driver installed fails here, at the user's call
    from . import lifecycle

    lifecycle.install()  # cheap once done; signal handlers need the main thread, so keep trying
    key = storage.identity(path)
    backend = _backends.get(key)
    if backend is None:
        with _registry_lock:
            backend = _backends.get(key)
            if backend is None:
                backend = _backends[key] = Backend(path if storage.is_url(path) else key)
    return backend


def _agent_backend(url: str, token: Optional[str]) -> Any:
    from . import lifecycle
    from .address import parse
    from .remote import AgentBackend

    lifecycle.install()
    address = parse(url)
    key = f"agent:{address}"
    backend = _backends.get(key)
    if backend is None:
        with _registry_lock:
            backend = _backends.get(key)
            if backend is None:
                token = token if token is not None else os.environ.get("ML_PERSISTENCE_TOKEN") or None
                backend = _backends[key] = AgentBackend(address, token)
    return backend


def configure(
    db_path: Optional[str | os.PathLike[str]] = None, *, agent: Union[str, bool, None] = None, **options: Any
) -> WriterOptions:
    """Change the writer (or agent sender) settings: batch_size, flush_interval, max_queue, spool_dir, ....

    Takes effect for the queue bound at once and for the writer when it next starts.
    """
    backend = backend_for(db_path, agent)
    backend.options = dataclasses.replace(backend.options, **options)
    backend.buffer.max_events = backend.options.max_queue
    backend.buffer.wake_threshold = backend.options.wake_threshold
    backend.buffer.spool.directory = backend.options.spool_dir
    backend.buffer.spool.max_bytes = backend.options.max_spool_mb << 20
    return backend.options


def all_backends() -> list["Backend"]:
    """Return every live backend of this process."""
    return list(_backends.values())


def shutdown(timeout: Optional[float] = None) -> None:
    """Flush and close every backend of this process (ml_persistence does this at exit)."""
    errors = []
    for backend in all_backends():
        try:
            backend.close(timeout)
        except WriterError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def _quiesce_before_fork() -> None:
    """Hold every backend's locks across fork(), so the child inherits none of them mid-use."""
    for backend in list(_backends.values()):
        backend._lock.acquire()
        writer = getattr(backend, "_writer", None)
        gate = writer.gate if writer is not None else None
        if gate is not None:
            gate.acquire()
        backend._held_for_fork = gate


def _resume_after_fork_in_parent() -> None:
    for backend in list(_backends.values()):
        gate = backend._held_for_fork
        if gate is not None:
            gate.release()
        backend._held_for_fork = None
        backend._lock.release()


def _forget_after_fork() -> None:
    """In a forked child: drop the parent's backends without touching their threads or connections."""
    global _registry_lock
    _abandoned.extend(_backends.values())
    for backend in _backends.values():
        backend._reset()
    _registry_lock = threading.Lock()


class Backend:
    """The process-wide hub for one database; every facade object on that database shares it."""

    def __init__(self, db: str, options: Optional[WriterOptions] = None) -> None:
        self.db = db  # as named, to connect (a URL may carry a password: never shown)
        self.path = storage.display(db)
        self.engine = storage.engine(db)
        self.options = options or WriterOptions()
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        """Start from no writer, no reader and an empty queue (also a forked child's first step)."""
        self.running: dict[int, int] = {}  # experiments this process started and has not ended: id -> pid
        self._lock = threading.RLock()
        self._writer: Optional[Writer] = None
        self._reader: Any = None
        self._reported = 0
        self._retired = {"written": 0, "rejected": 0, "lost": 0, "saved": 0, "recovered": 0}
        self._recovery_files: list[str] = []  # recovery files earlier writers saved
        self._last_failure: Optional[BaseException] = None  # the last retired writer's first failure
        self._held_for_fork: Optional[threading.Lock] = None
        self.buffer = EventBuffer(
            self.options.max_queue, self.options.wake_threshold, self._kick, self.options.new_spool()
        )

    def __repr__(self) -> str:
        return f"<Backend {self.path!r} {self.counters()}>"

    def counters(self) -> str:
        """Return the status counters as 'name=value' text, for reprs."""
        s = self.status()
        return " ".join(f"{k}={s[k]}" for k in ("queued", "written", "spilled", "dropped", "rejected", "lost"))

    # -- the write path ------------------------------------------------------------------------

    def append(self, payload: bytes) -> None:
        """Queue an encoded event; never blocks (user thread)."""
        if self.closed:
            raise ClosedError(f"ml_persistence backend for {self.path!r} is closed")
        self.buffer.append(payload)

    def request(self, payload: bytes, timeout: Optional[float] = None) -> Any:
        """Queue an id-returning event and wait for its row id."""
        if self.closed:
            raise ClosedError(f"ml_persistence backend for {self.path!r} is closed")
        future = self.buffer.request(payload)
        try:
            return future.result(timeout)
        except TimeoutError:
            raise FlushTimeoutError(f"no answer from the writer within {timeout} s") from None

    def flush(self, timeout: Optional[float] = None) -> None:
        """Wait until everything appended before this call is committed; raise on losses."""
        self.wait_committed(timeout)
        self._raise_losses()

    def wait_committed(self, timeout: Optional[float] = None) -> None:
        """Wait until everything appended before this call is committed or given up on."""
        if self.closed:
            raise ClosedError(f"ml_persistence backend for {self.path!r} is closed")
        if self._writer is None and not len(self.buffer):
            return
        barrier = self.buffer.barrier()
        if not barrier.wait(timeout):
            raise FlushTimeoutError(
                f"flush did not finish within {timeout} s ({len(self.buffer)} events still queued)"
            )
        if barrier.error is not None:
            raise barrier.error

    def close(self, timeout: Optional[float] = None, final: bool = False) -> None:
        """Commit what is queued, stop the writer and close connections (idempotent).

        The backend stays usable (a later call starts a new writer) unless ``final``, which is
        how the exit hook closes it.
        """
        with self._lock:
            if self.closed:
                return
            self.closed = final
            writer = self._writer
            if writer is not None:
                writer.stop(timeout if timeout is not None else 3600.0)
                self._retire(writer)
                self._writer = None
                self.buffer.idle = True  # the next event starts a new writer
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        self._raise_losses()

    @property
    def writer_alive(self) -> bool:
        """True while a writer thread is taking events."""
        writer = self._writer
        return writer is not None and not writer.done and writer.alive

    def _kick(self) -> None:
        writer = self._writer
        if writer is None or writer.done:
            self._start_writer()
        else:
            writer.wake()

    def _start_writer(self) -> None:
        with self._lock:
            writer = self._writer
            if writer is not None and not writer.done:
                writer.wake()
                return
            if self.closed:
                return
            if writer is not None:
                self._retire(writer)
            from . import lifecycle

            lifecycle.install()
            store = self.engine.store_for(self.db, self.options.busy_timeout_ms)
            writer = Writer(store, self.buffer, self.options, db=self.db)
            try:
                writer.start()
            except RuntimeError:
                return  # the interpreter is shutting down (3.12+ starts no threads): the exit hook copes
            self._writer = writer
            self.buffer.idle = False

    def _retire(self, writer: Writer) -> None:
        for key in self._retired:
            self._retired[key] += getattr(writer, key)
        self._recovery_files.extend(writer.recovery_files)
        if writer.failure is not None:
            self._last_failure = writer.failure

    def end_now(self, events: list[Any], timeout: float) -> None:
        """End experiments without the writer thread: for interpreter exit, when no thread may start."""
        self.engine.end_experiments_now(self.db, events, timeout)

    # -- losses and status ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Return counters: queued, spooled, spilled, written, dropped, rejected, lost, saved, recovered,
        busy_retries, failure; where the spool goes (spool_dir); recovery_files saved; and the
        condition that holds writes back, if any ({"reason", "since", "retries"}, else None)."""
        writer = self._writer
        counts = dict(self._retired)
        if writer is not None:
            for key in counts:
                counts[key] += getattr(writer, key)
        condition = writer.condition if writer is not None else None
        return {
            "path": self.path,
            "mode": "embedded",
            "queued": len(self.buffer),
            "spooled": len(self.buffer.spool),
            "spilled": self.buffer.spilled,
            "spool_dir": self.buffer.spool.where(),
            "dropped": self.buffer.dropped,
            "writer_alive": bool(writer and writer.alive),
            "busy_retries": writer.busy_retries if writer else 0,
            "condition": dict(condition) if condition is not None else None,
            "failure": repr(writer.failure) if writer and writer.failure else None,
            "recovery_files": self._recovery_files + (writer.recovery_files if writer is not None else []),
            **counts,
        }

    def _raise_losses(self) -> None:
        s = self.status()
        losses = s["dropped"] + s["rejected"] + s["lost"] + s["saved"]
        if losses <= self._reported:
            return
        self._reported = losses
        writer = self._writer
        message = (
            f"{s['dropped']} events dropped (spool full), {s['rejected']} refused by the database, "
            f"{s['lost']} unwritten at a close deadline"
        )
        if s["saved"] and not (s["dropped"] or s["rejected"] or s["lost"]):
            cause = writer.failure if writer is not None else self._last_failure
            message = f"{s['saved']} events unwritten" + (f" ({cause})" if cause else "")
        if s["saved"]:
            from . import recovery

            files = s["recovery_files"]
            message += (
                f"; saved to {', '.join(files)}. Store them with: "
                + " && ".join(recovery.command(f, self.db) for f in files)
                + " (the next writer on this database also does)"
            )
        if s["dropped"]:
            raise EventsDroppedError(message)
        if s["saved"]:
            raise EventsSavedError(message, tuple(s["recovery_files"]))
        error = WriterError(message)
        if writer is not None and writer.failure is not None:
            error.__cause__ = writer.failure
        raise error

    # -- reads ---------------------------------------------------------------------------------

    def read(self, query: str, *args: Any, **kwargs: Any) -> Any:
        """Run the Reader method named ``query`` after everything this process logged is committed.

        Losses are not raised here but by the next flush()/close(): a read returns data.
        """
        self.wait_committed()
        with self._lock:
            if self._reader is None:
                self._reader = self.engine.reader(self.db)
            return getattr(self._reader, query)(*args, **kwargs)
