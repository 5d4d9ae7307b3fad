"""A real agent against hostile and broken clients, while a legitimate trainer keeps logging.

Every hostile connection must be closed by the agent with a reason in its log; the agent must
stay up, and every event the legitimate trainer logged must be in the database exactly once.
Connections are raw sockets speaking (or not) the protocol of ml_persistence/protocol.py.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import msgspec
import pytest
from agent_process import AgentProcess, short_socket
from conftest import rows

import ml_persistence
from ml_persistence import ExperimentTracker, address
from ml_persistence import events as ev
from ml_persistence import protocol as p

TIMEOUTS = ["--hello-timeout", "1", "--frame-timeout", "1"]
FAILSAFE = 10.0  # a raw socket that neither answers nor closes this long fails its test instead of hanging it
TRAINER_MAX_STEPS = 20_000
TRAINER_FLUSH_TIMEOUT = 10.0  # a legitimate flush this slow means the agent stopped serving the trainer


# -- a raw client -------------------------------------------------------------------------------


class RawClient:
    """A socket to the agent that sends whatever it is told and reads agent messages."""

    def __init__(self, url: str) -> None:
        where = address.parse(url)
        if where.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(FAILSAFE)
            sock.connect(where.path)
        else:
            sock = socket.create_connection((where.host, where.port), FAILSAFE)
        sock.settimeout(FAILSAFE)
        self.sock = sock
        self.token = address.published_token(where)  # a TCP agent's, made for this user; None on a Unix socket
        self._decoder = p.FrameDecoder(p.DEFAULT_MAX_FRAME)
        self._inbox: deque[p.Message] = deque()
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_message(self, message: p.Message) -> None:
        self.send(p.frame(message))

    def receive(self) -> Optional[p.Message]:
        """The agent's next message, or None once the agent has closed the connection."""
        while not self._inbox:
            if self.eof:
                return None
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""  # closed with bytes of ours unread: the same as EOF here
            if not data:
                self.eof = True
                return None
            self._inbox.extend(p.decode_agent_message(b) for b in self._decoder.feed(data))
        return self._inbox.popleft()

    def receive_until(self, kind: type, seq: int) -> p.Message:
        """Skip Committed acknowledgements until a ``kind`` message about ``seq``; fail on EOF."""
        while True:
            message = self.receive()
            assert message is not None, f"the agent closed the connection instead of sending {kind.__name__}"
            if type(message) is kind and getattr(message, "seq", seq) == seq:
                return message
            assert type(message) is p.Committed, f"unexpected {message!r}"

    def hello(self, client_id: str = "hostile-client") -> p.Welcome:
        self.send_message(p.Hello(p.PROTOCOL_VERSION, client_id, 4242, "nowhere", self.token))
        welcome = self.receive()
        assert type(welcome) is p.Welcome, welcome
        return welcome

    def wait_closed_by_agent(self) -> list[p.Message]:
        """Block until the agent closes the connection; return what it sent before."""
        received = []
        while (message := self.receive()) is not None:
            received.append(message)
        return received

    def close(self) -> None:
        self.sock.close()


# -- a legitimate trainer -----------------------------------------------------------------------


class Trainer:
    """ExperimentTracker(agent=...) in this process, logging metrics on a thread until finish()."""

    def __init__(self, url: str) -> None:
        self.tracker = ExperimentTracker(agent=url, capture_environment=False)
        self.experiment_id = self.tracker.start_experiment("legit")
        self.steps = 0
        self.warm = threading.Event()  # set once some of its events are committed
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="legit-trainer", daemon=True)
        self._thread.start()
        self.warm.wait(FAILSAFE)
        self._raise()
        assert self.warm.is_set(), "the trainer committed nothing"

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self.steps < TRAINER_MAX_STEPS:
                step = self.steps
                self.tracker.log_metrics_batch({"loss": 1.0 / (1 + step), "reward": float(step)}, step=step)
                self.steps += 1
                if self.steps % 100 == 0:
                    self.tracker.flush(timeout=TRAINER_FLUSH_TIMEOUT)  # paces the loop by the agent's commits
                    self.warm.set()
            self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            self._error = exc
            self.warm.set()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TRAINER_FLUSH_TIMEOUT + FAILSAFE)
        assert not self._thread.is_alive()

    def finish(self) -> int:
        """Stop logging, end the experiment (which waits for the commit); return the steps logged."""
        self.stop()
        self._raise()
        self.tracker.flush(timeout=TRAINER_FLUSH_TIMEOUT)
        self.tracker.end_experiment()
        return self.steps


