"""Admission before authentication: who a peer is, how many unauthenticated connections it may hold,
how long its failed attempts wait, and one summary line per interval for everything refused."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import anyio
import anyio.abc

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("ml_persistence.agent")

MAX_UNAUTHENTICATED = 512  # connections that have not yet said a valid Hello, in all
MAX_UNAUTHENTICATED_PER_PEER = 128  # ... and from one IP address or one local uid
FAILURE_DELAY = 0.05  # a peer's first failed Hello is answered after this, each next one twice as late ...
FAILURE_DELAY_MAX = 5.0  # ... up to this
FAILURE_MEMORY = 60.0  # a peer with no failure for this long starts again from FAILURE_DELAY
SUMMARY_INTERVAL = 10.0  # past the first LOGGED_EACH refusals of an interval, the rest are summed up in one line
LOGGED_EACH = 20


@dataclass(frozen=True)
class Origin:
    """Where a connection comes from: ``transport`` 'tcp' or 'unix', the peer's ``key`` for limits, its ``uid`` when known."""

    transport: str
    key: str
    uid: Optional[int] = None


def identify(stream: anyio.abc.ByteStream) -> Origin:
    """Return the origin of an accepted connection (the peer's uid from the kernel on Unix sockets)."""
    try:
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    except Exception:  # noqa: BLE001 - not a socket stream (tests with memory streams)
        return Origin("unknown", "?")
    if raw.family == socket.AF_UNIX:
        uid = peer_uid(raw)
        return Origin("unix", f"uid {uid}" if uid is not None else "unix", uid)
    try:
        host = raw.getpeername()[0]
    except OSError:
        host = "?"
    return Origin("tcp", peer_key(host))


def peer_key(host: str) -> str:
    """Return the key a TCP peer's limits and delays are kept under.

    Any local process may pick any source in 127.0.0.0/8, and anyone holds a whole IPv6 /64, so
    those count as one peer each; a token holder is never slowed by its peer's failures.
    """
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def peer_uid(sock: socket.socket) -> Optional[int]:
    """Return the uid of the process at the other end of a Unix socket, or None where the OS cannot tell."""
    try:
        if hasattr(socket, "SO_PEERCRED"):  # Linux: struct ucred {pid, uid, gid}
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            return struct.unpack("3i", creds)[1]
        if hasattr(socket, "LOCAL_PEERCRED"):  # macOS / BSD: struct xucred {version, uid, ...}
            creds = sock.getsockopt(0, socket.LOCAL_PEERCRED, struct.calcsize("2I") + 64)
            return struct.unpack_from("2I", creds)[1]
    except OSError:
        return None
    return None


@dataclass
class _Penalty:
    failures: int = 0
    last: float = 0.0


