#!/usr/bin/env python3
"""Export throughput and memory: ml_persistence.export of a metrics table with N rows.

    PYTHONPATH=. python benchmarks/bench_export.py                     # 1M rows (about a minute)
    PYTHONPATH=. python benchmarks/bench_export.py --rows 10000000     # 10M rows
    PYTHONPATH=. python benchmarks/bench_export.py --formats csv,jsonl --batch-rows 10000 --keep

A temporary database gets one experiment (made by the library) and N metric rows (made by SQL, a
recursive CTE: four metric names in turn, step, epoch, split, a full-precision value, a timestamp;
one value in 10,000 NaN, one +inf). Each format is then exported to a file by a fresh child
process, which reports the export's wall and CPU time and its peak RSS (VmHWM) before and after:
the baseline includes the imports and one-time set-up (a one-row export runs first). The figures
are rows/s, MB/s of output, output size and peak RSS growth; growth must not depend on N.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_core  # noqa: E402
import ml_persistence  # noqa: E402
from bench_core import CpuWatch, fmt_int, header, report_background, say, summary_table  # noqa: E402
from ml_persistence import ExperimentTracker  # noqa: E402
from ml_persistence.export import FORMATS  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROWTH_LIMIT_MIB = 150  # the bound tests/test_export.py holds exports to, over their baseline

FILL = """
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :rows - 1)
INSERT INTO metrics (experiment_id, metric_name, metric_type, step, epoch, value, split, timestamp)
SELECT :experiment,
       CASE i % 4 WHEN 0 THEN 'train_loss' WHEN 1 THEN 'train_acc' WHEN 2 THEN 'lr' ELSE 'grad_norm' END,
       'scalar', i / 4, i / 40000,
       CASE WHEN i % 10000 = 9999 THEN NULL WHEN i = 5 THEN 9e999
            ELSE ((i * 2654435761) % 4294967296) / 4294967296.0 END,
       'train',
       printf('2024-05-01 %02d:%02d:%02d.%06d', (i / 3600000) % 24, (i / 60000) % 60, (i / 1000) % 60,
              (i % 1000) * 1000)
FROM n
"""

CHILD = """
import io, json, resource, sqlite3, sys, time
from ml_persistence.export import export_rows

def peak_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024

def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

db, fmt, out_path, batch_rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
export_rows(conn, "experiments", io.BytesIO(), fmt)
base, cpu0, t0 = peak_mib(), cpu_s(), time.perf_counter()
with open(out_path, "wb") as out:
    rows = export_rows(conn, "metrics", out, fmt, batch_rows=batch_rows)
seconds, cpu = time.perf_counter() - t0, cpu_s() - cpu0
print(json.dumps({"rows": rows, "seconds": seconds, "cpu_s": cpu, "base_mib": base, "peak_mib": peak_mib()}))
"""


def build(path: str, rows: int) -> float:
    """Create the database with ``rows`` metric rows; return the seconds it took."""
    started = time.perf_counter()
    tracker = ExperimentTracker(path, capture_environment=False)
    experiment = tracker.start_experiment("bench-export", experiment_type="benchmark")
    tracker.end_experiment("completed")
    tracker.close()
    ml_persistence.shutdown()
    conn = sqlite3.connect(path)
    try:
        conn.execute(FILL, {"rows": rows, "experiment": experiment})
        conn.commit()
    finally:
        conn.close()
    return time.perf_counter() - started


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_export(db: str, fmt: str, out_path: str, batch_rows: int) -> dict[str, Any]:
    """Export the metrics table as ``fmt`` in a fresh process; return its figures."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, db, fmt, out_path, str(batch_rows)],
        capture_output=True, env=child_env(), check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{fmt} export failed:\n{done.stderr.decode()}")
    figures = json.loads(done.stdout)
    figures["bytes"] = os.path.getsize(out_path)
    figures["rows_per_s"] = figures["rows"] / figures["seconds"]
    figures["mb_per_s"] = figures["bytes"] / 1e6 / figures["seconds"]
    figures["growth_mib"] = figures["peak_mib"] - figures["base_mib"]
    return figures


def say_export(fmt: str, f: dict[str, Any]) -> None:
    say(f"  {fmt_int(f['rows'])} rows in {f['seconds']:.1f} s ({f['cpu_s']:.1f} s CPU): "
        f"{fmt_int(f['rows_per_s'])} rows/s, {f['mb_per_s']:.0f} MB/s")
    say(f"  output {f['bytes'] / 1e6:,.0f} MB ({f['bytes'] / f['rows']:.0f} bytes/row)")
    say(f"  peak RSS {f['peak_mib']:.0f} MiB: baseline {f['base_mib']:.0f} MiB + {f['growth_mib']:.0f} MiB for the export")


def summary_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, Optional[bool]]]:
    out: list[tuple[str, str, str, Optional[bool]]] = []
    for fmt, f in results.items():
        out += [
            (f"{fmt}: throughput", f"{fmt_int(f['rows_per_s'])} rows/s", "-", None),
            (f"{fmt}: output size", f"{f['bytes'] / 1e6:,.0f} MB", "-", None),
            (f"{fmt}: peak RSS", f"{f['peak_mib']:.0f} MiB", "-", None),
            (f"{fmt}: peak RSS growth", f"{f['growth_mib']:.0f} MiB", f"<= {GROWTH_LIMIT_MIB} MiB",
             f["growth_mib"] <= GROWTH_LIMIT_MIB),
        ]
    return out


def main(argv: Optional[list[str]] = None) -> int:
    """Build the database, export it in each format, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="metric rows to export (default 1,000,000)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of csv,jsonl,parquet")
    parser.add_argument("--batch-rows", type=int, default=50_000, help="export_rows batch_rows (default 50,000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and the outputs")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH ('-': stdout)")
    a = parser.parse_args(argv)
    if a.json == "-":
        bench_core._human = sys.stderr  # the JSON owns stdout; say() writes through this
    formats = [f for f in a.formats.split(",") if f]
    unknown = set(formats) - set(FORMATS)
    if unknown:
        parser.error(f"unknown format(s) {', '.join(sorted(unknown))}; choose from {', '.join(FORMATS)}")

    tmp = tempfile.mkdtemp(prefix="bench_export_")
    db = os.path.join(tmp, "ml_experiments.db")
    results: dict[str, dict[str, Any]] = {}
    try:
        header(f"Building {fmt_int(a.rows)} metric rows")
        seconds = build(db, a.rows)
        say(f"  {seconds:.1f} s; database {os.path.getsize(db) / 1e6:,.0f} MB in {tmp}")
        for fmt in formats:
            header(f"Export metrics as {fmt} (batch_rows={fmt_int(a.batch_rows)})")
            out_path = os.path.join(tmp, f"metrics.{fmt}")
            watch = CpuWatch()
            results[fmt] = run_export(db, fmt, out_path, a.batch_rows)
            say_export(fmt, results[fmt])
            report_background(watch, results[fmt])
            if not a.keep:
                os.remove(out_path)
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    header("Summary")
    rows = summary_rows(results)
    summary_table(rows)
    if a.json:
        text = json.dumps({"rows": a.rows, "batch_rows": a.batch_rows, "exports": results}, indent=2)
        if a.json == "-":
            print(text)
        else:
            with open(a.json, "w") as f:
                f.write(text + "\n")
    return 0 if all(ok is not False for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
