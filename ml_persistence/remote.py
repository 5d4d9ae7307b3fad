"""The agent client: a hub whose consumer, a sender thread, streams events to an agent over a socket.

Log calls are unchanged: validate, encode, append to the same EventBuffer (spilling to disk past
its bound). The sender numbers runs of events, sends each run as one frame, keeps the
unacknowledged ranges and replays them after a reconnect; the agent ignores what it already has.
"""

from __future__ import annotations

import logging
import os
import select
import itertools
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Optional

import msgspec

from . import protocol as p
from .address import Address, default_address, is_private, published_token
from .buffer import Barrier, EventBuffer
from .storage import REMOTE_READS
from .errors import (
    AgentError,
    AgentRefusedError,
    ClosedError,
    EventsSavedError,
    InvalidValueError,
    MLPersistenceError,
    WriterError,
)
from .hub import ClientIdentity, Hub
from .writer import WriterOptions

log = logging.getLogger("ml_persistence.agent_client")

CONNECT_TIMEOUT = 5.0
SEND_STALL = 30.0  # a connection that takes no bytes and sends none for this long is dead
WINDOW = 65536  # events sent and not yet acknowledged, at most
FRAME_BYTES = 8 << 20  # events per Events frame stop here (the agent accepts 64 MiB by default)
MAX_EVENT_BYTES = 32 << 20  # a larger single event is refused at the call
_FRAME_OVERHEAD = 64  # bytes a frame adds around one event: length prefix, tag, sequence number, array header
RETIRED_COUNTERS = ("sent", "written", "replayed", "reconnects", "rejected", "lost", "saved")


