#!/usr/bin/env python3
"""Every logging mode side by side, in one run: thread, process and agent.

    PYTHONPATH=. python benchmarks/bench_modes.py                    # full run (about 10 minutes)
    PYTHONPATH=. python benchmarks/bench_modes.py --quick            # smoke run (under 2 minutes)
    PYTHONPATH=. python benchmarks/bench_modes.py --modes thread,agent --only slowdown,rss
    PYTHONPATH=. python benchmarks/bench_modes.py --json out.json    # figures as JSON too ('-': stdout)

Modes (every trainer is a fresh process, this script with a hidden --_child flag):
- thread:  ExperimentTracker(db) with ML_PERSISTENCE_WRITER=thread (the in-process writer thread);
- process: ExperimentTracker(db) with ML_PERSISTENCE_WRITER=process (a private writer process the
  library starts). Each trainer reports status()["writer"]; a mode whose trainers report another
  writer than the one asked for is flagged in the report;
- agent:   ExperimentTracker(agent="unix://...") to `python -m agent --db DB --listen unix://...`,
  started by this script for each scenario and stopped with SIGTERM (it must drain and exit 0).

Figures, per mode (capture_environment=False everywhere; the database exists beforehand):
1. start: start_experiment() + one log_metrics_batch + the first flush() in a fresh process
   (median of --start-runs), the close() after it, and the time from before the tracker is made
   until its first metric row is committed without any flush() (polled with a separate sqlite3
   connection, in separate fresh processes).
2. slowdown: a ~100 us step that releases the GIL (sha256 over a large buffer) and a pure-Python
   step that holds it, one 4-metric log_metrics_batch per step. --pairs interleaved no-log/log
   runs of --steps steps (order alternating, flush() after every log run, untimed), after two
   warm-up log runs; the figure is the median of per-pair ratios with its interquartile range
   and a 95% interval for the median; the training thread's own CPU (thread_time) is a second view.
3. latency: log_metrics_batch p50/p99/p99.9 in a tight loop (bench_core's method).
4. ingest: 1 and 8 trainers (8 share one database file in thread and process modes, one agent in
   agent mode), --ingest-calls calls in all; committed points/s = points / (go barrier -> the last
   flush() returning); rows counted afterwards and checked against the expected total.
5. committed: share of a GIL-holding loop's points (--busy-steps steps) committed when the loop
   ends (counted with a separate connection, before flush()), and the flush() after it.
6. sigkill: a trainer logs one metric per ms (value = time.time()) and is SIGKILLed at a random
   moment; then the agent is stopped (SIGTERM, drains) or, in process mode, the private writer
   must commit and exit on its own: its exit is awaited with a pidfd. Window = kill time - newest
   committed value; the rows must have no missing steps.
7. rss: --points metric points logged as fast as possible; the trainer's RSS and, separately, its
   writer process's or the agent's, sampled every --sample-points; warm-up RSS (after the first
   --warmup-points), spread after warm-up, final (after flush()). Target: within +-20 MiB of the
   warm-up RSS.

A summary table has a row per figure and a column per mode, with PASS/MISS where issue 14 sets a
target. A mode that fails in one scenario is reported as an error there; the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import ml_persistence  # noqa: E402
import bench_core  # noqa: E402
from bench_agent import (  # noqa: E402
    METRICS,
    AgentProc,
    Child,
    _init_db,
    _rss_mib,
    _say_child,
    _wait_go,
    child_env,
    metric_rows,
    proc_cpu_s,
)
from bench_core import (  # noqa: E402
    calibrate,
    fmt_int,
    gil_free_step_factory,
    gil_holding_step_factory,
    header,
    percentile,
    say,
    timed_calls,
    timer_overhead_ns,
    write_figures,
)

MODES = ("thread", "process", "agent")
SCENARIOS = ("start", "slowdown", "latency", "ingest", "committed", "sigkill", "rss")
RSS_FLAT_MIB = 20.0
WRITER_EXIT_TIMEOUT = 120.0


# -- processes ----------------------------------------------------------------------------------


def mode_env(mode: str) -> dict[str, str]:
    """The environment of a trainer in ``mode`` (no agent or writer choice inherited from ours)."""
    env = child_env()
    env.pop("ML_PERSISTENCE_WRITER", None)
    if mode != "agent":
        env["ML_PERSISTENCE_WRITER"] = mode
    return env


class Trainer(Child):
    """One trainer process in ``mode``: this script with --_child ROLE JSON; says 'ready', waits for 'go'."""

    def __init__(self, mode: str, role: str, **params: Any) -> None:
        self.role = f"{mode} {role}"
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--_child", role, json.dumps(params)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=mode_env(mode), cwd=REPO, text=True,
        )


def descendants(pid: int) -> list[int]:
    """Pids of every live process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rss_sum_mib(pids: list[int]) -> Optional[float]:
    values = [r for r in (_rss_mib(p) for p in pids) if r is not None]
    return sum(values) if values else None


def wait_exits(pidfds: list[int], timeout: float) -> Optional[float]:
    """Seconds until every process behind ``pidfds`` has exited (None if not within ``timeout``); closes them."""
    t0 = time.perf_counter()
    pending = list(pidfds)
    try:
        while pending:
            left = timeout - (time.perf_counter() - t0)
            if left <= 0:
                return None
            readable, _, _ = select.select(pending, [], [], left)
            pending = [fd for fd in pending if fd not in readable]
        return time.perf_counter() - t0
    finally:
        for fd in pidfds:
            os.close(fd)


def wait_rows_settled(db: str, experiment_id: int, quiet_s: float = 1.0, timeout: float = 60.0) -> float:
    """Wait until the experiment's row count stops changing for ``quiet_s``; return the seconds waited."""
    t0 = time.perf_counter()
    last, since = -1, t0
    while time.perf_counter() - t0 < timeout:
        n = experiment_rows(db, experiment_id)
        now = time.perf_counter()
        if n != last:
            last, since = n, now
        elif now - since >= quiet_s:
            break
        time.sleep(0.05)
    return time.perf_counter() - t0


