"""The agent: listens on sockets, feeds every client's events to one batched writer, answers reads."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import anyio
import anyio.abc

from ml_persistence import address as addr
from ml_persistence import protocol as p
from ml_persistence import recovery, storage
from ml_persistence.buffer import EventBuffer, Item
from ml_persistence.writer import Writer, WriterOptions

from .gate import Gate
from .ingest import Batch, Frame, KeyedRequest
from .session import Session
from .writer import AgentWriter

log = logging.getLogger("ml_persistence.agent")
ACCEPT_BACKOFF = 0.5
DEFAULT_MAX_UNREAD = 16 << 20  # bytes of answers a connection may leave unread before it is dropped
DEFAULT_MAX_PARTIAL = 128 << 20  # bytes of unfinished frames held across all connections
DEFAULT_STOP_TIMEOUT = 30.0  # seconds the writer has at shutdown; what it could not write stays unacknowledged


class AgentBuffer(EventBuffer):
    """The agent's queue: Batches of clients' frames, counted by events rather than by items."""

    def __init__(self, wake_threshold: int, kick: Callable[[], None]) -> None:
        super().__init__(max_events=1 << 62, wake_threshold=wake_threshold, kick=kick)
        self.items: deque[Item] = deque()  # type: ignore[assignment]  # whole Batches, taken one by one
        self.events = 0  # events queued in Batches
        self._last_take = 0

    def append_batch(self, batch: Batch) -> None:
        """Queue one client's batch (event loop thread)."""
        self.items.append(batch)
        self.events += len(batch)
        if self.events >= self.wake_threshold and not self.wake_pending:
            self.wake_pending = True
            self._kick()

    def queued_events(self) -> int:
        """Return how many events the queued batches hold."""
        return self.events

    def take(self, limit: int) -> list[Item]:
        """Remove whole batches until they hold ``limit`` events (writer thread)."""
        items = self.items
        out: list[Item] = []
        weight = 0
        while items and weight < limit:
            item = items.popleft()
            out.append(item)
            if type(item) is Batch:
                weight += len(item)
        self.events -= weight
        self._last_take = weight
        return out

    def filled(self, taken: list[Item], limit: int) -> bool:
        return self._last_take >= limit


@dataclass
class ClientState:
    """What the agent knows of one trainer client, across its connections."""

    client_id: str
    received: int = 0  # highest sequence number queued for the writer (or committed)
    committed: int = 0  # highest sequence number committed
    pid: int = 0
    host: str = ""
    session: Optional[Session] = None
    events: int = 0
    rejected: int = 0  # events refused, at receipt or by the database


@dataclass
class AgentStats:
    connections: int = 0
    refused: int = 0
    dropped_connections: int = 0
    events_received: int = 0
    duplicates: int = 0
    rejected: int = 0
    reads: int = 0
    calls: int = 0