@pytest.fixture
def agent(tmp_path: Path):
    with AgentProcess(
        str(tmp_path / "agent.db"), [short_socket(tmp_path), free_tcp_url()], tmp_path, extra=TIMEOUTS
    ) as running:
        yield running


@pytest.fixture
def trainer(agent: AgentProcess):
    legit = Trainer(agent.url)
    yield legit
    # After a failed test: stop the trainer while its agent still runs, so nothing waits on a dead agent.
    legit.stop()
    with contextlib.suppress(Exception):
        ml_persistence.shutdown(timeout=5)


def free_tcp_url() -> str:
    # A free port for the agent's TCP listener (RawClient finds the token the agent makes for it).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def closing_reasons(agent: AgentProcess) -> list[str]:
    return re.findall(r"closing connection from .*?: (.*)", agent.log())


def assert_unharmed(agent: AgentProcess, trainer: Trainer, hostile_rows: int = 0) -> None:
    """The agent is up, the trainer's every event is stored exactly once, and the agent exits cleanly."""
    assert agent.proc is not None and agent.proc.poll() is None, agent.log()
    n = trainer.finish()
    assert n >= 100
    db, exp = agent.db, trainer.experiment_id
    assert rows(
        db,
        "SELECT metric_name, COUNT(*), COUNT(DISTINCT step), MIN(step), MAX(step), SUM(value) FROM metrics "
        "WHERE experiment_id = ? AND metric_name IN ('loss', 'reward') GROUP BY metric_name ORDER BY metric_name",
        (exp,),
    ) == [
        ("loss", n, n, 0, n - 1, pytest.approx(sum(1.0 / (1 + s) for s in range(n)))),
        ("reward", n, n, 0, n - 1, float(n * (n - 1) // 2)),
    ]
    assert rows(db, "SELECT name, status FROM experiments WHERE id = ?", (exp,)) == [("legit", "completed")]
    assert rows(db, "SELECT COUNT(*) FROM metrics WHERE metric_name LIKE 'hostile%'") == [(hostile_rows,)]
    assert "writer crashed" not in agent.log()
    ml_persistence.shutdown(timeout=30)
    assert agent.stop() == 0, agent.log()


def hostile_metric(experiment_id: int, step: int, name: str = "hostile") -> msgspec.Raw:
    return msgspec.Raw(ev.encode(ev.MetricsLogged(experiment_id, [name], [1.0], None, step, None, None, 0.0)))


# -- bytes that must close the connection -------------------------------------------------------


@dataclass
class Case:
    id: str
    payload: Callable[[int], bytes]  # experiment id -> bytes to send
    reason: str  # expected in the agent's "closing connection" line
    handshake: bool = False  # say a valid Hello first
    half_close: bool = False  # then shut our side: the client vanished
    transport: int = 0  # index into agent.urls: 0 unix, 1 tcp


def body_frame(body: bytes) -> bytes:
    return p.LENGTH.pack(len(body)) + body


def events_frame(exp: int) -> bytes:
    return p.frame(p.Events(1, [hostile_metric(exp, 0), hostile_metric(exp, 1)]))


HTTP = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"  # its first 4 bytes claim a 1.1 GB frame
HUGE = b"\xff\xff\xff\xff"  # claims a 4 GiB frame
GARBAGE = body_frame(b"\xc1" * 8)  # a well-framed body that is not MessagePack
UNKNOWN_TAG = body_frame(msgspec.msgpack.encode(["Gimme", 1]))
TOO_BIG_BEFORE_HELLO = "bytes exceeds the limit of 65536"
TOO_BIG_AFTER_HELLO = "frame of 4294967295 bytes exceeds the limit of 67108864"
MALFORMED = "protocol error: MessagePack data is malformed"
VANISHED = "client vanished in the middle of a frame"

CASES = [
    Case("http-request", lambda e: HTTP, "frame of 1195725856 " + TOO_BIG_BEFORE_HELLO),
    Case("http-request-tcp", lambda e: HTTP, "frame of 1195725856 " + TOO_BIG_BEFORE_HELLO, transport=1),
    Case("garbage-body-before-hello", lambda e: GARBAGE, MALFORMED),
    Case("garbage-body-after-hello", lambda e: GARBAGE, MALFORMED, handshake=True),
    Case("absurd-length-before-hello", lambda e: HUGE, "frame of 4294967295 " + TOO_BIG_BEFORE_HELLO),
    Case("absurd-length-after-hello", lambda e: HUGE, TOO_BIG_AFTER_HELLO, handshake=True),
    Case("absurd-length-after-hello-tcp", lambda e: HUGE, TOO_BIG_AFTER_HELLO, handshake=True, transport=1),
    Case("unknown-tag-before-hello", lambda e: UNKNOWN_TAG, "Invalid value 'Gimme'"),
    Case("unknown-tag-after-hello", lambda e: UNKNOWN_TAG, "Invalid value 'Gimme'", handshake=True),
    Case("agent-message-from-client", lambda e: p.frame(p.Welcome(1, 0, 0)), "Invalid value 'Welcome'", handshake=True),
    Case("events-before-hello", events_frame, "expected Hello first, got Events"),
    Case("flush-before-hello", lambda e: p.frame(p.Flush(1)), "expected Hello first, got Flush"),
    Case(
        "second-hello",
        lambda e: p.frame(p.Hello(1, "again", 1, "h")),
        "unexpected Hello after the handshake",
        handshake=True,
    ),
    Case("vanish-mid-hello", lambda e: p.frame(p.Hello(1, "x" * 32, 1, "h"))[:9], VANISHED, half_close=True),
    Case("vanish-mid-events", lambda e: events_frame(e)[:-5], VANISHED, handshake=True, half_close=True),
    Case("vanish-mid-events-tcp", lambda e: events_frame(e)[:-5], VANISHED, True, half_close=True, transport=1),
    Case("vanish-mid-length-prefix", lambda e: b"\x00\x00", VANISHED, handshake=True, half_close=True),
    Case(
        "sequence-zero",
        lambda e: p.frame(p.Events(0, [hostile_metric(e, 0)])),
        "sequence numbers run from 1",
        handshake=True,
    ),
    Case(
        "malformed-event-inside-events",
        lambda e: p.frame(p.Events(1, [hostile_metric(e, 0), msgspec.Raw(b"\xc1")])),
        MALFORMED,
        handshake=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_bytes_close_the_connection_with_a_logged_reason(
    agent: AgentProcess, trainer: Trainer, case: Case
) -> None:
    hostile = RawClient(agent.urls[case.transport])
    if case.handshake:
        hostile.hello()
    hostile.send(case.payload(trainer.experiment_id))
    if case.half_close:
        hostile.sock.shutdown(socket.SHUT_WR)
    assert hostile.wait_closed_by_agent() == []
    hostile.close()
    assert any(case.reason in reason for reason in closing_reasons(agent)), agent.log()
    assert_unharmed(agent, trainer)  # and none of the hostile events was stored


def test_many_hostile_connections_at_once(agent: AgentProcess, trainer: Trainer) -> None:
    clients = []
    for i, case in enumerate(c for c in CASES if not c.half_close):
        client = RawClient(agent.urls[case.transport])
        if case.handshake:
            client.hello(f"hostile-{i}")
        clients.append((client, case))
    for client, case in clients:
        client.send(case.payload(trainer.experiment_id))
    for client, _ in clients:
        assert client.wait_closed_by_agent() == []
        client.close()
    reasons = closing_reasons(agent)
    assert len(reasons) == len(clients)
    for _, case in clients:
        assert any(case.reason in reason for reason in reasons), case.id
    assert_unharmed(agent, trainer)


# -- timeouts ----------------------------------------------------------------------------------


def test_a_client_that_never_says_hello_is_closed(agent: AgentProcess, trainer: Trainer) -> None:
    silent = RawClient(agent.url)
    assert silent.wait_closed_by_agent() == []
    assert "no Hello in time" in closing_reasons(agent)
    assert_unharmed(agent, trainer)


def test_a_client_that_stalls_inside_its_hello_is_closed(agent: AgentProcess, trainer: Trainer) -> None:
    stalled = RawClient(agent.url)
    stalled.send(p.frame(p.Hello(1, "stalls", 1, "h"))[:10])
    assert stalled.wait_closed_by_agent() == []
    assert "no Hello in time" in closing_reasons(agent)
    assert_unharmed(agent, trainer)


def test_a_client_that_stalls_in_the_middle_of_a_frame_is_closed(agent: AgentProcess, trainer: Trainer) -> None:
    stalled = RawClient(agent.url)
    stalled.hello()
    stalled.send(events_frame(trainer.experiment_id)[:-5])
    assert stalled.wait_closed_by_agent() == []
    assert "no complete frame in time" in closing_reasons(agent)
    assert_unharmed(agent, trainer)  # the half-sent events are not stored


def test_a_frame_dripped_byte_by_byte_must_still_finish_within_the_frame_timeout(
    agent: AgentProcess, trainer: Trainer
) -> None:
    slow = RawClient(agent.url)
    slow.hello()
    data = p.frame(p.Read(1, "x" * 200, []))
    sent = 0
    while sent < len(data):
        # Wait up to 0.2 s for the agent to close before each byte: a byte every 0.2 s
        # would take 40 s for this frame, far past the 1 s frame timeout.
        if select.select([slow.sock], [], [], 0.2)[0]:
            break
        try:
            slow.send(data[sent : sent + 1])
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += 1
    assert slow.wait_closed_by_agent() == []
    assert sent < len(data)
    assert "no complete frame in time" in closing_reasons(agent)
    assert_unharmed(agent, trainer)


def test_an_idle_client_between_frames_is_not_timed_out(agent: AgentProcess, trainer: Trainer) -> None:
    idle = RawClient(agent.url)
    idle.hello("idle-client")
    # Idle for longer than both timeouts: the agent must neither send nor close meanwhile.
    assert select.select([idle.sock], [], [], 1.5)[0] == []
    idle.send_message(p.Events(1, [hostile_metric(trainer.experiment_id, 0)]))
    idle.send_message(p.Flush(1))
    assert idle.receive_until(p.Flushed, 1) == p.Flushed(1)
    idle.close()
    assert closing_reasons(agent) == []
    assert_unharmed(agent, trainer, hostile_rows=1)


def test_a_client_streaming_frames_back_to_back_is_not_timed_out(tmp_path: Path) -> None:
    """The frame timeout is per frame: a receive that ends one frame and starts the next
    must restart it, or a busy client that never pauses between frames gets cut off."""
    timeout = 0.5
    extra = ["--hello-timeout", "5", "--frame-timeout", str(timeout)]
    with AgentProcess(str(tmp_path / "agent.db"), [short_socket(tmp_path)], tmp_path, extra=extra) as agent:
        client = RawClient(agent.url)
        client.hello("busy-client")
        frames = [p.frame(p.Flush(1))]
        client.send(frames[0][:2])
        start = time.monotonic()
        seq = 1
        # Each Flush frame is completed (and answered) within milliseconds of its first byte,
        # but every write also starts the next frame, so the agent never sees a frame boundary
        # at the end of a read. Keep it up for several frame timeouts.
        while time.monotonic() - start < 4 * timeout:
            following = p.frame(p.Flush(seq + 1))
            client.send(frames[-1][2:] + following[:2])
            frames.append(following)
            assert client.receive_until(p.Flushed, seq) == p.Flushed(seq)
            seq += 1
        client.send(frames[-1][2:])
        assert client.receive_until(p.Flushed, seq) == p.Flushed(seq)
        client.close()
        assert closing_reasons(agent) == []
        assert agent.stop() == 0


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hello, reason",
    [
        (p.Hello(99, "old-client", 1, "h"), "protocol version 99 is not supported (agent speaks 1)"),
        (p.Hello(0, "old-client", 1, "h"), "protocol version 0 is not supported"),
        (p.Hello(p.PROTOCOL_VERSION, "", 1, "h"), "invalid client id"),
        (p.Hello(p.PROTOCOL_VERSION, "x" * 129, 1, "h"), "invalid client id"),
    ],
    ids=["version-99", "version-0", "empty-client-id", "long-client-id"],
)
def test_a_bad_hello_gets_refused_and_closed(
    agent: AgentProcess, trainer: Trainer, hello: p.Hello, reason: str
) -> None:
    client = RawClient(agent.url)
    client.send_message(hello)
    received = client.wait_closed_by_agent()
    assert len(received) == 1 and type(received[0]) is p.Refused
    assert reason in received[0].reason
    assert re.search(r"refusing .*: " + re.escape(reason), agent.log()), agent.log()
    assert_unharmed(agent, trainer)


# -- bad events inside a good frame ---------------------------------------------------------------


def test_bad_events_are_refused_and_logged_and_the_rest_of_their_frame_lands(
    agent: AgentProcess, trainer: Trainer
) -> None:
    exp = trainer.experiment_id
    client = RawClient(agent.url)
    client.hello("sloppy-client")
    mismatched_metric = ev.MetricsLogged(exp, ["hostile_a", "hostile_b"], [1.0], None, 9, None, None, 0.0)
    mismatched_params = ev.HyperparametersLogged(exp, ["lr", "gamma"], ["0.1"], ["float"], 0.0)
    bad = [
        msgspec.Raw(msgspec.msgpack.encode("garbage")),
        msgspec.Raw(msgspec.msgpack.encode(["NoSuchEvent", 1, 2])),
        msgspec.Raw(msgspec.msgpack.encode(["MetricsLogged", "not an id"])),
        msgspec.Raw(ev.encode(mismatched_metric)),
        msgspec.Raw(ev.encode(mismatched_params)),
    ]
    client.send_message(p.Events(1, [hostile_metric(exp, 0), *bad, hostile_metric(exp, 1)]))
    client.send_message(p.Flush(7))
    # The connection is still open, and the answer counts the refused events for the client to raise.
    assert client.receive_until(p.Flushed, 7) == p.Flushed(7, rejected=len(bad))
    assert agent.log().count("event refused, not stored") == len(bad)
    assert "2 metric names but 1 values" in agent.log()
    assert "hyperparameter names, values and types differ in length" in agent.log()
    # The same connection keeps working: more events, and a refused call gets an answer.
    client.send_message(p.Events(8, [hostile_metric(exp, 2)]))
    client.send_message(p.Call(9, msgspec.Raw(msgspec.msgpack.encode("garbage"))))
    answer = client.receive_until(p.Answer, 9)
    assert answer.row_id is None and "event refused" in answer.error
    client.send_message(p.Flush(9))
    assert client.receive_until(p.Flushed, 9) == p.Flushed(9, rejected=len(bad))
    client.close()
    assert closing_reasons(agent) == []
    assert rows(agent.db, "SELECT step FROM metrics WHERE metric_name = 'hostile' ORDER BY step") == [(0,), (1,), (2,)]
    assert rows(agent.db, "SELECT COUNT(*) FROM hyperparameters") == [(0,)]
    assert_unharmed(agent, trainer, hostile_rows=3)


def test_sequence_numbers_beyond_sqlite_integers_do_not_crash_the_writer(agent: AgentProcess, trainer: Trainer) -> None:
    """A sequence number SQLite cannot store must be refused as a protocol error, not reach the writer."""
    client = RawClient(agent.url)
    client.hello("huge-seq-client")
    client.send_message(p.Events(2**63, [hostile_metric(trainer.experiment_id, 0)]))
    client.send_message(p.Flush(2**63))
    # A second client's flush: once it is answered, the writer has seen the frames above.
    probe = RawClient(agent.url)
    probe.hello("probe-client")
    probe.send_message(p.Flush(1))
    try:
        flushed = probe.receive_until(p.Flushed, 1)
    except TimeoutError:
        flushed = None  # a crashed writer drops the flushes it had queued; the log says so below
    assert "writer crashed" not in agent.log(), agent.log()
    assert flushed == p.Flushed(1)
    assert client.receive() is None, "the agent accepted sequence number 2**63"
    assert any("client huge-seq" in line for line in agent.log().splitlines() if "closing connection" in line)
    assert_unharmed(agent, trainer)


# -- memory --------------------------------------------------------------------------------------


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_claimed_huge_lengths_cost_the_agent_no_memory(agent: AgentProcess, trainer: Trainer) -> None:
    assert agent.proc is not None
    before = peak_rss_kib(agent.proc.pid)
    clients = []
    for i in range(16):  # 16 claims of the largest allowed frame: 1 GiB if the agent believed them
        client = RawClient(agent.url)
        client.hello(f"claims-{i}")
        client.send(p.LENGTH.pack(64 << 20) + b"\x92")
        clients.append(client)
    for i in range(16):  # and 16 claims of 4 GiB, beyond the limit
        client = RawClient(agent.url)
        if i % 2:
            client.hello(f"claims-more-{i}")
        client.send(b"\xff\xff\xff\xff")
        clients.append(client)
    for client in clients:
        assert client.wait_closed_by_agent() == []
        client.close()
    reasons = closing_reasons(agent)
    assert reasons.count("no complete frame in time") == 16
    assert sum("bytes exceeds the limit" in r for r in reasons) == 16
    assert peak_rss_kib(agent.proc.pid) - before < 32 * 1024
    assert_unharmed(agent, trainer)
