"""The writer: batching, a locked database, a refused event, a full buffer, flush barriers."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import warnings

import pytest

import ml_persistence as mp
from conftest import rows
from ml_persistence import ExperimentTracker, recovery
from ml_persistence.sqlite import schema
from ml_persistence.backend import backend_for
from ml_persistence.errors import EventsSavedError



@pytest.fixture(autouse=True)
def _writer_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests drive the in-process writer thread (the private writer process runs the same Writer)."""
    monkeypatch.setenv("ML_PERSISTENCE_WRITER", "thread")

def test_locked_database_stalls_nothing_and_loses_nothing(db_path: str) -> None:
    tracker = ExperimentTracker(db_path)
    exp = tracker.start_experiment("locked")
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for step in range(5000):
            tracker.log_metrics_batch({"a": step, "b": step}, step=step)
        with pytest.raises(mp.FlushTimeoutError):
            tracker.flush(timeout=0.3)  # nothing can commit while the lock is held
        assert holder.execute("SELECT COUNT(*) FROM metrics").fetchone() == (0,)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    tracker.flush(timeout=60)
    assert rows(db_path, "SELECT COUNT(*), COUNT(DISTINCT step) FROM metrics WHERE experiment_id = ?", (exp,)) == [(10_000, 5000)]
    assert tracker.status()["dropped"] == tracker.status()["rejected"] == 0


def test_a_refused_event_does_not_take_its_batch_with_it(db_path: str) -> None:
    conn = schema.connect(db_path)
    conn.execute(
        "CREATE TRIGGER poison BEFORE INSERT ON metrics WHEN NEW.metric_name = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poisoned metric'); END"
    )
    conn.close()
    tracker = ExperimentTracker(db_path)
    exp = tracker.start_experiment("poison")
    for step in range(100):
        tracker.log_metrics_batch({"good": step}, step=step)
        if step == 50:
            tracker.log_metric("poison", 1.0, step=step)
    with pytest.raises(mp.WriterError, match="1 refused"):
        tracker.flush()
    assert rows(db_path, "SELECT COUNT(*) FROM metrics WHERE experiment_id = ?", (exp,)) == [(100,)]
    assert tracker.status()["rejected"] == 1
    tracker.log_metric("good", 1.0)
    tracker.flush()  # each loss is raised once


def test_locked_database_spills_to_disk_and_loses_nothing(db_path: str) -> None:
    mp.configure(db_path, max_queue=100)
    tracker = ExperimentTracker(db_path)
    exp = tracker.start_experiment("full")
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(1000):
                tracker.log_metrics_batch({"x": step}, step=step)
        assert len([w for w in caught if "spilling" in str(w.message)]) == 1
        status = tracker.status()
        assert status["spilled"] >= 900 and status["dropped"] == 0
        assert "spilled=" in repr(tracker)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    tracker.flush(timeout=60)
    assert rows(db_path, "SELECT step FROM metrics WHERE experiment_id = ? ORDER BY id", (exp,)) == [
        (s,) for s in range(1000)
    ]
    assert tracker.status()["spooled"] == 0


def test_spool_limit_drops_are_counted_and_raised(db_path: str) -> None:
    mp.configure(db_path, max_queue=10, max_spool_mb=0)
    tracker = ExperimentTracker(db_path)
    exp = tracker.start_experiment("full")
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            for step in range(100):
                tracker.log_metrics_batch({"x": step}, step=step)
        dropped = tracker.status()["dropped"]
        assert dropped > 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with pytest.raises(mp.EventsDroppedError, match=f"{dropped} events dropped"):
        tracker.flush(timeout=60)
    assert rows(db_path, "SELECT COUNT(*) FROM metrics WHERE experiment_id = ?", (exp,))[0][0] == 100 - dropped


