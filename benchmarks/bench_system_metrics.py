#!/usr/bin/env python3
"""Step cost of system metrics: the same training loop with and without the sampler running.

    PYTHONPATH=. python benchmarks/bench_system_metrics.py                 # default run (about 3 minutes)
    PYTHONPATH=. python benchmarks/bench_system_metrics.py --quick         # smoke run (under 30 s)
    PYTHONPATH=. python benchmarks/bench_system_metrics.py --interval 0.1 --steps 5000 --rounds 36  # 100x the rate
    PYTHONPATH=. python benchmarks/bench_system_metrics.py --json out.json # figures as JSON too ('-': stdout)

One process, one ExperimentTracker on a fresh SQLite file (the default writer). The step is
bench_core's pure-Python loop calibrated to --step-us (it holds the GIL, so any GIL time the
sampler thread takes shows up), followed by one 4-metric log_metrics_batch per step.

--rounds rounds of three runs of --steps steps each: "plain", "control" (plain again) and
"sampled", their order cycling through all six permutations. Every run is an experiment of its
own, started just before the timed loop with system_metrics=--interval (sampled) or
system_metrics=False (the others); start_experiment, the sampler's start-up (opening psutil and
NVML, measured apart) and end_experiment (which stops the sampler) are outside the timed loops.
The sampled runs sample every 1 s by default (10 times the default rate; --quick: 0.1 s, the
shortest interval allowed), so that each run of about 2 s holds samples.

Figures: the slowdown = median over rounds of sampled / plain - 1, with its interquartile range
and an approximate 95% interval for the median; the same for control / plain - 1, an A/A
comparison that shows what the machine's noise alone makes of two identical runs; both also
for the training thread's own CPU time (thread_time), which separates work added to the loop
from time lost to other threads and processes. Then the samples taken per sampled run, and the
cost of one sample measured directly (the sampler's probes called in a loop: wall and CPU time),
with the share of one CPU it implies at --interval and at the default 10 s. Other processes'
CPU use during the run is reported: this machine may be shared.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import ml_persistence  # noqa: E402
from bench_core import (  # noqa: E402
    CpuWatch,
    calibrate,
    fmt_int,
    gil_holding_step_factory,
    header,
    report_background,
    say,
    summary_table,
    write_figures,
)
from bench_modes import median_interval, median_iqr  # noqa: E402
from ml_persistence import ExperimentTracker  # noqa: E402
from ml_persistence.system_metrics import DEFAULT_INTERVAL, MIN_INTERVAL, PREFIX  # noqa: E402
from ml_persistence.system_metrics.sampler import _open_probes  # noqa: E402

METRICS = {"train_loss": 0.25, "train_acc": 0.75, "lr": 3e-4, "grad_norm": 1.5}


def run_loop(tracker: ExperimentTracker, step: Callable[[], Any], steps: int) -> tuple[float, float]:
    """Time ``steps`` steps with one log call each; return (wall us, training-thread CPU us) per step."""
    log = tracker.log_metrics_batch
    m = dict(METRICS)
    gc.collect()
    c0, t0 = time.thread_time(), time.perf_counter()
    for i in range(steps):
        step()
        m["train_loss"] = 1.0 / (i + 1)
        log(m, step=i)
    t1, c1 = time.perf_counter(), time.thread_time()
    return (t1 - t0) / steps * 1e6, (c1 - c0) / steps * 1e6


def one_run(tracker: ExperimentTracker, step: Callable[[], Any], steps: int,
            interval: Optional[float]) -> tuple[float, float, int, float]:
    """One experiment, sampled every ``interval`` s or not at all (None).

    Return (wall us, cpu us) per step, the samples taken, and the ms from start_experiment's call
    until the sampler had opened its probes (0 without one).
    """
    t0 = time.perf_counter()
    tracker.start_experiment("sampled" if interval else "plain", experiment_type="benchmark",
                             system_metrics=interval if interval else False)
    sampler = tracker._sampler
    if sampler is not None:
        sampler.wait_opened()  # its start-up (psutil and NVML opened once per run) is not in the timed loop
    opened_ms = (time.perf_counter() - t0) * 1e3 if sampler is not None else 0.0
    wall, cpu = run_loop(tracker, step, steps)
    tracker.end_experiment()  # stops the sampler and waits for the commit: untimed
    return wall, cpu, sampler.samples if sampler is not None else 0, opened_ms


def sample_cost(samples: int) -> dict[str, Any]:
    """Call the sampler's probes ``samples`` times on this thread; return wall and CPU us per sample."""
    probes = _open_probes()
    try:
        names = set()
        for probe in probes:
            names.update(probe.sample())  # warm
        walls, cpus = [], []
        for _ in range(samples):
            c0, t0 = time.thread_time(), time.perf_counter()
            for probe in probes:
                probe.sample()
            walls.append((time.perf_counter() - t0) * 1e6)
            cpus.append((time.thread_time() - c0) * 1e6)
    finally:
        for probe in probes:
            close = getattr(probe, "close", None)
            if close is not None:
                close()
    return {"samples": samples, "names": sorted(PREFIX + n for n in names), "probes": [type(p).__name__ for p in probes],
            "wall_us": statistics.median(walls), "cpu_us": statistics.median(cpus),
            "wall_us_p90": sorted(walls)[int(0.9 * (len(walls) - 1))]}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: fewer, shorter rounds")
    p.add_argument("--rounds", type=int, help="rounds of plain/control/sampled runs (default 18; quick 6)")
    p.add_argument("--steps", type=int, help="steps per run (default 20000, about 2 s; quick 2000)")
    p.add_argument("--interval", type=float,
                   help=f"seconds between samples in the sampled runs (default 1; quick {MIN_INTERVAL:g})")
    p.add_argument("--step-us", type=float, default=100.0, help="synthetic step length to calibrate to (us)")
    p.add_argument("--cost-samples", type=int, default=200, help="samples timed for the direct per-sample cost")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write the figures as JSON to PATH, or to stdout (the text report then goes to stderr)")
    a = p.parse_args(argv)
    a.rounds = a.rounds or (6 if a.quick else 18)
    a.steps = a.steps or (2_000 if a.quick else 20_000)
    a.interval = a.interval or (MIN_INTERVAL if a.quick else 1.0)
    if a.json == "-":
        import bench_core

        bench_core._human = sys.stderr

    started = time.perf_counter()
    load = os.getloadavg()
    figures: dict[str, Any] = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                    "platform": platform.platform(), "ml_persistence": ml_persistence.__version__,
                    "loadavg_at_start": load},
        "rounds": a.rounds, "steps": a.steps, "interval_s": a.interval,
    }
    say(f"$ {figures['command']}")
    say(f"{figures['date']} | {os.cpu_count()} CPUs | Python {platform.python_version()} | "
        f"ml_persistence {ml_persistence.__version__} | {platform.platform()} | load average at start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    header("1. Cost of one sample, measured directly (the sampler's probes called on this thread)")
    cost = figures["sample_cost"] = sample_cost(a.cost_samples)
    share_at = {interval: 100 * cost["cpu_us"] / (interval * 1e6) for interval in (a.interval, DEFAULT_INTERVAL)}
    cost["cpu_share_pct"] = {str(k): v for k, v in share_at.items()}
    say(f"  probes: {', '.join(cost['probes'])}; {len(cost['names'])} metrics per sample")
    say(f"  one sample: {cost['wall_us']:.0f} us wall (p90 {cost['wall_us_p90']:.0f}), {cost['cpu_us']:.0f} us CPU "
        f"(median of {cost['samples']})")
    say(f"  -> {share_at[a.interval]:.4f}% of one CPU every {a.interval:g} s; {share_at[DEFAULT_INTERVAL]:.5f}% at "
        f"the default {DEFAULT_INTERVAL:g} s")

    header(f"2. Step slowdown with the sampler running every {a.interval:g} s")
    nloop, us_hold = calibrate(gil_holding_step_factory, 1000, 10**7, a.step_us)
    step = gil_holding_step_factory(nloop)
    figures["step"] = {"loop_iterations": nloop, "calibrated_us": us_hold}
    say(f"  step: pure-Python loop of {fmt_int(nloop)} iterations = {us_hold:.1f} us (holds the GIL), then "
        f"log_metrics_batch(4 metrics)")
    say(f"  {a.rounds} rounds of three {fmt_int(a.steps)}-step runs (plain, control, sampled), order cycling "
        f"through all six; each run its own experiment")
    tmp = tempfile.mkdtemp(prefix="mlp-sysmetrics-", dir="/tmp")
    watch = CpuWatch()
    kinds = ("plain", "control", "sampled")
    orders = list(itertools.permutations(kinds))
    try:
        tracker = ExperimentTracker(os.path.join(tmp, "bench.db"), capture_environment=False)
        for interval in (a.interval, None):  # warm-up: the writer started, the probes' modules imported
            one_run(tracker, step, min(a.steps, 2000), interval)
        runs: dict[str, list[tuple[float, float, int, float]]] = {kind: [] for kind in kinds}
        for r in range(a.rounds):
            for kind in orders[r % len(orders)]:
                runs[kind].append(one_run(tracker, step, a.steps, a.interval if kind == "sampled" else None))
        status = tracker.status()
        tracker.close()
        ml_persistence.shutdown()
        conn = sqlite3.connect(os.path.join(tmp, "bench.db"))
        stored = conn.execute("SELECT COUNT(DISTINCT timestamp) FROM metrics WHERE metric_name LIKE ?",
                              (PREFIX + "%",)).fetchone()[0]
        conn.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def versus_plain(kind: str, field: int) -> dict[str, Any]:
        ratios = [100 * (other[field] / plain[field] - 1) for plain, other in zip(runs["plain"], runs[kind])]
        med, q1, q3 = median_iqr(ratios)
        lo, hi = median_interval(ratios)
        return {"median_pct": med, "iqr_pct": (q1, q3), "ci95_pct": (lo, hi), "ratios_pct": ratios}

    r = figures["slowdown"] = {
        f"{kind}_{what}_us_per_step": statistics.median(x[field] for x in runs[kind])
        for kind in kinds for what, field in (("wall", 0), ("cpu", 1))
    }
    r.update({"sampled_wall": versus_plain("sampled", 0), "control_wall": versus_plain("control", 0),
              "sampled_cpu": versus_plain("sampled", 1), "control_cpu": versus_plain("control", 1)})
    taken = r["samples_per_sampled_run"] = [x[2] for x in runs["sampled"]]
    r["start_to_opened_ms"] = statistics.median(x[3] for x in runs["sampled"])
    r.update(samples_stored=stored, writer=status.get("writer"), dropped=status["dropped"])

    def text(f: dict[str, Any]) -> str:
        return (f"{f['median_pct']:+6.2f}%  (IQR {f['iqr_pct'][0]:+.2f} .. {f['iqr_pct'][1]:+.2f}, "
                f"95% CI of the median {f['ci95_pct'][0]:+.2f} .. {f['ci95_pct'][1]:+.2f})")

    for kind in kinds:
        say(f"  {kind:<8} {r[kind + '_wall_us_per_step']:7.1f} us/step, own CPU {r[kind + '_cpu_us_per_step']:6.1f} us "
            f"(runs: " + ", ".join(f"{x[0]:.0f}" for x in runs[kind]) + ")")
    say(f"  wall time per step, sampled vs plain: {text(r['sampled_wall'])}")
    say(f"                      control vs plain: {text(r['control_wall'])}   <- noise alone (A/A)")
    say(f"  training thread CPU, sampled vs plain: {text(r['sampled_cpu'])}")
    say(f"                       control vs plain: {text(r['control_cpu'])}   <- noise alone (A/A)")
    say(f"  samples per sampled run: {', '.join(map(str, taken))} ({stored} stored in all, warm-up included); "
        f"writer {r['writer']}, dropped {r['dropped']}")
    say(f"  start_experiment until the sampler had opened its probes: {r['start_to_opened_ms']:.1f} ms (median; "
        f"once per run, outside the timed loops)")
    report_background(watch, r)

    med, (lo, hi) = r["sampled_wall"]["median_pct"], r["sampled_wall"]["ci95_pct"]
    cmed, (clo, chi) = r["sampled_cpu"]["median_pct"], r["sampled_cpu"]["ci95_pct"]
    amed, (alo, ahi) = r["control_wall"]["median_pct"], r["control_wall"]["ci95_pct"]
    acmed, (aclo, achi) = r["control_cpu"]["median_pct"], r["control_cpu"]["ci95_pct"]
    # "Not measurable": the 95% interval of the median slowdown holds 0; how wide it is says how much
    # this machine could have measured (compare the A/A control's).
    header("Summary")
    rows = [
        ("one sample, CPU", f"{cost['cpu_us']:.0f} us", "-", None),
        (f"CPU share at {DEFAULT_INTERVAL:g} s (default)", f"{share_at[DEFAULT_INTERVAL]:.5f}%", "-", None),
        (f"step slowdown at {a.interval:g} s", f"{med:+.2f}% [{lo:+.2f}, {hi:+.2f}]",
         "95% CI spans 0", lo <= 0 <= hi),
        ("  training thread CPU", f"{cmed:+.2f}% [{clo:+.2f}, {chi:+.2f}]", "95% CI spans 0", clo <= 0 <= chi),
        ("  A/A control, wall (noise alone)", f"{amed:+.2f}% [{alo:+.2f}, {ahi:+.2f}]", "-", None),
        ("  A/A control, thread CPU", f"{acmed:+.2f}% [{aclo:+.2f}, {achi:+.2f}]", "-", None),
    ]
    summary_table(rows)
    return write_figures(figures, rows, started, a.json)


if __name__ == "__main__":
    sys.exit(main())