class Agent:
    """One database, any number of listeners and clients."""

    def __init__(
        self,
        db_path: "str | storage.Database",
        addresses: list[addr.Address],
        token: Optional[str] = None,
        options: Optional[WriterOptions] = None,
        max_frame: int = p.DEFAULT_MAX_FRAME,
        hello_timeout: float = 10.0,
        frame_timeout: float = 30.0,
        max_pending: int = 1_000_000,
        max_connections: int = 1024,
        max_unread_bytes: int = DEFAULT_MAX_UNREAD,
        max_partial_bytes: int = DEFAULT_MAX_PARTIAL,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        allowed_uids: frozenset[int] = frozenset(),
        token_generated: bool = False,
    ) -> None:
        for address in addresses:
            if address.kind == "tcp" and token is None:  # loopback too: other local users can connect there
                raise PermissionError(f"listening on {address} requires a token")
        self.database = db_path if isinstance(db_path, storage.Database) else storage.Database(db_path)
        self.db_path = self.database.path  # for messages: a path, or a URL without its password
        self.addresses = addresses
        self.token = token
        # A token the agent made for its TCP clients is not asked of Unix socket peers, whose uid is checked;
        # a token the user gave is asked of every client.
        self.token_generated = token_generated
        self.options = options or WriterOptions()
        self.max_frame = max_frame
        self.hello_timeout = hello_timeout
        self.frame_timeout = frame_timeout
        self.max_pending = max_pending
        self.max_connections = max_connections  # authenticated ones; the gate limits the others
        self.gate = Gate(allowed_uids)
        self.max_unread_bytes = max_unread_bytes
        self.max_partial_bytes = max_partial_bytes
        self.stop_timeout = stop_timeout
        self.partial_bytes = 0  # bytes of unfinished frames held by all sessions
        self.clients: dict[str, ClientState] = {}
        self.sessions: set[Session] = set()
        self.stats = AgentStats()
        self.pending = 0  # events received and not yet committed
        self.listening: list[str] = []
        self.bound_tcp: list[tuple[str, int]] = []  # each TCP socket's (numeric IP, port), once listening
        self.buffer = AgentBuffer(self.options.wake_threshold, self._kick)
        self._writer: Optional[Writer] = None
        self._stopping = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._reader: Any = None
        self._reader_lock = threading.Lock()
        self._stop = anyio.Event()
        self.drained = anyio.Event()
        self._space = anyio.Event()

    # -- running -------------------------------------------------------------------------------

    async def run(self, ready: Optional[Callable[[list[str]], None]] = None) -> None:
        """Serve until stop() (or a signal handled by the caller), then drain, commit and return."""
        self._loop = asyncio.get_running_loop()
        self._reader = await anyio.to_thread.run_sync(self.database.reader)  # creates or upgrades the schema, fails fast
        await anyio.to_thread.run_sync(self._apply_recovery_files)
        self._start_writer()
        listeners = [await self._listen(a) for a in self.addresses]
        try:
            async with anyio.create_task_group() as sessions:
                async with anyio.create_task_group() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept, listener, sessions)
                    accepting.start_soon(self.gate.log_summaries)
                    if ready is not None:
                        ready(self.listening)
                    await self._stop.wait()
                    accepting.cancel_scope.cancel()
                await self._drain()
        finally:
            for listener in listeners:
                await listener.aclose()
            self._remove_socket_files()
            self._reader.close()

    def _apply_recovery_files(self) -> None:
        """Store earlier recovery files for this database before any client connects.

        A client's Welcome must count what they hold: it replays only events after its high-water mark.
        """
        for path in recovery.pending(self.database.db):
            try:
                applied = recovery.apply(path, self.database.db)
            except Exception as exc:  # noqa: BLE001 - the file stays; the writer tries it again
                log.warning("could not apply recovery file %s yet: %s", path, exc)
                continue
            log.warning(
                "applied recovery file %s: %d events stored, %d were already there",
                path, applied.stored, applied.skipped,
            )

    def stop(self) -> None:
        """Stop accepting, drain and return from run() (event loop thread)."""
        self._stop.set()

    async def _drain(self) -> None:
        log.info("stopping: no new connections; committing what %d clients sent", len(self.sessions))
        self._stopping = True
        sessions = list(self.sessions)
        for session in sessions:
            session.stop_reading()
        with anyio.move_on_after(30):
            for session in sessions:
                await session.reading_done.wait()
        writer = self._writer
        if writer is not None:
            # A full disk can last longer than anyone waits for a stop: what is not written by then is
            # not acknowledged, so its clients keep it and replay it to the next agent.
            await anyio.to_thread.run_sync(writer.stop, self.stop_timeout)
            log.info(
                "committed %d events in all (%d rejected, %d lost); %s",
                writer.written, writer.rejected, writer.lost, self.stats,
            )
            unwritten = writer.saved + writer.lost
            if unwritten:
                saved = f"saved to {', '.join(writer.recovery_files)}; " if writer.recovery_files else ""
                log.warning(
                    "%d events not written within --stop-timeout %.0f s: %sleft unacknowledged, so their clients "
                    "keep them and replay them to the next agent (never stored twice)",
                    unwritten, self.stop_timeout, saved,
                )
        await anyio.sleep(0)  # let the writer's last acknowledgements reach the sessions
        self.drained.set()

    async def _listen(self, address: addr.Address) -> anyio.abc.Listener:
        try:
            if address.kind == "unix":
                listener = await self._listen_unix(address.path)
            else:
                listener = await anyio.create_tcp_listener(local_host=address.host, local_port=address.port)
                defer_accept(listener, self.hello_timeout)
        except OSError as exc:  # the same errno (EADDRINUSE, EACCES, ...), naming the address
            if exc.errno is None:
                raise OSError(f"cannot listen on {address}: {exc}") from None
            raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror or exc}") from None
        if address.kind == "unix":
            self.listening.append(str(address))
        else:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            self.listening.append(str(addr.Address("tcp", host=address.host, port=port)))
            for part in getattr(listener, "listeners", [listener]):  # a name may bind several families
                self.bound_tcp.append(part.extra(anyio.abc.SocketAttribute.local_address)[:2])
        log.info("listening on %s (database %s)", self.listening[-1], self.db_path)
        return listener

    async def _listen_unix(self, path: str) -> anyio.abc.Listener:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory) or directory == addr.runtime_dir():
            addr.ensure_private_dir(directory)
        _remove_stale_socket(path)
        old_umask = os.umask(0o177)
        try:
            listener = await anyio.create_unix_listener(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        return listener

    def _remove_socket_files(self) -> None:
        for address in self.addresses:
            if address.kind == "unix":
                try:
                    if stat.S_ISSOCK(os.lstat(address.path).st_mode):
                        os.unlink(address.path)
                except OSError:
                    pass

    async def _accept(self, listener: anyio.abc.Listener, sessions: anyio.abc.TaskGroup) -> None:
        parts = getattr(listener, "listeners", None)  # a MultiListener (TCP on several families)
        if parts is not None:
            async with anyio.create_task_group() as tasks:
                for part in parts:
                    tasks.start_soon(self._accept, part, sessions)
            return
        while True:
            try:
                stream = await listener.accept()  # type: ignore[attr-defined]
            except anyio.ClosedResourceError:
                return
            except (OSError, anyio.BrokenResourceError) as exc:
                # Out of file descriptors, say: keep serving the connections we have.
                log.error("cannot accept a connection (%s); retrying in %.1f s", exc.__cause__ or exc, ACCEPT_BACKOFF)
                await anyio.sleep(ACCEPT_BACKOFF)
                continue
            session = Session(self, stream)
            authenticated = len(self.sessions) - self.gate.unauthenticated
            if authenticated >= self.max_connections:
                message = f"refusing a connection: already {authenticated} open (--max-connections)"
                self.gate.refuse(session.origin.key, "--max-connections reached", message)
                await stream.aclose()
                continue
            self.gate.admit(session)  # may close the oldest unauthenticated connection to make room
            self.sessions.add(session)  # counted now, before its task runs
            sessions.start_soon(session.run)

    # -- the writer ----------------------------------------------------------------------------

    def _start_writer(self) -> None:
        writer = AgentWriter(self.database.store(self.options.busy_timeout_ms), self.buffer, self.options, db=self.database.db)
        writer.start()
        self._writer = writer
        self.buffer.idle = False

    def _kick(self) -> None:
        writer = self._writer
        if writer is not None and writer.done and not self._stopping and writer.failure is not None:
            log.error("the writer failed (%r); starting a new one", writer.failure)
            self._start_writer()
            writer = self._writer
        if writer is not None:
            writer.wake()

    # -- called by sessions (event loop thread) ------------------------------------------------

    async def client(self, client_id: str) -> ClientState:
        """Return the state of ``client_id``, loading its committed high-water mark on first sight."""
        state = self.clients.get(client_id)
        if state is None:
            last = await anyio.to_thread.run_sync(self._last_seq, client_id)
            state = self.clients.get(client_id)  # another connection of this client may have won
            if state is None:
                state = self.clients[client_id] = ClientState(client_id, received=last, committed=last)
        return state

    def _last_seq(self, client_id: str) -> int:
        with self._reader_lock:
            return self._reader.client_mark(client_id)

    def submit(self, state: ClientState, last_seq: int, frame: Frame) -> None:
        """Queue a client's still encoded events, ending at sequence number ``last_seq``, for the writer."""
        n = len(frame)
        self.pending += n
        state.events += n
        self.stats.events_received += n
        loop = self._loop
        assert loop is not None

        def committed(batch: Batch) -> None:  # writer thread; given the batch, so the batch and this closure form no cycle
            loop.call_soon_threadsafe(self._committed, state, last_seq, n, batch.rejected)

        self.buffer.append_batch(Batch(state.client_id, last_seq, frame, committed))  # type: ignore[arg-type]

    def _committed(self, state: ClientState, seq: int, n: int, rejected: int) -> None:
        self.pending -= n
        state.rejected += rejected
        self.stats.rejected += rejected
        if self.pending < self.max_pending:
            self._space.set()
        if seq > state.committed:
            state.committed = seq
            if state.session is not None:
                state.session.send_committed(seq)

    async def wait_for_space(self) -> None:
        """Wait while more than max_pending events wait for the writer (backpressure on readers)."""
        while self.pending >= self.max_pending and not self._stopping:
            if self._space.is_set():
                self._space = anyio.Event()  # every waiter shares one event, set by _committed
            await self._space.wait()

    def call(self, state: ClientState, seq: int, event: Any, answer: Callable[[Optional[int], Optional[str]], None]) -> None:
        """Queue an id-returning event; ``answer(row_id, error)`` runs on the event loop when done."""
        self.stats.calls += 1
        loop = self._loop
        assert loop is not None
        future = self.buffer.queue_request(KeyedRequest(event, (state.client_id, seq)))

        def done(f: Any) -> None:  # writer thread
            exc = f.exception()
            loop.call_soon_threadsafe(answer, None if exc else f.result(), str(exc) if exc else None)

        future.add_done_callback(done)

    async def committed_barrier(self) -> None:
        """Return once everything queued before this call is committed."""
        event = anyio.Event()
        loop = self._loop
        assert loop is not None
        self.buffer.barrier(lambda _: loop.call_soon_threadsafe(event.set))
        await event.wait()

    async def read(self, name: str, args: list[Any]) -> bytes:
        """Run a whitelisted query after everything received so far is committed; return it encoded."""
        if name not in storage.REMOTE_READS:
            raise LookupError(f"unknown query {name!r}")
        self.stats.reads += 1
        await self.committed_barrier()

        def run() -> bytes:
            with self._reader_lock:
                return p.encode_value(getattr(self._reader, name)(*args))

        return await anyio.to_thread.run_sync(run)


def defer_accept(listener: anyio.abc.Listener, seconds: float) -> None:
    """Have the kernel hand over a TCP connection only once its first bytes arrive (Linux).

    A client always speaks first (Hello), so connections that stay silent never take the agent's
    time, and a token holder's connection is not queued behind them.
    """
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is None:
        return
    for part in getattr(listener, "listeners", [listener]):
        part.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(socket.IPPROTO_TCP, option, max(1, int(seconds)))


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file left by an agent that died; refuse if an agent still listens there."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise FileExistsError(f"an agent is already listening on unix://{path}")
