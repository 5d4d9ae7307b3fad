"""`ml-persistence sync` throughput and memory: a one-run SQLite source of N metric points into
PostgreSQL (and into SQLite), against the target's raw binary COPY of the same rows.

    flock /work/notes/bench.lock timeout 1500 python benchmarks/bench_sync.py [--points 10000000] [--url postgresql://...]

- The source is a file the library creates (one experiment), filled with bulk sqlite3 inserts of
  metric rows shaped like logged ones (4 metric names per step, local-time timestamps), in
  transactions of 1M rows. It is cached under ~/.cache/ml_persistence-bench-sync, keyed by size
  and schema version (the first build of 10M points takes about a minute).
- sync: ``ml_persistence.sync.sync(src, url)`` in a child process, into a fresh, empty database
  (mlp_bench_<hex>, dropped afterwards); rows/s counted from the call to its return, and the
  child's peak RSS (its own VmHWM). Run at 1M points and at --points, to show the peak
  does not grow with the run.
- raw COPY (the ceiling), into a fresh database with the real schema, 50,000-row transactions, no
  ml_persistence code on the way: "read" = psycopg ``cursor.copy`` ``write_row`` of the same metrics
  columns read from the same file as they go; "bytes" = the same rows already in binary COPY format
  (exported from the synced database), only ``copy.write`` of each chunk: the server's own rate.
- SQLite -> SQLite rows/s (and peak RSS), into a new file.
The URL (default $ML_PERSISTENCE_TEST_POSTGRES) needs CREATEDB.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import uuid  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import Iterator  # noqa: E402
from urllib.parse import urlsplit, urlunsplit  # noqa: E402

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from ml_persistence.storage import display  # noqa: E402

CACHE = Path.home() / ".cache" / "ml_persistence-bench-sync"
NAMES = ("train_loss", "train_return", "value_loss", "learning_rate")
INSERT_TX = 1_000_000
CHUNK = 50_000
COLUMNS = ("experiment_id", "model_id", "metric_name", "metric_type", "episode", "step", "epoch", "value",
           "value_json", "split", "phase", "timestamp", "metadata")
TYPES = ("int8", "int8", "text", "text", "int8", "int8", "int8", "float8", "text", "text", "text", "text", "text")


def _rows(experiment_id: int, start: int, stop: int):
    """Metric rows as the library logs them: 4 names a step, one step a millisecond, local-time text."""
    base = datetime.datetime(2024, 3, 1, 9, 0, 0)
    prefixes: dict[int, str] = {}
    for i in range(start, stop):
        step, k = divmod(i, len(NAMES))
        second, ms = divmod(step, 1000)
        prefix = prefixes.get(second)
        if prefix is None:
            prefixes.clear()
            prefix = prefixes[second] = (base + datetime.timedelta(seconds=second)).strftime("%Y-%m-%d %H:%M:%S")
        value = ((i * 2654435761) % 1_000_003) / 1_000_003 - 0.5
        yield experiment_id, "scalar", NAMES[k], step, value, "train", f"{prefix}.{ms * 1000:06d}"


def source(points: int) -> str:
    """The cached source file of ``points`` metric rows; built on first use."""
    from ml_persistence.sqlite.schema import SCHEMA_VERSION

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"run-{points}-v{SCHEMA_VERSION}.db"
    if path.exists():
        return str(path)
    building = CACHE / f".building-{os.getpid()}.db"
    for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
        leftover.unlink(missing_ok=True)
    started = time.perf_counter()
    # The library makes the file and the run (in a child, so no writer of this process keeps it open).
    made = subprocess.run([sys.executable, "-c", (
        "import sys\nfrom ml_persistence import ExperimentTracker\n"
        "t = ExperimentTracker(sys.argv[1], capture_environment=False)\n"
        "e = t.start_experiment('bench-sync', experiment_type='rl', tags=['bench'])\n"
        "t.log_hyperparameters_batch({'lr': 3e-4, 'gamma': 0.99})\nt.end_experiment()\nprint(e)\n"),
        str(building)], capture_output=True, text=True, check=True, cwd=HERE.parent)
    experiment_id = int(made.stdout.strip())
    conn = sqlite3.connect(building)
    try:
        for start in range(0, points, INSERT_TX):
            with conn:
                conn.executemany("INSERT INTO metrics (experiment_id, metric_type, metric_name, step, value, split, "
                                 "timestamp) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 _rows(experiment_id, start, min(points, start + INSERT_TX)))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    os.replace(building, path)
    for leftover in (Path(f"{building}-wal"), Path(f"{building}-shm")):
        leftover.unlink(missing_ok=True)
    print(f"  built {path} ({points:,} points, {path.stat().st_size / 2**20:,.0f} MiB) in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return str(path)


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Create a scratch database mlp_bench_<hex> through ``admin_url``; yield its URL; drop it.

    A plain DROP first (it stops an autovacuum worker by itself, which a role that is not superuser
    may not terminate), WITH (FORCE) only if something of ours is still connected.
    """
    name = "mlp_bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                         "AND usename = current_user AND pid <> pg_backend_pid()", (name,))
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            except psycopg.errors.ObjectInUse:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


