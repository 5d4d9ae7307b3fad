"""ml_persistence.liveness: telling a live 'running' experiment from a crashed or stale one."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ml_persistence import liveness
from ml_persistence.sqlite import schema
from ml_persistence.liveness import STALE_AFTER_SECONDS, effective_status, last_activity, parse_time, process_alive

HOST = socket.gethostname()


def stamp(epoch: float) -> str:
    """A timestamp as the library stores it (local time, microseconds)."""
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S.%f")


def own_start() -> float:
    stat = liveness._proc_stat(os.getpid())
    if stat is None:
        pytest.skip("no /proc here")
    return stat[1]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


# -- parse_time -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "2024-01-02 03:04:05.123456",
    "2024-01-02 03:04:05.123000",  # SQLite's own default (milliseconds + '000')
    "2024-01-02T03:04:05.123456",
    "2024-01-02 03:04:05",
    " 2024-01-02 03:04:05 ",
])
def test_parse_time_reads_local_timestamps(text: str) -> None:
    expected = dt.datetime.fromisoformat(text.strip()).timestamp()
    assert parse_time(text) == expected


def test_parse_time_cuts_extra_fraction_digits() -> None:
    assert parse_time("2024-01-02 03:04:05.123456789") == dt.datetime(2024, 1, 2, 3, 4, 5, 123456).timestamp()


def test_parse_time_utc_suffix() -> None:
    assert parse_time("2024-01-02T03:04:05Z") == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc).timestamp()
    assert parse_time("2024-01-02T03:04:05+02:00") == dt.datetime(
        2024, 1, 2, 1, 4, 5, tzinfo=dt.timezone.utc).timestamp()


def test_parse_time_keeps_an_offset_after_microseconds() -> None:
    text = "2024-01-02T03:04:05.123456+05:45"
    assert parse_time(text) == dt.datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize("junk", [None, "", "yesterday", 1700000000, b"2024-01-02", "2024-13-45 99:99:99"])
def test_parse_time_rejects_what_is_not_a_timestamp(junk: object) -> None:
    assert parse_time(junk) is None


# -- process_alive --------------------------------------------------------------------------------


def test_this_process_is_alive() -> None:
    started = own_start()
    assert process_alive(os.getpid())
    assert process_alive(os.getpid(), time.time())  # running since before now
    assert process_alive(os.getpid(), started - 1.0)  # within the 2 s clock tolerance


def test_a_process_younger_than_the_experiment_has_reused_the_pid() -> None:
    assert not process_alive(os.getpid(), own_start() - 3600)


@pytest.mark.parametrize("pid", [0, -1])
def test_nonsense_pids_are_not_alive(pid: int) -> None:
    assert not process_alive(pid)


def test_an_ended_process_is_not_alive() -> None:
    assert not process_alive(dead_pid())


def test_a_zombie_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped: a zombie
        if liveness._proc_stat(proc.pid) is None:
            pytest.skip("no /proc here")
        assert liveness._proc_stat(proc.pid)[0] == "Z"
        assert not process_alive(proc.pid)
    finally:
        proc.wait(timeout=60)


def test_proc_stat_of_a_process_whose_name_has_spaces_and_parentheses(tmp_path: Path) -> None:
    # The command name field of /proc/PID/stat is free text: parse from the last ')'.
    name = tmp_path / "a (b) c"
    name.symlink_to(sys.executable)
    proc = subprocess.Popen([str(name), "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE)
    try:
        stat = liveness._proc_stat(proc.pid)
        if stat is None:
            pytest.skip("no /proc here")
        assert stat[0] in ("R", "S", "D")
        assert abs(stat[1] - time.time()) < 120
        assert process_alive(proc.pid, time.time())
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


# -- effective_status ------------------------------------------------------------------------------


def running(**fields: object) -> dict[str, object]:
    return {"status": "running", "start_time": stamp(time.time()), **fields}


@pytest.mark.parametrize("status", ["completed", "failed", "interrupted", "whatever", None])
def test_ended_statuses_are_kept(status: object) -> None:
    assert effective_status({"status": status, "pid": dead_pid(), "hostname": HOST}) == status


def test_same_host_live_pid_is_running() -> None:
    assert effective_status(running(pid=os.getpid(), hostname=HOST)) == "running"


def test_same_host_dead_pid_is_crashed() -> None:
    assert effective_status(running(pid=dead_pid(), hostname=HOST)) == "crashed"
    # Crashed, however recent the last activity: the pid says it all.
    assert effective_status(running(pid=dead_pid(), hostname=HOST), last_activity=time.time()) == "crashed"


def test_same_host_reused_pid_is_crashed() -> None:
    exp = running(pid=os.getpid(), hostname=HOST, start_time=stamp(own_start() - 3600))
    assert effective_status(exp) == "crashed"


def test_other_host_goes_stale_after_an_hour_without_activity() -> None:
    now = time.time()
    old = stamp(now - STALE_AFTER_SECONDS - 60)
    exp = running(pid=dead_pid(), hostname="elsewhere", start_time=old)
    assert effective_status(exp, now=now) == "stale"
    assert effective_status(exp, last_activity=now - 60, now=now) == "running"
    assert effective_status(exp, last_activity=now - STALE_AFTER_SECONDS - 1, now=now) == "stale"
    fresh = running(pid=1, hostname="elsewhere", start_time=stamp(now - 60))
    assert effective_status(fresh, now=now) == "running"


def test_a_run_resumed_or_reopened_recently_is_not_stale_though_it_started_long_ago() -> None:
    now = time.time()
    old = stamp(now - 100 * STALE_AFTER_SECONDS)
    reopened = running(pid=1, hostname="elsewhere", start_time=old, updated_at=stamp(now - 60))
    assert effective_status(reopened, last_activity=now - 99 * STALE_AFTER_SECONDS, now=now) == "running"
    quiet = running(pid=1, hostname="elsewhere", start_time=old, updated_at=stamp(now - 2 * STALE_AFTER_SECONDS))
    assert effective_status(quiet, now=now) == "stale"


def test_hostname_argument_decides_what_is_local() -> None:
    exp = running(pid=dead_pid(), hostname="box-a", start_time=stamp(time.time()))
    assert effective_status(exp, hostname="box-a") == "crashed"
    assert effective_status(exp, hostname="box-b") == "running"


def test_no_pid_uses_activity_even_on_this_host() -> None:
    now = time.time()
    old = stamp(now - 2 * STALE_AFTER_SECONDS)
    assert effective_status(running(pid=None, hostname=HOST, start_time=old), now=now) == "stale"
    assert effective_status(running(hostname=None, start_time=old), last_activity=now, now=now) == "running"


def test_nothing_known_is_running() -> None:
    assert effective_status({"status": "running"}) == "running"
    assert effective_status({"status": "running", "start_time": "garbage"}) == "running"


# -- last_activity, with_liveness -------------------------------------------------------------------


@pytest.fixture
def conn(tmp_path: Path):
    from ml_persistence.sqlite.reads import Reader

    reader = Reader.open(str(tmp_path / "live.db"))
    yield reader
    reader.close()


def _experiment(conn, status: str, pid: object, hostname: object, start: float) -> int:
    cursor = conn.conn.execute("INSERT INTO experiments (name, status, pid, hostname, start_time) VALUES (?, ?, ?, ?, ?)",
                          ("e", status, pid, hostname, stamp(start)))
    return cursor.lastrowid


def test_last_activity_is_the_newest_metric_model_or_artifact(conn) -> None:
    now = time.time()
    exp = _experiment(conn, "running", None, "elsewhere", now - 9000)
    other = _experiment(conn, "running", None, "elsewhere", now - 9000)
    assert last_activity(conn, exp) is None
    conn.conn.execute("INSERT INTO metrics (experiment_id, metric_name, value, timestamp) VALUES (?, 'm', 1, ?)",
                 (exp, stamp(now - 300)))
    assert last_activity(conn, exp) == pytest.approx(now - 300, abs=1e-3)
    conn.conn.execute("INSERT INTO models (experiment_id, name, checkpoint_path, created_at) VALUES (?, 'x', 'p', ?)",
                 (exp, stamp(now - 200)))
    conn.conn.execute("INSERT INTO artifacts (experiment_id, artifact_type, artifact_path, created_at) "
                 "VALUES (?, 't', 'p', ?)", (exp, stamp(now - 250)))
    assert last_activity(conn, exp) == pytest.approx(now - 200, abs=1e-3)
    conn.conn.execute("INSERT INTO metrics (experiment_id, metric_name, value, timestamp) VALUES (?, 'm', 1, ?)",
                 (other, stamp(now)))
    assert last_activity(conn, exp) == pytest.approx(now - 200, abs=1e-3)  # another experiment's rows do not count


def test_with_liveness_keeps_the_stored_status(conn) -> None:
    now = time.time()
    crashed = {"id": _experiment(conn, "running", dead_pid(), HOST, now), "status": "running", "pid": dead_pid(),
               "hostname": HOST, "start_time": stamp(now)}
    assert liveness.with_liveness(conn, crashed) is crashed
    assert (crashed["status"], crashed["stored_status"]) == ("crashed", "running")
    remote_id = _experiment(conn, "running", 7, "elsewhere", now - 2 * STALE_AFTER_SECONDS)
    remote = {"id": remote_id, "status": "running", "pid": 7, "hostname": "elsewhere",
              "start_time": stamp(now - 2 * STALE_AFTER_SECONDS)}
    assert liveness.with_liveness(conn, dict(remote))["status"] == "stale"
    conn.conn.execute("INSERT INTO metrics (experiment_id, metric_name, value, timestamp) VALUES (?, 'm', 1, ?)",
                 (remote_id, stamp(now)))
    assert liveness.with_liveness(conn, dict(remote))["status"] == "running"
    done = liveness.with_liveness(conn, {"id": 99, "status": "completed"})
    assert (done["status"], done["stored_status"]) == ("completed", "completed")
