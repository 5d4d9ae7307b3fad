#!/usr/bin/env python3
"""A full disk, waited out and recovered: what is stored, what is logged, how long catching up takes.

    PYTHONPATH=. python benchmarks/bench_full_disk.py              # 100,000 events
    PYTHONPATH=. python benchmarks/bench_full_disk.py --events 1000000

The disk is "full" through a file-size limit (RLIMIT_FSIZE just above the database's size, SIGXFSZ
ignored), set in a child process, as in tests/test_full_disk.py.

1. Waited out: the child logs N metric events on the full disk, the limit is raised back, then
   flush(). Shown: rows stored (each step once, in order), stderr lines, and the time from the
   limit being raised to flush() returning (everything caught up).
2. Exit deadline: the child logs N events on the full disk and exits (deadline 1 s) with the disk
   still full. Shown: the recovery file's size and the time to save it (the exit's overrun past
   the deadline), then `ml-persistence recover`'s time and rows stored.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time

CHILD = """\
import logging, os, resource, signal, sqlite3, sys, threading, time
from ml_persistence import ExperimentTracker
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
db, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
stalled = threading.Event()
class Echo(logging.StreamHandler):
    def emit(self, record):
        super().emit(record)
        if "cannot write" in record.getMessage():
            stalled.set()
logging.getLogger("ml_persistence").addHandler(Echo(sys.stderr))
t = ExperimentTracker(db, capture_environment=False)
t.start_experiment("full-disk bench")
t.flush()
conn = sqlite3.connect(db); conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"); conn.close()
size = max(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
# With a file-size limit, the recovery file must fit under it too (a full device has other disks).
resource.setrlimit(resource.RLIMIT_FSIZE, (size + (8192 if mode == "wait" else 2 << 20), hard))
for i in range(n):
    t.log_metric("loss", float(i), step=i)
stalled.wait(60)
if mode == "wait":
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    started = time.perf_counter()
    t.flush()
    print(f"drain {time.perf_counter() - started:.3f}", flush=True)
else:
    print(f"exiting {time.monotonic():.3f}", flush=True)
"""


def steps(db: str) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [s for (s,) in conn.execute("SELECT step FROM metrics ORDER BY id")]
    finally:
        conn.close()


def run(directory: str, n: int, mode: str, timeout: str) -> tuple[subprocess.CompletedProcess, float]:
    script = os.path.join(directory, "child.py")
    with open(script, "w") as f:
        f.write(CHILD)
    env = dict(os.environ, ML_PERSISTENCE_EXIT_TIMEOUT=timeout)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, script, os.path.join(directory, "full.db"), str(n), mode],
                          env=env, capture_output=True, text=True, timeout=600)
    return done, time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    n = parser.parse_args().events

    with tempfile.TemporaryDirectory() as directory:
        done, _ = run(directory, n, "wait", "10")
        got = steps(os.path.join(directory, "full.db"))
        drain = float(re.search(r"drain (\S+)", done.stdout).group(1))
        print(f"1. waited out: {n:,} events logged on a full disk, {len(got):,} rows stored, "
              f"in order and once each: {got == list(range(n))}; {len(done.stderr.splitlines())} stderr lines; "
              f"caught up {drain:.2f} s after space returned ({n / drain:,.0f} events/s)")

    with tempfile.TemporaryDirectory() as directory:
        db = os.path.join(directory, "full.db")
        done, ended = run(directory, n, "exit", "1")
        exiting = float(re.search(r"exiting (\S+)", done.stdout).group(1))
        found = re.search(r"saved to (\S+\.mlrecovery)", done.stderr)
        assert found, done.stderr
        path = found.group(1)
        size = os.path.getsize(path)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ml_persistence", "recover", path], check=True, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=os.getcwd()))
        applied = time.perf_counter() - started
        got = steps(db)
        print(f"2. exit deadline (1 s) on a full disk: process exited {ended - exiting:.2f} s after its last line; "
              f"recovery file {size / 1e6:.2f} MB ({size / n:.1f} bytes/event); `recover` stored {len(got):,} rows "
              f"(once each, in order: {got == list(range(n))}) in {applied:.2f} s")


if __name__ == "__main__":
    main()