def experiment_rows(db: str, experiment_id: int) -> int:
    """Metric rows of one experiment, counted with a separate plain sqlite3 connection."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM metrics WHERE experiment_id = ?", (experiment_id,)).fetchone()[0]
    finally:
        conn.close()


class Target:
    """Where a scenario's trainers log: a database file, and the agent in front of it in agent mode."""

    def __init__(self, mode: str, db: str, agent: Optional[AgentProc]) -> None:
        self.mode = mode
        self.db = db
        self.agent = agent

    def params(self) -> dict[str, Any]:
        return {"db": self.db, "agent": self.agent.url if self.agent else None}


@contextlib.contextmanager
def target(tmp: str, mode: str, name: str) -> Iterator[Target]:
    """A fresh database for ``name`` (schema created); in agent mode an agent on it, drained and stopped at the end."""
    db = os.path.join(tmp, name + ".db")
    _init_db(db)
    if mode != "agent":
        yield Target(mode, db, None)
        return
    agent = AgentProc(tmp, db, name).start()
    try:
        yield Target(mode, db, agent)
        agent.stop()
    finally:
        agent.kill()


# -- trainer side (runs in the --_child processes) ------------------------------------------------


def _tracker(params: dict[str, Any]) -> Any:
    from ml_persistence import ExperimentTracker

    if params.get("agent"):
        return ExperimentTracker(agent=params["agent"], capture_environment=False)
    return ExperimentTracker(params["db"], capture_environment=False)


def _started(params: dict[str, Any], name: str) -> Any:
    tracker = _tracker(params)
    tracker.start_experiment(name, experiment_type="benchmark")
    return tracker


def _writer(tracker: Any) -> str:
    s = tracker.status()
    return str(s.get("writer") or ("agent" if s.get("mode") == "agent" else "thread"))


def _losses(tracker: Any) -> dict[str, Any]:
    s = tracker.status()
    return {"dropped": s.get("dropped") or 0, "lost": s.get("lost") or 0, "spilled": s.get("spilled") or 0,
            "writer": _writer(tracker)}


def child_start(params: dict[str, Any]) -> dict[str, Any]:
    """start_experiment + one 4-metric call, then flush() (or poll until the rows are committed)."""
    t0 = time.perf_counter()
    tracker = _tracker(params)
    eid = tracker.start_experiment("start", experiment_type="benchmark")
    t_started = time.perf_counter()
    tracker.log_metrics_batch(dict(METRICS), step=0)
    r: dict[str, Any] = {"start_ms": 1000 * (t_started - t0)}
    if params["flush"]:
        tracker.flush()
        t_flushed = time.perf_counter()
        r["first_flush_ms"] = 1000 * (t_flushed - t_started)
        r["start_flush_ms"] = 1000 * (t_flushed - t0)
        r["spawn_to_flushed_ms"] = 1000 * (time.time() - params["t_spawn"])
    else:
        conn = sqlite3.connect(params["db"], timeout=30)
        deadline = t0 + 60
        while time.perf_counter() < deadline:
            if conn.execute("SELECT COUNT(*) FROM metrics WHERE experiment_id = ?", (eid,)).fetchone()[0] == 4:
                break
            time.sleep(0.0005)
        r["first_row_ms"] = 1000 * (time.perf_counter() - t0)
        conn.close()
    r["writer"] = _writer(tracker)
    t_close = time.perf_counter()
    tracker.close()
    r["close_ms"] = 1000 * (time.perf_counter() - t_close)
    return r


def child_slowdown(params: dict[str, Any]) -> dict[str, Any]:
    """Interleaved no-log/log run pairs of a GIL-releasing and a GIL-holding step, wall and thread CPU."""
    import gc

    tracker = _started(params, "slowdown")
    log = tracker.log_metrics_batch
    steps, pairs = params["steps"], params["pairs"]
    kinds = {"gil_free": gil_free_step_factory(params["nbytes"]),
             "gil_holding": gil_holding_step_factory(params["nloop"])}

    def run(step: Callable[[], Any], with_log: bool) -> tuple[float, float]:
        gc.collect()
        if not with_log:
            c0, t0 = time.thread_time(), time.perf_counter()
            for _ in range(steps):
                step()
            t1, c1 = time.perf_counter(), time.thread_time()
        else:
            m = dict(METRICS)
            c0, t0 = time.thread_time(), time.perf_counter()
            for i in range(steps):
                step()
                m["train_loss"] = 1.0 / (i + 1)
                log(m, step=i)
            t1, c1 = time.perf_counter(), time.thread_time()
        return (t1 - t0) / steps * 1e6, (c1 - c0) / steps * 1e6

    for step in kinds.values():  # the writer or sender is started and warm before anything is timed
        for _ in range(2):
            run(step, True)
            tracker.flush()
    _say_child("ready")
    _wait_go()
    out: dict[str, Any] = {}
    for kind, step in kinds.items():
        runs: dict[str, list[tuple[float, float]]] = {"base": [], "log": []}
        for r in range(pairs):
            for which in (("base", "log") if r % 2 == 0 else ("log", "base")):
                runs[which].append(run(step, which == "log"))
                if which == "log":
                    tracker.flush()  # untimed: the next run starts with an empty queue
        out[kind] = runs
    return {"runs": out, **_losses(tracker)}


