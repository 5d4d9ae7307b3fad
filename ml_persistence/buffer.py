"""The thread boundary: a bounded, non-blocking FIFO of encoded events, flush barriers and requests."""

from __future__ import annotations

import struct
import threading
import warnings
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Optional, Union

from .spool import BARRIER, EVENT, Spool


class Barrier:
    """A flush token: set once every event queued before it is committed (or has failed)."""

    __slots__ = ("_done", "error", "on_set")

    def __init__(self, on_set: Optional[Callable[["Barrier"], None]] = None) -> None:
        self._done = threading.Event()
        self.error: BaseException | None = None
        self.on_set = on_set

    def set(self, error: BaseException | None = None) -> None:
        """Release waiters; ``error`` explains why the events before it were not all stored."""
        self.error = error
        self._done.set()
        if self.on_set is not None:
            self.on_set(self)

    def wait(self, timeout: float | None) -> bool:
        """Wait until set; return False on timeout."""
        return self._done.wait(timeout)


class Request:
    """An id-returning event and the future its caller waits on."""

    __slots__ = ("payload", "future")

    def __init__(self, payload: Any) -> None:
        self.payload = payload  # encoded bytes (a consumer's subclass may queue an event decoded already)
        self.future: Future = Future()


Item = Any  # encoded event bytes or a Barrier here; a consumer's subclass may queue other work
_BARRIER_ID = struct.Struct(">Q")


