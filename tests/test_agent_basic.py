"""The agent end to end in one process pair: a trainer in the test process, the agent in a subprocess."""

from __future__ import annotations

import math
from pathlib import Path

from agent_process import AgentProcess, short_socket
from conftest import rows

import pytest

from ml_persistence import ExperimentTracker, MetricsLogger, ModelRegistry, WriterError


def test_events_reads_and_ids_go_through_the_agent(tmp_path: Path) -> None:
    db = str(tmp_path / "agent.db")
    with AgentProcess(db, [short_socket(tmp_path)], tmp_path) as agent:
        tracker = ExperimentTracker(str(tmp_path / "unused.db"), agent=agent.url)
        exp = tracker.start_experiment("through-agent", experiment_type="rl", tags=["a"])
        tracker.log_hyperparameters_batch({"lr": 3e-4, "gamma": 0.99})
        for step in range(1000):
            tracker.log_metrics_batch({"reward": step, "loss": float("nan")}, step=step)
        registry = ModelRegistry(agent=agent.url)
        model = registry.register_model(exp, "/ckpt/a.pt", val_metric=2.0, is_best=True)
        assert registry.get_best_model(exp)["id"] == model
        history = MetricsLogger(agent=agent.url).get_metric_history(exp, "reward")
        assert [r["value"] for r in history] == [float(s) for s in range(1000)]
        assert all(math.isnan(r["value"]) for r in MetricsLogger(agent=agent.url).get_metric_history(exp, "loss"))
        assert tracker.get_hyperparameters() == {"lr": 3e-4, "gamma": 0.99}
        tracker.end_experiment()
        assert agent.stop() == 0
    assert not (tmp_path / "unused.db").exists()
    assert rows(db, "SELECT name, status FROM experiments") == [("through-agent", "completed")]
    assert rows(db, "SELECT COUNT(*) FROM metrics WHERE experiment_id = ?", (exp,)) == [(2000,)]


def test_logging_after_shutdown_continues_the_sequence(tmp_path: Path) -> None:
    import ml_persistence

    db = str(tmp_path / "agent.db")
    with AgentProcess(db, [short_socket(tmp_path)], tmp_path) as agent:
        tracker = ExperimentTracker(agent=agent.url)
        exp = tracker.start_experiment("twice")
        tracker.log_metric("x", 1.0, step=1)
        ml_persistence.shutdown()  # stops the sender; the next call starts a new one
        tracker.log_metric("x", 2.0, step=2)
        tracker.flush()
        assert [r["value"] for r in MetricsLogger(agent=agent.url).get_metric_history(exp, "x")] == [1.0, 2.0]
        tracker.end_experiment()


def test_sigterm_does_not_wait_for_a_client_that_never_said_hello(tmp_path: Path) -> None:
    import socket

    url = short_socket(tmp_path)
    agent = AgentProcess(str(tmp_path / "agent.db"), [url], tmp_path, extra=["--hello-timeout", "600"]).start()
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(url[len("unix://") :])
    try:
        assert agent.stop(timeout=60) == 0  # well before the 600 s hello timeout
        assert silent.recv(1) == b""  # the agent closed it on the way out
    finally:
        silent.close()


def test_an_event_the_database_refuses_costs_only_itself_and_the_mark_still_advances(tmp_path: Path) -> None:
    from ml_persistence.sqlite import schema

    db = str(tmp_path / "agent.db")
    conn = schema.connect(db)
    conn.execute(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON metrics WHEN NEW.metric_name = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poisoned metric'); END"
    )
    conn.close()
    with AgentProcess(db, [short_socket(tmp_path)], tmp_path) as agent:
        tracker = ExperimentTracker(agent=agent.url)
        exp = tracker.start_experiment("refusal")
        for step in range(300):
            tracker.log_metric("poison" if step == 150 else "good", float(step), step=step)
        with pytest.raises(WriterError, match="1 refused"):  # as in embedded mode, raised once
            tracker.flush()
        tracker.flush()
        assert tracker.status()["rejected"] == 1
        client = tracker.status()["client_id"]
        tracker.end_experiment()
        assert agent.stop() == 0
        assert "database refused MetricsLogged" in agent.log()
    steps = [s for (s,) in rows(db, "SELECT step FROM metrics WHERE experiment_id = ? ORDER BY step", (exp,))]
    assert steps == [s for s in range(300) if s != 150]
    (last_seq,) = rows(db, "SELECT last_seq FROM agent_clients WHERE client_id = ?", (client,))[0]
    assert last_seq >= 300  # every event's number, the refused one's included, is marked done