class AgentBackend(Hub):
    """Everything a facade needs from a Backend, served by an agent at ``address``."""

    COUNTERS = RETIRED_COUNTERS
    mode = "agent"

    def __init__(self, address: Address, token: Optional[str], options: Optional[WriterOptions] = None) -> None:
        self.address = address
        self.token = token
        self.request_timeout = float(os.environ.get("ML_PERSISTENCE_AGENT_TIMEOUT", "60"))
        super().__init__(str(address), options)

    def _reset(self) -> None:
        inherited = getattr(self, "_consumer", None)
        if inherited is not None:  # a forked child: close our copies of the parent's descriptors
            inherited.close_descriptors()
            self.buffer.spool.close()
        self.refused: Optional[AgentRefusedError] = None  # once refused, every call raises this
        super()._reset()
        self.append = self._append_checked

    @property
    def client_id(self) -> str:
        return self._client.client_id

    def counters(self) -> str:
        """Return the status counters as 'name=value' text, for reprs."""
        s = self.status()
        keys = ("connected", "queued", "written", "spilled", "replayed", "reconnects", "dropped", "lost")
        return f"agent={self.path} " + " ".join(f"{k}={s[k]}" for k in keys)

    def __repr__(self) -> str:
        return f"<AgentBackend {self.path!r} {self.counters()}>"

    # -- what differs from an embedded hub -----------------------------------------------------

    def _append_checked(self, payload: bytes) -> None:
        """Queue an encoded event no larger than the agent takes; never blocks (user thread)."""
        if self.closed or self.refused is not None:
            self._check_usable()
        if len(payload) > MAX_EVENT_BYTES:
            raise InvalidValueError(
                f"event of {len(payload) >> 20} MiB is larger than the agent accepts ({MAX_EVENT_BYTES >> 20} MiB)"
            )
        self.buffer.append(payload)

    def request(self, payload: bytes, timeout: Optional[float] = None) -> Any:
        """Send an id-returning event and wait for the agent's answer."""
        if len(payload) > MAX_EVENT_BYTES:
            raise InvalidValueError(f"event of {len(payload) >> 20} MiB is larger than the agent accepts")
        return super().request(payload, timeout)

    def _new_consumer(self) -> Any:
        return Sender(self.address, self.token, self._client, self.buffer, self.options, on_refused=self._refused)

    def _refused(self, error: AgentRefusedError) -> None:
        self.refused = error
        self.buffer.refusal = error

    def _may_start(self) -> bool:
        return self.refused is None

    def _check_usable(self) -> None:
        if self.closed:
            raise ClosedError(f"ml_persistence client of {self.path} is closed")
        if self.refused is not None:
            raise self.refused

    def _status_fields(self, sender: Any) -> dict[str, Any]:
        return {
            "writer": "agent",
            "writer_pid": None,
            "busy_retries": 0,
            "condition": None,
            "client_id": self._client.client_id,
            "connected": bool(sender and sender.connected),
            "queued": len(self.buffer) + (sender.unacked_events if sender else 0),
            "failure": repr(self.refused) if self.refused else None,
        }

    def _recover_command(self, path: str) -> str:
        from . import recovery

        database = self._agent_database()
        if database is None:
            return recovery.command(path, None) + " --db DB (the agent's database)"
        return recovery.command(path, database) + ("" if self._agent_is_local() else " (on the agent's host)")

    def _agent_database(self) -> Optional[str]:
        sender = self._consumer
        if sender is not None and sender.agent_database is not None:
            return sender.agent_database
        return self._client.agent_database

    def _agent_is_local(self) -> bool:
        return self.address.kind == "unix" or p.is_loopback(self.address.host)

    def _wait(self, future: Future, timeout: Optional[float]) -> Any:
        limit = self.request_timeout if timeout is None else timeout
        try:
            return future.result(limit)
        except TimeoutError:
            if self.refused is not None:
                raise self.refused from None
            sender = self._consumer
            state = "connected" if sender and sender.connected else "not connected"
            raise AgentError(
                f"no answer from the agent at {self.path} within {limit} s ({state}; "
                "is `ml-persistence-agent` running? ML_PERSISTENCE_AGENT_TIMEOUT sets the wait)"
            ) from None

    def end_now(self, events: list[Any], timeout: float) -> None:
        """End experiments by running a sender in this thread: for interpreter exit, when no thread may start."""
        from .events import encode

        for event in events:
            self.buffer.append(encode(event))
        sender = self._new_consumer()
        self._consumer = sender
        sender.run_here(timeout)
        self._retire(sender)

    # -- reads ---------------------------------------------------------------------------------

    def read(self, name: str, *args: Any) -> Any:
        """Run the named read in the agent, after everything this process logged is committed there."""
        if name not in REMOTE_READS:
            raise AgentError(f"{name!r} is not a query the agent answers")
        self._check_usable()
        self._kick()
        sender = self._consumer
        future = sender.read(name, list(args)) if sender is not None else None
        if future is None:
            raise AgentError(f"cannot reach the agent at {self.path}")
        return self._wait(future, None)