def test_flush_is_a_barrier_for_every_thread(db_path: str) -> None:
    tracker = ExperimentTracker(db_path)
    exp = tracker.start_experiment("threads")
    start = threading.Barrier(4)

    def worker(k: int) -> None:
        start.wait()
        for step in range(2000):
            tracker.log_metrics_batch({f"w{k}": step}, step=step)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tracker.flush()
    assert rows(db_path, "SELECT metric_name, COUNT(*) FROM metrics WHERE experiment_id = ? GROUP BY 1 ORDER BY 1", (exp,)) == [
        (f"w{k}", 2000) for k in range(4)
    ]


def test_id_requests_do_not_wait_for_the_whole_queue(db_path: str) -> None:
    mp.configure(db_path, batch_size=1000)
    tracker = ExperimentTracker(db_path)
    exp = tracker.start_experiment("queue")
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    for step in range(50_000):
        tracker.log_metrics_batch({"x": step}, step=step)
    holder.execute("ROLLBACK")
    holder.close()
    registry = mp.ModelRegistry(db_path)
    model = registry.register_model(exp, "m.pth", val_metric=1.0)
    committed = rows(db_path, "SELECT COUNT(*) FROM metrics WHERE experiment_id = ?", (exp,))[0][0]
    assert rows(db_path, "SELECT id FROM models") == [(model,)]
    assert committed < 50_000  # the id came back before the queue behind it was drained
    tracker.flush()
    assert rows(db_path, "SELECT COUNT(*) FROM metrics WHERE experiment_id = ?", (exp,)) == [(50_000,)]
    # Starting the next experiment on the same tracker ends this one without draining the queue first.
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    for step in range(50_000):
        tracker.log_metrics_batch({"y": step}, step=step)
    holder.execute("ROLLBACK")
    holder.close()
    tracker.start_experiment("next")
    assert rows(db_path, "SELECT COUNT(*) FROM metrics WHERE metric_name = 'y'")[0][0] < 50_000
    tracker.flush()
    assert rows(db_path, "SELECT status FROM experiments WHERE id = ?", (exp,)) == [("completed",)]


def test_interval_flush_commits_without_any_flush_call(db_path: str) -> None:
    mp.configure(db_path, flush_interval=0.05)
    tracker = ExperimentTracker(db_path)
    exp = tracker.start_experiment("interval")
    tracker.log_metric("x", 1.0)
    deadline = time.monotonic() + 30
    while rows(db_path, "SELECT COUNT(*) FROM metrics WHERE experiment_id = ?", (exp,)) != [(1,)]:
        assert time.monotonic() < deadline, "the interval flush never committed"
        threading.Event().wait(0.01)  # polling the database from outside, as a user would


def test_construction_is_cheap_and_starts_no_thread(db_path: str, tmp_path) -> None:
    def writers() -> int:
        return sum(t.name == "ml-persistence-writer" for t in threading.enumerate())

    before = writers()
    for _ in range(100):
        mp.ModelRegistry(db_path)
        mp.DatasetManager(db_path)
        mp.MetricsLogger(db_path)
        ExperimentTracker(db_path)
    assert writers() == before and backend_for(db_path)._consumer is None
    assert not (tmp_path / "ml_experiments.db").exists()
    assert backend_for(db_path) is mp.ModelRegistry(db_path)._backend


def test_invalid_database_path_raises_at_start(tmp_path) -> None:
    tracker = ExperimentTracker(str(tmp_path / "no" / "such" / "dir" / "x.db"))
    with pytest.raises(mp.WriterError, match="cannot open database"):
        tracker.start_experiment("x")


def test_no_thread_of_ours_can_block_interpreter_exit(db_path: str) -> None:
    before = {t for t in threading.enumerate() if not t.daemon}
    tracker = ExperimentTracker(db_path)
    tracker.start_experiment("threads")
    tracker.log_metric("x", 1.0)
    tracker.flush()
    after = {t for t in threading.enumerate() if not t.daemon}
    assert after <= before, [t.name for t in after - before]


