"""The trainer-side hub: one queue per destination, drained by one consumer (a writer or a sender)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional

from .buffer import EventBuffer
from .errors import ClosedError, EventsDroppedError, EventsSavedError, FlushTimeoutError, WriterError
from .writer import WriterOptions


@dataclass(frozen=True)
class ClientIdentity:
    """Who this process is to an agent, handed from one sender to the next: the agent keys on
    (client_id, seq), so numbering goes on where the last sender stopped."""

    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    next_seq: int = 1
    agent_rejected: int = 0  # the agent's count of this client's refused events, as last heard
    agent_database: Optional[str] = None  # the agent's database, as its Welcome said


class Hub:
    """What every facade object on one destination shares: the queue, its consumer, the losses.

    A consumer (``Writer`` into the database, or ``Sender`` to an agent) has ``start``, ``wake``,
    ``stop(timeout)``, ``alive``, ``done``, ``failure``, ``recovery_files`` and the counters named
    in ``COUNTERS``; the hub starts one when events arrive and none is running, and keeps the
    counters of those that stopped.
    """

    COUNTERS: tuple[str, ...] = ()
    mode = "embedded"

    def __init__(self, path: str, options: Optional[WriterOptions] = None) -> None:
        self.path = path  # for messages: never carries a password
        self.options = options or WriterOptions()
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        """Start from no consumer and an empty queue (also a forked child's first step)."""
        self.running: dict[int, int] = {}  # experiments this process started and has not ended: id -> pid
        self._lock = threading.RLock()
        self._held_for_fork: Optional[threading.Lock] = None
        self._consumer: Any = None
        self._reported = 0
        self._retired = dict.fromkeys(self.COUNTERS, 0)
        self.recovery_files: list[str] = []  # recovery files stopped consumers saved
        self._last_failure: Optional[BaseException] = None
        self._client = ClientIdentity()  # used when the consumer is a sender
        self.buffer = EventBuffer(
            self.options.max_queue, self.options.wake_threshold, self._kick, self.options.new_spool()
        )
        # append(payload) queues an encoded event and never blocks: the buffer's own method, called
        # straight from the log call (a closed hub makes it raise ClosedError).
        self.append = self.buffer.append

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r} {self.counters()}>"

    def counters(self) -> str:
        """Return the status counters as 'name=value' text, for reprs."""
        s = self.status()
        return " ".join(f"{k}={s[k]}" for k in ("queued", "written", "spilled", "dropped", "rejected", "lost"))

    # -- the write path ------------------------------------------------------------------------

    def request(self, payload: bytes, timeout: Optional[float] = None) -> Any:
        """Queue an id-returning event and wait for its row id."""
        self._check_usable()
        return self._wait(self.buffer.request(payload), timeout)

    def flush(self, timeout: Optional[float] = None) -> None:
        """Wait until everything appended before this call is committed; raise on losses."""
        self.wait_committed(timeout)
        self._raise_losses()

    def wait_committed(self, timeout: Optional[float] = None) -> None:
        """Wait until everything appended before this call is committed or given up on."""
        self._check_usable()
        if self._consumer is None and not len(self.buffer):
            return
        barrier = self.buffer.barrier()
        if not barrier.wait(timeout):
            raise FlushTimeoutError(
                f"flush did not finish within {timeout} s ({self.status()['queued']} events not yet committed "
                f"to {self.path})"
            )
        if barrier.error is not None:
            raise barrier.error

    def close(self, timeout: Optional[float] = None, final: bool = False) -> None:
        """Commit what is queued, stop the consumer and close connections (idempotent).

        The hub stays usable (a later call starts a new consumer) unless ``final``, which is how
        the exit hook closes it.
        """
        with self._lock:
            if self.closed:
                return
            self.closed = final
            if final:
                self.buffer.refusal = ClosedError(f"ml_persistence backend for {self.path!r} is closed")
            consumer = self._consumer
            if consumer is not None:
                consumer.stop(timeout if timeout is not None else 3600.0)
                self._retire(consumer)
                self.buffer.idle = True  # the next event starts a new consumer
            self._close_resources()
        self._raise_losses()

    @property
    def writer_alive(self) -> bool:
        """True while a consumer thread is taking events."""
        consumer = self._consumer
        return consumer is not None and not consumer.done and consumer.alive

    def _kick(self) -> None:
        consumer = self._consumer
        if consumer is None or consumer.done:
            self._start_consumer()
        else:
            consumer.wake()

    def _start_consumer(self) -> None:
        with self._lock:
            consumer = self._consumer
            if consumer is not None and not consumer.done:
                consumer.wake()
                return
            if self.closed or not self._may_start():
                return
            if consumer is not None:
                self._retire(consumer)
            from . import lifecycle

            lifecycle.install()
            consumer = self._new_consumer()
            try:
                consumer.start()
            except RuntimeError:
                return  # the interpreter is shutting down (3.12+ starts no threads): the exit hook copes
            self._consumer = consumer
            self.buffer.idle = False

    def _retire(self, consumer: Any) -> None:
        """Keep a stopped consumer's counters, recovery files and failure; forget it."""
        if self._consumer is consumer:
            self._consumer = None
        identity = getattr(consumer, "identity", None)
        if identity is not None:
            self._client = identity()
        for key in self._retired:
            self._retired[key] += getattr(consumer, key, 0)
        self.recovery_files.extend(consumer.recovery_files)
        if consumer.failure is not None:
            self._last_failure = consumer.failure

    def _wait(self, future: Future, timeout: Optional[float]) -> Any:
        try:
            return future.result(timeout)
        except TimeoutError:
            raise FlushTimeoutError(f"no answer from the writer within {timeout} s") from None

    # -- what each destination decides ---------------------------------------------------------

    def _new_consumer(self) -> Any:
        raise NotImplementedError

    def _may_start(self) -> bool:
        return True

    def _check_usable(self) -> None:
        if self.closed:
            raise ClosedError(f"ml_persistence backend for {self.path!r} is closed")

    def _close_resources(self) -> None:
        """Release what the hub holds besides its consumer (a read connection, a writer process)."""

    def _recover_command(self, path: str) -> str:
        raise NotImplementedError

    def _recovery_note(self) -> str:
        return ""

    def _status_fields(self, consumer: Any) -> dict[str, Any]:
        return {}

    # -- losses and status ---------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """Return the counters summed over every consumer so far."""
        counts = dict(self._retired)
        consumer = self._consumer
        if consumer is not None:
            for key in counts:
                counts[key] += getattr(consumer, key, 0)
        return counts

    def status(self) -> dict[str, Any]:
        """Return counters (queued, spooled, spilled, written, dropped, rejected, lost, saved, ...),
        where the spool goes, the recovery files saved and the consumer's own state."""
        consumer = self._consumer
        files = self.recovery_files + (list(consumer.recovery_files) if consumer is not None else [])
        return {
            "path": self.path,
            "mode": self.mode,
            "queued": len(self.buffer),
            "spooled": len(self.buffer.spool),
            "spilled": self.buffer.spilled,
            "spool_dir": self.buffer.spool.where(),
            "dropped": self.buffer.dropped,
            "writer_alive": bool(consumer and consumer.alive),
            "recovery_files": files,
            **self.totals(),
            **self._status_fields(consumer),
        }

    def _raise_losses(self) -> None:
        s = self.status()
        losses = s["dropped"] + s["rejected"] + s["lost"] + s["saved"]
        if losses <= self._reported:
            return
        self._reported = losses
        consumer = self._consumer
        cause = consumer.failure if consumer is not None and consumer.failure is not None else self._last_failure
        message = (
            f"{s['dropped']} events dropped (spool full), {s['rejected']} refused by the database, "
            f"{s['lost']} unwritten at a close deadline"
        )
        if s["saved"] and not (s["dropped"] or s["rejected"] or s["lost"]):
            message = f"{s['saved']} events unwritten" + (f" ({cause})" if cause else "")
        files = s["recovery_files"]
        if s["saved"]:
            message += (
                f"; saved to {', '.join(files)}. Store them with: "
                + " && ".join(self._recover_command(f) for f in files)
                + self._recovery_note()
            )
        if s["dropped"]:
            raise EventsDroppedError(message)
        if s["saved"]:
            raise EventsSavedError(message, tuple(files))
        error = WriterError(message)
        if cause is not None:
            error.__cause__ = cause
        raise error
