"""The background writer: an anyio event loop on its own thread draining an EventBuffer into a Store."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import warnings
import functools
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import anyio
import msgspec

from . import events as ev
from . import recovery
from .buffer import Barrier, EventBuffer, Request
from .spool import Spool
from .errors import EventsSavedError, WriterError
from .rows import local_text
from .storage import BUSY, ENVIRONMENT, REFUSED, is_url, redact

log = logging.getLogger("ml_persistence")


class _Abandoned(Exception):
    """The close deadline passed while the database was still locked, or could not be written."""


_NOTICE_GRACE = 1.0  # seconds past a stop deadline for the writer to notice it, beyond two SQLite busy waits
_SAVE_GRACE = 30.0  # seconds past a stop deadline for the writer to finish saving a recovery file
_QUIET = 60.0  # seconds after a condition clears during which a new one is not logged again (status() shows it)


WRITERS = ("process", "thread")
DEFAULT_WRITER = "process"


def default_writer() -> str:
    """Return where embedded mode writes from: $ML_PERSISTENCE_WRITER, else DEFAULT_WRITER."""
    chosen = os.environ.get("ML_PERSISTENCE_WRITER") or DEFAULT_WRITER
    if chosen not in WRITERS:
        log.warning("ml_persistence: ML_PERSISTENCE_WRITER=%r is not one of %s; using %r", chosen, ", ".join(WRITERS), DEFAULT_WRITER)
        return DEFAULT_WRITER
    return chosen


@dataclass(frozen=True)
class WriterOptions:
    """Tuning knobs; defaults come from benchmarks/bench_core.py."""

    batch_size: int = 8192  # events per transaction
    flush_interval: float = 0.05  # seconds between flushes when the batch does not fill
    max_queue: int = 500_000  # events held in memory; more spill to a temporary file
    busy_timeout_ms: int = 1000  # SQLite's own wait for a lock, before our retry with backoff
    max_backoff: float = 1.0
    spool_dir: Optional[str] = None  # where spilled events go (default: the system temp dir)
    max_spool_mb: int = 4096  # past this, events are dropped (and counted)
    writer: str = field(default_factory=default_writer)  # embedded mode: a private "process" or a "thread"

    def new_spool(self) -> Spool:
        """Return an empty spool with these settings."""
        return Spool(self.spool_dir, self.max_spool_mb << 20)

    @property
    def wake_threshold(self) -> int:
        return max(1, self.batch_size // 2)


class Writer:
    """Owns one engine's Store on one daemon thread; everything but wake() and stop() runs on that thread."""

    def __init__(self, store: Any, buffer: EventBuffer, options: WriterOptions, db: Optional[str] = None) -> None:
        self.path = store.path  # for messages: a file path, or a URL without its password
        self.db = db if db is not None else store.path  # for recovery files: the database as named
        self.classify = store.classify
        self.buffer = buffer
        self.options = options
        self.written = 0  # events committed
        self.rejected = 0  # events the database refused (each logged)
        self.lost = 0  # events unwritten at a close deadline that no recovery file could take
        self.saved = 0  # events unwritten at a close deadline, saved to a recovery file instead
        self.recovered = 0  # events this writer stored from earlier recovery files
        self.recovery_files: list[str] = []  # the files it saved
        # Set while the disk, file or system refuses writes: {"reason", "since", "retries"}.
        self.condition: Optional[dict[str, Any]] = None
        self._condition_started = 0.0
        self._announced = False  # the current condition was logged (so its end is too)
        self._quiet_until = 0.0
        self._unwritten: list[bytes] = []  # encoded events abandoned at the deadline, in order
        self._unwritten_keys: list[Optional[tuple[str, int]]] = []  # their agent (client, seq), if any
        self._saving = False
        self.in_flight = 0  # events taken from the buffer and not yet committed or counted
        self._loss_lock = threading.Lock()
        self.failure: Optional[BaseException] = None  # first failure, re-raised by flush()
        self.busy_retries = 0
        self.done = False  # set once this writer will take no more work
        # Held around every call into SQLite, so fork() can wait for a moment when no SQLite
        # mutex is held by aiosqlite's thread (a child inheriting a held mutex would hang).
        self.gate = threading.Lock()
        self._closing = False
        self._deadline: Optional[float] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake_event: Optional[anyio.Event] = None
        self._new_store = store
        self._store: Any = None
        self._thread = threading.Thread(target=self._run, name="ml-persistence-writer", daemon=True)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wake(self) -> None:
        """Ask the writer to flush now (any thread)."""
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake_now)
            except RuntimeError:
                pass  # loop already closed: the writer is gone

    def stop(self, timeout: float) -> bool:
        """Drain everything queued, close the connection, end the thread; False if ``timeout`` hit."""
        self._deadline = time.monotonic() + timeout
        self._closing = True
        self.wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Past the deadline it gives up at its next retry, after at most a checkpoint and an apply.
            self._thread.join(_NOTICE_GRACE + 2 * self.options.busy_timeout_ms / 1000)
        if self._thread.is_alive() and self._saving:
            self._thread.join(_SAVE_GRACE)
        if self._thread.is_alive():
            self.done = True
            self._lose_in_flight()
            self._give_up()
            self._abandon_store()
            return False
        return True

    def _lose_in_flight(self) -> None:
        """Count the batch being written as lost (once, whichever thread gets here first)."""
        with self._loss_lock:
            self.lost += self.in_flight
            self.in_flight = 0

    def _abandon_store(self) -> None:
        # Close the connection and end the driver's threads even though our loop is stuck.
        store = self._store
        if store is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                store.abandon()

    def _wake_now(self) -> None:
        if self._wake_event is not None:
            self._wake_event.set()

    def _run(self) -> None:
        try:
            anyio.run(self._main, backend="asyncio")
        except BaseException as exc:  # noqa: BLE001 - the thread must not die silently
            self._fail_everything(exc)
        finally:
            self.done = True

    async def _main(self) -> None:
        self._wake_event = anyio.Event()
        self._loop = asyncio.get_running_loop()
        self._store = store = await self._open()
        try:
            await self._apply_recovery_files(store)
            while True:
                await self._step(store)
                if self._closing and not len(self.buffer) and not self.buffer.requests and not self._unwritten:
                    self.done = True
                    return
                if self._past_deadline():
                    self._give_up()
                    return
                with anyio.move_on_after(self.options.flush_interval):
                    await self._wake_event.wait()
                self._wake_event = anyio.Event()
                self.buffer.wake_pending = False
        finally:
            with anyio.CancelScope(shield=True), self.gate:
                await store.close()

    async def _open(self) -> Any:
        delay = 0.05
        store = self._new_store
        started = time.monotonic()
        while True:
            try:
                with self.gate:
                    await store.open()
                    return store
            except Exception as exc:  # noqa: BLE001 - only a lock is waited out at open
                if isinstance(exc, WriterError):
                    raise
                kind = self.classify(exc)
                # A server restarting comes back within seconds; one that stays away is reported.
                waited_out = kind == BUSY or (kind == ENVIRONMENT and time.monotonic() < started + store.open_grace)
                if not waited_out or self._past_deadline():
                    text = redact(exc)
                    raise WriterError(text if self.path in text else f"cannot open database {self.path!r}: {text}") from exc
            self.busy_retries += 1
            await anyio.sleep(delay)
            delay = min(delay * 2, self.options.max_backoff)

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    async def _apply_recovery_files(self, store: Any) -> None:
        """Store the events of earlier recovery files for this database first: they were logged earlier."""
        for path in recovery.pending(self.db):
            try:
                with self.gate:
                    applied = await recovery.apply_to(store, path)
            except Exception as exc:  # noqa: BLE001 - the file stays for the next writer or `recover`
                log.warning("ml_persistence: could not apply recovery file %s yet: %s", path, exc)
                continue
            self.recovered += applied.stored
            self.rejected += applied.refused
            log.warning(
                "ml_persistence: applied recovery file %s to %s: %d events stored, %d were already there",
                path, self.path, applied.stored, applied.skipped,
            )

    async def _step(self, store: Any) -> None:
        """Serve waiting requests, then commit queued events in batches (the writer's one unit of work)."""
        await self._serve(store, self.buffer.take_requests())
        while not self._unwritten:  # once a batch is abandoned at the deadline, the rest follows it
            items = self.buffer.take(self.options.batch_size)
            if not items:
                return
            try:
                work = [i for i in items if type(i) is not Barrier]
                if work and await self._commit(store, work):
                    self._committed(work)
            finally:
                for item in items:  # losses, if any, are counted and raised by flush()
                    if type(item) is Barrier:
                        item.set()
            # A waiting request never sits behind more than one batch.
            await self._serve(store, self.buffer.take_requests())
            if not self.buffer.filled(items, self.options.batch_size):
                return

    def _decode(self, work: Sequence[Any]) -> tuple[list[ev.Event], dict[str, int], list[Optional[bytes]]]:
        """Return the events of ``work``, each agent client's new high-water mark (none here), and
        each event's encoded bytes (None where there are none: an agent's, decoded already)."""
        payloads: list[Any] = list(work)
        return self._decode_encoded(payloads), {}, payloads

    # -- what a writer of other work than encoded events (the agent's) overrides ---------------

    def _committed(self, work: Sequence[Any]) -> None:
        """Called once ``work`` is committed (writer thread)."""

    def _marks_per_event(self, work: Sequence[Any], n: int) -> list[tuple[Optional[dict[str, int]], Any]]:
        """Return, for each of the ``n`` events _decode got from ``work``, the {client id: seq} mark to
        store with it and the work item it came from (whose ``rejected`` counts its refusals): none here."""
        return [(None, None)] * n

    def _unwritten_of(self, item: Any) -> tuple[int, Iterator[tuple[bytes, Optional[tuple[str, int]]]]]:
        """Return how many events a queued work item holds, and each as (encoded event, key or None)."""
        return 1, iter(((item, None),))

    def _request_key(self, request: Request) -> Optional[tuple[str, int]]:
        """Return the (client id, seq) a request is stored under exactly once: none here."""
        return None

    def _keys(self, work: Sequence[Any], n: int) -> list[tuple[str, int]]:
        """Return each keyed event's (client id, seq), for the ``n`` events _decode got from ``work``."""
        return [next(iter(mark.items())) for mark, _ in self._marks_per_event(work, n) if mark]

    def _decode_encoded(self, payloads: list[bytes]) -> list[ev.Event]:
        """Decode a run of encoded events in one call; find and refuse the undecodable ones if any."""
        try:
            return ev.decode_run(payloads)
        except msgspec.DecodeError:
            pass
        decoded: list[ev.Event] = []
        for i, payload in enumerate(payloads):
            try:
                decoded.append(ev.decode(payload))
            except msgspec.DecodeError as exc:
                self._reject(exc, "undecodable event")
                payloads[i] = b""
        payloads[:] = [payload for payload in payloads if payload]
        return decoded

    async def _commit(self, store: Any, work: Sequence[Any]) -> bool:
        """Commit events in one transaction; if the database refuses it, retry one by one.

        Return False if the events were abandoned at a close deadline, True once each is stored
        or refused.
        """
        events, marks, sources = self._decode(work)
        self.in_flight = len(events)
        if not events and not marks:
            return True
        try:
            keyed = {"keys": self._keys(work, len(events))} if marks else {}  # an agent's: skip what is stored
            await self._retrying(functools.partial(store.apply, marks=marks, **keyed), events)
        except _Abandoned:
            self._keep_unwritten(work, events, sources, 0)
            return False
        except Exception as exc:  # noqa: BLE001 - find the event(s) the database refuses
            if self.classify(exc) != REFUSED:
                # Fatal: keep this batch in a recovery file before the writer stops and flush() raises.
                self._keep_unwritten(work, events, sources, 0)
                self._save_unwritten()
                raise
        else:
            self.written += len(events)
            self.in_flight = 0
            with self.gate:
                await store.keep_wal_small()
            return True
        # One bad event must not take the rest of its batch with it. An agent client's event is
        # committed with its own sequence mark, so a crash here cannot lead to a replayed duplicate.
        for i, (event, (mark, batch)) in enumerate(zip(events, self._marks_per_event(work, len(events)))):
            try:
                keyed = {"keys": list(mark.items())} if mark else {}
                await self._retrying(functools.partial(store.apply, marks=mark, **keyed), [event])
                self.written += 1
            except _Abandoned:
                self._keep_unwritten(work, events, sources, i)
                return False
            except Exception as exc:  # noqa: BLE001
                if self.classify(exc) != REFUSED:
                    self._keep_unwritten(work, events, sources, i)
                    self._save_unwritten()
                    raise
                self._reject(exc, f"database refused {type(event).__name__}")
                if batch is not None:
                    batch.rejected += 1
            self.in_flight -= 1
        if marks:
            try:
                await self._retrying(functools.partial(store.apply, marks=marks), [])
            except _Abandoned:
                return False
            except Exception as exc:  # noqa: BLE001
                if self.classify(exc) != REFUSED:
                    raise
                self._reject(exc, "database refused a client's sequence mark")
        return True

    def _keep_unwritten(
        self, work: Sequence[Any], events: list[ev.Event], sources: list[Optional[bytes]], start: int
    ) -> None:
        """Keep ``events[start:]`` of a batch abandoned at the close deadline, for the recovery file."""
        marks = self._marks_per_event(work, len(events))
        with self._loss_lock:
            if not self.in_flight:
                return  # stop() gave up on this batch already (and counted it lost)
            for event, source, (mark, _) in list(zip(events, sources, marks))[start:]:
                self._unwritten.append(source if source is not None else ev.encode(event))
                self._unwritten_keys.append(next(iter(mark.items())) if mark else None)
            self.in_flight = 0

    async def _serve(self, store: Any, requests: list[Request]) -> None:
        """Apply id-returning events in one transaction and resolve their futures."""
        try:
            await self._serve_now(store, requests)
        finally:
            for request in requests:  # never leave a caller waiting, whatever escaped
                if not request.future.done():
                    request.future.set_exception(WriterError("the writer stopped before answering"))

    async def _serve_now(self, store: Any, requests: list[Request]) -> None:
        pending: list[tuple[ev.Event, Request]] = []
        for request in requests:
            if type(request.payload) is not bytes:
                pending.append((request.payload, request))
                continue
            try:
                pending.append((ev.decode(request.payload), request))
            except msgspec.DecodeError as exc:
                request.future.set_exception(WriterError(f"undecodable request: {exc}"))
        if not pending:
            return
        try:
            ids = await self._retrying(
                functools.partial(store.apply_requests, keys=[self._request_key(r) for _, r in pending]),
                [e for e, _ in pending],
            )
        except _Abandoned as exc:
            for _, request in pending:
                request.future.set_exception(WriterError(str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - find the request(s) the database refuses
            if self.classify(exc) != REFUSED:
                raise
            ids = None
        if ids is not None:
            self.written += len(ids)
            for (_, request), row_id in zip(pending, ids):
                request.future.set_result(row_id)
            return
        for event, request in pending:
            try:
                (row_id,) = await self._retrying(
                    functools.partial(store.apply_requests, keys=[self._request_key(request)]), [event]
                )
            except Exception as exc:  # noqa: BLE001
                request.future.set_exception(WriterError(f"database refused {type(event).__name__}: {exc}"))
            else:
                self.written += 1
                request.future.set_result(row_id)

    async def _retrying(self, apply, events):  # type: ignore[no-untyped-def]
        """Call ``apply(events)``, waiting out a locked database, a full disk or an unavailable file
        with backoff until the close deadline; raise what the database refuses (see store.classify)."""
        delay = 0.02
        while not self.done:
            try:
                with self.gate:
                    result = await apply(events)
            except Exception as exc:  # noqa: BLE001
                kind = self.classify(exc)
                if kind not in (BUSY, ENVIRONMENT):
                    raise
                failure = exc
            else:
                if self.condition is not None:
                    await self._resumed()
                return result
            if self._past_deadline():
                what = "stayed locked" if kind == BUSY else f"could not be written ({failure})"
                self._record(WriterError(f"database {self.path!r} {what} past the close deadline"))
                raise _Abandoned(f"the database {what} past the close deadline")
            if kind == BUSY:
                self.busy_retries += 1
            else:
                self._stalled(failure)
                with self.gate:  # a full device may only need the write-ahead log moved into the database
                    await self._store_checkpoint()
            await self._pause(delay)
            delay = min(delay * 2, self.options.max_backoff)
        raise _Abandoned("the writer was stopped at its close deadline")

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds of backoff, ending early at wake() (a flush, stop()) and never past
        the close deadline."""
        if self._deadline is not None:
            await anyio.sleep(min(delay, max(0.0, self._deadline - time.monotonic())))
            return
        self._wake_event = anyio.Event()
        with anyio.move_on_after(delay):
            await self._wake_event.wait()

    async def _store_checkpoint(self) -> None:
        if self._store is not None:
            await self._store.checkpoint()

    def _stalled(self, exc: BaseException) -> None:
        """Note one more failed try at writing; say so once, when the condition starts."""
        if self.condition is not None:
            self.condition["retries"] += 1
            if not self._announced and time.monotonic() >= self._quiet_until:
                self._announce()  # began in a quiet window and is still here: say so now
            return
        self._condition_started = time.monotonic()
        self.condition = {"reason": redact(exc) or type(exc).__name__, "since": local_text(time.time()), "retries": 1}
        self._announced = False
        if self._condition_started >= self._quiet_until:  # a flapping disk logs 2 lines a minute
            self._announce()

    def _announce(self) -> None:
        """Log the one warning for the current condition."""
        assert self.condition is not None
        self._announced = True
        spool = self.buffer.spool.where()
        where = "" if is_url(self.path) else f"; {_free_space(self.path)} free on its filesystem"
        log.warning(
            "ml_persistence: cannot write to %s (%s%s); keeping events in memory "
            "(then in a spool file under %s) and retrying until it can",
            self.path, self.condition["reason"], where, spool,
        )

    async def _resumed(self) -> None:
        """Say once that writing works again, and give the write-ahead log's space back."""
        stalled = time.monotonic() - self._condition_started
        retries = self.condition["retries"] if self.condition else 0
        self.condition = None
        self._quiet_until = time.monotonic() + _QUIET
        if self._announced:
            log.warning(
                "ml_persistence: writing to %s again after %.1f s (%d retries); catching up in logging order",
                self.path, stalled, retries,
            )
        with self.gate:
            await self._store_checkpoint()

    def _reject(self, exc: BaseException, what: str) -> None:
        self.rejected += 1
        log.error("ml_persistence: %s, not stored: %s", what, exc)
        self._record(WriterError(f"{what}: {exc}"))

    def _record(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc

    def _give_up(self) -> None:
        """At a passed close deadline: save everything unwritten to a recovery file (count it lost if
        nothing can take one) and release its waiters."""
        barriers: list[Barrier] = []
        with self._loss_lock:
            self._saving = True
            requests = self.buffer.take_requests()
            self.lost += len(requests)  # their callers got an error: they know
            before = self.saved
            path = self._save_unwritten(self._drain(barriers))
            unwritten = self.saved - before
            self._saving = False
        if path is not None:
            error: WriterError = EventsSavedError(
                f"close deadline passed with {unwritten} events unwritten; saved to {path}", (path,)
            )
        else:
            error = WriterError(f"close deadline passed with {self.lost} events unwritten")
        self._record(error)
        for barrier in barriers:
            barrier.set(error)
        for request in requests:
            request.future.set_exception(error)

    def _drain(self, barriers: list[Barrier]) -> Iterator[tuple[bytes, Optional[tuple[str, int]]]]:
        """Yield the kept unwritten events, then what is queued now, batch by batch (never all in memory at
        once: the spool can hold gigabytes), as (encoded event, agent key or None); collect the barriers."""
        yield from zip(self._unwritten, self._unwritten_keys)
        self._unwritten, self._unwritten_keys = [], []
        remaining = self.buffer.queued_events()  # what logging threads add meanwhile stays for the next writer
        while remaining > 0:
            items = self.buffer.take(min(remaining, self.options.batch_size))
            if not items:
                return
            for item in items:
                if type(item) is Barrier:
                    barriers.append(item)
                    continue
                count, unwritten = self._unwritten_of(item)
                remaining -= count
                yield from unwritten

    def _save_unwritten(
        self, events: Optional[Iterator[tuple[bytes, Optional[tuple[str, int]]]]] = None
    ) -> Optional[str]:
        """Save ``events`` (default: the kept unwritten ones) to a recovery file; return its path (None:
        nothing to save, or nowhere had room, and then they are counted lost)."""
        if events is None:
            events = zip(self._unwritten, self._unwritten_keys)
            self._unwritten, self._unwritten_keys = [], []
        seen = {"events": 0, "keyed": False}

        def counted() -> Iterator[tuple[bytes, Optional[tuple[str, int]]]]:
            for payload, key in events:  # type: ignore[union-attr]
                seen["events"] += 1
                seen["keyed"] = seen["keyed"] or key is not None
                yield payload, key

        try:
            path = recovery.save_keyed(self.db, counted())
        except Exception as exc:  # noqa: BLE001 - a recovery that fails must still release waiters
            log.error("ml_persistence: could not save a recovery file: %r", exc)
            path = None
        n = seen["events"]
        if not n:
            return None
        if path is not None:
            self.saved += n
            self.recovery_files.append(path)
            return path
        self.lost += n
        # An agent's events were never acknowledged: their clients still hold them and replay them.
        fate = "left unacknowledged for their clients to replay" if seen["keyed"] else "they are lost"
        log.error(
            "ml_persistence: no recovery file could be written for %d unwritten events (tried %s); %s",
            n, ", ".join(recovery.candidate_directories(self.db)), fate,
        )
        return None

    def _fail_everything(self, exc: BaseException) -> None:
        self.done = True  # from here on, a new barrier or request starts a new writer
        self._lose_in_flight()
        error = exc if isinstance(exc, WriterError) else WriterError(f"writer crashed: {exc!r}")
        if error is not exc:
            error.__cause__ = exc
        log.error("ml_persistence: %s", error)
        self._record(error)
        self._loop = None
        self.buffer.idle = True
        for request in self.buffer.take_requests():
            request.future.set_exception(error)
        for barrier in self.buffer.barriers():
            barrier.set(error)


def _free_space(path: str) -> str:
    """Return the free space of ``path``'s filesystem as text, for a log line."""
    try:
        info = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        return f"unknown ({exc.strerror})"
    return f"{info.f_bavail * info.f_frsize / 1e6:.1f} MB"