def child_latency(params: dict[str, Any]) -> dict[str, Any]:
    """Per-call latency of log_metrics_batch in a tight loop (bench_core's method), then flush()."""
    import gc

    tracker = _started(params, "latency")
    log = tracker.log_metrics_batch
    m = dict(METRICS)
    for i in range(params["warmup"]):
        log(m, step=i)
    tracker.flush()
    overhead = timer_overhead_ns()
    calls = params["calls"]
    gc.collect()
    t0 = time.perf_counter()
    lat = timed_calls(log, m, calls)
    t_logged = time.perf_counter()
    tracker.flush()
    t_done = time.perf_counter()
    return {
        "calls": calls, "timer_overhead_ns": overhead,
        "p50_us": percentile(lat, 0.50) / 1000, "p99_us": percentile(lat, 0.99) / 1000,
        "p999_us": percentile(lat, 0.999) / 1000, "max_us": lat[-1] / 1000, "mean_us": sum(lat) / calls / 1000,
        "log_loop_s": t_logged - t0, "flush_s": t_done - t_logged, **_losses(tracker),
    }


def child_ingest(params: dict[str, Any]) -> dict[str, Any]:
    """Tight loop of N 4-metric calls after the go barrier, then flush(); times in time.time()."""
    import gc

    tracker = _started(params, params["name"])
    log = tracker.log_metrics_batch
    m = dict(METRICS)
    for i in range(params["warmup"]):
        log(m, step=i)
    tracker.flush()
    gc.collect()
    _say_child("ready")
    _wait_go()
    calls = params["calls"]
    t0, c0 = time.time(), time.process_time()
    for i in range(calls):
        m["train_loss"] = i * 1e-6
        log(m, step=i)
    t_logged = time.time()
    tracker.flush()
    t_done = time.time()
    return {"t_start": t0, "t_logged": t_logged, "t_done": t_done, "cpu_s": time.process_time() - c0,
            **_losses(tracker)}


def child_committed(params: dict[str, Any]) -> dict[str, Any]:
    """A GIL-holding loop logging 4 metrics a step; rows committed at its end, then the flush() time."""
    import gc

    tracker = _started(params, "committed")
    eid = tracker.experiment_id
    log = tracker.log_metrics_batch
    step = gil_holding_step_factory(params["nloop"])
    m = dict(METRICS)
    for i in range(200):
        log(m, step=i)
    tracker.flush()
    before = experiment_rows(params["db"], eid)
    gc.collect()
    steps = params["steps"]
    t0 = time.perf_counter()
    for i in range(steps):
        step()
        m["train_loss"] = 1.0 / (i + 1)
        log(m, step=i)
    t_loop = time.perf_counter()
    committed = experiment_rows(params["db"], eid) - before  # separate connection, before flush()
    t_counted = time.perf_counter()
    tracker.flush()
    t_flushed = time.perf_counter()
    after = experiment_rows(params["db"], eid) - before
    return {"steps": steps, "us_per_step": (t_loop - t0) / steps * 1e6, "committed_pct": 100 * committed / (4 * steps),
            "count_ms": 1000 * (t_counted - t_loop), "flush_ms": 1000 * (t_flushed - t_counted),
            "rows_ok": after == 4 * steps, **_losses(tracker)}


def child_sigkill(params: dict[str, Any]) -> None:
    """One metric per ms, value = time.time() of the call, step = i; runs until SIGKILLed."""
    tracker = _started(params, "sigkill")
    log = tracker.log_metric
    log("t", time.time(), step=0)
    tracker.flush()  # the writer or sender is up before the parent picks a moment to kill
    _say_child("ready", {"experiment_id": tracker.experiment_id, "writer": _writer(tracker)})
    next_at = time.perf_counter()
    i = 1
    while True:
        log("t", time.time(), step=i)
        i += 1
        next_at += 0.001
        while time.perf_counter() < next_at:
            pass


def child_rss(params: dict[str, Any]) -> dict[str, Any]:
    """Log ``points`` metric points as fast as possible; sample this process's RSS and its writer's."""
    tracker = _started(params, "rss")
    log = tracker.log_metrics_batch
    m = dict(METRICS)
    for i in range(1000):
        log(m, step=i)
    tracker.flush()
    writer_pids = descendants(os.getpid()) + list(params["watch_pids"])
    calls, every = params["points"] // 4, max(1, params["sample_points"] // 4)
    samples = [(0, _rss_mib(os.getpid()), rss_sum_mib(writer_pids))]
    seconds_per_call = 4 / params["pace"] if params["pace"] else 0.0
    t0 = time.perf_counter()
    for i in range(calls):
        m["train_loss"] = i * 1e-7
        log(m, step=i)
        if (i + 1) % every == 0:
            samples.append((4 * (i + 1), _rss_mib(os.getpid()), rss_sum_mib(writer_pids)))
        if seconds_per_call and not i % 256:
            ahead = t0 + i * seconds_per_call - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
    t_logged = time.perf_counter()
    tracker.flush()
    t_flushed = time.perf_counter()
    final = (4 * calls, _rss_mib(os.getpid()), rss_sum_mib(writer_pids))
    return {"calls": calls, "experiment_id": tracker.experiment_id, "samples": samples, "final": final,
            "writer_pids": len(writer_pids), "log_s": t_logged - t0, "flush_s": t_flushed - t_logged,
            **_losses(tracker)}


CHILDREN: dict[str, Callable[[dict[str, Any]], Any]] = {
    "start": child_start, "slowdown": child_slowdown, "latency": child_latency, "ingest": child_ingest,
    "committed": child_committed, "sigkill": child_sigkill, "rss": child_rss,
}


def run_child(role: str, params_json: str) -> int:
    result = CHILDREN[role](json.loads(params_json))
    _say_child("result", result)
    return 0


# -- parent side: one function per scenario, called once per mode ---------------------------------


