"""The agent client: a Backend twin whose sender thread streams events to an agent over a socket.

Log calls are unchanged: validate, encode, append to the same EventBuffer (spilling to disk past
its bound). The sender numbers events, sends them in frames, keeps every unacknowledged one and
replays it after a reconnect; the agent ignores what it already committed.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import itertools
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Optional

import msgspec

from . import protocol as p
from .storage import REMOTE_READS
from .address import Address, default_address, is_private, published_token
from .buffer import Barrier, EventBuffer
from .errors import (
    AgentError,
    AgentRefusedError,
    ClosedError,
    EventsDroppedError,
    EventsSavedError,
    FlushTimeoutError,
    InvalidValueError,
    WriterError,
)
from .writer import WriterOptions

log = logging.getLogger("ml_persistence.agent_client")

CONNECT_TIMEOUT = 5.0
SEND_STALL = 30.0  # a connection that takes no bytes and sends none for this long is dead
WINDOW = 65536  # events sent and not yet acknowledged, at most
FRAME_BYTES = 8 << 20  # events per Events frame stop here (the agent accepts 64 MiB by default)
MAX_EVENT_BYTES = 32 << 20  # a larger single event is refused at the call
RETIRED_COUNTERS = ("sent", "written", "replayed", "reconnects", "rejected", "lost", "saved")


class AgentBackend:
    """Everything a facade needs from a Backend, served by an agent at ``address``."""

    def __init__(self, address: Address, token: Optional[str], options: Optional[WriterOptions] = None) -> None:
        self.address = address
        self.path = str(address)
        self.token = token
        self.options = options or WriterOptions()
        self.closed = False
        self.request_timeout = float(os.environ.get("ML_PERSISTENCE_AGENT_TIMEOUT", "60"))
        self._reset()

    def _reset(self) -> None:
        """Start with a new client id, no sender and an empty queue (also a forked child's first step)."""
        inherited = getattr(self, "_sender", None)
        if inherited is not None:  # a forked child: close our copies of the parent's descriptors
            inherited.close_descriptors()
            self.buffer.spool.close()
        self.running: dict[int, int] = {}
        self.refused: Optional[AgentRefusedError] = None  # once refused, every call raises this
        self.client_id = uuid.uuid4().hex
        self.next_seq = 1  # sequence numbers continue across senders: the agent keys on (client_id, seq)
        self._retired = dict.fromkeys(RETIRED_COUNTERS, 0)  # counters of senders that have stopped
        self.agent_rejected = 0  # the agent's count of this client's refused events, as last heard
        self.agent_database: Optional[str] = None  # the agent's database file, as its Welcome said
        self.recovery_files: list[str] = []  # where events unsent or unacknowledged at a deadline went
        self._lock = threading.RLock()
        self._held_for_fork: Optional[threading.Lock] = None
        self._reported = 0
        self.buffer = EventBuffer(
            self.options.max_queue,
            self.options.wake_threshold,
            self._kick,
            self.options.new_spool(),
        )
        self._sender: Optional[Sender] = None

    def __repr__(self) -> str:
        return f"<AgentBackend {self.path!r} {self.counters()}>"

    def counters(self) -> str:
        """Return the status counters as 'name=value' text, for reprs."""
        s = self.status()
        keys = ("connected", "queued", "written", "spilled", "replayed", "reconnects", "dropped", "lost")
        return f"agent={self.path} " + " ".join(f"{k}={s[k]}" for k in keys)

    # -- the write path ------------------------------------------------------------------------

    def append(self, payload: bytes) -> None:
        """Queue an encoded event; never blocks (user thread)."""
        if self.closed or self.refused is not None:
            self._check_usable()
        if len(payload) > MAX_EVENT_BYTES:
            raise InvalidValueError(
                f"event of {len(payload) >> 20} MiB is larger than the agent accepts ({MAX_EVENT_BYTES >> 20} MiB)"
            )
        self.buffer.append(payload)

    def request(self, payload: bytes, timeout: Optional[float] = None) -> Any:
        """Send an id-returning event and wait for the agent's answer."""
        self._check_usable()
        if len(payload) > MAX_EVENT_BYTES:
            raise InvalidValueError(f"event of {len(payload) >> 20} MiB is larger than the agent accepts")
        future = self.buffer.request(payload)
        return self._wait(future, timeout, "an answer")

    def flush(self, timeout: Optional[float] = None) -> None:
        """Wait until everything appended before this call is committed by the agent; raise on losses."""
        self.wait_committed(timeout)
        self._raise_losses()

    def wait_committed(self, timeout: Optional[float] = None) -> None:
        """Wait until everything appended before this call is committed or given up on."""
        self._check_usable()
        if self._sender is None and not len(self.buffer):
            return
        barrier = self.buffer.barrier()
        if not barrier.wait(timeout):
            raise FlushTimeoutError(
                f"flush did not finish within {timeout} s ({self.status()['queued']} events not yet committed "
                f"by the agent at {self.path})"
            )
        if barrier.error is not None:
            raise barrier.error

    def close(self, timeout: Optional[float] = None, final: bool = False) -> None:
        """Send what is queued, wait for the agent to commit it, stop the sender (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = final
            sender = self._sender
            if sender is not None:
                sender.stop(timeout if timeout is not None else 3600.0)
                self._retire(sender)
                self.buffer.idle = True
        self._raise_losses()

    def _retire(self, sender: "Sender") -> None:
        """Keep a stopped sender's counters, and forget it."""
        if self._sender is sender:
            self._sender = None
        for key in self._retired:
            self._retired[key] += getattr(sender, key)

    @property
    def writer_alive(self) -> bool:
        sender = self._sender
        return sender is not None and sender.alive

    def _kick(self) -> None:
        sender = self._sender
        if sender is None or not sender.alive:
            self._start_sender()
        else:
            sender.wake()

    def _start_sender(self) -> None:
        with self._lock:
            sender = self._sender
            if sender is not None and sender.alive:
                sender.wake()
                return
            if self.closed or self.refused is not None:
                return
            if sender is not None:
                self._retire(sender)
            from . import lifecycle

            lifecycle.install()
            sender = Sender(self)
            try:
                sender.start()
            except RuntimeError:
                return  # interpreter shutdown
            self._sender = sender
            self.buffer.idle = False

    def end_now(self, events: list[Any], timeout: float) -> None:
        """End experiments by running a sender in this thread: for interpreter exit, when no thread may start."""
        from .events import encode

        for event in events:
            self.buffer.append(encode(event))
        sender = Sender(self)
        sender._stopping = True
        sender._deadline = time.monotonic() + timeout
        self._sender = sender
        sender._run()
        self._retire(sender)

    # -- reads ---------------------------------------------------------------------------------

    def read(self, name: str, *args: Any) -> Any:
        """Run the named read in the agent, after everything this process logged is committed there."""
        if name not in REMOTE_READS:
            raise AgentError(f"{name!r} is not a query the agent answers")
        self._check_usable()
        self._kick()
        future = self._sender.read(name, list(args)) if self._sender else None
        if future is None:
            raise AgentError(f"cannot reach the agent at {self.path}")
        return self._wait(future, None, "the query's result")

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Return counters: queued, spooled, spilled, sent, written, replayed, reconnects, dropped, lost."""
        sender = self._sender
        counts = dict(self._retired)
        if sender is not None:
            for key in counts:
                counts[key] += getattr(sender, key)
        return {
            "mode": "agent",
            "path": self.path,
            "client_id": self.client_id,
            "connected": bool(sender and sender.connected),
            "queued": len(self.buffer) + (len(sender.unacked) if sender else 0),
            "spooled": len(self.buffer.spool),
            "spilled": self.buffer.spilled,
            "dropped": self.buffer.dropped,
            **counts,
            "recovery_files": list(self.recovery_files),
            "failure": repr(self.refused) if self.refused else None,
        }

    def _raise_losses(self) -> None:
        s = self.status()
        losses = s["dropped"] + s["lost"] + s["rejected"] + s["saved"]
        if losses <= self._reported:
            return
        self._reported = losses
        message = (
            f"{s['dropped']} events dropped (spool full), {s['rejected']} refused (malformed, too large, or refused by the database), "
            f"{s['lost']} not committed by the agent at a close deadline"
        )
        if s["saved"] and not (s["dropped"] or s["rejected"] or s["lost"]):
            message = f"{s['saved']} events not committed by the agent at {self.path} by the close deadline"
        if s["saved"]:
            message += f"; saved to {', '.join(self.recovery_files)}. Store them with: " + " && ".join(
                self._recover_command(f) for f in self.recovery_files
            )
        if s["dropped"]:
            raise EventsDroppedError(message)
        if s["saved"]:
            raise EventsSavedError(message, tuple(self.recovery_files))
        raise WriterError(message)

    def _recover_command(self, path: str) -> str:
        from . import recovery

        if self.agent_database is None:
            return recovery.command(path, None) + " --db DB (the agent's database)"
        return recovery.command(path, self.agent_database) + (
            "" if self._agent_is_local() else " (on the agent's host)"
        )

    def _agent_is_local(self) -> bool:
        return self.address.kind == "unix" or p.is_loopback(self.address.host)

    def _check_usable(self) -> None:
        if self.closed:
            raise ClosedError(f"ml_persistence client of {self.path} is closed")
        if self.refused is not None:
            raise self.refused

    def _wait(self, future: Future, timeout: Optional[float], what: str) -> Any:
        limit = self.request_timeout if timeout is None else timeout
        try:
            return future.result(limit)
        except TimeoutError:
            if self.refused is not None:
                raise self.refused from None
            sender = self._sender
            state = "connected" if sender and sender.connected else "not connected"
            raise AgentError(
                f"no answer from the agent at {self.path} within {limit} s ({state}; "
                "is `ml-persistence-agent` running? ML_PERSISTENCE_AGENT_TIMEOUT sets the wait)"
            ) from None


class Sender:
    """The client's one network thread: connect, hello, send frames, read acks, reconnect, replay."""

    def __init__(self, backend: AgentBackend) -> None:
        self.backend = backend
        self.buffer = backend.buffer
        self.options = backend.options
        self.sock: Optional[socket.socket] = None
        self.connected = False
        self.refused: Optional[AgentRefusedError] = None
        self.next_seq = backend.next_seq
        self.committed = 0  # every event with seq <= committed is in the database
        self.unacked: deque[tuple[int, bytes]] = deque()  # sent events not yet committed
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
        self._stopping = False
        self._deadline: Optional[float] = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._decoder = p.FrameDecoder(max_frame=1 << 31)
        self._out: list[bytes] = []
        self.frame_bytes = FRAME_BYTES
        self.rejected = 0  # events not stored: too large to send, or refused by the agent
        self._thread = threading.Thread(target=self._run, name="ml-persistence-sender", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def written(self) -> int:
        """Events the agent stored: acknowledged ones but those it refused (a refusal is counted no later than its ack)."""
        return max(0, self.acknowledged - self.agent_rejected)

    def start(self) -> None:
        self._thread.start()

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
            stuck = len(self.unacked) + len(self.buffer)
            self.lost += stuck
            log.error("ml_persistence: %d events not committed by the agent at %s (sender stuck)", stuck, self.backend.path)

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
                try:
                    busy = self._pump()
                    self._wait(0 if busy else self.options.flush_interval)
                except (OSError, p.ProtocolError, msgspec.DecodeError) as exc:
                    self._disconnect(f"connection lost: {exc}")
        except BaseException as exc:  # noqa: BLE001 - the thread must not die silently
            log.error("ml_persistence: agent sender crashed: %r", exc)
            self._fail_all(AgentError(f"agent sender crashed: {exc!r}"))
            raise
        finally:
            self._finish()

    def _resume(self, welcome: p.Welcome) -> bool:
        """Take in the agent's Welcome and replay what it lacks; False if the connection dropped meanwhile."""
        self.frame_bytes = min(FRAME_BYTES, welcome.max_frame // 2)
        if welcome.rejected < self.backend.agent_rejected:
            self.backend.agent_rejected = 0  # a new agent: its count of this client starts again
        self._note_rejected(welcome.rejected)
        if welcome.database is not None:
            self.backend.agent_database = welcome.database
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
        unsent = [(seq, item) for seq, item in zip(itertools.count(self.next_seq), (i for i in items if type(i) is bytes))]
        self.next_seq += len(unsent)  # numbered as if sent: the file's keys never meet another event's
        self.backend.next_seq = self.next_seq
        unwritten = list(self.unacked) + unsent
        self.unacked.clear()
        path = self._save(unwritten) if unwritten else None
        error: Optional[BaseException] = self.refused
        if path is not None:
            self.saved += len(unwritten)
            self.backend.recovery_files.append(path)
            message = f"{len(unwritten)} events not committed by the agent at {self.backend.path}; saved to {path}"
            error = error or EventsSavedError(message, (path,))
            log.warning("ml_persistence: %s", message)
        elif unwritten:
            self.lost += len(unwritten)
            error = error or WriterError(f"{len(unwritten)} events not committed by the agent at {self.backend.path}")
            log.error(
                "ml_persistence: %d events not committed by the agent at %s, and no recovery file could be written; "
                "they are lost", len(unwritten), self.backend.path,
            )
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

        backend = self.backend
        db = backend.agent_database if backend._agent_is_local() else None
        try:
            return recovery.save(db, [payload for _, payload in unwritten], [(backend.client_id, seq) for seq, _ in unwritten])
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

    def _connect(self) -> Optional[p.Welcome]:
        """Connect and shake hands; return the agent's Welcome, or None (refused, unreachable)."""
        address = self.backend.address
        timeout = CONNECT_TIMEOUT
        if self._deadline is not None:
            timeout = max(0.05, min(timeout, self._deadline - time.monotonic()))
        token = self.backend.token
        peer_ip: Optional[str] = None
        try:
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
            self.refused = AgentRefusedError(str(exc))
            self.backend.refused = self.refused
            log.error("ml_persistence: %s", exc)
            self._fail_all(self.refused)
            return None
        except OSError as exc:
            log.debug("cannot reach the agent at %s: %s", address, exc)
            return None
        try:
            hello = p.Hello(p.PROTOCOL_VERSION, self.backend.client_id, os.getpid(), socket.gethostname(), token)
            sock.sendall(p.frame(hello))
            reply = self._first_reply(sock)
        except (OSError, p.ProtocolError, msgspec.DecodeError) as exc:
            sock.close()
            log.debug("handshake with the agent at %s failed: %s", address, exc)
            return None
        if type(reply) is p.Refused:
            sock.close()
            if self.backend.token is None and _published_token_changed(address, peer_ip, token):
                log.debug("the agent at %s has a new token; connecting again", address)
                return None  # a restarted agent published it after we read the old one
            self.refused = AgentRefusedError(f"the agent at {address} refused this client: {reply.reason}")
            self.backend.refused = self.refused
            log.error("ml_persistence: %s", self.refused)
            self._fail_all(self.refused)
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
            log.warning("ml_persistence: %s (agent %s); will reconnect and replay", reason, self.backend.address)
            self.sock.close()
        self.sock = None
        self.connected = False
        self.reconnects += 1
        self._out.clear()

    def _replay(self, received_seq: int) -> None:
        """Resend what the agent may not have: unanswered calls, events after ``received_seq``, reads."""
        for seq, (payload, _) in sorted(self.calls.items()):
            self._send(p.Call(seq, msgspec.Raw(payload)))
        if any(len(payload) > self.frame_bytes for _, payload in self.unacked):
            kept = deque((seq, payload) for seq, payload in self.unacked if len(payload) <= self.frame_bytes)
            self.rejected += len(self.unacked) - len(kept)
            log.error("ml_persistence: %d events exceed the agent's frame limit; not sent", len(self.unacked) - len(kept))
            self.unacked = kept
        again = [(seq, payload) for seq, payload in self.unacked if seq > received_seq]
        if again:
            self.replayed += len(again)
            self._send_events(again)
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

    def _send_events(self, numbered: list[tuple[int, bytes]]) -> None:
        """Queue numbered events as Events frames of consecutive sequence numbers, each under FRAME_BYTES."""
        start = 0
        size = 0
        for i in range(len(numbered) + 1):
            if i < len(numbered):
                seq, payload = numbered[i]
                if i == start or (seq == numbered[i - 1][0] + 1 and size + len(payload) <= self.frame_bytes):
                    size += len(payload)
                    continue
            run = numbered[start:i]
            if run:
                self._send(p.Events(run[0][0], [msgspec.Raw(payload) for _, payload in run]))
            start = i
            size = len(numbered[i][1]) if i < len(numbered) else 0

    def _pump(self) -> bool:
        """Send new calls, reads and up to one batch of events; return True if more are waiting."""
        for request in self.buffer.take_requests():
            seq = self.next_seq
            self.next_seq += 1
            self.calls[seq] = (request.payload, request.future)
            self._send(p.Call(seq, msgspec.Raw(request.payload)))
        while self._new_reads:
            read_id, name, args, future = self._new_reads.popleft()
            self.reads[read_id] = (name, args, future)
            self._send(p.Read(read_id, name, args))
        room = WINDOW - len(self.unacked)
        if room <= 0:
            return False
        items = self.buffer.take(min(room, self.options.batch_size))
        numbered: list[tuple[int, bytes]] = []
        flush_at = 0
        for item in items:
            if type(item) is bytes:
                if len(item) > self.frame_bytes:
                    self.rejected += 1
                    log.error("ml_persistence: an event of %d bytes exceeds the agent's frame limit; not sent", len(item))
                    continue
                numbered.append((self.next_seq, item))
                self.next_seq += 1
            else:
                last = self.next_seq - 1
                if last <= self.committed:
                    item.set()  # type: ignore[union-attr]
                else:
                    self.barriers.append((last, item))  # type: ignore[arg-type]
                    flush_at = last
        if numbered:
            self.unacked.extend(numbered)
            self._send_events(numbered)
        if flush_at:
            self._send(p.Flush(flush_at))
        self._transmit()
        self.sent += len(numbered)  # handed to the kernel: the agent gets them even if this process dies
        return len(items) == self.options.batch_size and len(self.buffer) > 0

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
        new = count - self.backend.agent_rejected
        if new > 0:
            self.rejected += new
            self.agent_rejected += new
            self.backend.agent_rejected = count

    def _acknowledge(self, seq: int) -> None:
        if seq <= self.committed:
            return
        self.committed = seq
        unacked = self.unacked
        while unacked and unacked[0][0] <= seq:
            unacked.popleft()
            self.acknowledged += 1
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
