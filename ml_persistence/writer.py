"""The background writer: an anyio event loop on its own thread draining an EventBuffer into a Store."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import warnings
import functools
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import anyio
import msgspec

from . import events as ev
from .buffer import Barrier, Batch, EventBuffer, Request
from .spool import Spool
from .errors import WriterError
from .store import Store, is_busy

log = logging.getLogger("ml_persistence")


class _Abandoned(Exception):
    """The close deadline passed while the database was still locked."""


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

    def new_spool(self) -> Spool:
        """Return an empty spool with these settings."""
        return Spool(self.spool_dir, self.max_spool_mb << 20)

    @property
    def wake_threshold(self) -> int:
        return max(1, self.batch_size // 2)


class Writer:
    """Owns one Store on one daemon thread; everything but wake() and stop() runs on that thread."""

    def __init__(self, path: str, buffer: EventBuffer, options: WriterOptions) -> None:
        self.path = path
        self.buffer = buffer
        self.options = options
        self.written = 0  # events committed
        self.rejected = 0  # events the database refused (each logged)
        self.lost = 0  # events still unwritten when a close deadline passed
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
        self._store: Optional[Store] = None
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
        # Close the connection and end aiosqlite's thread even though our loop is stuck.
        store = self._store
        if store is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                store.conn.stop()

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
            while True:
                await self._step(store)
                if self._closing and not len(self.buffer) and not self.buffer.requests:
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

    async def _open(self) -> Store:
        delay = 0.05
        while True:
            try:
                with self.gate:
                    return await Store.open(self.path, self.options.busy_timeout_ms)
            except sqlite3.Error as exc:
                if not is_busy(exc) or self._past_deadline():
                    raise WriterError(f"cannot open database {self.path!r}: {exc}") from exc
            self.busy_retries += 1
            await anyio.sleep(delay)
            delay = min(delay * 2, self.options.max_backoff)

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    async def _step(self, store: Store) -> None:
        """Serve waiting requests, then commit queued events in batches (the writer's one unit of work)."""
        await self._serve(store, self.buffer.take_requests())
        while True:
            items = self.buffer.take(self.options.batch_size)
            if not items:
                return
            try:
                work = [i for i in items if type(i) is not Barrier]
                if work and await self._commit(store, work):
                    for item in work:
                        if type(item) is Batch:
                            item.on_committed()
            finally:
                for item in items:  # losses, if any, are counted and raised by flush()
                    if type(item) is Barrier:
                        item.set()
            # A waiting request never sits behind more than one batch.
            await self._serve(store, self.buffer.take_requests())
            if not self.buffer.filled(items, self.options.batch_size):
                return

    def _decode(self, work: Sequence[Any]) -> tuple[list[ev.Event], dict[str, int]]:
        """Return the events of ``work`` (encoded bytes or agent Batches) and each client's new high-water mark."""
        decoded: list[ev.Event] = []
        marks: dict[str, int] = {}
        for item in work:
            if type(item) is Batch:
                decoded.extend(item.events)
                marks[item.client_id] = item.last_seq
                continue
            try:
                decoded.append(ev.decode(item))
            except msgspec.DecodeError as exc:
                self._reject(exc, "undecodable event")
        return decoded, marks

    async def _commit(self, store: Store, work: Sequence[Any]) -> bool:
        """Commit events in one transaction; if the database refuses it, retry one by one.

        Return False if the events were abandoned at a close deadline, True once each is stored
        or refused.
        """
        events, marks = self._decode(work)
        self.in_flight = len(events)
        if not events and not marks:
            return True
        try:
            await self._retrying(functools.partial(store.apply, marks=marks), events)
            self.written += len(events)
            self.in_flight = 0
            return True
        except _Abandoned:
            self._lose_in_flight()
            return False
        except Exception:  # noqa: BLE001 - find the event(s) the database refuses
            pass
        # One bad event must not take the rest of its batch with it. An agent client's event is
        # committed with its own sequence mark, so a crash here cannot lead to a replayed duplicate.
        for event, (mark, batch) in zip(events, _marks_per_event(work, len(events))):
            try:
                await self._retrying(functools.partial(store.apply, marks=mark), [event])
                self.written += 1
            except _Abandoned:
                self._lose_in_flight()
                return False
            except Exception as exc:  # noqa: BLE001
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
                self._reject(exc, "database refused a client's sequence mark")
        return True

    async def _serve(self, store: Store, requests: list[Request]) -> None:
        """Apply id-returning events in one transaction and resolve their futures."""
        try:
            await self._serve_now(store, requests)
        finally:
            for request in requests:  # never leave a caller waiting, whatever escaped
                if not request.future.done():
                    request.future.set_exception(WriterError("the writer stopped before answering"))

    async def _serve_now(self, store: Store, requests: list[Request]) -> None:
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
                functools.partial(store.apply_requests, keys=[r.key for _, r in pending]),
                [e for e, _ in pending],
            )
        except _Abandoned as exc:
            for _, request in pending:
                request.future.set_exception(WriterError(str(exc)))
            return
        except Exception:  # noqa: BLE001 - find the request(s) the database refuses
            ids = None
        if ids is not None:
            self.written += len(ids)
            for (_, request), row_id in zip(pending, ids):
                request.future.set_result(row_id)
            return
        for event, request in pending:
            try:
                (row_id,) = await self._retrying(
                    functools.partial(store.apply_requests, keys=[request.key]), [event]
                )
            except Exception as exc:  # noqa: BLE001
                request.future.set_exception(WriterError(f"database refused {type(event).__name__}: {exc}"))
            else:
                self.written += 1
                request.future.set_result(row_id)

    async def _retrying(self, apply, events):  # type: ignore[no-untyped-def]
        """Call ``apply(events)``, waiting out a locked database with backoff until the close deadline."""
        delay = 0.02
        while not self.done:
            try:
                with self.gate:
                    return await apply(events)
            except Exception as exc:  # noqa: BLE001
                if not is_busy(exc):
                    raise
            if self._past_deadline():
                self._record(WriterError(f"database {self.path!r} stayed locked past the close deadline"))
                raise _Abandoned("the database stayed locked past the close deadline")
            self.busy_retries += 1
            await anyio.sleep(delay)
            delay = min(delay * 2, self.options.max_backoff)
        raise _Abandoned("the writer was stopped at its close deadline")

    def _reject(self, exc: BaseException, what: str) -> None:
        self.rejected += 1
        log.error("ml_persistence: %s, not stored: %s", what, exc)
        self._record(WriterError(f"{what}: {exc}"))

    def _record(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc

    def _give_up(self) -> None:
        """Count everything still queued as lost and release its waiters (at a passed close deadline)."""
        items = self.buffer.take(len(self.buffer))
        requests = self.buffer.take_requests()
        self.lost += sum(len(i) if type(i) is Batch else 1 for i in items if type(i) is not Barrier)
        self.lost += len(requests)
        error = WriterError(f"close deadline passed with {self.lost} events unwritten")
        self._record(error)
        for item in items:
            if type(item) is Barrier:
                item.set(error)
        for request in requests:
            request.future.set_exception(error)

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


def _marks_per_event(work: Sequence[Any], n: int) -> list[tuple[Optional[dict[str, int]], Optional[Batch]]]:
    """Return, for each of the ``n`` events _decode got from ``work``, its {client id: seq} mark and Batch.

    Embedded work (encoded bytes, some maybe undecodable) has neither; the agent's work is all Batches.
    """
    if not any(type(item) is Batch for item in work):
        return [(None, None)] * n
    marks: list[tuple[Optional[dict[str, int]], Optional[Batch]]] = []
    for item in work:
        if type(item) is Batch:
            seqs = item.seqs
            if seqs is None:
                seqs = range(item.last_seq - len(item.events) + 1, item.last_seq + 1)
            marks.extend(({item.client_id: seq}, item) for seq in seqs)
        else:
            marks.append((None, None))
    return marks