def median_iqr(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q2, q1, q3


def median_interval(values: list[float]) -> tuple[float, float]:
    """An approximate 95% confidence interval for the median (order statistics, normal approximation)."""
    s = sorted(values)
    n = len(s)
    half = 1.96 * (n ** 0.5) / 2
    lo = max(0, int(n / 2 - half))
    hi = min(n - 1, int(n / 2 + half + 0.999))
    return s[lo], s[hi]


def start_cost(tmp: str, mode: str, cfg: argparse.Namespace) -> dict[str, Any]:
    flushes, rows, writers = [], [], set()
    with target(tmp, mode, f"start_{mode}") as t:
        for k in range(cfg.start_runs):
            for flush in (True, False):
                child = Trainer(mode, "start", **t.params(), flush=flush, t_spawn=time.time())
                r = child.result()
                writers.add(r["writer"])
                (flushes if flush else rows).append(r)
    med = lambda key, runs: statistics.median(x[key] for x in runs)  # noqa: E731
    r = {
        "runs": cfg.start_runs,
        "start_flush_ms": med("start_flush_ms", flushes), "start_ms": med("start_ms", flushes),
        "first_flush_ms": med("first_flush_ms", flushes), "close_ms": med("close_ms", flushes),
        "spawn_to_flushed_ms": med("spawn_to_flushed_ms", flushes),
        "first_row_ms": med("first_row_ms", rows), "first_row_ms_max": max(x["first_row_ms"] for x in rows),
        "writers": sorted(writers),
    }
    say(f"  {mode:<8} start_experiment {r['start_ms']:7.1f} ms + first flush {r['first_flush_ms']:6.1f} ms = "
        f"{r['start_flush_ms']:7.1f} ms | first row committed (no flush) {r['first_row_ms']:6.1f} ms "
        f"(max {r['first_row_ms_max']:.0f}) | close {r['close_ms']:5.1f} ms | process spawn -> flushed "
        f"{r['spawn_to_flushed_ms']:5.0f} ms")
    return r


def slowdown(tmp: str, mode: str, cfg: argparse.Namespace) -> dict[str, Any]:
    with target(tmp, mode, f"slowdown_{mode}") as t:
        child = Trainer(mode, "slowdown", **t.params(), nbytes=cfg.nbytes, nloop=cfg.nloop,
                        steps=cfg.steps, pairs=cfg.pairs)
        try:
            child.wait_line("ready", 300)
            child.send("go")
            raw = child.result()
        finally:
            child.kill()
    out: dict[str, Any] = {"steps": cfg.steps, "pairs": cfg.pairs, "writers": [raw["writer"]],
                           "dropped": raw["dropped"], "lost": raw["lost"]}
    for kind, runs in raw["runs"].items():
        wall = [100 * (lg[0] / b[0] - 1) for b, lg in zip(runs["base"], runs["log"])]
        cpu = [100 * (lg[1] / b[1] - 1) for b, lg in zip(runs["base"], runs["log"])]
        med, q1, q3 = median_iqr(wall)
        lo, hi = median_interval(wall)
        cmed, cq1, cq3 = median_iqr(cpu)
        r = out[kind] = {
            "slowdown_pct": med, "iqr_pct": (q1, q3), "ci95_pct": (lo, hi),
            "cpu_slowdown_pct": cmed, "cpu_iqr_pct": (cq1, cq3),
            "base_us_per_step": statistics.median(b[0] for b in runs["base"]),
            "log_us_per_step": statistics.median(x[0] for x in runs["log"]),
            "base_cpu_us_per_step": statistics.median(b[1] for b in runs["base"]),
            "log_cpu_us_per_step": statistics.median(x[1] for x in runs["log"]),
            "pair_ratios_pct": wall,
        }
        calibrated = cfg.us_free if kind == "gil_free" else cfg.us_hold
        r["base_vs_calibrated_pct"] = 100 * (r["base_us_per_step"] / calibrated - 1)
        label = "GIL-releasing" if kind == "gil_free" else "GIL-holding  "
        if abs(r["base_vs_calibrated_pct"]) > 5:
            say(f"  {mode:<8} (note: the no-log step took {r['base_vs_calibrated_pct']:+.0f}% vs its calibration in "
                f"this script: other load on the machine, or this trainer runs the loop at another speed)")
        say(f"  {mode:<8} {label} {r['base_us_per_step']:6.1f} -> {r['log_us_per_step']:6.1f} us/step: "
            f"slowdown {med:+6.2f}% (IQR {q1:+.2f} .. {q3:+.2f}, 95% CI {lo:+.2f} .. {hi:+.2f}) | "
            f"own thread CPU {r['base_cpu_us_per_step']:6.1f} -> {r['log_cpu_us_per_step']:6.1f} us ({cmed:+.2f}%)")
    return out


def latency(tmp: str, mode: str, cfg: argparse.Namespace) -> dict[str, Any]:
    with target(tmp, mode, f"latency_{mode}") as t:
        r = Trainer(mode, "latency", **t.params(), calls=cfg.calls, warmup=cfg.warmup).result()
    r["writers"] = [r["writer"]]
    say(f"  {mode:<8} p50 {r['p50_us']:6.2f} | p99 {r['p99_us']:7.2f} | p99.9 {r['p999_us']:8.2f} | max "
        f"{r['max_us']:9,.0f} us | mean {r['mean_us']:5.2f} us | loop {r['log_loop_s']:5.2f} s, then flush "
        f"{r['flush_s']:5.2f} s")
    return r


def ingest_one(tmp: str, mode: str, trainers: int, cfg: argparse.Namespace) -> dict[str, Any]:
    calls = cfg.ingest_calls // trainers
    children: list[Trainer] = []
    with target(tmp, mode, f"ingest_{mode}_{trainers}") as t:
        try:
            children = [Trainer(mode, "ingest", **t.params(), calls=calls, warmup=cfg.warmup // 4,
                                name=f"ingest_{k}") for k in range(trainers)]
            for c in children:
                c.wait_line("ready", 120)
            t0 = time.time()
            for c in children:
                c.send("go")
            results = [c.result() for c in children]
            agent_cpu = None
            if t.agent is not None:
                agent_cpu = proc_cpu_s(t.agent.proc.pid)  # type: ignore[union-attr]
            rows = metric_rows(t.db)  # every trainer's flush() returned: all must be there
        finally:
            for c in children:
                c.kill()
    expected = trainers * (calls + cfg.warmup // 4) * 4
    elapsed = max(r["t_done"] for r in results) - t0
    r = {
        "trainers": trainers, "calls_per_trainer": calls, "points": 4 * calls * trainers, "elapsed_s": elapsed,
        "points_per_s": 4 * calls * trainers / elapsed,
        "last_log_call_s": max(x["t_logged"] for x in results) - t0,
        "trainer_cpu_s": sum(x["cpu_s"] for x in results), "agent_cpu_s": agent_cpu,
        "rows_in_db": rows, "rows_expected": expected, "rows_ok": rows == expected,
        "dropped": sum(x["dropped"] for x in results), "lost": sum(x["lost"] for x in results),
        "spilled": sum(x["spilled"] for x in results), "writers": sorted({x["writer"] for x in results}),
    }
    say(f"  {mode:<8} {trainers} x {fmt_int(calls):>7} calls | {fmt_int(r['points_per_s']):>9} pts/s | "
        f"{elapsed:6.2f} s (last log call at {r['last_log_call_s']:5.2f} s) | trainers CPU {r['trainer_cpu_s']:5.1f} s"
        + (f" | agent CPU {agent_cpu:5.1f} s" if agent_cpu is not None else "")
        + f" | rows {fmt_int(rows)}" + ("" if r["rows_ok"] else f" != expected {fmt_int(expected)} <-- MISMATCH")
        + (f" | spilled {fmt_int(r['spilled'])}" if r["spilled"] else ""))
    return r


def ingest(tmp: str, mode: str, cfg: argparse.Namespace) -> dict[str, Any]:
    runs = {str(k): ingest_one(tmp, mode, k, cfg) for k in cfg.trainers}
    return {"runs": runs, "writers": sorted({w for r in runs.values() for w in r["writers"]}),
            "dropped": sum(r["dropped"] for r in runs.values()), "lost": sum(r["lost"] for r in runs.values())}


def committed(tmp: str, mode: str, cfg: argparse.Namespace) -> dict[str, Any]:
    with target(tmp, mode, f"committed_{mode}") as t:
        runs = [Trainer(mode, "committed", **t.params(), nloop=cfg.nloop, steps=cfg.busy_steps).result()
                for _ in range(cfg.busy_runs)]
    shares = [x["committed_pct"] for x in runs]
    flushes = [x["flush_ms"] for x in runs]
    r = {"steps": cfg.busy_steps, "runs": runs, "committed_pct": statistics.median(shares),
         "committed_pct_min": min(shares), "flush_ms": statistics.median(flushes),
         "rows_ok": all(x["rows_ok"] for x in runs), "writers": sorted({x["writer"] for x in runs}),
         "dropped": sum(x["dropped"] for x in runs), "lost": sum(x["lost"] for x in runs)}
    say(f"  {mode:<8} committed at loop end " + ", ".join(f"{x:5.1f}%" for x in shares)
        + f" -> median {r['committed_pct']:5.1f}% | flush() after the loop " + ", ".join(f"{x:.0f}" for x in flushes)
        + f" ms | {statistics.median(x['us_per_step'] for x in runs):.1f} us/step"
        + ("" if r["rows_ok"] else " | rows after flush MISMATCH"))
    return r


def one_kill(tmp: str, mode: str, run: int, cfg: argparse.Namespace) -> dict[str, Any]:
    writer_exit_s: Optional[float] = None
    settle_s: Optional[float] = None
    writer_pids: list[int] = []
    with target(tmp, mode, f"kill_{mode}_{run}") as t:
        child = Trainer(mode, "sigkill", **t.params())
        try:
            ready = json.loads(child.wait_line("ready"))
            time.sleep(random.uniform(*cfg.kill_after))  # a random moment to kill at, not a synchronization
            writer_pids = descendants(child.proc.pid)
            pidfds = []
            for pid in writer_pids:
                with contextlib.suppress(ProcessLookupError):
                    pidfds.append(os.pidfd_open(pid))
            killed_at = time.time()
            os.kill(child.proc.pid, signal.SIGKILL)
            child.proc.wait()
            if pidfds:  # the private writer commits what it received and exits on its own
                writer_exit_s = wait_exits(pidfds, WRITER_EXIT_TIMEOUT)
            elif mode == "process":  # no writer process found: wait until the rows stop changing
                settle_s = wait_rows_settled(t.db, ready["experiment_id"])
        finally:
            child.kill()
    conn = sqlite3.connect(t.db)
    try:
        newest, top_step, n = conn.execute(
            "SELECT MAX(value), MAX(step), COUNT(*) FROM metrics WHERE experiment_id = ?", (ready["experiment_id"],)
        ).fetchone()
    finally:
        conn.close()
    return {"window_s": killed_at - newest, "rows": n, "contiguous": n == top_step + 1,
            "writer_pids": len(writer_pids), "writer_exit_s": writer_exit_s, "settle_s": settle_s,
            "writer": ready["writer"]}


def sigkill(tmp: str, mode: str, cfg: argparse.Namespace) -> dict[str, Any]:
    runs = [one_kill(tmp, mode, i, cfg) for i in range(cfg.kills)]
    w = sorted(x["window_s"] for x in runs)
    exits = [x["writer_exit_s"] for x in runs if x["writer_pids"]]
    r = {"kills": cfg.kills, "median_ms": 1000 * statistics.median(w), "max_ms": 1000 * w[-1], "min_ms": 1000 * w[0],
         "windows_ms": [1000 * x for x in w], "all_contiguous": all(x["contiguous"] for x in runs),
         "writer_exit_ms": [None if x is None else 1000 * x for x in exits],
         "writer_lingered": any(x is None for x in exits), "writers": sorted({x["writer"] for x in runs})}
    say(f"  {mode:<8} window median {r['median_ms']:5.0f} ms | max {r['max_ms']:5.0f} ms | min {r['min_ms']:4.0f} ms"
        f" | no missing steps: {'yes' if r['all_contiguous'] else 'NO'}"
        + (" | writer process exited " + ", ".join("NOT within %.0f s" % WRITER_EXIT_TIMEOUT if x is None
                                                   else f"{1000 * x:.0f}" for x in exits) + " ms after the kill"
           if exits else ""))
    return r


def rss(tmp: str, mode: str, cfg: argparse.Namespace) -> dict[str, Any]:
    with target(tmp, mode, f"rss_{mode}") as t:
        watch = [t.agent.proc.pid] if t.agent else []  # type: ignore[union-attr]
        r = Trainer(mode, "rss", **t.params(), points=cfg.points, sample_points=cfg.sample_points,
                    watch_pids=watch, pace=cfg.rss_pace).result(1800)
        rows = experiment_rows(t.db, r["experiment_id"])
    r["rows_ok"] = rows == 4 * (r["calls"] + 1000)
    r["writers"] = [r["writer"]]
    r["warmup_points"] = cfg.warmup_points
    for i, who in ((1, "trainer"), (2, "writer")):
        after = [s[i] for s in r["samples"] if s[0] >= cfg.warmup_points and s[i] is not None]
        if r["final"][i] is not None:
            after.append(r["final"][i])
        if not after:
            r[who] = None
            continue
        warm = after[0]
        r[who] = {"warm_mib": warm, "min_mib": min(after), "max_mib": max(after), "spread_mib": max(after) - min(after),
                  "max_dev_mib": max(abs(x - warm) for x in after), "final_mib": r["final"][i],
                  "flat": max(abs(x - warm) for x in after) <= RSS_FLAT_MIB}
    pts = lambda p: f"{p / 1e6:.2f}".rstrip("0").rstrip(".") + "M"  # noqa: E731
    say(f"  {mode:<8} {fmt_int(cfg.points)} points in {r['log_s']:5.1f} s + flush {r['flush_s']:5.1f} s | rows "
        + ("ok" if r["rows_ok"] else f"{fmt_int(rows)} <-- MISMATCH")
        + (f" | spilled {fmt_int(r['spilled'])}" if r["spilled"] else ""))
    for i, who in ((1, "trainer"), (2, "writer")):
        x = r[who]
        if x is None:
            continue
        name = "trainer" if who == "trainer" else ("agent" if mode == "agent" else f"writer ({r['writer_pids']} proc)")
        say(f"           {name:<18} RSS MiB " + " ".join(f"{pts(s[0])}:{s[i]:.0f}" for s in r["samples"] if s[i] is not None)
            + f" final:{x['final_mib']:.0f} | warm {x['warm_mib']:.0f}, spread {x['spread_mib']:.1f}, "
            f"max dev {x['max_dev_mib']:.1f}")
    return r


RUNNERS: dict[str, tuple[str, Callable[[str, str, argparse.Namespace], dict[str, Any]]]] = {
    "start": ("1. Start cost in a fresh process", start_cost),
    "slowdown": ("2. Step slowdown by one log_metrics_batch (4 metrics) per ~100 us step", slowdown),
    "latency": ("3. log_metrics_batch call latency, tight loop", latency),
    "ingest": ("4. Ingest: committed metric points/s", ingest),
    "committed": ("5. Committed share at the end of a GIL-holding loop", committed),
    "sigkill": ("6. SIGKILL loss window (age of the newest committed value at the kill)", sigkill),
    "rss": ("7. RSS while logging as fast as possible", rss),
}


# -- summary --------------------------------------------------------------------------------------


Cell = tuple[str, Optional[bool]]


def summary_rows(fig: dict[str, dict[str, Any]], modes: list[str]) -> list[tuple[str, str, dict[str, Cell]]]:
    """(figure, target, {mode: (text, ok)}) rows from the scenario figures."""
    rows: list[tuple[str, str, dict[str, Cell]]] = []

    def row(name: str, scenario: str, target: str, cell: Callable[[str, dict[str, Any]], Cell]) -> None:
        per = fig.get(scenario)
        if not per:
            return
        cells: dict[str, Cell] = {}
        for mode in modes:
            r = per.get(mode)
            if r is None:
                continue
            if "error" in r:
                cells[mode] = ("ERROR", None)
                continue
            try:
                cells[mode] = cell(mode, r)
            except (KeyError, TypeError):
                cells[mode] = ("-", None)
        rows.append((name, target, cells))

    limit = lambda mode: 1.0 if mode == "agent" else 2.0  # noqa: E731
    row("writer seen by the trainers", "start", "as asked", lambda m, r: ("/".join(r["writers"]), r["writers"] == [m]))
    row("start_experiment + first flush", "start", "-", lambda m, r: (f"{r['start_flush_ms']:.0f} ms", None))
    row("first row committed, no flush", "start", "-", lambda m, r: (f"{r['first_row_ms']:.0f} ms", None))
    row("close() after it", "start", "-", lambda m, r: (f"{r['close_ms']:.0f} ms", None))
    for kind, label in (("gil_holding", "pure-Python"), ("gil_free", "GIL-releasing")):
        row(f"slowdown, {label} step", "slowdown", "<=2% (agent <=1%)",
            lambda m, r, k=kind: (f"{r[k]['slowdown_pct']:+.2f}%", r[k]["slowdown_pct"] <= limit(m)))
        row(f"  IQR of pair ratios, {label}", "slowdown", "-",
            lambda m, r, k=kind: (f"{r[k]['iqr_pct'][0]:+.1f}..{r[k]['iqr_pct'][1]:+.1f}%", None))
        row(f"  own thread CPU, {label}", "slowdown", "-",
            lambda m, r, k=kind: (f"{r[k]['cpu_slowdown_pct']:+.2f}%", None))
    row("call p50 / p99 / p99.9", "latency", "-",
        lambda m, r: (f"{r['p50_us']:.2f}/{r['p99_us']:.1f}/{r['p999_us']:.0f} us", None))
    emb8 = [r["runs"]["8"]["points_per_s"] for m, r in (fig.get("ingest") or {}).items()
            if m != "agent" and "error" not in r and "8" in r.get("runs", {})]
    for k in ("1", "8"):
        def ingest_cell(m: str, r: dict[str, Any], k: str = k) -> Cell:
            x = r["runs"][k]
            ok = None
            if m == "agent" and k == "8":
                ok = x["points_per_s"] >= 300_000 and all(x["points_per_s"] > e for e in emb8)
            return f"{x['points_per_s'] / 1000:.0f}k pts/s", ok
        row(f"ingest, {k} trainer{'s' if k != '1' else ''}", "ingest",
            ">=300k & > embedded (agent)" if k == "8" else "-", ingest_cell)
    row("ingest rows == expected", "ingest", "yes",
        lambda m, r: ("yes" if all(x["rows_ok"] for x in r["runs"].values()) else "NO",
                      all(x["rows_ok"] for x in r["runs"].values())))
    row("committed at busy loop end", "committed", "-", lambda m, r: (f"{r['committed_pct']:.1f}%", None))
    row("flush() after the busy loop", "committed", "-", lambda m, r: (f"{r['flush_ms']:.0f} ms", None))
    row("SIGKILL window median / max", "sigkill", "-",
        lambda m, r: (f"{r['median_ms']:.0f}/{r['max_ms']:.0f} ms", None))
    row("SIGKILL: no missing steps", "sigkill", "yes",
        lambda m, r: ("yes" if r["all_contiguous"] else "NO", r["all_contiguous"]))
    row("SIGKILL: writer exits by itself", "sigkill", "yes (process)",
        lambda m, r: (("-", None) if not r["writer_exit_ms"] else
                      ("NO" if r["writer_lingered"] else f"{max(r['writer_exit_ms']):.0f} ms", not r["writer_lingered"])))
    for who in ("trainer", "writer"):
        label = "trainer" if who == "trainer" else "writer/agent"
        row(f"RSS {label}: warm / final", "rss", "-",
            lambda m, r, w=who: ((f"{r[w]['warm_mib']:.0f}/{r[w]['final_mib']:.0f} MiB", None) if r[w] else ("-", None)))
        row(f"RSS {label}: max dev. after warm-up", "rss", f"<= {RSS_FLAT_MIB:.0f} MiB",
            lambda m, r, w=who: ((f"{r[w]['max_dev_mib']:.1f} MiB", r[w]["flat"]) if r[w] else ("-", None)))
    row("events dropped or lost", "_losses", "0", lambda m, r: (str(r["n"]), r["n"] == 0))
    return rows


def print_summary(rows: list[tuple[str, str, dict[str, Cell]]], modes: list[str]) -> None:
    def text(cell: Optional[Cell]) -> str:
        if cell is None:
            return ""
        value, ok = cell
        return value if ok is None else f"{value} {'PASS' if ok else 'MISS'}"

    w0 = max(len(r[0]) for r in rows)
    w1 = max(len("target"), *(len(r[1]) for r in rows))
    widths = {m: max(len(m), *(len(text(r[2].get(m))) for r in rows)) for m in modes}
    say(f"  {'figure':<{w0}}  {'target':<{w1}}  " + "  ".join(f"{m:>{widths[m]}}" for m in modes))
    say(f"  {'-' * w0}  {'-' * w1}  " + "  ".join("-" * widths[m] for m in modes))
    for name, tgt, cells in rows:
        say(f"  {name:<{w0}}  {tgt:<{w1}}  " + "  ".join(f"{text(cells.get(m)):>{widths[m]}}" for m in modes))


# -- main -----------------------------------------------------------------------------------------


def configure_run(a: argparse.Namespace) -> None:
    """Fill in the sizes --quick or a full run use where no option set them."""
    q = a.quick
    defaults = {
        "start_runs": (3, 5), "steps": (500, 2000), "pairs": (8, 40), "calls": (20_000, 200_000),
        "warmup": (2_000, 20_000), "ingest_calls": (40_000, 400_000), "busy_steps": (5_000, 20_000),
        "busy_runs": (1, 3), "kills": (2, 8), "points": (1_000_000, 10_000_000),
    }
    for key, (quick, full) in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, quick if q else full)
    if a.sample_points is None:
        a.sample_points = max(4, a.points // 20)
    if a.warmup_points is None:
        a.warmup_points = min(1_000_000, a.points // 5)
    a.kill_after = (0.5, 1.0) if q else (1.0, 2.0)
    a.trainers = [int(x) for x in a.trainers.split(",") if x.strip()]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run (under 2 minutes)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    p.add_argument("--only", help="comma-separated subset of: " + ", ".join(SCENARIOS))
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write the figures as JSON to PATH, or to stdout (the text report then goes to stderr)")
    p.add_argument("--tmpdir", help="directory for databases and sockets (default: a fresh one under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the databases and agent logs")
    p.add_argument("--start-runs", type=int, help="fresh processes per start figure (default 5; quick 3)")
    p.add_argument("--steps", type=int, help="steps per slowdown run (default 2000; quick 500)")
    p.add_argument("--pairs", type=int, help="no-log/log run pairs per step kind (default 40; quick 8)")
    p.add_argument("--step-us", type=float, default=100.0, help="synthetic step length to calibrate to (us)")
    p.add_argument("--calls", type=int, help="timed calls of the latency loop (default 200k; quick 20k)")
    p.add_argument("--warmup", type=int, help="warm-up calls before the latency loop (default 20k; quick 2k)")
    p.add_argument("--ingest-calls", type=int, help="calls per ingest run, split over the trainers (default 400k; quick 40k)")
    p.add_argument("--trainers", default="1,8", help="trainer counts for ingest (default 1,8)")
    p.add_argument("--busy-steps", type=int, help="steps of the committed-share loop (default 20k; quick 5k)")
    p.add_argument("--busy-runs", type=int, help="committed-share runs per mode (default 3; quick 1)")
    p.add_argument("--kills", type=int, help="SIGKILLs per mode (default 8; quick 2)")
    p.add_argument("--points", type=int, help="metric points of the RSS run (default 10M; quick 1M)")
    p.add_argument("--sample-points", type=int, help="RSS sample every N points (default points/20)")
    p.add_argument("--warmup-points", type=int, help="points before the warm-up RSS (default min(1M, points/5))")
    p.add_argument("--rss-pace", type=float, default=0.0, metavar="PTS_PER_S",
                   help="log the RSS run at this many points/s instead of as fast as possible")
    p.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a._child:
        return run_child(*a._child)

    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    selected = [s for s in SCENARIOS if not a.only or s in {x.strip() for x in a.only.split(",")}]
    if set(modes) - set(MODES):
        p.error(f"unknown mode(s) {', '.join(sorted(set(modes) - set(MODES)))}; choose from {', '.join(MODES)}")
    if a.only and not selected:
        p.error(f"--only: choose from {', '.join(SCENARIOS)}")
    configure_run(a)
    if a.json == "-":
        bench_core._human = sys.stderr  # say() is bench_core's
    tmp = a.tmpdir or tempfile.mkdtemp(prefix="mlp-modes-", dir="/tmp")  # short: AF_UNIX paths
    os.makedirs(tmp, exist_ok=True)
    started = time.perf_counter()
    load = os.getloadavg()
    figures: dict[str, Any] = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                    "platform": platform.platform(), "ml_persistence": ml_persistence.__version__,
                    "loadavg_at_start": load},
        "run": "quick" if a.quick else "full", "modes": modes,
    }
    say(f"$ {figures['command']}")
    say(f"{figures['date']} | {os.cpu_count()} CPUs | Python {platform.python_version()} | SQLite "
        f"{sqlite3.sqlite_version} | ml_persistence {ml_persistence.__version__} | {platform.platform()}")
    say(f"modes: {', '.join(modes)} | {figures['run']} run | load average at start {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} | databases and sockets in {tmp}")

    if "slowdown" in selected or "committed" in selected:
        a.nloop, us_hold = calibrate(gil_holding_step_factory, 1000, 10**7, a.step_us)
        a.nbytes, us_free = calibrate(gil_free_step_factory, 64 * 1024, 4 * 1024 * 1024, a.step_us)
        a.us_hold, a.us_free = us_hold, us_free
        figures["steps_calibrated"] = {"gil_holding_loop": a.nloop, "gil_holding_us": us_hold,
                                       "gil_free_bytes": a.nbytes, "gil_free_us": us_free}
        say(f"calibrated steps: pure-Python loop of {fmt_int(a.nloop)} iterations = {us_hold:.1f} us (holds the GIL); "
            f"sha256 over {a.nbytes // 1024} KiB = {us_free:.1f} us (releases it)")
    sizes = {
        "start": f"{a.start_runs} fresh processes per figure",
        "slowdown": f"{a.pairs} interleaved no-log/log pairs of {fmt_int(a.steps)} steps per step kind, one trainer",
        "latency": f"{fmt_int(a.calls)} timed calls after {fmt_int(a.warmup)} warm-up calls",
        "ingest": f"{fmt_int(a.ingest_calls)} calls (4 metrics) in all per run, split over "
                  f"{'/'.join(map(str, a.trainers))} trainers; thread/process trainers share one database file",
        "committed": f"{a.busy_runs} run(s) of {fmt_int(a.busy_steps)} ~{a.step_us:.0f} us pure-Python steps",
        "sigkill": f"{a.kills} kills per mode, {a.kill_after[0]}-{a.kill_after[1]} s after the trainer is ready",
        "rss": f"{fmt_int(a.points)} points, "
               + (f"paced at {fmt_int(a.rss_pace)} points/s" if a.rss_pace else "as fast as possible")
               + f", sampled every {fmt_int(a.sample_points)}; warm-up {fmt_int(a.warmup_points)} points",
    }
    try:
        for scenario in selected:
            title, runner = RUNNERS[scenario]
            header(title)
            say(f"  ({sizes[scenario]}; load average {os.getloadavg()[0]:.2f})")
            per = figures[scenario] = {}
            for mode in modes:
                try:
                    per[mode] = runner(tmp, mode, a)
                except Exception as exc:  # one broken mode must not hide the others' figures
                    per[mode] = {"error": f"{type(exc).__name__}: {exc}"}
                    say(f"  {mode:<8} ERROR {per[mode]['error']}")
                seen = per[mode].get("writers")
                if seen and seen != [mode]:
                    say(f"           (note: {mode} trainers reported writer {'/'.join(seen)})")
    finally:
        if not a.keep and not a.tmpdir:
            shutil.rmtree(tmp, ignore_errors=True)

    losses = {m: sum((figures[s].get(m) or {}).get(k) or 0 for s in selected for k in ("dropped", "lost"))
              for m in modes}
    figures["_losses"] = {m: {"n": n} for m, n in losses.items()}
    rows = summary_rows(figures, modes)
    header("Summary")
    print_summary(rows, modes)
    flat = [(f"{name} [{m}]", value, tgt, ok) for name, tgt, cells in rows for m, (value, ok) in cells.items()]
    del figures["_losses"]
    figures["losses"] = losses
    return write_figures(figures, flat, started, a.json)


if __name__ == "__main__":
    sys.exit(main())
