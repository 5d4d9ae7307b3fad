"""The agent's memory stays bounded under clients that hold it: unread answers, unfinished frames.

A real agent in a subprocess, raw sockets speaking the protocol (tests/test_agent_hostile.py's
RawClient), RSS read from /proc/PID/status. Memory bounds are asserted; time is not.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
from agent_process import AgentProcess, short_socket
from test_agent_hostile import RawClient

import ml_persistence
from ml_persistence import ExperimentTracker
from ml_persistence import protocol as p

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")

CURVE_POINTS = 2000  # a metric_history answer of this curve is a few hundred KB
WAIT = 60.0  # generous limit on waiting for a condition; never asserted as a duration
READS_PER_S = 100  # the finding's client: a steady stream of reads, never reading an answer
MAX_READS = 30 * READS_PER_S


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


def closing_lines(agent: AgentProcess) -> list[str]:
    return [line for line in agent.log().splitlines() if "closing connection" in line]


def wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT} s: {what}"
        time.sleep(0.05)


def log_a_curve(url: str, points: int = CURVE_POINTS) -> int:
    """Log one experiment with a ``points``-step 'loss' curve through the agent; return its id."""
    tracker = ExperimentTracker(agent=url, capture_environment=False)
    experiment_id = tracker.start_experiment("curve")
    for step in range(points):
        tracker.log_metric("loss", 1.0 / (1 + step), step=step)
    tracker.end_experiment()
    ml_persistence.shutdown(timeout=30)
    return experiment_id


def send_reads_without_reading(client: RawClient, experiment_id: int, count: int, per_s: float = 0) -> int:
    """Send up to ``count`` reads of the curve (``per_s`` a second, 0: at once), reading no answer.

    Return how many were sent before the agent closed the connection.
    """
    for read_id in range(count):
        try:
            client.send_message(p.Read(read_id, "metric_history", [experiment_id, "loss"]))
        except OSError:  # the agent closed the connection
            return read_id
        if per_s:
            time.sleep(1 / per_s)  # pacing the load, not waiting for anything
    return count


def dropped_reason(agent: AgentProcess, client_id: str) -> str:
    """Wait for the agent's line closing ``client_id``'s connection; return it."""
    wait_for(lambda: any(client_id[:8] in line for line in closing_lines(agent)), f"the agent drops {client_id}")
    (line,) = [line for line in closing_lines(agent) if client_id[:8] in line]
    return line


@pytest.fixture
def agent(tmp_path: Path):
    with AgentProcess(str(tmp_path / "agent.db"), [short_socket(tmp_path)], tmp_path, extra=["--max-unread-mb", "1"]) as running:
        yield running


def test_a_client_that_never_reads_its_answers_is_dropped_past_the_cap(agent: AgentProcess) -> None:
    assert agent.proc is not None
    experiment_id = log_a_curve(agent.url)
    before = rss_mib(agent.proc.pid)
    client = RawClient(agent.url)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.hello("never-reads")
    send_reads_without_reading(client, experiment_id, MAX_READS, READS_PER_S)
    assert "more than 1 MiB of answers unread" in dropped_reason(agent, "never-reads"), agent.log()
    assert rss_mib(agent.proc.pid) - before < 64
    client.close()
    # The agent still serves everyone else.
    other = RawClient(agent.url)
    other.hello("reads-its-answers")
    other.send_message(p.Read(1, "metric_history", [experiment_id, "loss"]))
    answer = other.receive()
    assert type(answer) is p.ReadAnswer and answer.error is None
    assert len(p.decode_value(answer.result)) == CURVE_POINTS
    other.close()


def test_reads_count_as_in_flight_until_their_answers_are_sent(tmp_path: Path) -> None:
    # Small answers under the default 16 MiB cap: the 64-reads limit stops this client, as its
    # answers wait to be sent. (Counted as done once queued, its reads grew the agent without end.)
    with AgentProcess(str(tmp_path / "agent.db"), [short_socket(tmp_path)], tmp_path) as agent:
        assert agent.proc is not None
        experiment_id = log_a_curve(agent.url, points=200)
        before = rss_mib(agent.proc.pid)
        client = RawClient(agent.url)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.hello("never-reads")
        send_reads_without_reading(client, experiment_id, MAX_READS, READS_PER_S)
        assert "more than 64 reads in flight" in dropped_reason(agent, "never-reads"), agent.log()
        assert rss_mib(agent.proc.pid) - before < 64
        client.close()
        assert agent.stop() == 0


def test_unfinished_frames_hold_memory_as_received_and_within_a_total_cap(tmp_path: Path) -> None:
    with AgentProcess(
        str(tmp_path / "agent.db"), [short_socket(tmp_path)], tmp_path, extra=["--frame-timeout", "600"]
    ) as agent:
        assert agent.proc is not None
        baseline = rss_mib(agent.proc.pid)
        chunk = bytes(1 << 20)
        clients = []
        dropped = 0
        for i in range(8):  # each announces a 60 MiB frame and sends 59 MiB of it
            client = RawClient(agent.url)
            client.hello(f"partial-{i}")
            try:
                client.send(p.LENGTH.pack(60 << 20))
                for _ in range(59):
                    client.send(chunk)
            except OSError:
                dropped += 1
            clients.append(client)
        holding = rss_mib(agent.proc.pid)
        assert holding < 300, f"{holding:.0f} MiB held for 8 unfinished frames"
        assert dropped >= 5  # the default cap is 128 MiB: two such frames fit
        over = [line for line in closing_lines(agent) if "unfinished frames of all connections" in line]
        assert len(over) == dropped, agent.log()
        for client in clients:
            client.close()
        wait_for(lambda: len(closing_lines(agent)) == 8, "the agent closes all 8 connections")
        wait_for(lambda: rss_mib(agent.proc.pid) < baseline + 48, "the agent's memory returns near its baseline")
        # A connection can still send a large frame once the others are gone.
        client = RawClient(agent.url)
        client.hello("after")
        client.send_message(p.Flush(0))
        assert client.receive_until(p.Flushed, 0) == p.Flushed(0)
        client.close()
        assert agent.stop() == 0


def test_stopping_while_a_session_is_sending_is_clean(agent: AgentProcess) -> None:
    assert agent.proc is not None
    experiment_id = log_a_curve(agent.url)
    client = RawClient(agent.url)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.hello("slow-reader")
    # Two answers of a few hundred KB: the agent's send waits on this client, under the 1 MiB cap.
    send_reads_without_reading(client, experiment_id, 2)
    wait_for(lambda: _unread_bytes(client.sock) >= 4096, "the agent starts sending the answers")
    assert agent.stop(signal.SIGTERM) == 0
    log = agent.log()
    assert "Traceback" not in log and "BusyResourceError" not in log, log
    client.close()


def _unread_bytes(sock: socket.socket) -> int:
    import fcntl
    import struct
    import termios

    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