CHILD = """
import json, sys, time
from ml_persistence.sync import sync
start = time.perf_counter()
report = sync(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - start
with open("/proc/self/status") as f:
    hwm = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), None)
print(json.dumps({"seconds": seconds, "totals": report.totals(), "vmhwm_kib": hwm}))
"""


def run_measured(argv: list[str]) -> tuple[str, str, float]:
    """Run argv to completion; return (stdout, stderr, peak RSS in MiB from wait4's ru_maxrss)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True, cwd=HERE.parent)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]}... exited {proc.returncode}:\n{stderr}")
    return stdout, stderr, usage.ru_maxrss / 1024


def timed_sync(src: str, dst: str) -> dict:
    """sync(src, dst) in a child: its seconds, totals and peak RSS in MiB.

    The peak is the child's own VmHWM (its image after exec); wait4's ru_maxrss would also count the
    moment between fork and exec, when the child still is a copy of this (possibly large) process.
    """
    stdout, _, rss = run_measured([sys.executable, "-c", CHILD, src, dst])
    result = json.loads(stdout.strip().splitlines()[-1])
    result["rss_mib"] = result["vmhwm_kib"] / 1024 if result.get("vmhwm_kib") else rss
    return result


def baseline_rss(url: str) -> float:
    """Peak RSS (VmHWM) of a child that imports ml_persistence.sync and opens one PostgreSQL connection: the floor."""
    code = ("import sys, psycopg\nimport ml_persistence.sync\n"
            "psycopg.connect(sys.argv[1]).close()\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))\n")
    return int(run_measured([sys.executable, "-c", code, url])[0].split()[-1]) / 1024


def raw_copy_streamed(src: str, url: str) -> float:
    """Binary COPY of src's metric rows, read from the file in CHUNK-row transactions; seconds."""
    columns = ", ".join(COLUMNS)
    copy_sql = f"COPY metrics ({columns}) FROM STDIN (FORMAT BINARY)"
    lite = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            start = time.perf_counter()
            cur = lite.execute(f"SELECT {columns} FROM metrics ORDER BY id")
            while True:
                chunk = cur.fetchmany(CHUNK)
                if not chunk:
                    break
                with conn.transaction(), conn.cursor() as pg:
                    with pg.copy(copy_sql) as copy:
                        copy.set_types(TYPES)
                        for row in chunk:
                            copy.write_row(row)
            return time.perf_counter() - start
    finally:
        lite.close()