class Sender:
    """The client's one network thread: connect, hello, send byte ranges, read acks, reconnect, replay.

    Per batch, not per event: the buffer hands over runs of encoded events, each run is sent as
    one Events frame built by joining its bytes, and what is unacknowledged is a deque of
    sequence ranges. It learns what it needs as arguments and tells its owner of a refusal
    through ``on_refused``; ``identity()`` is what the next sender continues from.
    """

    def __init__(
        self,
        address: Address,
        token: Optional[str],
        identity: ClientIdentity,
        buffer: EventBuffer,
        options: WriterOptions,
        reach: Optional[Callable[[], Address]] = None,
        on_refused: Optional[Callable[[AgentRefusedError], None]] = None,
        tick: Optional[Callable[[], None]] = None,
        calls_are_writes: bool = False,
    ) -> None:
        self.address = address
        self.token = token
        self.client_id = identity.client_id
        self.next_seq = identity.next_seq
        self.agent_rejected_total = identity.agent_rejected  # the agent's count for this client, as last heard
        self.agent_database = identity.agent_database
        self.buffer = buffer
        self.options = options
        self._reach = reach  # returns the address to (re)connect to, starting what listens there if need be
        self._on_refused = on_refused
        self._tick = tick  # called once per wake-up of the thread
        self._calls_are_writes = calls_are_writes  # count answered id-returning events as written, as a writer does
        self.sock: Optional[socket.socket] = None
        self.connected = False
        self.refused: Optional[AgentRefusedError] = None
        self.committed = 0  # every event with seq <= committed is in the database
        self.unacked: deque[tuple[int, list[bytes]]] = deque()  # (first seq, events) sent, not all committed
        self.unacked_events = 0
        self.calls: dict[int, tuple[bytes, Future]] = {}  # id-returning events not yet answered
        self.barriers: deque[tuple[int, Barrier]] = deque()
        self.reads: dict[int, tuple[str, list[Any], Future]] = {}
        self._new_reads: deque[tuple[int, str, list[Any], Future]] = deque()
        self._read_ids = itertools.count(1)
        self._early: list[bytes] = []
        self.sent = 0
        self.acknowledged = 0  # events the agent acknowledged: stored, or refused (counted in agent_rejected)
        self.agent_rejected = 0  # events the agent refused, as it told this sender
        self.saved = 0  # events unacknowledged at the deadline, saved to a recovery file
        self.replayed = 0
        self.reconnects = 0
        self.lost = 0
        self.rejected = 0  # events not stored: too large to send, or refused by the agent
        self.recovery_files: list[str] = []
        self.failure: Optional[BaseException] = None
        self.done = False
        self._stopping = False
        self._deadline: Optional[float] = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._decoder = p.FrameDecoder(max_frame=1 << 31)
        self._out: list[bytes] = []
        self.frame_bytes = FRAME_BYTES  # runs of events are split into frames of about this size
        self.max_frame = p.DEFAULT_MAX_FRAME  # the agent's limit: a larger event (or call) cannot be sent
        self._thread = threading.Thread(target=self._run, name="ml-persistence-sender", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def written(self) -> int:
        """Events the agent stored: acknowledged ones but those it refused (a refusal is counted no later than its ack)."""
        return max(0, self.acknowledged - self.agent_rejected)

    def identity(self) -> ClientIdentity:
        """Return where the next sender of this client goes on from."""
        return ClientIdentity(self.client_id, self.next_seq, self.agent_rejected_total, self.agent_database)

    def start(self) -> None:
        self._thread.start()

    def run_here(self, timeout: float) -> None:
        """Deliver what is queued from the calling thread, within ``timeout`` (at interpreter exit)."""
        self._stopping = True
        self._deadline = time.monotonic() + timeout
        self._run()

    def wake(self) -> None:
        """Interrupt the sender's wait (any thread)."""
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or the sender is gone

    def read(self, name: str, args: list[Any]) -> Future:
        """Queue a read query (any thread); its future resolves with the decoded result."""
        future: Future = Future()
        self._new_reads.append((next(self._read_ids), name, args, future))
        self.wake()
        return future

    def close_descriptors(self) -> None:
        """Close this process's copies of the sender's sockets (in a forked child; the thread is not ours)."""
        for sock in (self.sock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def stop(self, timeout: float) -> None:
        """Deliver everything queued, within ``timeout``; count the rest as lost."""
        self._deadline = time.monotonic() + timeout
        self._stopping = True
        self.wake()
        self._thread.join(timeout + 1.0)
        if self._thread.is_alive():  # stuck in a system call: count what it still held
            stuck = self.unacked_events + len(self.buffer)
            self.lost += stuck
            self.done = True
            log.error("ml_persistence: %d events not committed by the agent at %s (sender stuck)", stuck, self.address)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.05
        try:
            while not self._finished():
                if self.sock is None:
                    welcome = self._connect()
                    if self.refused is not None:
                        return
                    if welcome is not None and self._resume(welcome):
                        delay = 0.05
                    else:
                        self._wait(delay)
                        delay = min(delay * 2, self.options.max_backoff)
                    continue
                if self._tick is not None:
                    self._tick()
                try:
                    busy = self._pump()
                    self._wait(0 if busy else self.options.flush_interval)
                except (OSError, p.ProtocolError, msgspec.DecodeError) as exc:
                    self._disconnect(f"connection lost: {exc}")
        except BaseException as exc:  # noqa: BLE001 - the thread must not die silently
            log.error("ml_persistence: agent sender crashed: %r", exc)
            self.failure = AgentError(f"agent sender crashed: {exc!r}")
            self._fail_all(self.failure)
            raise
        finally:
            self._finish()
            self.done = True

    def _resume(self, welcome: p.Welcome) -> bool:
        """Take in the agent's Welcome and replay what it lacks; False if the connection dropped meanwhile."""
        self.frame_bytes = min(FRAME_BYTES, welcome.max_frame // 2)
        self.max_frame = welcome.max_frame
        if welcome.rejected < self.agent_rejected_total:
            self.agent_rejected_total = 0  # a new agent: its count of this client starts again
        self._note_rejected(welcome.rejected)
        if welcome.database is not None:
            self.agent_database = welcome.database
        try:
            self._acknowledge(welcome.committed_seq)
            for body in self._early:  # acknowledgements that came with the Welcome
                self._handle(p.decode_agent_message(body))
            self._early = []
            self._replay(welcome.received_seq)
        except (OSError, p.ProtocolError, msgspec.DecodeError) as exc:
            self._disconnect(f"connection lost during replay: {exc}")
            return False
        return True

    def _finished(self) -> bool:
        if not self._stopping:
            return False
        if self._deadline is not None and time.monotonic() > self._deadline:
            return True
        return not (len(self.buffer) or self.unacked or self.calls or self.buffer.requests or self.barriers)

    def _finish(self) -> None:
        """Save what never reached the database to a recovery file (lost if none can be written); release every waiter."""
        items = self.buffer.take(len(self.buffer))
        unwritten: list[tuple[int, bytes]] = []
        for first, events in self.unacked:
            unwritten.extend(zip(itertools.count(first), events))
        unsent = [item for item in items if type(item) is bytes]
        unwritten.extend(zip(itertools.count(self.next_seq), unsent))  # type: ignore[arg-type]
        self.next_seq += len(unsent)  # numbered as if sent: the file's keys never meet another event's
        self.unacked.clear()
        self.unacked_events = 0
        path = self._save(unwritten) if unwritten else None
        error: Optional[BaseException] = self.refused
        if path is not None:
            self.saved += len(unwritten)
            self.recovery_files.append(path)
            message = f"{len(unwritten)} events not committed by the agent at {self.address}; saved to {path}"
            error = error or EventsSavedError(message, (path,))
            log.warning("ml_persistence: %s", message)
        elif unwritten:
            self.lost += len(unwritten)
            error = error or WriterError(f"{len(unwritten)} events not committed by the agent at {self.address}")
            log.error(
                "ml_persistence: %d events not committed by the agent at %s, and no recovery file could be written; "
                "they are lost", len(unwritten), self.address,
            )
        if error is not None and self.failure is None and unwritten:
            self.failure = error
        for item in items:
            if type(item) is Barrier:
                item.set(error)
        self._fail_all(error or AgentError("the agent client stopped"))
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.connected = False
        self._wake_r.close()
        self._wake_w.close()

    def _save(self, unwritten: list[tuple[int, bytes]]) -> Optional[str]:
        """Write events to a recovery file keyed by this client's sequence numbers; None if nowhere had room.

        The keys make it exactly once: whatever of them the agent did store is skipped when applied. For an
        agent on this machine the file names its database, so the next writer there applies it by itself.
        """
        from . import recovery

        local = self.address.kind == "unix" or p.is_loopback(self.address.host)
        db = self.agent_database if local else None
        try:
            return recovery.save(db, [payload for _, payload in unwritten], [(self.client_id, seq) for seq, _ in unwritten])
        except Exception as exc:  # noqa: BLE001 - a failed save must still release every waiter
            log.error("ml_persistence: could not save a recovery file: %r", exc)
            return None

    def _fail_all(self, error: BaseException) -> None:
        for request in self.buffer.take_requests():
            request.future.set_exception(error)
        for _, future in list(self.calls.values()):
            if not future.done():
                future.set_exception(error)
        self.calls.clear()
        for _, barrier in self.barriers:
            barrier.set(error)
        self.barriers.clear()
        for barrier in self.buffer.barriers():
            barrier.set(error)
        while self._new_reads:
            self.reads[self._new_reads[0][0]] = self._new_reads.popleft()[1:]
        for _, _, future in list(self.reads.values()):
            if not future.done():
                future.set_exception(error)
        self.reads.clear()

    def _wait(self, timeout: float) -> None:
        """Sleep until woken, an agent message arrives, or ``timeout``; then read what arrived."""
        watch = [self._wake_r] + ([self.sock] if self.sock is not None else [])
        if self._deadline is not None:
            timeout = max(0.0, min(timeout, self._deadline - time.monotonic()))
        readable, _, _ = select.select(watch, [], [], timeout)
        if self._wake_r in readable:
            try:
                self._wake_r.recv(4096)
            except BlockingIOError:
                pass
            self.buffer.wake_pending = False
        if self.sock is not None and self.sock in readable:
            try:
                self._receive()
            except (OSError, p.ProtocolError, msgspec.DecodeError) as exc:
                self._disconnect(f"connection lost: {exc}")

    # -- connecting ----------------------------------------------------------------------------

    def _refuse(self, error: AgentRefusedError) -> None:
        self.refused = error
        self.failure = error
        log.error("ml_persistence: %s", error)
        if self._on_refused is not None:
            self._on_refused(error)
        self._fail_all(error)

    def _connect(self) -> Optional[p.Welcome]:
        """Connect and shake hands; return the agent's Welcome, or None (refused, unreachable)."""
        address = self.address
        timeout = CONNECT_TIMEOUT
        if self._deadline is not None:
            timeout = max(0.05, min(timeout, self._deadline - time.monotonic()))
        token = self.token
        peer_ip: Optional[str] = None
        try:
            if self._reach is not None:
                address = self.address = self._reach()  # a private writer process that died is started again
            if address.kind == "unix":
                _check_private(address)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(address.path)
            else:
                sock = socket.create_connection((address.host, address.port), timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer_ip = sock.getpeername()[0]
                if token is None:  # the token a local agent made for the address reached, in this user's runtime dir
                    try:
                        token = published_token(address, peer_ip)
                    except BaseException:
                        sock.close()
                        raise
        except (PermissionError, InvalidValueError) as exc:
            self._refuse(AgentRefusedError(str(exc)))
            return None
        except (OSError, MLPersistenceError) as exc:
            log.debug("cannot reach the agent at %s: %s", address, exc)
            return None
        try:
            hello = p.Hello(p.PROTOCOL_VERSION, self.client_id, os.getpid(), socket.gethostname(), token)
            sock.sendall(p.frame(hello))
            reply = self._first_reply(sock)
        except (OSError, p.ProtocolError, msgspec.DecodeError) as exc:
            sock.close()
            log.debug("handshake with the agent at %s failed: %s", address, exc)
            return None
        if type(reply) is p.Refused:
            sock.close()
            if self.token is None and _published_token_changed(address, peer_ip, token):
                log.debug("the agent at %s has a new token; connecting again", address)
                return None  # a restarted agent published it after we read the old one
            self._refuse(AgentRefusedError(f"the agent at {address} refused this client: {reply.reason}"))
            return None
        if type(reply) is not p.Welcome:
            sock.close()
            return None
        sock.setblocking(False)
        self.sock = sock
        self.connected = True
        return reply

    def _first_reply(self, sock: socket.socket) -> p.Message:
        """Return the agent's first message; frames that followed it wait in self._early."""
        decoder = p.FrameDecoder(max_frame=1 << 31)
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("the agent closed the connection during the handshake")
            bodies = decoder.feed(data)
            if bodies:
                self._decoder = decoder
                self._early = bodies[1:]
                return p.decode_agent_message(bodies[0])

    def _disconnect(self, reason: str) -> None:
        if self.sock is not None:
            log.warning("ml_persistence: %s (agent %s); will reconnect and replay", reason, self.address)
            self.sock.close()
        self.sock = None
        self.connected = False
        self.reconnects += 1
        self._out.clear()

    def _replay(self, received_seq: int) -> None:
        """Resend what the agent may not have: unanswered calls, events after ``received_seq``, reads."""
        for seq, (payload, _) in sorted(self.calls.items()):
            self._send(p.Call(seq, msgspec.Raw(payload)))
        for first, events in self.unacked:
            last = first + len(events) - 1
            if last > received_seq:  # the agent skips the part it has; the whole range goes again
                self.replayed += last - max(first, received_seq + 1) + 1
                self._send_run(first, events)
        if self.barriers:
            self._send(p.Flush(self.barriers[-1][0]))
        for read_id, (name, args, _) in list(self.reads.items()):
            self._send(p.Read(read_id, name, args))
        self._transmit()

    # -- sending -------------------------------------------------------------------------------

    def _send(self, message: p.Message) -> None:
        """Queue ``message``; _transmit() sends everything queued in one go."""
        self._out.append(p.frame(message))

    def _transmit(self) -> None:
        """Send the queued frames, reading acknowledgements meanwhile so neither side can stall the other."""
        if not self._out:
            return
        data = memoryview(b"".join(self._out))
        self._out.clear()
        sock = self.sock
        assert sock is not None
        progress = time.monotonic()
        while data:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent:
                data = data[sent:]
                progress = time.monotonic()
                continue
            readable, _, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                self._receive()
                progress = time.monotonic()
            if time.monotonic() - progress > SEND_STALL:
                raise TimeoutError(f"the agent took no data for {SEND_STALL:.0f} s")
            if self._deadline is not None and time.monotonic() > self._deadline:
                raise TimeoutError("close deadline passed while sending")

    def _send_run(self, first: int, events: list[bytes], data: Optional[bytes] = None) -> None:
        """Queue events numbered from ``first`` as Events frames, each under frame_bytes but for a lone event."""
        if data is None:
            data = b"".join(events)
        if len(data) <= self.frame_bytes or len(events) == 1:
            self._out.append(p.events_frame(first, len(events), data))
            return
        half = len(events) // 2
        self._send_run(first, events[:half])
        self._send_run(first + half, events[half:])

    def _fits(self, payload: bytes) -> bool:
        """True if ``payload`` fits in one frame the agent accepts, with room for the frame's own header."""
        return len(payload) <= self.max_frame - _FRAME_OVERHEAD

    def _sendable(self, events: list[bytes]) -> list[bytes]:
        """Return ``events`` without those larger than the agent's frame limit (refused, counted and logged)."""
        fits = [event for event in events if self._fits(event)]
        if len(fits) < len(events):
            self.rejected += len(events) - len(fits)
            log.error(
                "ml_persistence: %d events exceed the frame limit of %s (%d MiB); not sent",
                len(events) - len(fits), self.address, self.max_frame >> 20,
            )
        return fits

    def _pump(self) -> bool:
        """Send new calls, reads and up to one batch of events; return True if more are waiting."""
        for request in self.buffer.take_requests():
            if not self._fits(request.payload):
                request.future.set_exception(InvalidValueError(
                    f"event of {len(request.payload) >> 20} MiB is larger than {self.address} accepts "
                    f"({self.max_frame >> 20} MiB)"
                ))
                continue
            seq = self.next_seq
            self.next_seq += 1
            self.calls[seq] = (request.payload, request.future)
            self._send(p.Call(seq, msgspec.Raw(request.payload)))
        while self._new_reads:
            read_id, name, args, future = self._new_reads.popleft()
            self.reads[read_id] = (name, args, future)
            self._send(p.Read(read_id, name, args))
        room = WINDOW - self.unacked_events
        if room <= 0:
            self._transmit()
            return False
        runs = self.buffer.take_runs(min(room, self.options.batch_size))
        flush_at = 0
        taken = 0
        numbered = 0
        for run in runs:
            if type(run) is Barrier:
                taken += 1
                last = self.next_seq - 1
                if last <= self.committed:
                    run.set()
                else:
                    self.barriers.append((last, run))
                    flush_at = last
                continue
            events: list[bytes] = run  # type: ignore[assignment]
            taken += len(events)
            data: Optional[bytes] = b"".join(events)
            if len(data) > self.frame_bytes:  # type: ignore[arg-type]
                events, data = self._sendable(events), None
                if not events:
                    continue
            first = self.next_seq
            self.next_seq += len(events)
            self.unacked.append((first, events))
            self.unacked_events += len(events)
            self._send_run(first, events, data)
            numbered += len(events)
        if flush_at:
            self._send(p.Flush(flush_at))
        self._transmit()
        self.sent += numbered  # handed to the kernel: the agent gets them even if this process dies now
        return taken >= self.options.batch_size and len(self.buffer) > 0

    # -- receiving -----------------------------------------------------------------------------

    def _receive(self) -> None:
        sock = self.sock
        assert sock is not None
        while True:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                return
            if not data:
                raise ConnectionResetError("the agent closed the connection")
            for body in self._decoder.feed(data):
                self._handle(p.decode_agent_message(body))

    def _handle(self, message: p.Message) -> None:
        match message:
            case p.Committed(seq=seq, rejected=rejected) | p.Flushed(seq=seq, rejected=rejected):
                self._note_rejected(rejected)
                self._acknowledge(seq)
            case p.Answer(seq=seq, row_id=row_id, error=error):
                entry = self.calls.pop(seq, None)
                if entry is not None and not entry[1].done():
                    if error is not None:
                        entry[1].set_exception(WriterError(error))
                    else:
                        self.acknowledged += self._calls_are_writes
                        entry[1].set_result(row_id)
            case p.ReadAnswer(read_id=read_id, result=result, error=error):
                read = self.reads.pop(read_id, None)
                if read is not None and not read[2].done():
                    if error is not None:
                        read[2].set_exception(AgentError(error))
                    else:
                        read[2].set_result(p.decode_value(result))
            case _:
                raise p.ProtocolError(f"unexpected {type(message).__name__} from the agent")

    def _note_rejected(self, count: int) -> None:
        """Take in the agent's growing count of this client's refused events."""
        new = count - self.agent_rejected_total
        if new > 0:
            self.rejected += new
            self.agent_rejected += new
            self.agent_rejected_total = count

    def _acknowledge(self, seq: int) -> None:
        """Everything up to ``seq`` is committed: drop the ranges it covers, release barriers."""
        if seq <= self.committed:
            return
        previous = self.committed
        self.committed = seq
        unacked = self.unacked
        while unacked:
            first, events = unacked[0]
            last = first + len(events) - 1
            newly = min(last, seq) - max(first, previous + 1) + 1
            if newly > 0:
                self.acknowledged += newly
            if last > seq:
                break
            unacked.popleft()
            self.unacked_events -= len(events)
        barriers = self.barriers
        while barriers and barriers[0][0] <= seq:
            barriers.popleft()[1].set()


def _published_token_changed(address: Address, peer_ip: Optional[str], used: Optional[str]) -> bool:
    """True if the token published for ``address`` (reached at ``peer_ip``) is now another than ``used``."""
    try:
        return published_token(address, peer_ip) not in (None, used)
    except (OSError, InvalidValueError):
        return False


def _check_private(address: Address) -> None:
    """Refuse the default socket when its directory is not this user's own (someone could listen there)."""
    if address != default_address():
        return
    directory = os.path.dirname(address.path)
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return  # no agent yet; connect() fails and is retried
    if not is_private(info):
        raise PermissionError(f"{directory} is not a private directory of this user: not connecting to its socket")
