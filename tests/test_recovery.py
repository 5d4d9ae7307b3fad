"""What a failed write means (store.classify's table), recovery files, and a spool that moves on when its disk fills."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from conftest import rows
from ml_persistence import ExperimentTracker, events as ev, recovery, spool as spool_module
from ml_persistence.events import MetricsLogged
from ml_persistence.spool import Spool
from ml_persistence.storage import BUSY, ENVIRONMENT, FATAL, REFUSED
from ml_persistence.sqlite.store import RESULT_CODES, RESULT_MESSAGES, classify

# -- the classification table --------------------------------------------------------------------

PRIMARY = {
    "SQLITE_ERROR": (1, REFUSED), "SQLITE_BUSY": (5, BUSY), "SQLITE_LOCKED": (6, BUSY),
    "SQLITE_NOMEM": (7, ENVIRONMENT), "SQLITE_READONLY": (8, ENVIRONMENT), "SQLITE_IOERR": (10, ENVIRONMENT),
    "SQLITE_CORRUPT": (11, FATAL), "SQLITE_FULL": (13, ENVIRONMENT), "SQLITE_CANTOPEN": (14, ENVIRONMENT),
    "SQLITE_TOOBIG": (18, REFUSED), "SQLITE_CONSTRAINT": (19, REFUSED), "SQLITE_MISMATCH": (20, REFUSED),
    "SQLITE_NOLFS": (22, ENVIRONMENT), "SQLITE_NOTADB": (26, FATAL),
}


def coded(code: int, kind: type = sqlite3.OperationalError) -> sqlite3.Error:
    exc = kind("some message")
    exc.sqlite_errorcode = code  # what Python 3.11+ sets
    return exc


def test_every_sqlite_primary_result_code_has_an_explicit_meaning() -> None:
    assert sorted(RESULT_CODES) == list(range(1, 27))
    for name, (code, kind) in PRIMARY.items():
        assert classify(coded(code)) == kind, name


def test_extended_result_codes_mean_what_their_primary_code_means() -> None:
    assert classify(coded(778)) == ENVIRONMENT  # SQLITE_IOERR_WRITE: a write past a file-size limit
    assert classify(coded(13 | 1 << 8)) == ENVIRONMENT  # an extended SQLITE_FULL
    assert classify(coded(1032)) == ENVIRONMENT  # SQLITE_READONLY_DBMOVED
    assert classify(coded(2067, sqlite3.IntegrityError)) == REFUSED  # SQLITE_CONSTRAINT_UNIQUE
    assert classify(coded(261)) == BUSY  # SQLITE_BUSY_RECOVERY


def test_without_result_codes_the_message_decides_as_on_python_3_10() -> None:
    for message, code in RESULT_MESSAGES:
        exc = sqlite3.OperationalError(message)  # no sqlite_errorcode attribute, as on 3.10
        assert classify(exc) == RESULT_CODES[code], message
    assert classify(sqlite3.OperationalError("database or disk is full")) == ENVIRONMENT
    assert classify(sqlite3.OperationalError("disk I/O error")) == ENVIRONMENT
    assert classify(sqlite3.OperationalError("attempt to write a readonly database")) == ENVIRONMENT
    assert classify(sqlite3.OperationalError("no such table: metrics")) == REFUSED  # SQLITE_ERROR
    assert classify(sqlite3.DatabaseError("file is not a database")) == FATAL


def test_python_errors_about_the_event_itself_are_refusals_and_others_are_not() -> None:
    assert classify(OverflowError("Python int too large to convert to SQLite INTEGER")) == REFUSED
    assert classify(UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")) == REFUSED
    assert classify(sqlite3.InterfaceError("Error binding parameter 1")) == REFUSED
    assert classify(OSError(errno.ENOSPC, "No space left on device")) == ENVIRONMENT
    assert classify(OSError(errno.EFBIG, "File too large")) == ENVIRONMENT
    assert classify(MemoryError()) == ENVIRONMENT
    assert classify(RuntimeError("a bug")) == FATAL  # never taken for the event's fault


def test_real_sqlite_errors_are_classified(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    conn.execute("CREATE TABLE t (x UNIQUE)")
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.Error) as refused:
        conn.execute("INSERT INTO t VALUES (1)")
    assert classify(refused.value) == REFUSED
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.Error) as locked:
        conn.execute("INSERT INTO t VALUES (2)")
    assert classify(locked.value) == BUSY
    other.execute("ROLLBACK")
    other.close()
    conn.close()
    (tmp_path / "junk.db").write_bytes(b"not a database, just text" * 100)
    with pytest.raises(sqlite3.Error) as fatal:
        sqlite3.connect(str(tmp_path / "junk.db")).execute("SELECT * FROM sqlite_master")
    assert classify(fatal.value) == FATAL


# -- recovery files ------------------------------------------------------------------------------


def metric(eid: int, step: int) -> bytes:
    return ev.encode(MetricsLogged(eid, ["loss"], [float(step)], None, step, None, None, time.time()))


@pytest.fixture
def experiment(db_path: str) -> int:
    tracker = ExperimentTracker(db_path, capture_environment=False)
    eid = tracker.start_experiment("recovery")
    tracker.close()
    return eid


def stored_steps(db_path: str) -> list[int]:
    return [s for (s,) in rows(db_path, "SELECT step FROM metrics ORDER BY id")]


def test_a_recovery_file_is_private_found_for_its_database_and_applied_once(db_path: str, experiment: int) -> None:
    path = recovery.save(db_path, [metric(experiment, i) for i in range(10)])
    assert path is not None and os.path.dirname(path) == os.path.dirname(db_path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert recovery.pending(db_path) == [path]
    assert recovery.pending(db_path + "-other") == []
    copy = path + ".copy"
    with open(path, "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())
    applied = recovery.apply(path)
    assert (applied.stored, applied.skipped, applied.refused) == (10, 0, 0)
    assert not os.path.exists(path) and recovery.pending(db_path) == []
    again = recovery.apply(copy, db_path)
    assert (again.stored, again.skipped) == (0, 10)
    assert stored_steps(db_path) == list(range(10))


def test_events_keyed_by_an_agent_client_are_skipped_if_the_agent_stored_them(db_path: str, experiment: int) -> None:
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("INSERT INTO agent_clients (client_id, last_seq) VALUES ('trainer-1', 7)")
    conn.close()
    path = recovery.save(db_path, [metric(experiment, seq) for seq in range(5, 10)],
                         [("trainer-1", seq) for seq in range(5, 10)])
    assert path is not None
    applied = recovery.apply(path)
    assert (applied.stored, applied.skipped) == (2, 3)
    assert stored_steps(db_path) == [8, 9]
    assert rows(db_path, "SELECT last_seq FROM agent_clients WHERE client_id = 'trainer-1'") == [(9,)]


def test_files_others_could_have_written_are_not_applied(db_path: str, experiment: int) -> None:
    path = recovery.save(db_path, [metric(experiment, 0)])
    assert path is not None
    os.chmod(path, 0o644)  # readable or writable by others: not trusted as ours
    assert recovery.pending(db_path) == []


def test_a_damaged_file_is_refused_and_kept(db_path: str, experiment: int, tmp_path: Path) -> None:
    path = recovery.save(db_path, [metric(experiment, i) for i in range(100)])
    assert path is not None
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 20)
    with pytest.raises(ValueError, match="cut short|damaged"):
        recovery.apply(path)
    assert os.path.exists(path)


# -- the spool goes where there is room ----------------------------------------------------------


def test_the_spool_continues_in_a_new_file_when_its_disk_fills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(str(tmp_path))
    real_pwrite = os.pwrite
    first: list[int] = []

    def pwrite(fd: int, data, offset: int) -> int:  # type: ignore[no-untyped-def]
        if not first:
            first.append(fd)
        if fd == first[0] and offset + len(data) > 600_000:  # the first file's disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(spool_module.os, "pwrite", pwrite)
    payloads = [bytes([i % 251]) * 1000 for i in range(2000)]
    for payload in payloads:
        spool.put(0, payload)
    assert len(spool._segments) >= 2
    assert spool.where() in spool_module.spool_directories(str(tmp_path))
    got = []
    while len(spool):
        got.extend(p for _, p in spool.get(333))
    assert got == payloads
    spool.close()


def test_an_agent_batch_skips_events_a_recovery_file_stored_while_it_was_queued(db_path: str, experiment: int) -> None:
    # The trainer's file (seqs 1-5) is applied with `recover` while a live agent still holds seqs 1-10.
    from agent.ingest import Batch
    from agent.server import AgentBuffer
    from agent.writer import AgentWriter
    from ml_persistence.sqlite.store import Store
    from ml_persistence.writer import WriterOptions

    path = recovery.save(db_path, [metric(experiment, seq) for seq in range(1, 6)],
                         [("trainer-1", seq) for seq in range(1, 6)])
    assert path is not None and recovery.apply(path).stored == 5
    committed = threading.Event()
    buffer = AgentBuffer(wake_threshold=1, kick=lambda: None)
    writer = AgentWriter(Store(db_path, 1000), buffer, WriterOptions())
    events = [ev.decode(metric(experiment, seq)) for seq in range(1, 11)]
    buffer.append_batch(Batch("trainer-1", 10, events, lambda batch: committed.set(), list(range(1, 11))))
    writer.start()
    assert committed.wait(30)
    assert writer.stop(30)
    assert stored_steps(db_path) == list(range(1, 11))
    assert rows(db_path, "SELECT last_seq FROM agent_clients WHERE client_id = 'trainer-1'") == [(10,)]


def test_a_neighbouring_databases_recovery_files_are_not_taken(db_path: str, experiment: int) -> None:
    # runs.db.old's files match runs.db's name pattern (runs.db.*.mlrecovery): they are not ours.
    other = db_path + ".old"
    path = recovery.save(other, [metric(experiment, 1)])
    assert path is not None and os.path.dirname(path) == os.path.dirname(db_path)
    assert recovery.pending(db_path) == []
    assert recovery.pending(other) == [path]


def test_saving_nothing_writes_no_file(db_path: str) -> None:
    assert recovery.save_keyed(db_path, iter([])) is None
    assert recovery.pending(db_path) == []


def test_every_batch_an_agent_still_queues_at_its_stop_deadline_is_saved(
    db_path: str, experiment: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.ingest import Batch
    from agent.server import AgentBuffer
    from agent.writer import AgentWriter
    from ml_persistence.sqlite.store import Store
    from ml_persistence.writer import WriterOptions

    async def full(self, events, marks=None, keys=None):  # type: ignore[no-untyped-def]
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "apply", full)
    monkeypatch.setattr(Store, "apply_batches", full)  # the agent writer's one-transaction path
    buffer = AgentBuffer(wake_threshold=1, kick=lambda: None)
    for client in range(5):
        events = [ev.decode(metric(experiment, client * 1000 + seq)) for seq in range(1, 1001)]
        buffer.append_batch(Batch(f"trainer-{client}", 1000, events, lambda batch: None, list(range(1, 1001))))
    writer = AgentWriter(Store(db_path, 1000), buffer, WriterOptions(batch_size=1000))
    writer.start()
    writer.stop(0.5)
    assert (writer.saved, writer.lost) == (5000, 0)
    (path,) = writer.recovery_files
    keys = [key for _, key in recovery.records(path)]
    assert keys == [(f"trainer-{client}", seq) for client in range(5) for seq in range(1, 1001)]
