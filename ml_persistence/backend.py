"""One Backend per database file per process: the buffer, its writer, and a read connection."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Any, Optional, Union

from . import storage, upload
from .errors import InvalidValueError, WriterError
from .hub import Hub
from .writer import WRITERS, Writer, WriterOptions

log = logging.getLogger("ml_persistence")


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
    if "writer" in options and options["writer"] not in WRITERS:
        raise InvalidValueError(f"writer must be one of {', '.join(WRITERS)}, got {options['writer']!r}")
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
    upload.finish_all()  # after the commits: each uploader's final pass, then a message if something stayed behind
    if errors:
        raise errors[0]


def _quiesce_before_fork() -> None:
    """Hold every backend's locks across fork(), so the child inherits none of them mid-use."""
    for backend in list(_backends.values()):
        backend._lock.acquire()
        gate = getattr(backend._consumer, "gate", None)
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


class Backend(Hub):
    """The process-wide hub for one database; every facade object on that database shares it.

    Its consumer is a writer thread in this process, or (``writer="process"``) a sender feeding
    this database's private writer process; reads always run here, on a connection of its own.
    """

    COUNTERS = ("written", "rejected", "lost", "saved", "recovered", "sent", "replayed", "reconnects")

    def __init__(self, db: str, options: Optional[WriterOptions] = None) -> None:
        self.db = db  # as named, to connect (a URL may carry a password: never shown)
        self.engine = storage.engine(db)
        self._private: Any = None
        super().__init__(storage.display(db), options)

    def _reset(self) -> None:
        private = getattr(self, "_private", None)
        if private is not None:  # a forked child: the parent's writer process and sockets are not ours
            private.forget()
            consumer = getattr(self, "_consumer", None)
            if consumer is not None and hasattr(consumer, "close_descriptors"):
                consumer.close_descriptors()
        self._private = None
        self._reader: Any = None
        super()._reset()

    def _new_consumer(self) -> Any:
        if self.options.writer == "process":
            sender = self._private_sender()
            if sender is not None:
                return sender
        store = self.engine.store_for(self.db, self.options.busy_timeout_ms)
        return Writer(store, self.buffer, self.options, db=self.db)

    def _private_sender(self) -> Any:
        """Return a sender to this database's private writer process, started if need be (None: cannot)."""
        from .private import PrivateWriter, SpawnError
        from .remote import Sender

        if self._private is None:
            self._private = PrivateWriter(self.db)
        try:
            address = self._private.ensure()
        except SpawnError as exc:
            log.warning("ml_persistence: %s; writing from a thread in this process instead", exc)
            self.options = dataclasses.replace(self.options, writer="thread")
            return None
        private = self._private
        return Sender(
            address, None, self._client, self.buffer, self.options,
            reach=private.ensure, tick=private.follow_limits, calls_are_writes=True,
        )

    def _close_resources(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._private is not None:
            self._private.close()  # a later event starts a new one

    def _recover_command(self, path: str) -> str:
        from . import recovery

        return recovery.command(path, self.db)

    def _recovery_note(self) -> str:
        return " (the next writer on this database also does)"

    def _status_fields(self, consumer: Any) -> dict[str, Any]:
        if isinstance(consumer, Writer) or consumer is None and self.options.writer != "process":
            condition = consumer.condition if consumer is not None else None
            return {
                "writer": "thread",
                "writer_pid": None,
                "connected": None,
                "busy_retries": consumer.busy_retries if consumer is not None else 0,
                "condition": dict(condition) if condition is not None else None,
                "failure": repr(consumer.failure) if consumer is not None and consumer.failure else None,
            }
        state = self._private.state() if self._private is not None else {}
        return {
            "writer": "process",
            "writer_pid": self._private.pid if self._private is not None else None,
            "connected": bool(consumer is not None and consumer.connected),
            "queued": len(self.buffer) + (consumer.unacked_events if consumer is not None else 0),
            "busy_retries": state.get("busy_retries", 0),
            "condition": state.get("condition"),
            "failure": repr(consumer.failure) if consumer is not None and consumer.failure else None,
        }

    def end_now(self, events: list[Any], timeout: float) -> None:
        """End experiments without the writer thread: for interpreter exit, when no thread may start."""
        self.engine.end_experiments_now(self.db, events, timeout)

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