@dataclass
class Gate:
    """Limits on connections that have not authenticated, per-peer delays after failures, and refusal summaries."""

    allowed_uids: frozenset[int] = frozenset()
    max_unauthenticated: int = MAX_UNAUTHENTICATED
    max_per_peer: int = MAX_UNAUTHENTICATED_PER_PEER
    clock: Callable[[], float] = time.monotonic
    waiting: "OrderedDict[Session, Origin]" = field(default_factory=OrderedDict)  # oldest first
    per_peer: Counter = field(default_factory=Counter)
    penalties: dict[str, _Penalty] = field(default_factory=dict)
    refusals: Counter = field(default_factory=Counter)  # reason -> count, since the last summary
    refused_peers: set[str] = field(default_factory=set)
    logged: int = 0  # refusals logged one by one in this interval
    longest_delay: float = 0.0
    sleeping: "dict[Session, anyio.CancelScope]" = field(default_factory=dict)  # failure delays, to cut short

    def __post_init__(self) -> None:
        self.uid = os.geteuid() if hasattr(os, "geteuid") else None
        self._since = self.clock()

    # -- the unauthenticated pool ---------------------------------------------------------------

    def admit(self, session: "Session") -> None:
        """Count a new connection as unauthenticated; close the oldest ones past the limits to make room."""
        origin = session.origin
        self.waiting[session] = origin
        self.per_peer[origin.key] += 1
        if self.per_peer[origin.key] > self.max_per_peer:
            oldest = next(s for s, o in self.waiting.items() if o.key == origin.key)
            self.evict(oldest, "too many unauthenticated connections from one peer")
        if len(self.waiting) > self.max_unauthenticated:
            self.evict(next(iter(self.waiting)), "too many unauthenticated connections")

    def authenticated(self, session: "Session") -> None:
        """The connection said a valid Hello: it no longer counts against the limits."""
        self._forget(session)

    def closed(self, session: "Session") -> None:
        """The connection ended."""
        self._forget(session)

    def evict(self, session: "Session", reason: str) -> None:
        """Close an unauthenticated connection to make room for a newer one."""
        origin = self.waiting.get(session)
        self._forget(session)
        self.refuse(origin.key if origin else "?", reason, f"closing connection from {session.peer}: {reason}")
        scope = self.sleeping.pop(session, None)
        if scope is not None:
            scope.cancel()
        try:
            raw = session.stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.shutdown(socket.SHUT_RDWR)  # its pending receive ends; the session closes itself
        except Exception:  # noqa: BLE001 - already closed
            pass

    @property
    def unauthenticated(self) -> int:
        return len(self.waiting)

    def _forget(self, session: "Session") -> None:
        origin = self.waiting.pop(session, None)
        if origin is not None:
            self.per_peer[origin.key] -= 1
            if self.per_peer[origin.key] <= 0:
                del self.per_peer[origin.key]

    # -- credentials ----------------------------------------------------------------------------

    def peer_refusal(self, origin: Origin) -> Optional[str]:
        """Return why a Unix socket peer of another uid may not connect, or None."""
        if origin.transport != "unix" or origin.uid is None or self.uid is None:
            return None
        if origin.uid == self.uid or origin.uid in self.allowed_uids:
            return None
        return f"connections from uid {origin.uid} are not allowed (the agent runs as uid {self.uid}; see --allow-uid)"

    async def failed(self, session: "Session", reason: str, message: str) -> None:
        """Wait before answering a failed Hello, longer with each failure of its peer (until evicted)."""
        origin = session.origin
        now = self.clock()
        penalty = self.penalties.get(origin.key)
        if penalty is None or now - penalty.last > FAILURE_MEMORY:
            penalty = self.penalties[origin.key] = _Penalty()
            self._prune(now)
        penalty.failures += 1
        penalty.last = now
        delay = min(FAILURE_DELAY_MAX, FAILURE_DELAY * 2 ** min(penalty.failures - 1, 30))
        self.longest_delay = max(self.longest_delay, delay)
        self.refuse(origin.key, reason, f"{message} (answered after {delay:.2f} s)")
        with anyio.CancelScope() as scope:
            self.sleeping[session] = scope
            try:
                await anyio.sleep(delay)
            finally:
                self.sleeping.pop(session, None)

    def _prune(self, now: float) -> None:
        if len(self.penalties) > 4096:
            for key in [k for k, p in self.penalties.items() if now - p.last > FAILURE_MEMORY]:
                del self.penalties[key]

    # -- the refusal summary --------------------------------------------------------------------

    def refuse(self, peer: str, reason: str, message: str) -> None:
        """Log ``message`` about a refused or closed unauthenticated connection, or past LOGGED_EACH, count it for the summary."""
        if self.logged < LOGGED_EACH:
            self.logged += 1
            log.warning("%s", message)
            return
        self.refusals[reason.split(":", 1)[0]] += 1
        self.refused_peers.add(peer)

    def summary(self) -> Optional[str]:
        """Return the summary of refusals since the last call, or None if there were none."""
        if not self.refusals:
            return None
        now = self.clock()
        n = sum(self.refusals.values())
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.refusals.most_common())
        line = (
            f"refused {n} more connections from {len(self.refused_peers)} peers in the last {now - self._since:.0f} s "
            f"({reasons})"
        )
        if self.longest_delay:
            line += f"; failed attempts answered after up to {self.longest_delay:.1f} s"
        self.refusals.clear()
        self.refused_peers.clear()
        self.longest_delay = 0.0
        self._since = now
        self.logged = 0
        return line

    async def log_summaries(self, interval: float = SUMMARY_INTERVAL) -> None:
        """Log one summary line per interval while there are refusals (runs until cancelled)."""
        try:
            while True:
                await anyio.sleep(interval)
                if not self.refusals:  # all were logged one by one: start a new interval
                    self._since = self.clock()
                    self.logged = 0
                    self.longest_delay = 0.0
                    continue
                line = self.summary()
                if line is not None:
                    log.warning("%s", line)
        finally:
            line = self.summary()
            if line is not None:
                log.warning("%s", line)