def fail_applies(monkeypatch: pytest.MonkeyPatch, failure) -> None:  # type: ignore[no-untyped-def]
    """Make the writer's Store.apply raise what ``failure()`` returns (None: apply as usual)."""
    from ml_persistence.sqlite.store import Store

    real_apply = Store.apply

    async def apply(self, events, marks=None, **keyed):  # type: ignore[no-untyped-def]
        error = failure()
        if error is not None:
            raise error
        return await real_apply(self, events, marks, **keyed)

    monkeypatch.setattr(Store, "apply", apply)


def test_a_full_disk_is_waited_out_whole_never_refused_event_by_event(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = ExperimentTracker(db_path)
    exp = tracker.start_experiment("full")
    tracker.flush()
    full = threading.Event()
    full.set()
    fail_applies(monkeypatch, lambda: sqlite3.OperationalError("database or disk is full") if full.is_set() else None)
    said: list[str] = []
    stalled = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())
            if "cannot write" in record.getMessage():
                stalled.set()

    handler = Seen()
    logging.getLogger("ml_persistence").addHandler(handler)
    try:
        for step in range(1000):
            tracker.log_metric("loss", float(step), step=step)
        assert stalled.wait(60)
        during = tracker.status()
        assert during["condition"]["reason"] == "database or disk is full" and during["rejected"] == 0
        full.clear()
        tracker.flush(timeout=60)
    finally:
        logging.getLogger("ml_persistence").removeHandler(handler)
    assert [s for (s,) in rows(db_path, "SELECT step FROM metrics WHERE experiment_id = ? ORDER BY id", (exp,))] == list(range(1000))
    after = tracker.status()
    assert after["condition"] is None and after["rejected"] == after["lost"] == 0
    assert len(said) == 2 and "again" in said[1], said  # one line when it starts, one when it clears


def test_a_fatal_database_error_keeps_the_batch_in_a_recovery_file_and_flush_raises(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = ExperimentTracker(db_path)
    exp = tracker.start_experiment("fatal")
    tracker.flush()
    broken = [sqlite3.DatabaseError("database disk image is malformed")]  # once, as a damaged page would
    fail_applies(monkeypatch, lambda: broken.pop() if broken else None)
    for step in range(1000):
        tracker.log_metric("loss", float(step), step=step)
    with pytest.raises(EventsSavedError) as raised:
        tracker.flush(timeout=60)
    (path,) = raised.value.paths
    assert path in raised.value.args[0] and "ml-persistence recover" in raised.value.args[0]
    mp.shutdown(timeout=60)  # the crashed writer is gone; nothing else applies the file now
    assert recovery.apply(path).stored == 1000
    steps = [s for (s,) in rows(db_path, "SELECT step FROM metrics WHERE experiment_id = ? ORDER BY id", (exp,))]
    assert steps == list(range(1000))


@pytest.mark.filterwarnings("ignore:ml_persistence. more than 100 events:RuntimeWarning")
def test_events_spilled_to_the_spool_are_saved_in_order_at_the_close_deadline(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = ExperimentTracker(db_path)
    exp = tracker.start_experiment("spilled")
    tracker.flush()
    mp.configure(db_path, max_queue=100)  # past 100 queued events, the rest go to the spool file
    full = threading.Event()
    full.set()
    fail_applies(monkeypatch, lambda: sqlite3.OperationalError("database or disk is full") if full.is_set() else None)
    for step in range(5000):
        tracker.log_metric("loss", float(step), step=step)
    assert tracker.status()["spilled"] > 0
    with pytest.raises(EventsSavedError) as raised:
        mp.shutdown(timeout=1)
    (path,) = raised.value.paths
    full.clear()
    assert recovery.apply(path).stored == 5000
    steps = [s for (s,) in rows(db_path, "SELECT step FROM metrics WHERE experiment_id = ? ORDER BY id", (exp,))]
    assert steps == list(range(5000))