class _Limit:
    """A setting or state of an EventBuffer that decides whether an append needs more than
    list.append; setting it recomputes the buffer's fast_limit, so the common append tests one number."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, buffer: Any, owner: Optional[type] = None) -> Any:
        return self if buffer is None else buffer._limits[self.name]

    def __set__(self, buffer: Any, value: Any) -> None:
        buffer._limits[self.name] = value
        buffer._relimit()


class EventBuffer:
    """Producers append without blocking; one consumer (writer or sender) takes items in FIFO order.

    Only ``append``, ``barrier`` and ``request`` are called from user threads; ``take``,
    ``take_runs`` and ``take_requests`` only from the consumer thread. Events wait in a plain
    list: a producer's append and the consumer's slice-and-delete are each one C call, so the
    consumer takes a batch with a constant number of Python steps however many events it holds.
    Past ``max_events`` in memory, events and barriers spill to a Spool file, in order, until the
    consumer has read the spool back; only when the spool cannot take more is an event dropped
    (and counted).
    """

    def __init__(
        self,
        max_events: int,
        wake_threshold: int,
        kick: Callable[[], None],
        spool: Optional[Spool] = None,
    ) -> None:
        self._limits = {"max_events": max_events, "wake_threshold": wake_threshold, "spilling": False,
                        "wake_pending": False, "idle": True, "refusal": None}
        self.fast_limit = 0  # an append below this many queued items goes straight in (see _relimit)
        self.items: list[Item] = []
        self.barriers_in_items = 0  # raised before a barrier goes in, lowered when take() finds it
        self._barrier_lock = threading.Lock()
        self.requests: deque[Request] = deque()
        self.dropped = 0
        self.spool = spool if spool is not None else Spool()
        self._spool_lock = threading.Lock()
        self._spooled_barriers: dict[int, Barrier] = {}
        self._next_barrier = 0
        self._warned = False
        self._kick = kick

    max_events = _Limit()
    wake_threshold = _Limit()
    spilling = _Limit()  # set while the spool holds records: new items go behind them
    wake_pending = _Limit()  # the consumer was woken and has not looked yet
    idle = _Limit()  # no consumer is running: the next append must start one
    refusal = _Limit()  # set (to the error) once appends must raise: the hub was closed, or refused

    def _relimit(self) -> None:
        limits = self._limits
        if limits["idle"] or limits["spilling"] or limits["refusal"] is not None:
            self.fast_limit = 0
        elif limits["wake_pending"]:
            self.fast_limit = limits["max_events"]
        else:
            self.fast_limit = min(limits["wake_threshold"] - 1, limits["max_events"])  # the append reaching it wakes

    def append(self, payload: bytes) -> None:
        """Queue one encoded event; never blocks."""
        items = self.items
        if len(items) < self.fast_limit:
            items.append(payload)
        else:
            self._append_slowly(payload)

    def _append_slowly(self, payload: bytes) -> None:
        """Append when the queue is past a bound, or a consumer must be started, woken or refused."""
        refusal = self.refusal
        if refusal is not None:
            raise refusal
        items = self.items
        if self.spilling or len(items) >= self.max_events:
            self._spill(payload)
            return
        items.append(payload)
        if self.idle or (len(items) >= self.wake_threshold and not self.wake_pending):
            self.wake_pending = True
            self._kick()

    def barrier(self, on_set: Optional[Callable[[Barrier], None]] = None) -> Barrier:
        """Queue a flush barrier behind everything appended so far and wake the consumer."""
        token = Barrier(on_set)
        if not self._spill_barrier(token):
            with self._barrier_lock:
                self.barriers_in_items += 1
            self.items.append(token)
        self.wake_pending = True
        self._kick()
        return token

    def request(self, payload: Any) -> Future:
        """Queue an event whose result (a row id) the caller waits for; it skips the queue."""
        return self.queue_request(Request(payload))

    def queue_request(self, request: Request) -> Future:
        """Queue ``request`` ahead of the events and wake the consumer; return its future."""
        self.requests.append(request)
        self.wake_pending = True
        self._kick()
        return request.future

    def take(self, limit: int) -> list[Item]:
        """Remove and return up to ``limit`` items in FIFO order (consumer thread)."""
        return self._take(limit)[0]

    def take_runs(self, limit: int) -> list[Union[list[bytes], Barrier]]:
        """Take up to ``limit`` items as runs of consecutive encoded events and the barriers between them."""
        out, mixed = self._take(limit)
        if not mixed:
            return [out] if out else []  # type: ignore[list-item]
        runs: list[Union[list[bytes], Barrier]] = []
        run: list[bytes] = []
        for item in out:
            if type(item) is Barrier:
                if run:
                    runs.append(run)
                    run = []
                runs.append(item)
            else:
                run.append(item)  # type: ignore[arg-type]
        if run:
            runs.append(run)
        return runs

    def _take(self, limit: int) -> tuple[list[Item], bool]:
        """Return up to ``limit`` items, and whether barriers may be among them."""
        items = self.items
        n = min(limit, len(items))
        out: list[Item] = items[:n]
        del items[:n]  # producers only ever add at the end, so these are the n just copied
        mixed = False
        if self.barriers_in_items:  # read after the slice: a barrier in it was counted before it went in
            found = sum(1 for item in out if type(item) is Barrier)
            if found:
                mixed = True
                with self._barrier_lock:
                    self.barriers_in_items -= found
        if n < limit and self.spilling:
            mixed = self._take_spooled(out, limit - n) or mixed
        return out, mixed

    def _take_spooled(self, out: list[Item], limit: int) -> bool:
        """Append up to ``limit`` spooled items to ``out``; return whether barriers were among them."""
        mixed = False
        with self._spool_lock:
            try:
                records = self.spool.get(limit)
            except (OSError, struct.error) as exc:  # an unreadable spool: count its events lost
                records = []
                self.dropped += self.spool.discard()
                out.extend(self._spooled_barriers.values())
                mixed = bool(self._spooled_barriers)
                self._spooled_barriers.clear()
                self._warn(f"ml_persistence: spool file unreadable ({exc}); its events are lost")
            for kind, data in records:
                if kind == EVENT:
                    out.append(data)
                else:
                    out.append(self._spooled_barriers.pop(_BARRIER_ID.unpack(data)[0]))
                    mixed = True
            if not self.spool and not self.items:
                self.spilling = False
        return mixed

    def filled(self, taken: list[Item], limit: int) -> bool:
        """True if ``taken`` (what take(limit) returned) was a full batch, so more may be waiting."""
        return len(taken) >= limit

    def take_requests(self) -> list[Request]:
        """Remove and return every pending request (consumer thread)."""
        requests = self.requests
        return [requests.popleft() for _ in range(len(requests))]

    def barriers(self) -> list[Barrier]:
        """Return every queued barrier, in memory or spilled (for failing them all at once)."""
        with self._spool_lock:
            spooled = list(self._spooled_barriers.values())
        return [i for i in list(self.items) if type(i) is Barrier] + spooled

    @property
    def spilled(self) -> int:
        """Events and barriers ever written to the spool."""
        return self.spool.total

    def __len__(self) -> int:
        return len(self.items) + len(self.spool)

    def queued_events(self) -> int:
        """Return how many events are queued (barriers included, which cost nothing to count)."""
        return len(self)

    def _spill(self, payload: bytes) -> None:
        with self._spool_lock:
            if not self.spilling and len(self.items) < self.max_events:
                self.items.append(payload)  # the consumer drained memory meanwhile
            else:
                if not self.spilling:
                    self.spilling = True
                    self._warn(
                        f"ml_persistence: more than {self.max_events} events waiting in memory; "
                        "spilling to a temporary file until the writer catches up.",
                    )
                try:
                    self.spool.put(EVENT, payload)
                except OSError as exc:
                    self._overflow(exc)
        if self.idle:
            self._kick()

    def _spill_barrier(self, token: Barrier) -> bool:
        if not self.spilling:
            return False
        with self._spool_lock:
            if not self.spilling:
                return False
            key = self._next_barrier
            self._next_barrier += 1
            self._spooled_barriers[key] = token
            try:
                self.spool.put(BARRIER, _BARRIER_ID.pack(key))
            except OSError:
                del self._spooled_barriers[key]
                return False  # a full disk: the barrier may pass dropped events, which flush() reports
            return True

    def _overflow(self, exc: OSError) -> None:
        self.dropped += 1
        self._warn(
            f"ml_persistence: cannot spill events to disk ({exc}); dropping events until the "
            "writer catches up. flush() and close() will raise EventsDroppedError.",
        )

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(message, RuntimeWarning, stacklevel=6)  # the user's log_* line
