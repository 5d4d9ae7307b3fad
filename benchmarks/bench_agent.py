#!/usr/bin/env python3
"""Sidecar agent performance figures: ingest, trainer-side cost, SIGKILL loss window.

    PYTHONPATH=. python benchmarks/bench_agent.py            # full run (~3 minutes)
    PYTHONPATH=. python benchmarks/bench_agent.py --quick    # smoke run (~40 s)
    PYTHONPATH=. python benchmarks/bench_agent.py --json     # figures as JSON on stdout (text on stderr)
    PYTHONPATH=. python benchmarks/bench_agent.py --json out.json

Every trainer is a fresh Python process (this script with a hidden --_child flag) using
ExperimentTracker(agent=URL), or ExperimentTracker(db_path) for the embedded comparisons. Every
scenario starts its own agent (`python -m agent --db DB --listen unix://...`) on a new database
file, waits for its ready line, and stops it with SIGTERM at the end (it must drain and exit 0).

1. Ingest: 1, 4 and 8 trainers sharing --ingest-calls calls (default 400k = 1.6M metric points),
   each making its share of log_metrics_batch calls (4 metrics) in a tight loop, then flush().
   Committed metric points/s = all points / (start barrier -> the last flush() returning); the
   metrics row count is then checked against the expected total with a separate sqlite3
   connection while the agent still runs. Also shown: trainer and agent CPU, the agent's peak
   RSS. Baseline: embedded trainers (1, and 8 sharing one database file).
2a. Trainer-side per-call latency of log_metrics_batch (p50/p99/p99.9/max; bench_core's method,
   a tight loop) in one measured trainer, alone and while 7 other trainers keep the agent busy
   (paced at --load-pts metric points/s in all, from 1 s before the measured loop until it
   ends), agent vs embedded (the embedded loaders write to the same database file).
2b. Slowdown of a ~100 us pure-Python (GIL-holding) step by one 4-metric call per step, agent vs
   embedded, trainer alone (bench_core's interleaved no-log/log pairs), with the training
   thread's own CPU per step (thread_time) to separate added work from waiting.
3. SIGKILL loss window: a trainer logs one metric per ms whose value is time.time(); it is
   SIGKILLed at a random moment, the agent is stopped with SIGTERM (drains, exits 0), and the
   window is kill time - newest committed value. Requirement: everything logged more than 1 s
   before the kill is in the database (window < 1 s and no missing steps). The embedded window
   is measured the same way for comparison.

`--only ingest,latency,slowdown,sigkill` runs a subset. A 2-core machine running 8 trainers and
an agent is oversubscribed by design: latency tails under load include OS scheduling. Runs where
other processes used more than 0.15 CPU meanwhile are flagged as noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import ml_persistence  # noqa: E402
import bench_core  # noqa: E402
from bench_core import (  # noqa: E402
    CpuWatch,
    calibrate,
    fmt_int,
    gil_holding_step_factory,
    header,
    percentile,
    say,
    summary_table,
    timed_calls,
    timer_overhead_ns,
    write_figures,
)

NOISY_CPUS = 0.15
READY_TIMEOUT = 60.0
CHILD_TIMEOUT = 900.0
METRICS = {"train_loss": 0.25, "train_acc": 0.75, "lr": 3e-4, "grad_norm": 1.5}

def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ML_PERSISTENCE_AGENT", "ML_PERSISTENCE_TOKEN")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def proc_cpu_s(pid: int) -> Optional[float]:
    """User + system CPU seconds of a live process (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def metric_rows(path: str) -> int:
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    finally:
        conn.close()


class TreeWatch:
    """CPU used by processes other than this one, the agent and the trainers it started, meanwhile.

    bench_core's CpuWatch counts only children already waited for; here they are still running,
    so their CPU is read from /proc at the start and from their own report at the end.
    """

    def __init__(self, agent: Optional["AgentProc"], children: Sequence["Child"]) -> None:
        self.watch = CpuWatch()
        self.agent = agent
        self.agent0 = agent.cpu_s() if agent else None
        self.children0 = sum(proc_cpu_s(c.proc.pid) or 0.0 for c in children)
        self.agent_used: Optional[float] = None

    def agent_cpu(self) -> Optional[float]:
        """Agent CPU seconds since construction (call before stopping the agent)."""
        if self.agent is not None and self.agent0 is not None:
            now = self.agent.cpu_s()
            if now is not None:
                self.agent_used = now - self.agent0
        return self.agent_used

    def others_cpus(self, children_cpu_at_end: float) -> Optional[float]:
        w = self.watch
        busy = w._busy()
        if busy is None or w.busy0 is None:
            return None
        elapsed = time.perf_counter() - w.t0
        ours = (w._own() - w.own0) + (self.agent_used or 0.0) + (children_cpu_at_end - self.children0)
        return max(0.0, (busy - w.busy0) - ours) / max(elapsed, 1e-9)


# -- the agent process ----------------------------------------------------------------------


class AgentProc:
    """``python -m agent`` on ``db``, listening on a Unix socket in ``directory``."""

    def __init__(self, directory: str, db: str, name: str) -> None:
        self.db = db
        self.url = f"unix://{os.path.join(directory, name + '.sock')}"
        self.log_path = os.path.join(directory, name + ".agent.log")
        self.proc: Optional[subprocess.Popen] = None
        self.drain_s = 0.0
        self.extra: list[str] = []

    def start(self) -> "AgentProc":
        args = [sys.executable, "-m", "agent", "--db", self.db, "--listen", self.url, "--log-level", "WARNING", *self.extra]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=child_env(), cwd=REPO)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            if not readable:
                break
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"agent exited ({self.proc.wait()}) before it was ready:\n{self.log()}")
            if "ready, listening on" in line:
                self.url = line.split("listening on ", 1)[1].split(" (database")[0].split()[0]
                return self
        raise RuntimeError(f"agent not ready within {READY_TIMEOUT} s:\n{self.log()}")

    def cpu_s(self) -> Optional[float]:
        return proc_cpu_s(self.proc.pid) if self.proc else None

    def peak_rss_mib(self) -> Optional[float]:
        """The agent's peak resident set size so far (VmHWM), in MiB."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:  # type: ignore[union-attr]
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except (OSError, AttributeError):
            pass
        return None

    def stop(self, timeout: float = 300.0) -> int:
        """SIGTERM, wait for the drain; raise unless it exits 0."""
        assert self.proc is not None
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.drain_s = time.perf_counter() - t0
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if code != 0:
            raise RuntimeError(f"agent exited {code} on SIGTERM:\n{self.log()}")
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


# -- trainer processes ----------------------------------------------------------------------


class Child:
    """One trainer process: this script with --_child ROLE JSON; says 'ready', waits for 'go'."""

    def __init__(self, role: str, **params: Any) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--_child", role, json.dumps(params)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(), cwd=REPO, text=True,
        )

    def wait_line(self, expect: str, timeout: float = READY_TIMEOUT) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            readable, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                raise RuntimeError(f"{self.role} trainer: no {expect!r} line within {timeout} s")
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.role} trainer exited ({self.proc.wait()}) before {expect!r}")
            if line.startswith(expect):
                return line[len(expect):].strip()

    def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = CHILD_TIMEOUT) -> dict[str, Any]:
        r = json.loads(self.wait_line("result ", timeout))
        self.proc.wait(60)
        if self.proc.returncode != 0:
            raise RuntimeError(f"{self.role} trainer exited {self.proc.returncode}")
        return r

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _tracker(params: dict[str, Any]) -> Any:
    from ml_persistence import ExperimentTracker

    if params.get("agent"):
        tracker = ExperimentTracker(agent=params["agent"], capture_environment=False)
    else:
        tracker = ExperimentTracker(params["db"], capture_environment=False, agent=False)
    tracker.start_experiment(params.get("name", "bench_agent"), experiment_type="benchmark")
    return tracker


def _say_child(word: str, payload: Any = None) -> None:
    sys.stdout.write(word + ("" if payload is None else " " + json.dumps(payload)) + "\n")
    sys.stdout.flush()


def _wait_go() -> None:
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go', got {line!r}")


def _status(tracker: Any) -> dict[str, Any]:
    s = tracker.status()
    return {k: s.get(k) for k in ("dropped", "lost", "spilled", "replayed", "reconnects", "rejected")}


def child_ingest(params: dict[str, Any]) -> dict[str, Any]:
    """Tight loop of N 4-metric calls, then flush(); times in time.time() (comparable across processes)."""
    import gc

    tracker = _tracker(params)
    log = tracker.log_metrics_batch
    m = dict(METRICS)
    for i in range(params["warmup"]):
        log(m, step=i)
    tracker.flush()
    gc.collect()
    _say_child("ready")
    _wait_go()
    calls = params["calls"]
    t0 = time.time()
    c0 = time.process_time()
    for i in range(calls):
        m["train_loss"] = i * 1e-6
        log(m, step=i)
    t_logged = time.time()
    tracker.flush()
    t_done = time.time()
    cpu = time.process_time() - c0
    status = _status(tracker)
    tracker.close()
    return {"t_start": t0, "t_logged": t_logged, "t_done": t_done, "cpu_s": cpu, "calls": calls,
            "warmup": params["warmup"], **status}


def child_loader(params: dict[str, Any]) -> dict[str, Any]:
    """Log ``rate`` calls/s (bursts every 5 ms, sleeping between) until 'stop' on stdin or max_s; then flush().

    Paced, so the agent is kept busy for as long as the measured trainer runs without a
    backlog that grows without bound (tight loops outpace any writer).
    """
    tracker = _tracker(params)
    log = tracker.log_metrics_batch
    m = dict(METRICS)
    for i in range(1000):
        log(m, step=i)
    tracker.flush()
    _say_child("ready")
    _wait_go()
    stdin = sys.stdin.fileno()
    tick = 0.005
    per_tick = params["rate"] * tick
    i = 0
    owed = 0.0
    t0 = time.time()
    next_at = time.monotonic()
    end_at = next_at + params["max_s"]
    while next_at < end_at:
        owed += per_tick
        while owed >= 1.0:
            m["train_loss"] = i * 1e-6
            log(m, step=i)
            i += 1
            owed -= 1.0
        next_at += tick
        if select.select([stdin], [], [], max(0.0, next_at - time.monotonic()))[0]:
            break
    t_logged = time.time()
    tracker.flush()
    t_done = time.time()
    status = _status(tracker)
    tracker.close()
    return {"calls": i, "warmup": 1000, "t_start": t0, "t_logged": t_logged, "t_done": t_done,
            "rate_achieved": i / max(1e-9, t_logged - t0), **status}


def child_latency(params: dict[str, Any]) -> dict[str, Any]:
    """Per-call latency of log_metrics_batch (bench_core's method), then flush()."""
    import gc

    tracker = _tracker(params)
    log = tracker.log_metrics_batch
    m = dict(METRICS)
    for i in range(params["warmup"]):
        log(m, step=i)
    tracker.flush()
    overhead = timer_overhead_ns()
    calls = params["calls"]
    gc.collect()
    _say_child("ready")
    _wait_go()
    t0 = time.perf_counter()
    lat = timed_calls(log, m, calls)
    t_logged = time.perf_counter()
    _say_child("logged")  # the parent stops the loaders now: this flush() must not wait on an endless backlog
    tracker.flush()
    t_done = time.perf_counter()
    status = _status(tracker)
    tracker.close()
    return {
        "calls": calls,
        "warmup": params["warmup"],
        "timer_overhead_ns": overhead,
        "p50_us": percentile(lat, 0.50) / 1000,
        "p90_us": percentile(lat, 0.90) / 1000,
        "p99_us": percentile(lat, 0.99) / 1000,
        "p999_us": percentile(lat, 0.999) / 1000,
        "max_us": lat[-1] / 1000,
        "mean_us": sum(lat) / calls / 1000,
        "over_100us": sum(1 for x in lat if x > 100_000),
        "log_loop_s": t_logged - t0,
        "flush_s": t_done - t_logged,
        **status,
    }


def child_slowdown(params: dict[str, Any]) -> dict[str, Any]:
    """bench_core's interleaved no-log/log runs of a pure-Python step, in this process's mode."""
    import gc

    tracker = _tracker(params)
    log = tracker.log_metrics_batch
    step = gil_holding_step_factory(params["nloop"])
    steps, repeats = params["steps"], params["repeats"]

    cpu: dict[bool, list[float]] = {False: [], True: []}  # training thread's own CPU per step

    def run(with_log: bool) -> float:
        gc.collect()
        if not with_log:
            c0, t0 = time.thread_time(), time.perf_counter()
            for i in range(steps):
                step()
            t1 = time.perf_counter()
            cpu[False].append((time.thread_time() - c0) / steps * 1e6)
            return (t1 - t0) / steps * 1e6
        m = dict(METRICS)
        c0, t0 = time.thread_time(), time.perf_counter()
        for i in range(steps):
            step()
            m["train_loss"] = 1.0 / (i + 1)
            log(m, step=i)
        t1 = time.perf_counter()
        cpu[True].append((time.thread_time() - c0) / steps * 1e6)
        return (t1 - t0) / steps * 1e6

    for _ in range(2):
        run(True)
        tracker.flush()
    _say_child("ready")
    _wait_go()
    base, logged, ratios = [], [], []
    cpu[False].clear()
    cpu[True].clear()
    for r in range(repeats):
        pair = {}
        for kind in (("base", "log") if r % 2 == 0 else ("log", "base")):
            pair[kind] = run(kind == "log")
            if kind == "log":
                tracker.flush()  # not timed: the next run starts with an empty queue
        base.append(pair["base"])
        logged.append(pair["log"])
        ratios.append(pair["log"] / pair["base"] - 1)
    status = _status(tracker)
    tracker.close()
    mb, ml = statistics.median(base), statistics.median(logged)
    return {
        "steps": steps, "repeats": repeats, "nloop": params["nloop"],
        "base_us_per_step": mb, "log_us_per_step": ml, "slowdown_pct": 100 * (ml / mb - 1),
        "paired_slowdown_pct_median": 100 * statistics.median(ratios),
        "paired_slowdown_pct_min": 100 * min(ratios), "paired_slowdown_pct_max": 100 * max(ratios),
        "base_us_runs": base, "log_us_runs": logged,
        # the training thread's own CPU per step (thread_time): the added work, without waits/preemption
        "base_cpu_us_per_step": statistics.median(cpu[False]), "log_cpu_us_per_step": statistics.median(cpu[True]),
        "cpu_slowdown_pct": 100 * (statistics.median(cpu[True]) / statistics.median(cpu[False]) - 1),
        **status,
    }


def child_sigkill(params: dict[str, Any]) -> None:
    """One metric per ms, value = time.time() of the call, step = i; runs until SIGKILLed."""
    tracker = _tracker(params)
    log = tracker.log_metric
    _say_child("ready")
    next_at = time.perf_counter()
    i = 0
    while True:
        log("t", time.time(), step=i)
        i += 1
        next_at += 0.001
        while time.perf_counter() < next_at:
            pass


CHILDREN = {"ingest": child_ingest, "loader": child_loader, "latency": child_latency,
            "slowdown": child_slowdown, "sigkill": child_sigkill}


def run_child(role: str, params_json: str) -> int:
    result = CHILDREN[role](json.loads(params_json))
    result["process_cpu_s"] = time.process_time()  # all threads, since the process started
    _say_child("result", result)
    return 0


# -- 1. ingest ------------------------------------------------------------------------------


def one_ingest(tmp: str, mode: str, trainers: int, calls: int, warmup: int) -> dict[str, Any]:
    """``trainers`` processes, ``calls`` calls each; wall time from the go barrier to the last flush()."""
    name = f"ingest_{mode}_{trainers}"
    db = os.path.join(tmp, name + ".db")
    agent = AgentProc(tmp, db, name).start() if mode == "agent" else None
    if agent is None:  # create the schema once, before several writers race for it
        _init_db(db)
    children: list[Child] = []
    try:
        params = {"calls": calls, "warmup": warmup}
        params.update({"agent": agent.url} if agent else {"db": db})
        children = [Child("ingest", **params, name=f"{name}_{k}") for k in range(trainers)]
        for c in children:
            c.wait_line("ready")
        time.sleep(0.2)  # let the warm-up acknowledgements settle
        watch = TreeWatch(agent, children)
        t0 = time.time()
        for c in children:
            c.send("go")
        results = [c.result() for c in children]
        t_end = max(r["t_done"] for r in results)
        agent_cpu = watch.agent_cpu()
        agent_rss = agent.peak_rss_mib() if agent else None
        others = watch.others_cpus(sum(r["process_cpu_s"] for r in results))
        rows = metric_rows(db)  # everything flushed: must all be there, agent still running
        if agent:
            agent.stop()
    finally:
        for c in children:
            c.kill()
        if agent:
            agent.kill()
    expected = trainers * (calls + warmup) * 4
    elapsed = t_end - t0
    points = trainers * calls * 4
    return {
        "mode": mode,
        "trainers": trainers,
        "calls_per_trainer": calls,
        "points": points,
        "elapsed_s": elapsed,
        "points_per_s": points / elapsed,
        "last_log_call_s": max(r["t_logged"] for r in results) - t0,
        "first_start_delay_ms": 1000 * (min(r["t_start"] for r in results) - t0),
        "trainer_cpu_s": sum(r["cpu_s"] for r in results),
        "agent_cpu_s": agent_cpu,
        "agent_drain_s": agent.drain_s if agent else None,
        "agent_peak_rss_mib": agent_rss,
        "agent_cpu_us_per_point": (1e6 * agent_cpu / (trainers * (calls + warmup) * 4)) if agent_cpu else None,
        "rows_in_db": rows,
        "rows_expected": expected,
        "rows_ok": rows == expected,
        "dropped": sum(r["dropped"] or 0 for r in results),
        "lost": sum(r["lost"] or 0 for r in results),
        "spilled": sum(r["spilled"] or 0 for r in results),
        "others_cpus": others,
    }


def say_ingest(r: dict[str, Any]) -> None:
    agent_cpu = f"{r['agent_cpu_s']:5.1f} s" if r["agent_cpu_s"] is not None else "    -  "
    say(f"  {r['mode']:<8} {r['trainers']:>2} x {fmt_int(r['calls_per_trainer']):>7} calls | "
        f"{fmt_int(r['points_per_s']):>9} pts/s | {r['elapsed_s']:6.2f} s (last log call at {r['last_log_call_s']:5.2f} s) | "
        f"trainers CPU {r['trainer_cpu_s']:5.1f} s, agent CPU {agent_cpu}"
        + (f", peak RSS {r['agent_peak_rss_mib']:4.0f} MiB" if r["agent_peak_rss_mib"] is not None else "")
        + f" | rows {fmt_int(r['rows_in_db'])}"
        f"{'' if r['rows_ok'] else ' != expected ' + fmt_int(r['rows_expected']) + ' <-- MISMATCH'}"
        f"{' spilled ' + fmt_int(r['spilled']) if r['spilled'] else ''}"
        f"{' dropped ' + str(r['dropped']) if r['dropped'] else ''}{' lost ' + str(r['lost']) if r['lost'] else ''}"
        f"{'  (noisy: others used %.2f CPU)' % r['others_cpus'] if (r['others_cpus'] or 0) > NOISY_CPUS else ''}")


def bench_ingest(tmp: str, total_calls: int, warmup: int, counts: Sequence[int], embedded: Sequence[int]) -> dict[str, Any]:
    say(f"  {fmt_int(total_calls)} log_metrics_batch calls (4 metrics) in all per run, split evenly over the trainers "
        f"(+{fmt_int(warmup)} warm-up calls each, flushed before the barrier)")
    runs = []
    for mode, ks in (("agent", counts), ("embedded", embedded)):
        for k in ks:
            r = one_ingest(tmp, mode, k, total_calls // k, warmup)
            say_ingest(r)
            runs.append(r)
    if embedded:
        say("  (embedded trainers all write to one database file, each with its own writer thread)")
    return {"runs": runs}


# -- 2. latency under load, step slowdown ----------------------------------------------------


def one_latency(tmp: str, mode: str, loaders: int, calls: int, warmup: int, load_pts: float) -> dict[str, Any]:
    name = f"latency_{mode}_{loaders}"
    db = os.path.join(tmp, name + ".db")
    agent = AgentProc(tmp, db, name).start() if mode == "agent" else None
    where = {"agent": agent.url} if agent else {"db": db}
    load: list[Child] = []
    measured: Optional[Child] = None
    try:
        if agent is None:  # create the schema once, before 8 writers race for it
            _init_db(db)
        # Paced loaders, load_pts metric points/s in all, from 1 s before the measured loop until it ends.
        rate = load_pts / 4 / max(1, loaders)
        load = [Child("loader", **where, rate=rate, max_s=600, name=f"load_{k}") for k in range(loaders)]
        measured = Child("latency", **where, calls=calls, warmup=warmup, name="measured")
        for c in load + [measured]:
            c.wait_line("ready")
        watch = TreeWatch(agent, load + [measured])
        for c in load:
            c.send("go")
        if load:
            time.sleep(1.0)  # the agent is busy before the measured loop starts
        cpu0, t_go = (agent.cpu_s() if agent else None), time.time()
        measured.send("go")
        measured.wait_line("logged", CHILD_TIMEOUT)
        t_measured = time.time()
        cpu1 = agent.cpu_s() if agent else None
        for c in load:
            c.send("stop")
        r = measured.result()
        loaded = [c.result() for c in load]
        t_end = time.time()
        agent_cpu = watch.agent_cpu()
        r["others_cpus"] = watch.others_cpus(r["process_cpu_s"] + sum(x["process_cpu_s"] for x in loaded))
        rows = metric_rows(db)
        if agent:
            agent.stop()
    finally:
        for c in load + ([measured] if measured else []):
            c.kill()
        if agent:
            agent.kill()
    expected = 4 * (calls + warmup + sum(x["calls"] + x["warmup"] for x in loaded))
    load_points = 4 * sum(x["calls"] for x in loaded)
    r.update({
        "mode": mode,
        "loaders": loaders,
        "load_points": load_points,
        "load_pts_per_s_offered": load_pts if loaders else 0,
        "load_pts_per_s_achieved": 4 * sum(x["rate_achieved"] for x in loaded),
        "agent_busy_during_loop": (cpu1 - cpu0) / max(1e-9, t_measured - t_go) if cpu0 is not None and cpu1 is not None else None,
        "load_drain_s": t_end - t_measured,
        "loaders_ran_throughout": all(x["t_logged"] >= t_measured - 0.05 for x in loaded),
        "agent_cpu_s": agent_cpu,
        "rows_in_db": rows,
        "rows_expected": expected,
        "rows_ok": rows == expected,
        "dropped": r["dropped"] + sum(x["dropped"] or 0 for x in loaded),
        "lost": r["lost"] + sum(x["lost"] or 0 for x in loaded),
    })
    return r


def _init_db(db: str) -> None:
    from ml_persistence.sqlite import schema

    schema.connect(db).close()


def say_latency(r: dict[str, Any]) -> None:
    label = f"{r['mode']}, " + ("alone" if not r["loaders"] else f"+{r['loaders']} loaders")
    say(f"  {label:<22} p50 {r['p50_us']:6.2f} | p99 {r['p99_us']:7.2f} | p99.9 {r['p999_us']:8.2f} | "
        f"max {r['max_us']:9,.0f} us | mean {r['mean_us']:6.2f} us | >100us {r['over_100us']:>4} | "
        f"loop {r['log_loop_s']:5.2f} s, flush {r['flush_s']:5.2f} s"
        + (f" | agent CPU during the loop {100 * r['agent_busy_during_loop']:.0f}%" if r["agent_busy_during_loop"] is not None else "")
        + (f" | load {fmt_int(r['load_pts_per_s_achieved'])} pts/s, flushed {r['load_drain_s']:.1f} s after the loop"
           if r["loaders"] else "")
        + ("" if r["rows_ok"] else f" | rows {r['rows_in_db']} != {r['rows_expected']} <-- MISMATCH")
        + (f"  (noisy: others used {r['others_cpus']:.2f} CPU)" if (r["others_cpus"] or 0) > NOISY_CPUS else ""))


def bench_latency(tmp: str, calls: int, warmup: int, loaders: int, load_pts: float) -> dict[str, Any]:
    say(f"  {fmt_int(calls)} timed calls of log_metrics_batch(4 metrics) in a tight loop after {fmt_int(warmup)} warm-up "
        f"calls, in one trainer process; {loaders} loaders log {fmt_int(load_pts)} metric points/s in all (paced, 5 ms "
        "bursts) from 1 s before until the measured loop ends")
    out = {}
    for mode in ("agent", "embedded"):
        for n in (0, loaders):
            r = one_latency(tmp, mode, n, calls, warmup, load_pts)
            say_latency(r)
            out[f"{mode}_{'alone' if n == 0 else 'loaded'}"] = r
    say("  (embedded loaders write to the same database file as the measured trainer)")
    return out


def one_slowdown(tmp: str, mode: str, nloop: int, steps: int, repeats: int) -> dict[str, Any]:
    name = f"slowdown_{mode}"
    db = os.path.join(tmp, name + ".db")
    agent = AgentProc(tmp, db, name).start() if mode == "agent" else None
    child = None
    try:
        child = Child("slowdown", **({"agent": agent.url} if agent else {"db": db}),
                      nloop=nloop, steps=steps, repeats=repeats)
        child.wait_line("ready")
        watch = TreeWatch(agent, [child])
        child.send("go")
        r = child.result()
        r["agent_cpu_s"] = watch.agent_cpu()
        r["others_cpus"] = watch.others_cpus(r["process_cpu_s"])
        if agent:
            agent.stop()
    finally:
        if child:
            child.kill()
        if agent:
            agent.kill()
    r["mode"] = mode
    return r


def say_slowdown(r: dict[str, Any]) -> None:
    say(f"  {r['mode']:<9} no logging {r['base_us_per_step']:7.2f} us/step, with logging {r['log_us_per_step']:7.2f} "
        f"us/step -> slowdown {r['slowdown_pct']:+6.2f}% (paired runs median {r['paired_slowdown_pct_median']:+.2f}%, "
        f"range {r['paired_slowdown_pct_min']:+.2f}% .. {r['paired_slowdown_pct_max']:+.2f}%)"
        + (f"  (noisy: others used {r['others_cpus']:.2f} CPU)" if (r["others_cpus"] or 0) > NOISY_CPUS else ""))
    say("            runs no-log: " + ", ".join(f"{x:.1f}" for x in r["base_us_runs"])
        + " | log: " + ", ".join(f"{x:.1f}" for x in r["log_us_runs"]))
    say(f"            training thread's own CPU per step {r['base_cpu_us_per_step']:.2f} -> {r['log_cpu_us_per_step']:.2f} us "
        f"({r['cpu_slowdown_pct']:+.2f}%); the rest of the slowdown is time it waited (GIL, preemption)"
        + (f"; agent CPU {r['agent_cpu_s']:.2f} s" if r.get("agent_cpu_s") is not None else ""))


def bench_slowdown(tmp: str, step_us: float, steps: int, repeats: int) -> dict[str, Any]:
    nloop, us = calibrate(gil_holding_step_factory, 1000, 10**7, step_us)
    say(f"  calibrated: pure-Python loop of {fmt_int(nloop)} iterations = {us:.1f} us (holds the GIL); "
        f"{fmt_int(steps)} steps per run, {repeats} interleaved no-log/log run pairs, medians; trainer alone")
    out = {}
    for mode in ("agent", "embedded"):
        r = one_slowdown(tmp, mode, nloop, steps, repeats)
        say_slowdown(r)
        out[mode] = r
    return out


# -- 3. SIGKILL loss window ------------------------------------------------------------------


def one_kill(tmp: str, mode: str, run: int) -> dict[str, Any]:
    name = f"kill_{mode}_{run}"
    db = os.path.join(tmp, name + ".db")
    agent = AgentProc(tmp, db, name).start() if mode == "agent" else None
    child = None
    try:
        child = Child("sigkill", **({"agent": agent.url} if agent else {"db": db}))
        child.wait_line("ready")
        time.sleep(random.uniform(1.0, 2.0))
        killed_at = time.time()
        os.kill(child.proc.pid, signal.SIGKILL)
        child.proc.wait()
        if agent:
            agent.stop()  # drains what it received, exits 0
    finally:
        if child:
            child.kill()
        if agent:
            agent.kill()
    conn = sqlite3.connect(db)
    try:
        newest, top_step, n = conn.execute("SELECT MAX(value), MAX(step), COUNT(*) FROM metrics").fetchone()
        older = conn.execute("SELECT COUNT(*) FROM metrics WHERE value <= ?", (killed_at - 1.0,)).fetchone()[0]
    finally:
        conn.close()
    return {
        "window_s": killed_at - newest,
        "rows": n,
        "contiguous": top_step is not None and n == top_step + 1,  # steps 0..max all there
        "rows_older_than_1s": older,
    }


def bench_sigkill(tmp: str, kills: int, embedded: bool) -> dict[str, Any]:
    say(f"  {kills} kills per mode; trainer logs 1 metric/ms (value = time.time()), SIGKILLed after 1-2 s; "
        "the agent is then stopped with SIGTERM (drains, exits 0)")
    out = {}
    for mode in ("agent", "embedded") if embedded else ("agent",):
        runs = [one_kill(tmp, mode, i) for i in range(kills)]
        w = sorted(x["window_s"] for x in runs)
        r = {
            "kills": kills,
            "median_ms": 1000 * statistics.median(w),
            "p90_ms": 1000 * percentile(w, 0.9),
            "max_ms": 1000 * w[-1],
            "min_ms": 1000 * w[0],
            "windows_ms": [1000 * x for x in w],
            "all_contiguous": all(x["contiguous"] for x in runs),
            "within_1s": w[-1] < 1.0 and all(x["contiguous"] for x in runs),
        }
        out[mode] = r
        say(f"  {mode:<9} window median {r['median_ms']:5.0f} ms | p90 {r['p90_ms']:5.0f} ms | max {r['max_ms']:5.0f} ms"
            f" | min {r['min_ms']:4.0f} ms | rows contiguous (no holes): {'yes' if r['all_contiguous'] else 'NO'}")
    return out


# -- main -------------------------------------------------------------------------------------


# -- 4. memory under clients that hold it -----------------------------------------------------


def _rss_mib(pid: int, field: str = "VmRSS:") -> Optional[float]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _raw_client(url: str, client_id: str) -> Any:
    """A socket that has said Hello to the agent at ``url`` (a unix:// URL) and read nothing since."""
    from ml_persistence import protocol as proto

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(url[len("unix://"):])
    sock.sendall(proto.frame(proto.Hello(proto.PROTOCOL_VERSION, client_id, os.getpid(), "bench")))
    decoder = proto.FrameDecoder()
    while not decoder.feed(sock.recv(65536)):  # the Welcome: larger frames are accepted from here on
        pass
    return sock


def one_unread(tmp: str, seconds: float, points: int, extra: Sequence[str] = ()) -> dict[str, Any]:
    """A client sends 100 metric_history reads/s of a ``points``-step curve and never reads an answer."""
    from ml_persistence import protocol as proto

    agent = AgentProc(tmp, os.path.join(tmp, f"unread-{points}.db"), f"unread{points}")
    agent.extra = list(extra)
    agent.start()
    try:
        tracker = ml_persistence.ExperimentTracker(agent=agent.url, capture_environment=False)
        eid = tracker.start_experiment("curve")
        for step in range(points):
            tracker.log_metric("loss", 1.0 / (1 + step), step=step)
        tracker.end_experiment()
        ml_persistence.shutdown(timeout=60)
        pid = agent.proc.pid  # type: ignore[union-attr]
        baseline = _rss_mib(pid)
        sock = _raw_client(agent.url, f"never-reads-{points}")
        samples: list[tuple[float, Optional[float]]] = []
        t0 = time.monotonic()
        sent = 0
        dropped_at = None
        while time.monotonic() - t0 < seconds:
            try:
                sock.sendall(proto.frame(proto.Read(sent, "metric_history", [eid, "loss"])))
            except OSError:
                dropped_at = time.monotonic() - t0
                break
            sent += 1
            if sent % 100 == 0:
                samples.append((round(time.monotonic() - t0, 1), _rss_mib(pid)))
            time.sleep(0.01)
        peak = max([r for _, r in samples if r is not None] + [_rss_mib(pid) or 0])
        sock.close()
        reasons = [line.split(": ", 2)[-1] for line in agent.log().splitlines() if "never-re" in line and "closing" in line]
        agent.stop()
    finally:
        agent.kill()
    return {"points": points, "reads_sent": sent, "dropped_after_s": dropped_at, "reason": reasons[0] if reasons else None,
            "baseline_rss_mib": baseline, "peak_rss_mib": peak, "rss_samples": samples}


def one_partial(tmp: str, connections: int, frame_mib: int) -> dict[str, Any]:
    """``connections`` clients each announce a ``frame_mib`` MiB frame and send all of it but 1 MiB; then close."""
    agent = AgentProc(tmp, os.path.join(tmp, "partial.db"), "partial")
    agent.extra = ["--frame-timeout", "600"]
    agent.start()
    try:
        pid = agent.proc.pid  # type: ignore[union-attr]
        baseline = _rss_mib(pid)
        chunk = bytes(1 << 20)
        socks = []
        refused = 0
        for i in range(connections):
            sock = _raw_client(agent.url, f"partial-{i}")
            try:
                sock.sendall(struct.pack(">I", frame_mib << 20))
                for _ in range(frame_mib - 1):
                    sock.sendall(chunk)
            except OSError:
                refused += 1  # the agent closed it: past --max-partial-mb
            socks.append(sock)
        holding = _rss_mib(pid)
        for sock in socks:
            sock.close()
        deadline = time.monotonic() + 10
        after = _rss_mib(pid)
        while time.monotonic() < deadline:  # settle: the agent notices the closes
            time.sleep(0.5)
            now = _rss_mib(pid)
            if now is not None and after is not None and abs(now - after) < 1:
                break
            after = now
        agent.stop()
    finally:
        agent.kill()
    return {"connections": connections, "frame_mib": frame_mib, "dropped_by_cap": refused,
            "baseline_rss_mib": baseline, "holding_rss_mib": holding, "after_close_rss_mib": after}


def bench_memory(tmp: str, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, points, extra in (("unread_small_answers", 200, ()), ("unread_large_answers", 2000, ["--max-unread-mb", "1"])):
        r = out[name] = one_unread(tmp, seconds, points, extra)
        say(f"  never-reading client, {points}-point answers{' (--max-unread-mb 1)' if extra else ''}: "
            f"RSS {r['baseline_rss_mib']:.0f} -> peak {r['peak_rss_mib']:.0f} MiB; "
            + (f"dropped after {r['dropped_after_s']:.1f} s, {r['reads_sent']} reads: {r['reason']}"
               if r["dropped_after_s"] is not None else f"not dropped in {seconds:.0f} s ({r['reads_sent']} reads)"))
    r = out["partial_frames"] = one_partial(tmp, 8, 60)
    say(f"  8 connections x 60 MiB unfinished frames: RSS {r['baseline_rss_mib']:.0f} -> {r['holding_rss_mib']:.0f} MiB "
        f"while held ({r['dropped_by_cap']} dropped by --max-partial-mb), {r['after_close_rss_mib']:.0f} MiB after they close")
    return out


SCENARIOS = ("ingest", "latency", "slowdown", "sigkill", "memory")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write the figures as JSON to PATH, or to stdout (the text report then goes to stderr)")
    p.add_argument("--only", help="comma-separated subset of: " + ", ".join(SCENARIOS))
    p.add_argument("--tmpdir", help="directory for databases and sockets (default: a fresh one under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the databases and agent logs")
    p.add_argument("--ingest-calls", type=int, help="calls per ingest run, split over the trainers (default 400k; quick 80k)")
    p.add_argument("--trainers", default="1,4,8", help="trainer counts for agent ingest (default 1,4,8)")
    p.add_argument("--embedded-trainers", default="1,8", help="trainer counts for the embedded baseline ('' for none)")
    p.add_argument("--calls", type=int, help="timed calls of the latency trainer (default 200k; quick 50k)")
    p.add_argument("--warmup", type=int, help="warm-up calls per trainer (default 20k; quick 5k)")
    p.add_argument("--loaders", type=int, default=7, help="trainers loading the agent during the latency run")
    p.add_argument("--load-pts", type=float, default=200_000,
                   help="metric points/s the loaders log in all (default 200k, about 2/3 of the agent's ingest)")
    p.add_argument("--steps", type=int, help="steps per slowdown run (default 20k; quick 3k)")
    p.add_argument("--repeats", type=int, help="interleaved no-log/log run pairs (default 7; quick 3)")
    p.add_argument("--step-us", type=float, default=100.0, help="synthetic step length to calibrate to (us)")
    p.add_argument("--kills", type=int, help="SIGKILLs per mode (default 10; quick 3)")
    p.add_argument("--no-embedded-sigkill", action="store_true", help="skip the embedded SIGKILL comparison")
    p.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a._child:
        return run_child(*a._child)

    q = a.quick
    ingest_calls = a.ingest_calls or (80_000 if q else 400_000)
    counts = [int(x) for x in a.trainers.split(",") if x.strip()]
    embedded = [int(x) for x in a.embedded_trainers.split(",") if x.strip()]
    calls = a.calls or (50_000 if q else 200_000)
    warmup = a.warmup or (5_000 if q else 20_000)
    steps = a.steps or (3_000 if q else 20_000)
    repeats = a.repeats or (3 if q else 7)
    kills = a.kills or (3 if q else 10)
    selected = set(SCENARIOS)
    if a.only:
        selected = {x.strip() for x in a.only.split(",") if x.strip()}
        unknown = selected - set(SCENARIOS)
        if unknown:
            p.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")

    if a.json == "-":
        bench_core._human = sys.stderr  # the report's say() is bench_core's
    tmp = a.tmpdir or tempfile.mkdtemp(prefix="mlp-bench-agent-", dir="/tmp")  # short: AF_UNIX paths
    os.makedirs(tmp, exist_ok=True)
    started = time.perf_counter()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    figures: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "ml_persistence": ml_persistence.__version__,
            "loadavg_at_start": load,
        },
        "mode": "quick" if q else "full",
    }
    say(f"ml_persistence {ml_persistence.__version__} agent benchmark ({figures['mode']}) -- Python "
        f"{figures['machine']['python']}, SQLite {figures['machine']['sqlite']}, {os.cpu_count()} CPUs")
    say(f"databases and sockets in {tmp}" + (f"; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load else ""))
    ing = lat = slo = kil = None
    try:
        if "ingest" in selected:
            header("1. Agent ingest: committed metric points/s, N trainers -> one agent")
            ing = figures["ingest"] = bench_ingest(tmp, ingest_calls, warmup, counts, embedded)
        if "latency" in selected:
            header(f"2a. Trainer-side log_metrics_batch latency, alone and with {a.loaders} loaders")
            lat = figures["latency"] = bench_latency(tmp, calls, warmup, a.loaders, a.load_pts)
        if "slowdown" in selected:
            header(f"2b. Slowdown of a ~{a.step_us:.0f} us pure-Python step by one log_metrics_batch per step")
            slo = figures["slowdown"] = bench_slowdown(tmp, a.step_us, steps, repeats)
        if "sigkill" in selected:
            header("3. SIGKILL loss window (age of the newest committed event at the kill)")
            kil = figures["sigkill"] = bench_sigkill(tmp, kills, not a.no_embedded_sigkill)
        if "memory" in selected:
            header("4. Agent memory under clients that never read answers or never finish a frame")
            figures["memory"] = bench_memory(tmp, 10.0 if q else 40.0)
    finally:
        if not a.keep and not a.tmpdir:
            shutil.rmtree(tmp, ignore_errors=True)

    rows: list[tuple[str, str, str, Optional[bool]]] = []
    if ing:
        for r in ing["runs"]:
            target, ok = "-", None
            if r["mode"] == "agent" and r["trainers"] == 8:
                target, ok = ">= 300k pts/s", r["points_per_s"] >= 300_000
            rows.append((f"ingest, {r['mode']}, {r['trainers']} trainer{'s' if r['trainers'] > 1 else ''}",
                         f"{fmt_int(r['points_per_s'])} pts/s", target, ok))
        bad = [r for r in ing["runs"] if not r["rows_ok"]]
        rows.append(("ingest: rows in db == expected", "yes" if not bad else f"NO ({len(bad)} runs)", "yes", not bad))
    if lat:
        for key, r in lat.items():
            rows.append((f"latency {key.replace('_', ', ')}: p50/p99/p99.9/max",
                         f"{r['p50_us']:.2f} / {r['p99_us']:.2f} / {r['p999_us']:.1f} / {r['max_us']:,.0f} us", "-", None))
    if slo:
        for mode, r in slo.items():
            rows.append((f"pure-Python step slowdown, {mode}", f"{r['slowdown_pct']:+.2f}%", "<= 2%",
                         r["slowdown_pct"] <= 2))
    if kil:
        for mode, r in kil.items():
            rows.append((f"SIGKILL window, {mode}: median / max", f"{r['median_ms']:.0f} / {r['max_ms']:.0f} ms",
                         "max < 1000 ms" if mode == "agent" else "-", r["within_1s"] if mode == "agent" else None))
    losses = 0
    for block in (ing["runs"] if ing else []) + (list(lat.values()) if lat else []) + (list(slo.values()) if slo else []):
        losses += (block.get("dropped") or 0) + (block.get("lost") or 0)
    rows.append(("events dropped or lost (all scenarios)", str(losses), "0", losses == 0))

    header("Summary")
    summary_table(rows)
    return write_figures(figures, rows, started, a.json)


if __name__ == "__main__":
    sys.exit(main())