def test_large_events_are_split_across_frames_under_the_agents_limit(tmp_path: Path) -> None:
    db = str(tmp_path / "agent.db")
    # The agent accepts frames of at most 4 MiB here; 300 events of ~100 KB are ~30 MB in all.
    with AgentProcess(db, [short_socket(tmp_path)], tmp_path, extra=["--max-frame-mb", "4"]) as agent:
        tracker = ExperimentTracker(agent=agent.url)
        exp = tracker.start_experiment("big")
        blob = {"curve": list(range(12_000))}
        for step in range(300):
            tracker.log_metric("equity", 1.0, step=step, value_json=blob)
        tracker.flush()
        assert tracker.status()["reconnects"] == 0
        tracker.end_experiment()
        assert agent.stop() == 0
    assert rows(db, "SELECT COUNT(*), COUNT(DISTINCT step) FROM metrics WHERE experiment_id = ?", (exp,)) == [(300, 300)]


def test_a_replayed_call_does_not_hide_the_events_sent_before_it(tmp_path: Path) -> None:
    import signal
    import threading

    db = str(tmp_path / "agent.db")
    agent = AgentProcess(db, [short_socket(tmp_path)], tmp_path).start()
    try:
        tracker = ExperimentTracker(agent=agent.url)
        exp = tracker.start_experiment("replay-order")
        tracker.flush()
        agent.proc.send_signal(signal.SIGSTOP)  # received nothing more, committed nothing more
        for step in range(100):
            tracker.log_metric("m", float(step), step=step)
        artifact = tmp_path / "a.txt"
        artifact.write_text("x")
        ids = []
        waiter = threading.Thread(target=lambda: ids.append(tracker.log_artifact(str(artifact))))
        waiter.start()  # an id-returning call numbered after the 100 events, unanswered
        agent.kill()
        agent.start()  # same database and socket: the client reconnects and replays
        waiter.join(60)
        tracker.flush()
        assert ids and ids[0] is not None
        tracker.end_experiment()
    finally:
        agent.stop()
    assert rows(db, "SELECT COUNT(DISTINCT step), COUNT(*) FROM metrics WHERE experiment_id = ?", (exp,)) == [(100, 100)]
    assert rows(db, "SELECT COUNT(*) FROM artifacts") == [(1,)]


def test_authenticated_connections_past_the_limit_are_closed_and_logged(tmp_path: Path) -> None:
    import socket

    from ml_persistence import protocol as p

    url = short_socket(tmp_path)
    extra = ["--max-connections", "2", "--hello-timeout", "600"]
    with AgentProcess(str(tmp_path / "agent.db"), [url], tmp_path, extra=extra) as agent:
        held = []
        for i in range(3):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(30)
            conn.connect(url[len("unix://") :])
            held.append(conn)
            if i < 2:  # --max-connections counts connections that said Hello; the unauthenticated have their own limits
                conn.sendall(p.frame(p.Hello(p.PROTOCOL_VERSION, f"client-{i}", 1, "h")))
                assert type(p.decode_agent_message(conn.recv(65536)[4:])) is p.Welcome
        assert held[2].recv(1) == b""  # the third is closed at once
        assert "already 2 open" in agent.log()
        for conn in held:
            conn.close()
        assert agent.stop() == 0
