"""One client connection: handshake, then frames in, acknowledgements and answers out."""

from __future__ import annotations

import hmac
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Optional

import anyio
import anyio.abc
import msgspec

from ml_persistence import events as ev
from ml_persistence import protocol as p

from .gate import identify
from .ingest import EventsFrame, Frame, array_length, decode_client_frame

if TYPE_CHECKING:
    from .server import Agent, ClientState

log = logging.getLogger("ml_persistence.agent")
_MAX_SEQ = 2**63 - 1  # stored in SQLite INTEGER columns
DRAIN_QUIET = 0.2  # at shutdown, a connection with nothing more to read for this long is drained
MAX_READS_IN_FLIGHT = 64  # a client's reads waiting for an answer; more is abuse
DRAIN_MAX = 2.0  # ... and a client that keeps sending is read this long at most (it replays the rest)
SEND_LAST_TIMEOUT = 5.0  # a client that does not take its last answers (a Refused, acknowledgements) this long loses them


class Session:
    """Serves one connection until the client leaves, breaks the protocol, or the agent stops."""

    def __init__(self, agent: "Agent", stream: anyio.abc.ByteStream) -> None:
        self.agent = agent
        self.stream = stream
        self.peer = _peer(stream)
        self.origin = identify(stream)
        self.authenticated = False  # a valid Hello came: no longer counted by agent.gate
        self.state: Optional[ClientState] = None
        self._outbox: deque[tuple[bytes, bool]] = deque()  # encoded frames, and whether each answers a read
        self._outbox_bytes = 0  # answers queued behind the send in progress: unread by the client
        self._drop_reason: Optional[str] = None
        self._send_scope = anyio.CancelScope()
        self._closing = False  # the sender sends what is queued, then stops
        self._sender_done = anyio.Event()
        self._partial_held = 0  # bytes of an unfinished frame counted in agent.partial_bytes
        self._committed_seq = 0  # the latest Committed to send, coalesced
        self._outbox_ready = anyio.Event()
        self._read_scope = anyio.CancelScope()
        self._decoder = p.FrameDecoder(p.HELLO_MAX_BYTES)
        self._pending_bodies: deque[bytes] = deque()
        self._frame_started = 0.0
        self._draining = False
        self._reads_in_flight = 0
        self._drain_until = 0.0
        self._receive_scope: Optional[anyio.CancelScope] = None
        self.reading_done = anyio.Event()
        self._tasks: Optional[anyio.abc.TaskGroup] = None

    async def run(self) -> None:
        """Serve the connection; log why it ended."""
        self.agent.stats.connections += 1
        try:
            await self._run()
        except Exception:  # noqa: BLE001 - one connection's failure must not stop the agent
            self.agent.stats.dropped_connections += 1
            log.exception("closing connection from %s after an internal error", self.who)

    async def _run(self) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                tasks.start_soon(self._send_loop)
                reason = None
                try:
                    with self._read_scope:
                        reason = await self._serve()
                finally:
                    self.reading_done.set()
                reason = reason or self._drop_reason
                if reason:
                    self.agent.stats.dropped_connections += 1
                    if self.authenticated:
                        log.warning("closing connection from %s: %s", self.who, reason)
                    else:  # logged one by one, or summed up under a flood
                        self.agent.gate.refuse(self.origin.key, reason, f"closing connection from {self.who}: {reason}")
                elif self._draining or self._read_scope.cancel_called:
                    with anyio.move_on_after(5):
                        await self.agent.drained.wait()
                        await self._send_last()
                tasks.cancel_scope.cancel()
        finally:
            self._detach()
            self._release()
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()

    @property
    def who(self) -> str:
        state = self.state
        if state is None:
            return self.peer
        return f"{self.peer} (client {state.client_id[:8]} pid {state.pid} on {state.host})"

    def stop_reading(self) -> None:
        """Take the frames already sent, until the client is quiet, then stop; acknowledgements still go out."""
        if self.state is None:
            self._read_scope.cancel()
            return
        self._draining = True
        self._drain_until = anyio.current_time() + DRAIN_MAX
        if self._receive_scope is not None:
            self._receive_scope.cancel()  # wake the pending receive; it resumes in draining mode

    def send_committed(self, seq: int) -> None:
        """Tell the client everything up to ``seq`` is committed (coalesced with earlier ones)."""
        if seq > self._committed_seq:
            self._committed_seq = seq
            self._outbox_ready.set()

    @property
    def _rejected(self) -> int:
        return self.state.rejected if self.state is not None else 0

    def send(self, message: p.Message) -> None:
        """Queue ``message`` for the client; drop the connection if it leaves too many answers unread."""
        if self._outbox_bytes > self.agent.max_unread_bytes:
            self.drop(
                f"more than {self.agent.max_unread_bytes >> 20} MiB of answers unread "
                f"({len(self._outbox)} answers waiting for the client to read)"
            )
            return
        data = p.frame(message)
        self._outbox.append((data, type(message) is p.ReadAnswer))
        self._outbox_bytes += len(data)
        self._outbox_ready.set()

    def drop(self, reason: str) -> None:
        """Close the connection now, logging ``reason``; the client reconnects and replays what is unacknowledged."""
        if self._drop_reason is None:
            self._drop_reason = reason
        self._read_scope.cancel()
        self._send_scope.cancel()  # the send in progress may wait on a client that does not read

    def _release(self) -> None:
        """Give back what the connection held: its unfinished frame, its unsent answers."""
        self.agent.partial_bytes -= self._partial_held
        self._partial_held = 0
        self._decoder.clear()
        self._pending_bodies.clear()
        self._outbox.clear()
        self._outbox_bytes = 0

    # -- reading -------------------------------------------------------------------------------

    async def _serve(self) -> Optional[str]:
        """Read and handle frames; return why the connection must close, or None if the client left."""
        try:
            with anyio.fail_after(self.agent.hello_timeout):
                hello = await self._next_message()
            if hello is None:
                return None
            if type(hello) is not p.Hello:
                return f"expected Hello first, got {type(hello).__name__}"
            refusal = self._check(hello)
            if refusal is not None:
                self.agent.stats.refused += 1
                await self.agent.gate.failed(self, refusal, f"refusing {self.peer}: {refusal}")
                self.send(p.Refused(refusal))
                await self._send_last()
                return None
            self.authenticated = True
            self.agent.gate.authenticated(self)
            await self._attach(hello)
            while True:
                message = await self._next_message()
                if message is None:
                    return None
                self._handle(message)
                if self.agent.pending >= self.agent.max_pending:
                    await self.agent.wait_for_space()
        except _Stale:
            log.info("closing a stale connection from %s: its client reconnected", self.peer)
            return None
        except _OverBudget as exc:
            return str(exc)
        except TimeoutError:
            return "no complete frame in time" if self.state else "no Hello in time"
        except (p.ProtocolError, ValueError) as exc:  # msgspec's DecodeError is a ValueError
            return f"protocol error: {exc}"
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError) as exc:
            return f"connection broken: {exc}" if self._decoder.partial else None

    async def _next_message(self) -> Optional[p.Message]:
        """Return the next message, or None when the client closed between frames."""
        while True:
            if self._pending_bodies:
                return decode_client_frame(self._pending_bodies.popleft())
            draining = self._draining
            data = b""
            try:
                with anyio.CancelScope() as scope:
                    self._receive_scope = scope
                    if draining:
                        scope.deadline = min(anyio.current_time() + DRAIN_QUIET, self._drain_until)
                    if self._decoder.partial and self.state is not None:
                        # The whole frame must arrive within frame_timeout of its first byte.
                        left = self._frame_started + self.agent.frame_timeout - anyio.current_time()
                        with anyio.fail_after(max(0.0, left)):
                            data = await self.stream.receive(1 << 20)
                    else:
                        data = await self.stream.receive(1 << 20)
                        self._frame_started = anyio.current_time()
            except anyio.EndOfStream:
                if self._decoder.partial:
                    raise p.ProtocolError("client vanished in the middle of a frame") from None
                return None
            finally:
                self._receive_scope = None
            if scope.cancelled_caught:
                if draining:
                    return None  # nothing more was waiting: the drain is complete
                continue  # the agent is stopping: read on until the client is quiet
            bodies = self._decoder.feed(data)
            if bodies:
                self._frame_started = anyio.current_time()  # a frame completed: the next one starts now
            self._pending_bodies.extend(bodies)
            self._hold_partial()

    def _hold_partial(self) -> None:
        """Count this connection's unfinished frame in the agent's total; past its cap, this connection goes."""
        if self.state is None:
            return  # before the Hello, a frame is at most HELLO_MAX_BYTES
        agent = self.agent
        held = self._decoder.buffered
        grew = held > self._partial_held
        agent.partial_bytes += held - self._partial_held
        self._partial_held = held
        if grew and agent.partial_bytes > agent.max_partial_bytes:
            raise _OverBudget(
                f"unfinished frames of all connections would hold more than {agent.max_partial_bytes >> 20} MiB "
                f"(this one {held >> 20} MiB of a frame)"
            )

    def _check(self, hello: p.Hello) -> Optional[str]:
        if hello.version != p.PROTOCOL_VERSION:
            return f"protocol version {hello.version} is not supported (agent speaks {p.PROTOCOL_VERSION})"
        refusal = self.agent.gate.peer_refusal(self.origin)
        if refusal is not None:
            return refusal
        token = self.agent.token
        if token is not None and not (self.agent.token_generated and self.origin.uid is not None):
            if not hello.token:
                return "this agent requires a token (set ML_PERSISTENCE_TOKEN)"
            if not hmac.compare_digest(hello.token.encode(), token.encode()):
                return "wrong token"
        if not hello.client_id or len(hello.client_id) > 128:
            return "invalid client id"
        return None

    async def _attach(self, hello: p.Hello) -> None:
        state = await self.agent.client(hello.client_id)
        previous = state.session
        if previous is not None and previous is not self:
            previous.state = None  # the client reconnected; the old connection is dead to it
        state.session = self
        state.pid, state.host = hello.pid, hello.host
        self.state = state
        self._decoder.max_frame = self.agent.max_frame
        self.send(
            p.Welcome(
                p.PROTOCOL_VERSION, state.received, state.committed, self.agent.max_frame, state.rejected, self.agent.db_path
            )
        )
        log.info("client %s connected from %s: pid %d on %s", hello.client_id[:8], self.peer, hello.pid, hello.host)

    def _detach(self) -> None:
        self.agent.sessions.discard(self)
        self.agent.gate.closed(self)
        state = self.state
        if state is not None and state.session is self:
            state.session = None

    def _handle(self, message: p.Message) -> None:
        state = self.state
        if state is None:  # the client reconnected on another connection; this one is stale
            raise _Stale
        match message:
            case EventsFrame():
                self._events(state, message)
            case p.Call():
                self._call(state, message)
            case p.Flush(seq=seq):
                self.agent.buffer.barrier(self._flushed_callback(seq))
            case p.Read():
                self._read(message)
            case _:
                raise p.ProtocolError(f"unexpected {type(message).__name__} after the handshake")

    def _events(self, state: "ClientState", message: EventsFrame) -> None:
        first = message.first_seq
        count = array_length(message.events)
        last = first + count - 1
        if first < 1 or last > _MAX_SEQ:
            raise p.ProtocolError(f"sequence numbers run from 1 to 2**63 - 1, got {first}..{last}")
        if last <= state.received:
            self.agent.stats.duplicates += count
            return
        skip = max(0, state.received + 1 - first)
        self.agent.stats.duplicates += skip
        state.received = last
        # Each event is decoded and checked by the writer, which counts and logs the ones it refuses.
        self.agent.submit(state, last, Frame.after(message.events, count, skip))

    def _call(self, state: "ClientState", message: p.Call) -> None:
        seq = message.seq
        if not 1 <= seq <= _MAX_SEQ:
            raise p.ProtocolError(f"sequence numbers run from 1 to 2**63 - 1, got {seq}")
        try:
            event = ev.decode(message.event)
            ev.check(event)
        except (msgspec.DecodeError, ValueError) as exc:
            self.agent.stats.rejected += 1
            self._answer(state, seq, None, f"event refused: {exc}")
            return
        self.agent.call(state, seq, event, lambda row_id, error: self._answer(state, seq, row_id, error))

    def _answer(self, state: "ClientState", seq: int, row_id: Optional[int], error: Optional[str]) -> None:
        session = state.session  # the client may have reconnected meanwhile
        if session is not None:
            session.send(p.Answer(seq, row_id, error))

    def _flushed_callback(self, seq: int) -> Any:
        state = self.state
        loop = self.agent._loop
        assert state is not None and loop is not None

        def flushed(barrier: Any) -> None:  # writer thread
            if barrier.error is None:
                loop.call_soon_threadsafe(self._flushed, state, seq)

        return flushed

    def _flushed(self, state: "ClientState", seq: int) -> None:
        session = state.session
        if session is not None:
            session.send(p.Flushed(seq, state.rejected))

    def _read(self, message: p.Read) -> None:
        if self._reads_in_flight >= MAX_READS_IN_FLIGHT:
            raise p.ProtocolError(f"more than {MAX_READS_IN_FLIGHT} reads in flight")
        self._reads_in_flight += 1

        async def answer() -> None:
            try:
                result = await self.agent.read(message.query, message.args)
            except Exception as exc:  # noqa: BLE001 - the reason goes back to the caller
                self.send(p.ReadAnswer(message.read_id, error=f"{type(exc).__name__}: {exc}"))
            else:
                self.send(p.ReadAnswer(message.read_id, msgspec.Raw(result)))

        assert self._tasks is not None
        self._tasks.start_soon(answer)

    # -- writing -------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        """The connection's only sender (two tasks sending on one stream at once is an error)."""
        try:
            with self._send_scope:
                while True:
                    await self._outbox_ready.wait()
                    self._outbox_ready = anyio.Event()
                    await self._flush_outbox()
                    if self._closing and not self._outbox and not self._committed_seq:
                        return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            self._read_scope.cancel()
        finally:
            self._sender_done.set()

    async def _send_last(self) -> None:
        """Have the sender send everything queued, then stop; return when it has."""
        self._closing = True
        self._outbox_ready.set()
        with anyio.move_on_after(SEND_LAST_TIMEOUT):
            await self._sender_done.wait()

    async def _flush_outbox(self) -> None:
        chunks = []
        reads = 0
        while self._outbox:  # the Welcome, when there is one, goes first
            data, answers_read = self._outbox.popleft()
            chunks.append(data)
            reads += answers_read
        queued = sum(len(c) for c in chunks)
        self._outbox_bytes -= queued  # now in the send in progress
        if self._committed_seq:
            chunks.append(p.frame(p.Committed(self._committed_seq, self._rejected)))
            self._committed_seq = 0
        if chunks:
            await self.stream.send(b"".join(chunks))
        self._reads_in_flight -= reads  # a read is done once its answer is sent, not when it is queued


class _Stale(Exception):
    """The connection's client has reconnected on another connection."""


class _OverBudget(Exception):
    """Accepting more of this connection's frame would pass the agent's cap on unfinished frames."""


def _peer(stream: anyio.abc.ByteStream) -> str:
    try:
        remote = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except Exception:  # noqa: BLE001
        return "?"
    if isinstance(remote, tuple):
        return f"{remote[0]}:{remote[1]}"
    return f"unix socket{(' ' + remote) if remote else ''}"
