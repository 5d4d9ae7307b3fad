#!/usr/bin/env python3
"""Core performance figures for ml_persistence, in one run.

    PYTHONPATH=. python benchmarks/bench_core.py            # full run (about 2-3 minutes)
    PYTHONPATH=. python benchmarks/bench_core.py --quick    # smoke run (under 30 s)
    PYTHONPATH=. python benchmarks/bench_core.py --json     # figures as JSON on stdout (text on stderr)
    PYTHONPATH=. python benchmarks/bench_core.py --json out.json

Scenarios (each on its own database file in a temporary directory; ml_persistence.shutdown()
runs between them):

1. Raw SQLite insert limit: stdlib sqlite3 on a database created by ml_persistence's schema,
   WAL + synchronous=NORMAL, 10k rows per transaction, executemany and multi-row INSERT.
2. ExperimentTracker.log_metrics_batch (4 metrics): per-call latency percentiles, and end-to-end
   metric points/s from the first log call until flush() returns (everything committed).
3. Slowdown of a synthetic ~100 us training step by one log_metrics_batch per step, for a step
   that releases the GIL (sha256 over a bytes buffer) and for a pure-Python step that holds it.
4. GIL-holding loop (20k steps of ~100 us pure Python, 4 metrics each): share of rows already
   committed when the loop ends, counted with a separate connection before flush().
5. Memory bound: peak RSS (and tracemalloc peak) of a fresh process logging 2M metric points as
   fast as it can, with the buffer's max_queue and the RSS a full queue implies; and RSS growth of
   a fresh process over many bursts of varying size, each followed by flush().

A summary table gives each figure, its target and PASS/MISS. `--only raw,latency,...` runs a
subset. This machine may be shared: each scenario reports how much CPU other processes used
meanwhile, and figures from scenarios where that exceeded 0.15 CPU are flagged as noisy.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import ml_persistence
from ml_persistence.sqlite import schema
from ml_persistence.rows import local_text
from ml_persistence.tracker import ExperimentTracker

METRIC_COLUMNS = (
    "experiment_id, model_id, metric_name, metric_type, episode, step, epoch, "
    "value, value_json, split, phase, timestamp, metadata"
)
WIDTH = 13
METRIC_NAMES = ("train_loss", "train_acc", "lr", "grad_norm")

NOISY_CPUS = 0.15  # other processes' average CPU use above which a scenario's figures are flagged
FLUSHES_RSS_LIMIT_MIB = 32  # this benchmark's own bound for RSS growth over many variable-size flushes

_human = sys.stdout  # where the readable report goes (stderr when JSON goes to stdout)


def say(*args: Any) -> None:
    print(*args, file=_human, flush=True)


def header(title: str) -> None:
    say()
    say(f"== {title} " + "=" * max(0, 78 - len(title)))


def fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def rss_mib() -> float:
    """Current resident set size in MiB (Linux /proc; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mib() -> float:
    """Peak resident set size of this process image in MiB.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child
    started by a big parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class CpuWatch:
    """How much CPU other processes used while a scenario ran (this machine may be shared).

    Reads the machine-wide busy time from /proc/stat and subtracts this process's own CPU time
    (and that of children it waited for); the rest was used by someone else.
    """

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.busy0 = self._busy()
        self.own0 = self._own()

    @staticmethod
    def _busy() -> Optional[float]:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def others_cpus(self) -> Optional[float]:
        """Average number of CPUs kept busy by other processes since construction."""
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return None
        elapsed = time.perf_counter() - self.t0
        return max(0.0, (busy - self.busy0) - (self._own() - self.own0)) / max(elapsed, 1e-9)


def report_background(watch: CpuWatch, figures: dict[str, Any]) -> None:
    others = watch.others_cpus()
    figures["background_cpus"] = others
    if others is None:
        return
    note = "  <-- the machine was shared: figures are noisy" if others > NOISY_CPUS else ""
    say(f"  (other processes used {others:.2f} of {os.cpu_count()} CPUs meanwhile){note}")


def new_tracker(db_path: str) -> ExperimentTracker:
    tracker = ExperimentTracker(db_path, capture_environment=False)
    tracker.start_experiment("bench", experiment_type="benchmark")
    return tracker


def finish(tracker: ExperimentTracker) -> None:
    """End the tracker's experiment and close everything (so nothing is left for the exit hook)."""
    if tracker.experiment_id is not None:
        tracker.end_experiment("completed")
    tracker.close()
    ml_persistence.shutdown()


def metric_rows(path: str) -> int:
    """Rows in the metrics table, counted with a separate, plain sqlite3 connection."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    finally:
        conn.close()


# -- 1. raw SQLite ---------------------------------------------------------------------------


def _raw_rows(n: int, base: int) -> list[tuple]:
    stamp = local_text(time.time())
    return [
        (1, None, METRIC_NAMES[i & 3], "scalar", None, (base + i) >> 2, None,
         0.5 + (base + i) * 1e-6, None, "train" if (i & 3) < 2 else None, None, stamp, None)
        for i in range(n)
    ]


def bench_raw(tmp: str, total_rows: int, rows_per_txn: int = 10_000) -> dict[str, Any]:
    """Insert ``total_rows`` rows, ``rows_per_txn`` per transaction; rows are built before timing."""
    txns = max(1, total_rows // rows_per_txn)
    batches = [_raw_rows(rows_per_txn, t * rows_per_txn) for t in range(txns)]
    result: dict[str, Any] = {"rows": txns * rows_per_txn, "rows_per_txn": rows_per_txn}

    one_row_sql = f"INSERT INTO metrics ({METRIC_COLUMNS}) VALUES ({','.join('?' * WIDTH)})"

    def open_db(name: str) -> sqlite3.Connection:
        conn = schema.connect(os.path.join(tmp, name))  # ml_persistence's real schema and index
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("INSERT INTO experiments (name) VALUES ('raw')")
        return conn

    # executemany
    conn = open_db("raw_executemany.db")
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    gc.collect()
    t0 = time.perf_counter()
    for batch in batches:
        conn.execute("BEGIN")
        conn.executemany(one_row_sql, batch)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    result["executemany_rows_per_s"] = result["rows"] / elapsed
    result["journal_mode"] = mode
    result["synchronous"] = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync)

    # multi-row INSERT ... VALUES (...),(...), as wide as SQLite's variable limit allows
    conn = open_db("raw_multirow.db")
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if hasattr(conn, "getlimit") else 32766
    per_stmt = max(1, min(limit // WIDTH, 2500))  # the writer's own choice (store.Store)
    sql_cache: dict[int, str] = {}

    def sql_for(rows: int) -> str:
        if rows not in sql_cache:
            sql_cache[rows] = (
                f"INSERT INTO metrics ({METRIC_COLUMNS}) VALUES "
                + ",".join(["(" + ",".join("?" * WIDTH) + ")"] * rows)
            )
        return sql_cache[rows]

    flat_batches = []
    for batch in batches:
        chunks = []
        for s in range(0, len(batch), per_stmt):
            chunk = batch[s : s + per_stmt]
            chunks.append((sql_for(len(chunk)), [v for row in chunk for v in row]))
        flat_batches.append(chunks)
    del batches
    gc.collect()
    t0 = time.perf_counter()
    for chunks in flat_batches:
        conn.execute("BEGIN")
        for sql, params in chunks:
            conn.execute(sql, params)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    result["multirow_rows_per_s"] = result["rows"] / elapsed
    result["multirow_rows_per_statement"] = per_stmt

    say(f"  database: {result['journal_mode'].upper()}, synchronous={result['synchronous']}, "
        f"{fmt_int(result['rows'])} rows, {fmt_int(rows_per_txn)} rows/transaction, rows prebuilt")
    say(f"  executemany                         : {fmt_int(result['executemany_rows_per_s']):>12} rows/s")
    say(f"  multi-row INSERT ({per_stmt} rows/stmt)   : {fmt_int(result['multirow_rows_per_s']):>12} rows/s")
    return result


# -- 2. log_metrics_batch latency and end-to-end throughput ----------------------------------


def timer_overhead_ns() -> float:
    """Return the median cost of one perf_counter_ns() pair, the floor of every timed call."""
    pc = time.perf_counter_ns
    over = [0] * 10_000
    for i in range(10_000):
        a = pc()
        over[i] = pc() - a
    return statistics.median(over)


def timed_calls(log: Callable[..., None], metrics: dict[str, float], calls: int) -> list[int]:
    """Call ``log(metrics, step=i)`` ``calls`` times; return each call's nanoseconds, sorted."""
    pc = time.perf_counter_ns
    lat = [0] * calls
    for i in range(calls):
        a = pc()
        log(metrics, step=i)
        lat[i] = pc() - a
    lat.sort()
    return lat


def bench_latency(tmp: str, calls: int, warmup: int, raw_limit: float) -> dict[str, Any]:
    path = os.path.join(tmp, "latency.db")
    tracker = new_tracker(path)
    log = tracker.log_metrics_batch
    metrics = {"train_loss": 0.25, "train_acc": 0.75, "lr": 3e-4, "grad_norm": 1.5}
    for i in range(warmup):
        log(metrics, step=i)
    tracker.flush()

    timer_overhead = timer_overhead_ns()
    gc.collect()
    t0 = time.perf_counter()
    lat = timed_calls(log, metrics, calls)
    t_logged = time.perf_counter()
    tracker.flush()
    t_done = time.perf_counter()
    status = tracker.status()
    finish(tracker)
    rows = metric_rows(path)

    points = 4 * calls
    e2e = points / (t_done - t0)
    r = {
        "calls": calls,
        "warmup_calls": warmup,
        "timer_overhead_ns": timer_overhead,
        "p50_us": percentile(lat, 0.50) / 1000,
        "p90_us": percentile(lat, 0.90) / 1000,
        "p99_us": percentile(lat, 0.99) / 1000,
        "p999_us": percentile(lat, 0.999) / 1000,
        "max_us": lat[-1] / 1000,
        "mean_us": sum(lat) / calls / 1000,
        "log_loop_s": t_logged - t0,
        "flush_s": t_done - t_logged,
        "e2e_points_per_s": e2e,
        "e2e_pct_of_raw": 100 * e2e / raw_limit,
        "rows_in_db": rows,
        "rows_expected": 4 * (calls + warmup),
        "dropped": status["dropped"],
    }
    say(f"  {fmt_int(calls)} calls of log_metrics_batch(4 metrics, step=i) after {fmt_int(warmup)} warm-up calls "
        f"(timer overhead ~{timer_overhead:.0f} ns, included)")
    say(f"  latency  p50 {r['p50_us']:.2f} us | p90 {r['p90_us']:.2f} us | p99 {r['p99_us']:.2f} us | "
        f"p99.9 {r['p999_us']:.2f} us | max {r['max_us']:.1f} us | mean {r['mean_us']:.2f} us")
    say(f"  logging loop {r['log_loop_s']:.3f} s, then flush() {r['flush_s']:.3f} s")
    say(f"  end-to-end   {fmt_int(e2e)} metric points/s committed "
        f"= {r['e2e_pct_of_raw']:.0f}% of raw executemany ({fmt_int(raw_limit)} rows/s)")
    say(f"  rows in db {fmt_int(rows)} (expected {fmt_int(r['rows_expected'])}), dropped {status['dropped']}")
    return r


# -- 3. step slowdown --------------------------------------------------------------------------


def calibrate(make_step: Callable[[int], Callable[[], Any]], lo: int, hi: int, target_us: float) -> tuple[int, float]:
    """Find the work size (in [lo, hi]) whose step takes about ``target_us``; return (size, us)."""

    def measure(size: int) -> float:
        step = make_step(size)
        for _ in range(50):
            step()
        samples = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(200):
                step()
            samples.append((time.perf_counter() - t0) / 200 * 1e6)
        return statistics.median(samples)

    size = lo
    us = measure(size)
    for _ in range(4):
        size = int(min(hi, max(1, size * target_us / us)))
        us = measure(size)
    return size, us


def gil_free_step_factory(nbytes: int) -> Callable[[], Any]:
    buf = os.urandom(nbytes)
    sha256 = hashlib.sha256

    def step() -> Any:
        return sha256(buf).digest()  # hashlib releases the GIL for buffers over 2 KiB

    return step


def gil_holding_step_factory(n: int) -> Callable[[], Any]:
    def step() -> Any:
        x = 0
        for i in range(n):  # fixed work, not a wall-clock spin: stolen GIL time shows up as slowdown
            x += i
        return x

    return step


def run_steps(step: Callable[[], Any], n: int, log: Optional[Callable[..., None]]) -> float:
    """Time ``n`` steps (optionally logging 4 metrics per step); return us per step."""
    gc.collect()
    if log is None:
        t0 = time.perf_counter()
        for i in range(n):
            step()
        return (time.perf_counter() - t0) / n * 1e6
    m = {"train_loss": 0.25, "train_acc": 0.75, "lr": 3e-4, "grad_norm": 1.5}
    t0 = time.perf_counter()
    for i in range(n):
        step()
        m["train_loss"] = 1.0 / (i + 1)
        log(m, step=i)
    return (time.perf_counter() - t0) / n * 1e6


def bench_slowdown(tmp: str, name: str, step: Callable[[], Any], steps: int, repeats: int) -> dict[str, Any]:
    path = os.path.join(tmp, f"slowdown_{name}.db")
    tracker = new_tracker(path)
    log = tracker.log_metrics_batch
    run_steps(step, min(steps, 2000), log)  # warm-up (also starts the writer)
    tracker.flush()
    base, logged, ratios = [], [], []
    for r in range(repeats):
        order = ("base", "log") if r % 2 == 0 else ("log", "base")
        pair = {}
        for kind in order:
            if kind == "base":
                pair[kind] = run_steps(step, steps, None)
            else:
                pair[kind] = run_steps(step, steps, log)
                tracker.flush()  # not timed: the next run starts with an empty queue
        base.append(pair["base"])
        logged.append(pair["log"])
        ratios.append(pair["log"] / pair["base"] - 1)
    status = tracker.status()
    finish(tracker)
    mb, ml = statistics.median(base), statistics.median(logged)
    r = {
        "steps": steps,
        "repeats": repeats,
        "base_us_per_step": mb,
        "log_us_per_step": ml,
        "slowdown_pct": 100 * (ml / mb - 1),
        "paired_slowdown_pct_median": 100 * statistics.median(ratios),
        "paired_slowdown_pct_min": 100 * min(ratios),
        "paired_slowdown_pct_max": 100 * max(ratios),
        "base_us_runs": base,
        "log_us_runs": logged,
        "dropped": status["dropped"],
    }
    return r


def say_slowdown(label: str, r: dict[str, Any]) -> None:
    say(f"  {label}")
    say(f"    no logging   {r['base_us_per_step']:8.2f} us/step   (runs: "
        + ", ".join(f"{x:.1f}" for x in r["base_us_runs"]) + ")")
    say(f"    with logging {r['log_us_per_step']:8.2f} us/step   (runs: "
        + ", ".join(f"{x:.1f}" for x in r["log_us_runs"]) + ")")
    say(f"    slowdown     {r['slowdown_pct']:+.2f}% (medians); paired runs median {r['paired_slowdown_pct_median']:+.2f}%,"
        f" range {r['paired_slowdown_pct_min']:+.2f}% .. {r['paired_slowdown_pct_max']:+.2f}%")


# -- 4. committed share at the end of a GIL-holding loop ---------------------------------------


def committed_run(path: str, step: Callable[[], Any], steps: int) -> dict[str, Any]:
    tracker = new_tracker(path)
    log = tracker.log_metrics_batch
    m = {"train_loss": 0.25, "train_acc": 0.75, "lr": 3e-4, "grad_norm": 1.5}
    gc.collect()
    t0 = time.perf_counter()
    for i in range(steps):
        step()
        m["train_loss"] = 1.0 / (i + 1)
        log(m, step=i)
    t_loop = time.perf_counter()
    committed = metric_rows(path)  # separate connection, before flush()
    t_counted = time.perf_counter()
    tracker.flush()
    t_flushed = time.perf_counter()
    status = tracker.status()
    finish(tracker)
    expected = 4 * steps
    return {
        "loop_s": t_loop - t0,
        "us_per_step": (t_loop - t0) / steps * 1e6,
        "committed_at_loop_end": committed,
        "committed_pct": 100 * committed / expected,
        "count_query_s": t_counted - t_loop,
        "flush_after_loop_s": t_flushed - t_counted,
        "rows_after_flush": metric_rows(path),
        "dropped": status["dropped"],
    }


def bench_committed(tmp: str, step: Callable[[], Any], steps: int, runs: int) -> dict[str, Any]:
    """Run the loop ``runs`` times (fresh database each) and report the median committed share."""
    results = [committed_run(os.path.join(tmp, f"committed_{k}.db"), step, steps) for k in range(runs)]
    expected = 4 * steps
    shares = [r["committed_pct"] for r in results]
    med = sorted(results, key=lambda r: r["committed_pct"])[(len(results) - 1) // 2]
    r = {
        "steps": steps,
        "runs": runs,
        "expected_rows": expected,
        "committed_pct": statistics.median(shares),
        "committed_pct_min": min(shares),
        "committed_pct_max": max(shares),
        "committed_pct_runs": shares,
        "flush_after_loop_ms_runs": [1000 * x["flush_after_loop_s"] for x in results],
        "us_per_step": statistics.median(x["us_per_step"] for x in results),
        "rows_after_flush_ok": all(x["rows_after_flush"] == expected for x in results),
        "dropped": sum(x["dropped"] for x in results),
        "median_run": med,
    }
    say(f"  {runs} runs of {fmt_int(steps)} steps of ~100 us pure Python + log_metrics_batch(4 metrics) "
        f"each, fresh database per run; median {r['us_per_step']:.1f} us/step")
    say("  committed when the loop ended (separate connection, before flush): "
        + ", ".join(f"{x:.1f}%" for x in shares)
        + f" of {fmt_int(expected)} rows -> median {r['committed_pct']:.1f}%, min {r['committed_pct_min']:.1f}%")
    say("  flush() after the loop took " + ", ".join(f"{x:.0f}" for x in r["flush_after_loop_ms_runs"])
        + f" ms; all rows present after flush: {r['rows_after_flush_ok']}, dropped {r['dropped']}")
    return r


# -- 5. memory ----------------------------------------------------------------------------------


def memory_child(db_path: str, points: int, trace: bool) -> dict[str, Any]:
    """Runs in a fresh process: log ``points`` metric points as fast as possible, report memory."""
    import tracemalloc

    from ml_persistence.events import MetricsLogged, encode

    calls = points // 4
    tracker = new_tracker(db_path)
    backend = tracker._backend
    max_queue = backend.options.max_queue
    log = tracker.log_metrics_batch
    metrics = {"train_loss": 0.25, "train_acc": 0.75, "lr": 3e-4, "grad_norm": 1.5}
    for i in range(1000):
        log(metrics, step=i)
    tracker.flush()
    gc.collect()
    queue = backend.buffer.items
    payload = encode(MetricsLogged(1, list(metrics), list(metrics.values()), None, 10**6, None, None, time.time()))
    rss0 = rss_mib()
    if trace:
        tracemalloc.start()
    max_len = 0
    t0 = time.perf_counter()
    for i in range(calls):
        log(metrics, step=i)
        if not i & 1023:
            n = len(queue)
            if n > max_len:
                max_len = n
    t_logged = time.perf_counter()
    queued_at_end = len(queue)
    max_len = max(max_len, queued_at_end)
    rss_logged = rss_mib()
    traced_peak = None
    if trace:
        traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    tracker.flush()
    t_done = time.perf_counter()
    status = tracker.status()
    finish(tracker)
    per_event = (rss_logged - rss0) * 2**20 / max(1, queued_at_end)
    return {
        "points": 4 * calls,
        "calls": calls,
        "max_queue_events": max_queue,
        "max_queue_points": 4 * max_queue,
        "payload_bytes": sys.getsizeof(payload),
        "max_queue_len_seen": max_len,
        "queued_at_end_of_logging": queued_at_end,
        "rss_bytes_per_queued_event": per_event,
        "projected_full_queue_mib": max_queue * per_event / 2**20,
        "rss_before_mib": rss0,
        "rss_after_logging_mib": rss_logged,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_growth_mib": peak_rss_mib() - rss0,
        "tracemalloc_peak_mib": traced_peak,
        "log_s": t_logged - t0,
        "flush_s": t_done - t_logged,
        "dropped": status["dropped"],
        "written": status["written"],
    }


def memory_flushes_child(db_path: str, flushes: int) -> dict[str, Any]:
    """Runs in a fresh process: many bursts of varying size, each followed by flush().

    A training loop that flushes (or reads, which flushes) every so often hands the writer batches
    of varying size; this shows whether memory stays flat while it does.
    """
    import random

    tracker = new_tracker(db_path)
    log = tracker.log_metrics_batch
    metrics = {"train_loss": 0.25, "train_acc": 0.75, "lr": 3e-4, "grad_norm": 1.5}
    rng = random.Random(1234)
    for i in range(1000):
        log(metrics, step=i)
    tracker.flush()
    gc.collect()
    rss0 = rss_mib()
    samples = []
    step = 0
    t0 = time.perf_counter()
    for k in range(1, flushes + 1):
        for _ in range(rng.randint(50, 600)):
            log(metrics, step=step)
            step += 1
        tracker.flush()
        if k % max(1, flushes // 8) == 0:
            samples.append((k, rss_mib() - rss0))
    elapsed = time.perf_counter() - t0
    rss1 = rss_mib()
    status = tracker.status()
    finish(tracker)
    return {
        "flushes": flushes,
        "points": 4 * step,
        "elapsed_s": elapsed,
        "rss_before_mib": rss0,
        "rss_after_mib": rss1,
        "rss_growth_mib": rss1 - rss0,
        "rss_growth_samples": samples,
        "dropped": status["dropped"],
    }


def _child(tmp: str, name: str, mode: str, n: int) -> dict[str, Any]:
    db = os.path.join(tmp, f"memory_{name}.db")
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child", db, mode, str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        raise RuntimeError(f"memory child {mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(tmp: str, points: int, flushes: int, trace: bool) -> dict[str, Any]:
    r = _child(tmp, "burst", "rss", points)
    say(f"  (i) a fresh process logs {fmt_int(r['points'])} metric points ({fmt_int(r['calls'])} calls) as fast as "
        f"it can: {r['log_s']:.2f} s, then flush() {r['flush_s']:.2f} s")
    say(f"      buffer max_queue = {fmt_int(r['max_queue_events'])} events (= {fmt_int(r['max_queue_points'])} points "
        f"at 4 metrics/event); one queued event is a {r['payload_bytes']} B bytes object")
    say(f"      longest queue seen {fmt_int(r['max_queue_len_seen'])} events; dropped {r['dropped']}")
    say(f"      RSS before {r['rss_before_mib']:.1f} MiB, after logging {r['rss_after_logging_mib']:.1f} MiB, "
        f"peak {r['peak_rss_mib']:.1f} MiB -> peak growth {r['peak_rss_growth_mib']:.1f} MiB")
    say(f"      = {r['rss_bytes_per_queued_event']:.0f} B of RSS per queued event -> a full queue would hold "
        f"~{r['projected_full_queue_mib']:.0f} MiB")
    if trace:
        t = _child(tmp, "burst_traced", "tracemalloc", points)
        r["tracemalloc_peak_mib"] = t["tracemalloc_peak_mib"]
        r["tracemalloc_max_queue_len_seen"] = t["max_queue_len_seen"]
        say(f"      tracemalloc peak while logging (separate run, slower; longest queue "
            f"{fmt_int(t['max_queue_len_seen'])}): {t['tracemalloc_peak_mib']:.1f} MiB")
    f = _child(tmp, "flushes", "flushes", flushes)
    r["flushes_rss_growth_mib"] = f["rss_growth_mib"]
    r["flushes"] = f
    r["dropped"] += f["dropped"]
    say(f"  (ii) {f['flushes']} bursts of 50-600 calls, each followed by flush() ({fmt_int(f['points'])} points, "
        f"{f['elapsed_s']:.1f} s): RSS growth " + ", ".join(f"{mib:.0f}" for _, mib in f["rss_growth_samples"])
        + f" MiB as it goes -> {f['rss_growth_mib']:.1f} MiB at the end")
    return r


# -- main ---------------------------------------------------------------------------------------


SCENARIOS = ("raw", "latency", "slowdown", "committed", "memory")


def main(argv: Optional[list[str]] = None) -> int:
    global _human
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke run (< 30 s)")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write the figures as JSON to PATH, or to stdout (the text report then goes to stderr)")
    p.add_argument("--only", help="comma-separated subset of: " + ", ".join(SCENARIOS)
                   + " (latency needs raw for its %% figure, so raw runs with it)")
    p.add_argument("--tmpdir", help="directory for the databases (default: a fresh temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the databases")
    p.add_argument("--raw-rows", type=int, help="rows for the raw SQLite runs (default 500k; quick 100k)")
    p.add_argument("--calls", type=int, help="timed log_metrics_batch calls (default 200k; quick 50k)")
    p.add_argument("--warmup", type=int, help="warm-up calls (default 20k; quick 5k)")
    p.add_argument("--steps", type=int, help="steps per slowdown run (default 20k; quick 3k)")
    p.add_argument("--repeats", type=int, help="interleaved no-log/log run pairs (default 7; quick 3)")
    p.add_argument("--gil-steps", type=int, help="steps of the committed-share loop (default 20k, also quick)")
    p.add_argument("--gil-runs", type=int, help="repetitions of the committed-share loop (default 5; quick 2)")
    p.add_argument("--mem-points", type=int, help="metric points for the memory run (default 2M; quick 400k)")
    p.add_argument("--mem-flushes", type=int, help="variable-size flushes in the memory run (default 200; quick 60)")
    p.add_argument("--no-tracemalloc", action="store_true", help="skip the tracemalloc memory run")
    p.add_argument("--step-us", type=float, default=100.0, help="synthetic step length to calibrate to (us)")
    p.add_argument("--switch-interval", type=float, metavar="SECONDS",
                   help="sys.setswitchinterval() for this run (default: leave Python's 0.005)")
    p.add_argument("--_memory-child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a._memory_child:
        db, mode, n = a._memory_child
        if mode == "flushes":
            result = memory_flushes_child(db, int(n))
        else:
            result = memory_child(db, int(n), mode == "tracemalloc")
        print(json.dumps(result))
        return 0

    q = a.quick
    raw_rows = a.raw_rows or (100_000 if q else 500_000)
    calls = a.calls or (50_000 if q else 200_000)
    warmup = a.warmup or (5_000 if q else 20_000)
    steps = a.steps or (3_000 if q else 20_000)
    repeats = a.repeats or (3 if q else 7)
    gil_steps = a.gil_steps or 20_000
    gil_runs = a.gil_runs or (2 if q else 5)
    mem_points = a.mem_points or (400_000 if q else 2_000_000)
    mem_flushes = a.mem_flushes or (60 if q else 200)
    trace = not a.no_tracemalloc
    selected = set(SCENARIOS)
    if a.only:
        selected = {x.strip() for x in a.only.split(",") if x.strip()}
        unknown = selected - set(SCENARIOS)
        if unknown:
            p.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
        if "latency" in selected:
            selected.add("raw")

    if a.switch_interval:
        sys.setswitchinterval(a.switch_interval)
    if a.json == "-":
        _human = sys.stderr
    tmp = a.tmpdir or tempfile.mkdtemp(prefix="ml_persistence_bench_")
    os.makedirs(tmp, exist_ok=True)
    started = time.perf_counter()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    figures: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "switch_interval_s": sys.getswitchinterval(),
            "ml_persistence": ml_persistence.__version__,
            "loadavg_at_start": load,
        },
        "mode": "quick" if q else "full",
    }
    say(f"ml_persistence {ml_persistence.__version__} core benchmark ({figures['mode']}) -- Python "
        f"{figures['machine']['python']}, SQLite {figures['machine']['sqlite']}, {os.cpu_count()} CPUs, "
        f"GIL switch interval {1000 * sys.getswitchinterval():.0f} ms")
    say(f"databases in {tmp}" + (f"; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load else ""))
    raw = lat = sa = sb = com = mem = None
    try:
        if "raw" in selected:
            header("1. Raw SQLite insert limit (stdlib sqlite3, ml_persistence schema)")
            w = CpuWatch()
            raw = figures["raw_sqlite"] = bench_raw(tmp, raw_rows)
            report_background(w, raw)
            ml_persistence.shutdown()

        if "latency" in selected:
            header("2. log_metrics_batch (4 metrics): per-call latency and end-to-end throughput")
            w = CpuWatch()
            lat = figures["log_metrics_batch"] = bench_latency(tmp, calls, warmup, raw["executemany_rows_per_s"])
            report_background(w, lat)
            ml_persistence.shutdown()

        nloop = None
        if "slowdown" in selected or "committed" in selected:
            nloop, us_b = calibrate(gil_holding_step_factory, 1000, 10**7, a.step_us)
        if "slowdown" in selected:
            header(f"3. Slowdown of a ~{a.step_us:.0f} us training step by one log_metrics_batch per step")
            nbytes, us_a = calibrate(gil_free_step_factory, 64 * 1024, 4 * 1024 * 1024, a.step_us)
            say(f"  calibrated: (a) sha256 over {nbytes / 1024:.0f} KiB = {us_a:.1f} us (releases the GIL); "
                f"(b) pure-Python loop of {fmt_int(nloop)} iterations = {us_b:.1f} us (holds the GIL)")
            say(f"  {fmt_int(steps)} steps per run, {repeats} interleaved no-log/log run pairs, medians")
            w = CpuWatch()
            sa = bench_slowdown(tmp, "gil_free", gil_free_step_factory(nbytes), steps, repeats)
            sa["work"] = f"sha256 over {nbytes} bytes"
            say_slowdown("(a) GIL-releasing step (sha256, like a torch/numpy kernel)", sa)
            report_background(w, sa)
            ml_persistence.shutdown()
            w = CpuWatch()
            sb = bench_slowdown(tmp, "gil_holding", gil_holding_step_factory(nloop), steps, repeats)
            sb["work"] = f"pure-Python loop of {nloop} iterations"
            say_slowdown("(b) GIL-holding step (pure Python)", sb)
            report_background(w, sb)
            ml_persistence.shutdown()
            figures["slowdown_gil_free"] = sa
            figures["slowdown_gil_holding"] = sb

        if "committed" in selected:
            header("4. Committed share at the end of a GIL-holding loop")
            w = CpuWatch()
            com = figures["committed"] = bench_committed(tmp, gil_holding_step_factory(nloop), gil_steps, gil_runs)
            report_background(w, com)
            ml_persistence.shutdown()

        if "memory" in selected:
            header("5. Memory bound")
            w = CpuWatch()
            mem = figures["memory"] = bench_memory(tmp, mem_points, mem_flushes, trace)
            report_background(w, mem)
    finally:
        ml_persistence.shutdown()
        if not a.keep and not a.tmpdir:
            shutil.rmtree(tmp, ignore_errors=True)

    rows: list[tuple[str, str, str, Optional[bool]]] = []
    if raw:
        rows += [
            ("raw executemany insert", f"{fmt_int(raw['executemany_rows_per_s'])} rows/s", "-", None),
            ("raw multi-row INSERT", f"{fmt_int(raw['multirow_rows_per_s'])} rows/s", "-", None),
        ]
    if lat:
        rows += [
            ("log_metrics_batch p50", f"{lat['p50_us']:.2f} us", "<= 2 us", lat["p50_us"] <= 2),
            ("log_metrics_batch p99", f"{lat['p99_us']:.2f} us", "<= 10 us", lat["p99_us"] <= 10),
            ("log_metrics_batch p99.9", f"{lat['p999_us']:.2f} us", "-", None),
            ("log_metrics_batch max", f"{lat['max_us']:.0f} us", "-", None),
            ("end-to-end committed", f"{fmt_int(lat['e2e_points_per_s'])} pts/s", "-", None),
            ("end-to-end / raw executemany", f"{lat['e2e_pct_of_raw']:.0f}%", ">= 50%", lat["e2e_pct_of_raw"] >= 50),
        ]
    if sa and sb:
        rows += [
            ("step slowdown (a) GIL-releasing", f"{sa['slowdown_pct']:+.2f}%", "<= 2%", sa["slowdown_pct"] <= 2),
            ("step slowdown (b) GIL-holding", f"{sb['slowdown_pct']:+.2f}%", "<= 2%", sb["slowdown_pct"] <= 2),
        ]
    if com:
        rows += [
            ("committed at loop end (median)", f"{com['committed_pct']:.1f}%", ">= 90%", com["committed_pct"] >= 90),
            ("committed at loop end (worst run)", f"{com['committed_pct_min']:.1f}%", ">= 90%",
             com["committed_pct_min"] >= 90),
        ]
    if mem:
        rows += [
            ("memory: max_queue", f"{fmt_int(mem['max_queue_events'])} events", "-", None),
            ("memory: peak RSS growth, burst", f"{mem['peak_rss_growth_mib']:.0f} MiB", "-", None),
            ("memory: projected at full queue", f"{mem['projected_full_queue_mib']:.0f} MiB", "-", None),
            ("memory: RSS growth, var. flushes", f"{mem['flushes_rss_growth_mib']:.0f} MiB",
             f"<= {FLUSHES_RSS_LIMIT_MIB} MiB", mem["flushes_rss_growth_mib"] <= FLUSHES_RSS_LIMIT_MIB),
        ]
    dropped = sum(x["dropped"] for x in (lat, sa, sb, com, mem) if x)
    rows.append(("events dropped (all scenarios)", str(dropped), "0", dropped == 0))

    header("Summary")
    summary_table(rows)
    noisy = [
        (k, v["background_cpus"]) for k, v in figures.items()
        if isinstance(v, dict) and (v.get("background_cpus") or 0) > NOISY_CPUS
    ]
    if noisy:
        say("  note: other processes were busy during " + ", ".join(f"{k} ({c:.2f} CPU)" for k, c in noisy)
            + "; rerun on a quiet machine before trusting those figures")
    return write_figures(figures, rows, started, a.json)


def summary_table(rows: list) -> None:
    """Print (figure, value, target, ok) rows as an aligned table; ok None means no target."""
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    say(f"  {'figure':<{w0}}  {'value':>{w1}}  {'target':<{w2}}  result")
    say(f"  {'-' * w0}  {'-' * w1}  {'-' * w2}  ------")
    for name, value, target, ok in rows:
        verdict = "-" if ok is None else ("PASS" if ok else "MISS")
        say(f"  {name:<{w0}}  {value:>{w1}}  {target:<{w2}}  {verdict}")


def write_figures(figures: dict, rows: list, started: float, json_arg: Optional[str]) -> int:
    """Print the total time; add the summary to ``figures`` and write them as JSON if asked ('-': stdout)."""
    elapsed = time.perf_counter() - started
    say(f"\n  total time {elapsed:.1f} s")
    figures["summary"] = [
        {"figure": n, "value": v, "target": t, "result": None if ok is None else ("PASS" if ok else "MISS")}
        for n, v, t, ok in rows
    ]
    figures["elapsed_s"] = elapsed
    if json_arg:
        text = json.dumps(figures, indent=2)
        if json_arg == "-":
            print(text)
        else:
            with open(json_arg, "w") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
