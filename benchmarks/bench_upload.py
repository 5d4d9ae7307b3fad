"""What automatic upload (`sync_to=`) costs a training loop, and how far behind the team copy is.

    python benchmarks/bench_upload.py [--pairs 6] [--steps 30000] [--url postgresql://...]

A child process runs a ~100 us pure-Python step with one log_metrics_batch (4 metrics) per step,
for --steps steps, once with no upload and once with sync_to (another SQLite file, and the
PostgreSQL database at --url / $ML_PERSISTENCE_TEST_POSTGRES when given: a fresh one per run). The
runs alternate, --pairs times; the slowdown is the median over pairs of (with - without) / without,
with its spread, of the loop's wall time and of the training thread's own CPU time (what the step and
its log calls cost that thread; wall time also counts waiting for a core the uploader holds). After its loop, each child with upload waits, without exiting, until the target
holds every metric row: that wait is how far behind the team copy was when training stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

CHILD = r"""
import json, os, sqlite3, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from bench_core import gil_holding_step_factory
from ml_persistence import ExperimentTracker, shutdown

db, target, steps, n = sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
step = gil_holding_step_factory(n)
tracker = ExperimentTracker(db, capture_environment=False, sync_to=target or "")
tracker.start_experiment("bench-upload")
metrics = {"train_loss": 0.5, "train_acc": 0.9, "lr": 3e-4, "grad_norm": 1.5}
log = tracker.log_metrics_batch
start, cpu = time.perf_counter(), time.thread_time()
for i in range(steps):
    step()
    log(metrics, step=i)
loop, cpu = time.perf_counter() - start, time.thread_time() - cpu
tracker.flush()
behind = None
if target:
    expected, ended = steps * 4, time.perf_counter()
    while True:
        if target.startswith("postgresql"):
            import psycopg
            with psycopg.connect(target) as conn:
                found = conn.execute("SELECT count(*) FROM metrics").fetchone()[0]
        elif os.path.exists(target):
            conn = sqlite3.connect(target)
            try:
                found = conn.execute("SELECT count(*) FROM metrics").fetchone()[0]
            except sqlite3.OperationalError:
                found = 0
            conn.close()
        else:
            found = 0
        if found >= expected:
            break
        time.sleep(0.05)
    behind = time.perf_counter() - ended
tracker.end_experiment()
tracker.close()
shutdown()
print(json.dumps({"loop": loop, "cpu": cpu, "behind": behind}))
"""


def calibrated_n() -> int:
    """Return the loop size of a ~100 us pure-Python step on this machine."""
    from bench_core import calibrate, gil_holding_step_factory

    n, _ = calibrate(gil_holding_step_factory, 100, 100_000, 100.0)
    return n


def run_child(tmp: str, target: str, steps: int, n: int) -> dict:
    """Run one training loop in a fresh process; return its loop seconds and upload lag."""
    db = os.path.join(tmp, f"run-{uuid.uuid4().hex[:8]}.db")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(HERE.parent), str(HERE), db, target, str(steps), str(n)],
        capture_output=True, text=True, timeout=900,
    )
    if done.returncode != 0:
        raise SystemExit(f"child failed: {done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fresh_pg(admin: str) -> str:
    """Create a scratch database; return its URL."""
    import psycopg
    from psycopg import sql
    from urllib.parse import urlsplit, urlunsplit

    name = "mlp_bench_up_" + uuid.uuid4().hex[:10]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlunsplit(urlsplit(admin)._replace(path="/" + name))


def drop_pg(admin: str, url: str) -> None:
    """Drop a scratch database made by fresh_pg."""
    import psycopg
    from psycopg import sql
    from urllib.parse import urlsplit

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(urlsplit(url).path[1:])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--url", default=os.environ.get("ML_PERSISTENCE_TEST_POSTGRES"))
    args = parser.parse_args()
    n = calibrated_n()
    print(f"step: ~100 us pure Python (n={n}); {args.steps:,} steps, 4 metrics each, {args.pairs} pairs")
    targets = ["sqlite"] + (["postgresql"] if args.url else [])
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        for kind in targets:
            slowdowns, cpu_slowdowns, lags = [], [], []
            for _ in range(args.pairs):
                off = run_child(tmp, "", args.steps, n)
                target = os.path.join(tmp, f"team-{uuid.uuid4().hex[:8]}.db") if kind == "sqlite" else fresh_pg(args.url)
                try:
                    on = run_child(tmp, target, args.steps, n)
                finally:
                    if kind == "postgresql":
                        drop_pg(args.url, target)
                slowdowns.append((on["loop"] - off["loop"]) / off["loop"] * 100)
                cpu_slowdowns.append((on["cpu"] - off["cpu"]) / off["cpu"] * 100)
                lags.append(on["behind"])
            slowdowns.sort()
            cpu_slowdowns.sort()
            print(f"sync_to {kind:10s}: step slowdown median {statistics.median(slowdowns):+.1f} % "
                  f"(pairs: {', '.join(f'{s:+.1f}' for s in slowdowns)}); "
                  f"training thread's CPU {statistics.median(cpu_slowdowns):+.1f} % "
                  f"(pairs: {', '.join(f'{s:+.1f}' for s in cpu_slowdowns)}); "
                  f"team copy complete {statistics.median(lags):.2f} s after the loop "
                  f"(max {max(lags):.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
