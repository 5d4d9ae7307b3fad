"""The thread boundary: a bounded, non-blocking FIFO of encoded events, flush barriers and requests."""

from __future__ import annotations

import threading
import warnings
from collections import deque
from concurrent.futures import Future
from typing import Callable, Union


class Barrier:
    """A flush token: set once every event queued before it is committed (or has failed)."""

    __slots__ = ("_done", "error")

    def __init__(self) -> None:
        self._done = threading.Event()
        self.error: BaseException | None = None

    def set(self, error: BaseException | None = None) -> None:
        """Release waiters; ``error`` explains why the events before it were not all stored."""
        self.error = error
        self._done.set()

    def wait(self, timeout: float | None) -> bool:
        """Wait until set; return False on timeout."""
        return self._done.wait(timeout)


Item = Union[bytes, Barrier]


class EventBuffer:
    """Producers append without blocking; one writer takes items in FIFO order.

    Only ``append``, ``barrier`` and ``request`` are called from user threads; ``take`` and
    ``take_requests`` only from the writer thread. A full buffer drops the event and counts it.
    """

    def __init__(self, max_events: int, wake_threshold: int, kick: Callable[[], None]) -> None:
        self.max_events = max_events
        self.wake_threshold = wake_threshold
        self.items: deque[Item] = deque()
        self.requests: deque[tuple[bytes, Future]] = deque()
        self.dropped = 0
        self._warned = False
        self._kick = kick
        self.wake_pending = False
        self.idle = True  # no writer is running: the next append must start one

    def append(self, payload: bytes) -> None:
        """Queue one encoded event; never blocks."""
        items = self.items
        if len(items) >= self.max_events:
            self._overflow()
            return
        items.append(payload)
        if self.idle or (len(items) >= self.wake_threshold and not self.wake_pending):
            self.wake_pending = True
            self._kick()

    def barrier(self) -> Barrier:
        """Queue a flush barrier behind everything appended so far and wake the writer."""
        token = Barrier()
        self.items.append(token)
        self.wake_pending = True
        self._kick()
        return token

    def request(self, payload: bytes) -> Future:
        """Queue an event whose result (a row id) the caller waits for; it skips the queue."""
        future: Future = Future()
        self.requests.append((payload, future))
        self.wake_pending = True
        self._kick()
        return future

    def take(self, limit: int) -> list[Item]:
        """Remove and return up to ``limit`` items in FIFO order (writer thread)."""
        items = self.items
        n = min(limit, len(items))
        popleft = items.popleft
        return [popleft() for _ in range(n)]

    def take_requests(self) -> list[tuple[bytes, Future]]:
        """Remove and return every pending request (writer thread)."""
        requests = self.requests
        return [requests.popleft() for _ in range(len(requests))]

    def __len__(self) -> int:
        return len(self.items)

    def _overflow(self) -> None:
        self.dropped += 1
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"ml_persistence: event buffer full ({self.max_events} events); dropping events "
                "until the writer catches up. flush() and close() will raise EventsDroppedError.",
                RuntimeWarning,
                stacklevel=5,  # the user's log_* line
            )
