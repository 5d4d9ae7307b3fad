"""Measure the loss window when a trainer is SIGKILLed: how old is the newest event that was lost?

A child process logs one metric per millisecond whose value is the wall-clock time of the call.
The parent kills it with SIGKILL at a random moment, then reads the newest committed value.
The window is kill time - newest committed log time (events logged after that were lost).

    python benchmarks/bench_sigkill.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from ml_persistence.writer import WriterOptions

CHILD = r"""
import sys, time
import ml_persistence as mp
tracker = mp.ExperimentTracker(sys.argv[1])
tracker.start_experiment("sigkill")
print("ready", flush=True)
next_at = time.perf_counter()
while True:
    now = time.time()
    tracker.log_metric("t", now)
    next_at += 0.001
    while time.perf_counter() < next_at:
        pass
"""


def one_run(directory: str, run: int) -> float:
    db = os.path.join(directory, f"kill{run}.db")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", CHILD, db], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    time.sleep(random.uniform(1.0, 2.0))  # let it run: this is a measurement, not a test
    killed_at = time.time()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    conn = sqlite3.connect(db)
    (newest,) = conn.execute("SELECT MAX(value) FROM metrics").fetchone()
    conn.close()
    return killed_at - newest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        windows = [one_run(directory, run) for run in range(args.runs)]
    windows.sort()
    print(f"SIGKILL loss window over {args.runs} kills (1 metric/ms, default flush_interval {WriterOptions().flush_interval} s):")
    print(f"  median {statistics.median(windows) * 1000:.0f} ms   p90 {windows[int(len(windows) * 0.9) - 1] * 1000:.0f} ms"
          f"   max {windows[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