def export_chunks(url: str, path: str) -> list[tuple[int, int]]:
    """Write url's metric rows in binary COPY format to ``path``, one stream per CHUNK rows by id; return
    the (offset, length) of each stream. What the server would receive, with no Python per row."""
    columns = ", ".join(COLUMNS)
    spans = []
    with psycopg.connect(url, autocommit=True) as conn, open(path, "wb") as out:
        low, high = conn.execute("SELECT min(id), max(id) FROM metrics").fetchone()
        for start in range(low - 1, high, CHUNK):
            offset = out.tell()
            with conn.cursor().copy(f"COPY (SELECT {columns} FROM metrics WHERE id > {start} AND id <= "
                                    f"{start + CHUNK} ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
                for data in copy:
                    out.write(data)
            spans.append((offset, out.tell() - offset))
    return spans


def raw_copy_bytes(path: str, spans: list[tuple[int, int]], url: str) -> float:
    """Binary COPY of the exported streams, one transaction each: the server's own rate; seconds."""
    copy_sql = f"COPY metrics ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    with psycopg.connect(url, autocommit=True) as conn, open(path, "rb") as f:
        start = time.perf_counter()
        for offset, length in spans:
            f.seek(offset)
            data = f.read(length)
            with conn.transaction(), conn.cursor() as pg, pg.copy(copy_sql) as copy:
                copy.write(data)
        return time.perf_counter() - start


def with_schema(url: str) -> None:
    """The real schema in an empty database (what the raw COPY goes into)."""
    from ml_persistence.postgres import connect, schema

    with connect.connect(url) as conn:
        schema.ensure(conn)


def count(src: str) -> int:
    lite = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    try:
        return lite.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    finally:
        lite.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("ML_PERSISTENCE_TEST_POSTGRES"))
    parser.add_argument("--points", type=int, default=10_000_000)
    parser.add_argument("--small", type=int, default=1_000_000, help="the smaller run of the memory comparison")
    parser.add_argument("--no-sqlite", action="store_true", help="skip SQLite -> SQLite")
    args = parser.parse_args()
    if not args.url:
        parser.error("give --url or set ML_PERSISTENCE_TEST_POSTGRES")
    sizes = sorted({min(args.small, args.points), args.points})
    print(f"server: {display(args.url)}; sources: {', '.join(f'{n:,}' for n in sizes)} points; "
          f"cache {CACHE}", flush=True)
    sources = {n: source(n) for n in sizes}
    for n, path in sources.items():
        assert count(path) == n, (path, count(path), n)

    floor = baseline_rss(args.url)
    print(f"\nbaseline: a child importing ml_persistence.sync with one connection: peak RSS {floor:,.0f} MiB")

    print("\nSQLite -> PostgreSQL: ml_persistence.sync.sync() in a child into a fresh empty database, against raw "
          f"binary COPY of the same rows\ninto a fresh database with the real schema ({CHUNK:,}-row transactions, no "
          "ml_persistence code): 'read' = psycopg cursor.copy()\nwrite_row() of rows read from the same file as they "
          "go; 'bytes' = the rows already in COPY's binary format (exported\nfrom the synced database), only "
          "copy.write() of each chunk: the server's own rate")
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            stream = os.path.join(scratch, "metrics.copy")
            with fresh_database(args.url) as url:
                r = timed_sync(sources[n], url)
                with psycopg.connect(url, autocommit=True) as conn:
                    landed = conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
                assert landed == n and r["totals"].get("metrics") == n, (landed, r)
                spans = export_chunks(url, stream)
            sync_rate = n / r["seconds"]
            print(f"  {n:>12,} points  sync:            {sync_rate:>10,.0f} rows/s ({r['seconds']:.1f} s), "
                  f"peak RSS {r['rss_mib']:,.0f} MiB (baseline {floor:,.0f} MiB)", flush=True)
            with fresh_database(args.url) as url:
                with_schema(url)
                read = n / raw_copy_streamed(sources[n], url)
            print(f"  {n:>12,} points  raw COPY read:   {read:>10,.0f} rows/s   sync / raw = {sync_rate / read:.2f}",
                  flush=True)
            with fresh_database(args.url) as url:
                with_schema(url)
                raw = n / raw_copy_bytes(stream, spans, url)
            print(f"  {n:>12,} points  raw COPY bytes:  {raw:>10,.0f} rows/s   sync / raw = {sync_rate / raw:.2f}",
                  flush=True)
    print("  (goal: sync / raw >= 0.5)")

    if not args.no_sqlite:
        print("\nSQLite -> SQLite, ml_persistence.sync.sync() in a child, into a new file")
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            for s in sizes:
                dst = os.path.join(scratch, f"copy-{s}.db")
                r = timed_sync(sources[s], dst)
                assert count(dst) == s and r["totals"].get("metrics") == s, r
                print(f"  {s:>12,} points: {s / r['seconds']:>10,.0f} rows/s ({r['seconds']:.1f} s), "
                      f"peak RSS {r['rss_mib']:,.0f} MiB", flush=True)
                os.unlink(dst)


if __name__ == "__main__":
    main()
