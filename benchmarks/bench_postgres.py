#!/usr/bin/env python3
"""PostgreSQL backend figures beside SQLite's: ingest, the binary-COPY ceiling, log-call latency, the UI's first chart.

    PYTHONPATH=. python benchmarks/bench_postgres.py --url postgresql://USER:PW@HOST/DB   # full run (~5 min)
    PYTHONPATH=. python benchmarks/bench_postgres.py --quick                               # smoke run (~1 min)
    PYTHONPATH=. python benchmarks/bench_postgres.py --json out.json --only direct,copy

The URL (--url, else $ML_PERSISTENCE_TEST_POSTGRES) needs CREATEDB: every scenario gets a fresh
scratch database mlp_bench_<pid>_<scenario> on that server, dropped WITH (FORCE) at its end; SQLite
scenarios get a fresh file. Trainers are fresh processes: bench_agent.py's child roles (its tight
ingest loop and bench_core's per-call latency method), so the figures compare with bench_agent's.

1. direct: points/s committed by 1 and 8 trainer processes, each ExperimentTracker(URL) making its
   share of --ingest-calls log_metrics_batch calls (4 metrics) in a tight loop; from the start
   barrier to the last flush() returning; then the metrics row count must equal the total exactly.
2. agent: the same through `ml-persistence-agent --db URL --listen unix://...` (run as
   `python -m agent`, the same entry point), trainers ExperimentTracker(agent=...).
3. copy: the ceiling, raw psycopg binary COPY of pre-built rows (the library's 13 columns, types and
   values) into the same indexed metrics table, 8192 rows per transaction, from 1 process and from 2
   concurrent ones; the higher is the ceiling.
4. sqlite: scenario 1 on an SQLite file, for comparison.
5. latency: per-call log_metrics_batch p50/p99 in the training thread (bench_core's tight loop),
   PostgreSQL vs SQLite, and PostgreSQL with its connection stalled: the tracker reaches the server
   through a TCP relay in this process that stops forwarding for the whole timed loop. If a log call
   ever waited on the network, that loop would stall; the rows committed meanwhile are counted on a
   direct connection (only the warm-up's should be there).
6. ui: one experiment with a 1M-point metric (logged by one process with log_metric), then
   `ml-persistence ui --db DB --port 0` in a fresh process; the run page's first chart is
   GET /api/experiments/ID/metric?name=loss&x=step&points=2000 with the printed token (as a Bearer
   header), timed as the server's very first request ("cold": a fresh UI process and connection; no
   cache is dropped, PostgreSQL's cannot be from here, so the rows may be in memory on both engines).
   If the UI does not start, ml_persistence.ui.data.series() is timed on a Reader in a fresh process
   instead, and the output says so.

PostgreSQL runs on this same machine: trainers, agent and server share its CPUs, so each run also
shows the PostgreSQL server processes' CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (HERE, REPO):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

import ml_persistence  # noqa: E402
import bench_agent  # noqa: E402
import bench_core  # noqa: E402
from bench_agent import AgentProc, Child, TreeWatch, child_env, metric_rows  # noqa: E402
from bench_core import fmt_int, header, say, summary_table, write_figures  # noqa: E402
from ml_persistence.storage import display  # noqa: E402

BATCH = 8192  # COPY rows per transaction
POINTS_ASKED = 2000  # what app.js asks per series
GOAL = 0.60  # the goal: 8-trainer direct points/s >= 60% of the COPY ceiling
METRICS = ("train_loss", "train_acc", "lr", "grad_norm")  # bench_agent's METRICS names
# The library's COPY (ml_persistence/postgres/store.py); a copy here if that module does not import.
COPY_COLUMNS = ("experiment_id", "metric_type", "timestamp", "metric_name", "value", "split",
                "model_id", "episode", "step", "epoch", "value_json", "phase", "metadata")
COPY_TYPES = ("int8", "text", "text", "text", "float8", "text", "int8", "int8", "int8", "int8", "text", "text", "text")
COPY_SQL = f"COPY metrics ({', '.join(COPY_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
SCENARIOS = ("copy", "direct", "agent", "sqlite", "latency", "ui")


def _copy_statement() -> tuple[str, tuple[str, ...], str]:
    """Return the library's own COPY statement and types, and where they came from."""
    try:
        from ml_persistence.postgres import store

        return store._COPY_METRICS, tuple(store._METRIC_TYPES), "ml_persistence.postgres.store"
    except Exception:  # noqa: BLE001 - mid-refactor: fall back to this file's copy
        return COPY_SQL, COPY_TYPES, "bench_postgres (store did not import)"


# -- scratch databases, row counts, server CPU ----------------------------------------------


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def with_address(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=(user + "@" if user else "") + f"{host}:{port}"))


class Scratch:
    """A fresh database on the server of ``admin`` (a URL), created now, dropped WITH (FORCE) by drop()."""

    def __init__(self, admin: str, label: str) -> None:
        self.admin = admin
        self.name = f"mlp_bench_{os.getpid()}_{label}"
        self.drop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        self.url = with_database(admin, self.name)

    def drop(self, patience: float = 30.0) -> None:
        """DROP DATABASE; WITH (FORCE) only if sessions of ours linger.

        Not FORCE first: on PostgreSQL 15 it refuses to terminate an autovacuum worker for a
        non-superuser (InsufficientPrivilege), where a plain DROP stops the worker itself.
        """
        drop = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(self.name))
        force = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
        deadline = time.monotonic() + patience
        with psycopg.connect(self.admin, autocommit=True) as conn:
            while True:
                try:
                    conn.execute(drop)
                    return
                except psycopg.errors.ObjectInUse:
                    try:
                        conn.execute(force)
                        return
                    except psycopg.errors.InsufficientPrivilege:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.5)


def count_rows(db: str) -> int:
    if not db.startswith("postgres"):
        return metric_rows(db)
    with psycopg.connect(db, autocommit=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]


def ensure_schema(db: str) -> None:
    """Create the schema once, through the library, before several writers race for it."""
    from ml_persistence import storage

    storage.engine(db).ensure(db)


def pg_cpu_s() -> Optional[float]:
    """CPU seconds of every process named postgres, with the children they reaped (exited backends)."""
    total, seen = 0.0, False
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if comm != "postgres":
            continue
        seen = True
        total += sum(int(x) for x in rest[11:15]) / tick  # utime stime cutime cstime
    return total if seen else None


def server_started(admin: str) -> Any:
    """When the PostgreSQL server last started: a change during a run means another session restarted it."""
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            return str(conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0])
    except psycopg.Error:
        return None


def restart_note(r: dict[str, Any]) -> str:
    return "  (PostgreSQL was restarted meanwhile by another session)" if r.get("server_restarted") else ""


def server_facts(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        facts = {"version": conn.execute("SHOW server_version").fetchone()[0]}
        for key in ("synchronous_commit", "fsync", "shared_buffers", "wal_level", "max_wal_size"):
            facts[key] = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(key))).fetchone()[0]
    host = urlsplit(url).hostname or os.environ.get("PGHOST") or "local socket"
    facts["host"] = host
    facts["same_machine"] = host in ("127.0.0.1", "localhost", "::1") or host.startswith("/") or host == "local socket"
    facts["server_processes_seen"] = pg_cpu_s() is not None
    return facts


class Database:
    """A fresh database for one scenario: a scratch PostgreSQL database or a new SQLite file."""

    def __init__(self, engine: str, admin: str, tmp: str, label: str) -> None:
        self.scratch = Scratch(admin, label) if engine == "postgresql" else None
        self.db = self.scratch.url if self.scratch else os.path.join(tmp, label + ".db")

    def drop(self) -> None:
        """Drop the scratch database; a failure is reported, and does not discard the scenario's figures."""
        if self.scratch:
            try:
                self.scratch.drop()
            except psycopg.Error as exc:
                say(f"  warning: could not drop scratch database {self.scratch.name}: {type(exc).__name__}: {exc}")


# -- this script's own child roles ------------------------------------------------------------


class OwnChild(Child):
    """Like bench_agent's Child, but runs one of this script's roles (same ready/go/result lines)."""

    def __init__(self, role: str, **params: Any) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--_child", role, json.dumps(params)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(), cwd=REPO, text=True,
        )


def _say_child(word: str, payload: Any = None) -> None:
    sys.stdout.write(word + ("" if payload is None else " " + json.dumps(payload)) + "\n")
    sys.stdout.flush()


def child_copy(params: dict[str, Any]) -> dict[str, Any]:
    """Binary COPY of pre-built rows, BATCH per transaction, on one connection."""
    from ml_persistence.rows import local_text, split_of

    statement, types, _ = _copy_statement()
    stamp = local_text(time.time())
    first = params["first"]
    rows = [(1, "scalar", stamp, METRICS[i & 3], 0.5 + i * 1e-6, split_of(METRICS[i & 3]),
             None, None, i >> 2, None, None, None, None) for i in range(first, first + params["rows"])]
    batches = [rows[s:s + BATCH] for s in range(0, len(rows), BATCH)]
    conn = psycopg.connect(params["url"])
    _say_child("ready")
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected 'go'")
    t0 = time.time()
    for batch in batches:
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(types)
            write = copy.write_row
            for row in batch:
                write(row)
        conn.commit()
    t_done = time.time()
    conn.close()
    return {"t_start": t0, "t_done": t_done, "rows": len(rows)}


def child_fill(params: dict[str, Any]) -> dict[str, Any]:
    """One experiment, one metric of ``points`` steps through log_metric (a loss-like curve with noise)."""
    from ml_persistence import ExperimentTracker

    t0 = time.perf_counter()
    tracker = ExperimentTracker(params["db"], capture_environment=False, agent=False)
    exp = tracker.start_experiment("bench-postgres-ui", experiment_type="benchmark")
    log = tracker.log_metric
    for i in range(params["points"]):
        log("loss", 1.0 / (1.0 + i / 5000.0) + ((i * 2654435761) % 1000) * 1e-5, step=i)
        if i % 200_000 == 199_999:
            tracker.flush()  # stay under the in-memory queue's 500k events: no spill file
    tracker.end_experiment("completed")
    tracker.flush()
    tracker.close()
    ml_persistence.shutdown()
    return {"experiment": exp, "seconds": time.perf_counter() - t0}


def child_series(params: dict[str, Any]) -> dict[str, Any]:
    """Time ml_persistence.ui.data.series() on the engine's Reader: first call (cold), then warm."""
    try:
        from ml_persistence import storage
        from ml_persistence.ui import data

        t0 = time.perf_counter()
        reader = storage.engine(params["db"]).reader(params["db"], create=False)
        t1 = time.perf_counter()
        s = data.series(reader, params["experiment"], "loss", "step", POINTS_ASKED)
        t2 = time.perf_counter()
        warm = sorted(_timed(lambda: data.series(reader, params["experiment"], "loss", "step", POINTS_ASKED))
                      for _ in range(3))
        reader.close()
        return {"ok": True, "connect_s": t1 - t0, "cold_s": t2 - t1, "warm_s": statistics.median(warm),
                "points": len(s["xs"]), "total": s["total"]}
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the UI is being refactored
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


CHILDREN = {"copy": child_copy, "fill": child_fill, "series": child_series}


def run_child(role: str, params_json: str) -> int:
    result = CHILDREN[role](json.loads(params_json))
    result["process_cpu_s"] = time.process_time()
    _say_child("result", result)
    return 0


# -- 1, 2, 4. ingest ---------------------------------------------------------------------------


def one_ingest(tmp: str, admin: str, engine: str, mode: str, trainers: int, calls: int, warmup: int) -> dict[str, Any]:
    """``trainers`` processes, ``calls`` calls each; wall time from the go barrier to the last flush()."""
    label = f"{'pg' if engine == 'postgresql' else 'sqlite'}_{mode}_{trainers}"
    started = server_started(admin)
    database = Database(engine, admin, tmp, label)
    db = database.db
    agent: Optional[AgentProc] = None
    children: list[Child] = []
    try:
        if mode == "agent":
            agent = AgentProc(tmp, db, label).start()
        else:
            ensure_schema(db)
        where = {"agent": agent.url} if agent else {"db": db}
        children = [Child("ingest", **where, calls=calls, warmup=warmup, name=f"{label}_{k}") for k in range(trainers)]
        for c in children:
            c.wait_line("ready")
        time.sleep(0.2)  # let the warm-up acknowledgements settle
        watch = TreeWatch(agent, children)
        pg0 = pg_cpu_s()
        t0 = time.time()
        for c in children:
            c.send("go")
        results = [c.result() for c in children]
        t_end = max(r["t_done"] for r in results)
        pg1 = pg_cpu_s()
        agent_cpu = watch.agent_cpu()
        others = watch.others_cpus(sum(r["process_cpu_s"] for r in results))
        rows = count_rows(db)  # everything flushed: it must all be there (the agent still runs)
        if agent:
            agent.stop()
    finally:
        for c in children:
            c.kill()
        if agent:
            agent.kill()
        database.drop()
    elapsed = t_end - t0
    pg_cpu = (pg1 - pg0) if pg0 is not None and pg1 is not None else None
    if others is not None and pg_cpu is not None:
        others = max(0.0, others - pg_cpu / max(elapsed, 1e-9))
    expected = trainers * (calls + warmup) * 4
    return {
        "engine": engine, "mode": mode, "trainers": trainers, "calls_per_trainer": calls,
        "points": trainers * calls * 4, "elapsed_s": elapsed, "points_per_s": trainers * calls * 4 / elapsed,
        "last_log_call_s": max(r["t_logged"] for r in results) - t0,
        "trainer_cpu_s": sum(r["cpu_s"] for r in results), "agent_cpu_s": agent_cpu, "server_cpu_s": pg_cpu,
        "rows_in_db": rows, "rows_expected": expected, "rows_ok": rows == expected,
        "dropped": sum(r["dropped"] or 0 for r in results), "lost": sum(r["lost"] or 0 for r in results),
        "spilled": sum(r["spilled"] or 0 for r in results), "others_cpus": others,
        "server_restarted": engine == "postgresql" and server_started(admin) != started,
    }


def say_ingest(r: dict[str, Any]) -> None:
    cpu = f"trainers CPU {r['trainer_cpu_s']:5.1f} s"
    if r["agent_cpu_s"] is not None:
        cpu += f", agent {r['agent_cpu_s']:5.1f} s"
    if r["server_cpu_s"] is not None and r["engine"] == "postgresql":
        cpu += f", PostgreSQL server {r['server_cpu_s']:5.1f} s"
    say(f"  {r['mode']:<6} {r['trainers']:>2} x {fmt_int(r['calls_per_trainer']):>7} calls | "
        f"{fmt_int(r['points_per_s']):>9} pts/s | {r['elapsed_s']:6.2f} s (last log call at {r['last_log_call_s']:5.2f} s)"
        f" | {cpu} | rows {fmt_int(r['rows_in_db'])}"
        + ("" if r["rows_ok"] else f" != expected {fmt_int(r['rows_expected'])} <-- MISMATCH")
        + (f" spilled {fmt_int(r['spilled'])}" if r["spilled"] else "")
        + (f" dropped {r['dropped']}" if r["dropped"] else "") + (f" lost {r['lost']}" if r["lost"] else "")
        + (f"  (noisy: others used {r['others_cpus']:.2f} CPU)" if (r["others_cpus"] or 0) > bench_agent.NOISY_CPUS else "")
        + restart_note(r))


def bench_ingest(tmp: str, admin: str, engine: str, mode: str, total: int, warmup: int,
                 counts: Sequence[int]) -> list[dict[str, Any]]:
    if mode == "agent":
        say("  the agent: python -m agent --db URL --listen unix://... (agent.cli:main, ml-persistence-agent's entry "
            "point), one per run; stopped with SIGTERM after the count (must drain and exit 0)")
    runs = []
    for k in counts:
        try:
            r = retried(lambda: one_ingest(tmp, admin, engine, mode, k, total // k, warmup), f"{engine} {mode} {k}")
        except Exception as exc:  # noqa: BLE001 - a library path being refactored: say what failed, go on
            r = failed(f"{engine} {mode} {k} trainers", exc)
            r.update({"engine": engine, "mode": mode, "trainers": k})
        else:
            say_ingest(r)
        runs.append(r)
    return runs


def retried(run: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    """Run once more if the first attempt fails (other sessions restart this shared server at times)."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001
        say(f"  {what}: failed ({type(exc).__name__}: {display(str(exc)).splitlines()[0] if str(exc) else ''}); "
            "retrying once in a fresh database")
    r = run()
    r["retried"] = True
    return r


def failed(what: str, exc: BaseException) -> dict[str, Any]:
    text = display(f"{type(exc).__name__}: {exc}")
    say(f"  FAILED: {what}: " + text.strip().replace("\n", "\n    "))
    return {"failed": text}


# -- 3. COPY ceiling ---------------------------------------------------------------------------


def one_copy(admin: str, processes: int, rows: int) -> dict[str, Any]:
    started = server_started(admin)
    database = Database("postgresql", admin, "", f"copy_{processes}")
    children: list[Child] = []
    try:
        ensure_schema(database.db)
        share = rows // processes
        children = [OwnChild("copy", url=database.db, rows=share, first=k * share) for k in range(processes)]
        for c in children:
            c.wait_line("ready")
        pg0 = pg_cpu_s()
        t0 = time.time()
        for c in children:
            c.send("go")
        results = [c.result() for c in children]
        elapsed = max(r["t_done"] for r in results) - t0
        pg1 = pg_cpu_s()
        in_db = count_rows(database.db)
    finally:
        for c in children:
            c.kill()
        database.drop()
    done = sum(r["rows"] for r in results)
    return {"processes": processes, "rows": done, "elapsed_s": elapsed, "rows_per_s": done / elapsed,
            "client_cpu_s": sum(r["process_cpu_s"] for r in results),
            "server_cpu_s": (pg1 - pg0) if pg0 is not None and pg1 is not None else None,
            "rows_in_db": in_db, "rows_ok": in_db == done, "server_restarted": server_started(admin) != started}


def bench_copy(admin: str, rows: int) -> dict[str, Any]:
    _, _, source = _copy_statement()
    say(f"  psycopg binary COPY of {fmt_int(rows)} pre-built rows ({BATCH} per transaction) into the library's "
        f"indexed metrics table; statement and types from {source}")
    out: dict[str, Any] = {"runs": []}
    for k in (1, 2):
        try:
            r = retried(lambda: one_copy(admin, k, rows), f"COPY, {k} processes")
        except Exception as exc:  # noqa: BLE001
            out["runs"].append({**failed(f"COPY, {k} processes", exc), "processes": k})
            continue
        out["runs"].append(r)
        say(f"  {k} process{'es' if k > 1 else '  '} | {fmt_int(r['rows_per_s']):>9} rows/s | {r['elapsed_s']:5.2f} s | "
            f"client CPU {r['client_cpu_s']:4.1f} s, PostgreSQL server {r['server_cpu_s'] or 0:4.1f} s | "
            f"rows {fmt_int(r['rows_in_db'])}{'' if r['rows_ok'] else ' <-- MISMATCH'}{restart_note(r)}")
    done = [r for r in out["runs"] if "failed" not in r]
    if not done:
        return out
    best = max(done, key=lambda r: r["rows_per_s"])
    out["ceiling_rows_per_s"] = best["rows_per_s"]
    out["ceiling_from"] = f"{best['processes']} process{'es' if best['processes'] > 1 else ''}"
    say(f"  ceiling: {fmt_int(best['rows_per_s'])} rows/s (the {out['ceiling_from']} run)")
    return out


# -- 5. latency, with the connection stalled ---------------------------------------------------


class Relay:
    """A TCP relay to the server that can stop forwarding (hold) and resume (release)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.open = threading.Event()
        self.open.set()
        self.held_bytes = 0  # bytes that arrived from the client while held
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:  # the server is down (restarted by someone else): the client sees a closed connection
                client.close()
                continue
            self.sockets += [client, upstream]
            for a, b, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                self.open.wait()
                data = src.recv(65536)
                if not data:
                    break
                if upstream and not self.open.is_set():
                    self.held_bytes += len(data)
                self.open.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.open.set()
        for s in self.sockets:
            s.close()


def one_latency(tmp: str, admin: str, engine: str, calls: int, warmup: int, stalled: bool) -> dict[str, Any]:
    label = f"lat_{'pg' if engine == 'postgresql' else 'sqlite'}{'_stalled' if stalled else ''}"
    started = server_started(admin)
    database = Database(engine, admin, tmp, label)
    relay = None
    child = None
    try:
        db = database.db
        ensure_schema(db)
        if stalled:
            parts = urlsplit(db)
            relay = Relay(parts.hostname or "127.0.0.1", parts.port or 5432)
            db = with_address(db, "127.0.0.1", relay.port)
        child = Child("latency", db=db, calls=calls, warmup=warmup, name=label)
        child.wait_line("ready")
        if relay:
            relay.open.clear()  # from here to the end of the timed loop nothing reaches the server
        child.send("go")
        child.wait_line("logged", bench_agent.CHILD_TIMEOUT)
        committed_meanwhile = count_rows(database.db) - 4 * warmup if relay else None
        if relay:
            relay.open.set()
        r = child.result()
        rows = count_rows(database.db)
    finally:
        if child:
            child.kill()
        if relay:
            relay.close()
        database.drop()
    r.update({"engine": engine, "stalled": stalled, "rows_in_db": rows, "rows_expected": 4 * (calls + warmup),
              "rows_ok": rows == 4 * (calls + warmup), "committed_during_loop": committed_meanwhile,
              "bytes_held": relay.held_bytes if relay else None,
              "server_restarted": engine == "postgresql" and server_started(admin) != started})
    return r


def bench_latency(tmp: str, admin: str, calls: int, warmup: int) -> dict[str, Any]:
    say(f"  {fmt_int(calls)} timed log_metrics_batch(4 metrics) calls in a tight loop after {fmt_int(warmup)} warm-up "
        "calls (flushed), one trainer process; per-call perf_counter_ns (bench_core's method)")
    out = {}
    for key, engine, stalled in (("postgresql", "postgresql", False), ("postgresql_stalled", "postgresql", True),
                                 ("sqlite", "sqlite", False)):
        try:
            r = retried(lambda: one_latency(tmp, admin, engine, calls, warmup, stalled), f"latency {key}")
        except Exception as exc:  # noqa: BLE001
            out[key] = failed(f"latency {key}", exc)
            continue
        out[key] = r
        label = {"postgresql": "PostgreSQL", "postgresql_stalled": "PostgreSQL, connection stalled",
                 "sqlite": "SQLite"}[key]
        say(f"  {label:<31} p50 {r['p50_us']:5.2f} | p99 {r['p99_us']:6.2f} | p99.9 {r['p999_us']:7.2f} | "
            f"max {r['max_us']:8,.0f} us | loop {r['log_loop_s']:5.2f} s, then flush {r['flush_s']:5.2f} s"
            + (f" | rows committed during the loop: {fmt_int(r['committed_during_loop'])}, "
               f"{fmt_int(r['bytes_held'])} bytes held at the relay" if stalled else "")
            + ("" if r["rows_ok"] else f" | rows {r['rows_in_db']} != {r['rows_expected']} <-- MISMATCH")
            + restart_note(r))
    return out


# -- 6. the UI's first chart -------------------------------------------------------------------


def one_ui(tmp: str, admin: str, engine: str, points: int) -> dict[str, Any]:
    from bench_ui import Server

    database = Database(engine, admin, tmp, f"ui_{'pg' if engine == 'postgresql' else 'sqlite'}")
    out: dict[str, Any] = {"engine": engine, "points": points}
    started = server_started(admin)
    try:
        db = database.db
        ensure_schema(db)
        fill = OwnChild("fill", db=db, points=points).result()
        exp = out["experiment"] = fill["experiment"]
        out["fill_s"] = fill["seconds"]
        out["rows_in_db"] = count_rows(db)
        path = f"/api/experiments/{exp}/metric?name=loss&x=step&points={POINTS_ASKED}"
        try:
            server = Server(db)
        except Exception as exc:  # noqa: BLE001 - the UI is being refactored: fall back, say why
            text = display(str(exc))
            out["ui_error"] = text
            out["ui_error_last_line"] = [x for x in text.strip().splitlines() if x.strip()][-1] if text.strip() else ""
        else:
            try:
                cold, body = server.get(path)  # the fresh server's very first request
                payload = json.loads(body)
                run_cold, _ = server.get(f"/api/experiments/{exp}")
                warm = statistics.median(server.get(path)[0] for _ in range(3))
            finally:
                server.stop()
            out.update({"method": "http", "cold_s": cold, "warm_s": warm, "run_json_s": run_cold,
                        "returned_points": len(payload["xs"]), "total": payload["total"], "bytes": len(body)})
            return out
        r = OwnChild("series", db=db, experiment=exp).result()
        if r["ok"]:
            out.update({"method": "ui.data.series on a Reader", "cold_s": r["cold_s"], "warm_s": r["warm_s"],
                        "connect_s": r["connect_s"], "returned_points": r["points"], "total": r["total"]})
        else:
            out.update({"method": "failed", "series_error": display(r["error"]), "series_traceback": display(r["traceback"])})
        return out
    finally:
        out["server_restarted"] = engine == "postgresql" and server_started(admin) != started
        database.drop()


def bench_ui(tmp: str, admin: str, points: int) -> dict[str, Any]:
    say(f"  one experiment, metric 'loss' with {fmt_int(points)} steps (log_metric, one process); then the run "
        f"page's first chart, GET /api/experiments/ID/metric?name=loss&x=step&points={POINTS_ASKED}, as the first "
        "request of a fresh `ml-persistence ui --port 0` (token from its printed URL, sent as a Bearer header)")
    out = {}
    for engine in ("postgresql", "sqlite"):
        try:
            r = one_ui(tmp, admin, engine, points)
        except Exception as exc:  # noqa: BLE001
            out[engine] = failed(f"ui {engine}", exc)
            continue
        out[engine] = r
        name = "PostgreSQL" if engine == "postgresql" else "SQLite"
        head = f"  {name:<10} filled in {r['fill_s']:5.1f} s ({fmt_int(r['rows_in_db'])} rows)"
        if "ui_error" in r:
            say(f"{head} | the UI did not start: {r['ui_error_last_line']}")
            head = " " * 12 + " instead"
        if r["method"] == "failed":
            say(f"{head} | ui.data.series on a Reader failed too: {r['series_error']}")
        else:
            via = "HTTP" if r["method"] == "http" else "ml_persistence.ui.data.series(Reader, ...)"
            say(f"{head} | {via}: cold {1000 * r['cold_s']:7.1f} ms, warm {1000 * r['warm_s']:7.1f} ms"
                + (f", run JSON {1000 * r['run_json_s']:6.1f} ms" if "run_json_s" in r else "")
                + f" | {r['returned_points']} points of {fmt_int(r['total'])}" + restart_note(r))
    return out


# -- main --------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("ML_PERSISTENCE_TEST_POSTGRES"),
                   help="PostgreSQL server URL with CREATEDB (default $ML_PERSISTENCE_TEST_POSTGRES)")
    p.add_argument("--quick", action="store_true", help="small smoke run (~1 minute)")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write the figures as JSON to PATH, or to stdout (the text report then goes to stderr)")
    p.add_argument("--only", help="comma-separated subset of: " + ", ".join(SCENARIOS))
    p.add_argument("--tmpdir", help="directory for SQLite files and sockets (default: a fresh one under /tmp)")
    p.add_argument("--ingest-calls", type=int, help="calls per ingest run, split over the trainers (default 400k; quick 60k)")
    p.add_argument("--warmup", type=int, help="warm-up calls per trainer (default 20k; quick 3k)")
    p.add_argument("--copy-rows", type=int, help="rows per COPY ceiling run (default 1.6M; quick 200k)")
    p.add_argument("--calls", type=int, help="timed calls of the latency trainer (default 200k; quick 50k)")
    p.add_argument("--ui-points", type=int, help="points of the UI's metric (default 1M; quick 200k)")
    p.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a._child:
        return run_child(*a._child)
    if not a.url:
        p.error("give --url or set ML_PERSISTENCE_TEST_POSTGRES")
    q = a.quick
    total = a.ingest_calls or (60_000 if q else 400_000)
    warmup = a.warmup or (3_000 if q else 20_000)
    copy_rows = a.copy_rows or (200_000 if q else 1_600_000)
    calls = a.calls or (50_000 if q else 200_000)
    ui_points = a.ui_points or (200_000 if q else 1_000_000)
    selected = set(SCENARIOS)
    if a.only:
        selected = {x.strip() for x in a.only.split(",") if x.strip()}
        if selected - set(SCENARIOS):
            p.error(f"unknown scenario(s) {', '.join(sorted(selected - set(SCENARIOS)))}; choose from {', '.join(SCENARIOS)}")
    if a.json == "-":
        bench_core._human = sys.stderr

    tmp = a.tmpdir or tempfile.mkdtemp(prefix="mlp-bench-pg-", dir="/tmp")  # short: AF_UNIX paths
    os.makedirs(tmp, exist_ok=True)
    started = time.perf_counter()
    server = server_facts(a.url)
    load = os.getloadavg()
    figures: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "cpus": os.cpu_count(),
                    "platform": platform.platform(), "ml_persistence": ml_persistence.__version__,
                    "psycopg": psycopg.__version__, "loadavg_at_start": load},
        "postgresql": {**server, "url": display(a.url)},
        "mode": "quick" if q else "full",
    }
    say(f"ml_persistence {ml_persistence.__version__} PostgreSQL benchmark ({figures['mode']}) -- Python "
        f"{platform.python_version()}, psycopg {psycopg.__version__}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs")
    say(f"PostgreSQL {server['version']} at {display(a.url)} -- "
        + ("ON THIS SAME MACHINE: trainers, agent and server share its CPUs" if server["same_machine"]
           else "on another host")
        + f"; synchronous_commit={server['synchronous_commit']}, fsync={server['fsync']}, "
        f"shared_buffers={server['shared_buffers']}; a fresh scratch database per scenario")
    say(f"SQLite files and sockets in {tmp}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    say(f"ingest: {fmt_int(total)} log_metrics_batch calls (4 metrics) per run, split over the trainers, "
        f"+{fmt_int(warmup)} warm-up calls each (flushed before the start barrier); pts/s = timed points / "
        "(barrier -> last flush() returned); rows counted afterwards must equal all points logged")
    copy = None
    ingest: dict[str, list[dict[str, Any]]] = {}
    lat = ui = None
    try:
        if "copy" in selected:
            header("3. Ceiling: raw binary COPY into the indexed metrics table (PostgreSQL)")
            copy = figures["copy"] = bench_copy(a.url, copy_rows)
        for key, engine, mode, title in (
                ("direct", "postgresql", "direct", "1. PostgreSQL, trainers writing directly: ExperimentTracker(URL)"),
                ("agent", "postgresql", "agent", "2. PostgreSQL through the agent: ml-persistence-agent --db URL"),
                ("sqlite", "sqlite", "direct", "4. SQLite, trainers writing directly (one file), for comparison")):
            if key in selected:
                header(title)
                ingest[key] = figures[key] = bench_ingest(tmp, a.url, engine, mode, total, warmup, (1, 8))
        if "latency" in selected:
            header("5. log_metrics_batch per-call latency in the training thread")
            lat = figures["latency"] = bench_latency(tmp, a.url, calls, warmup)
        if "ui" in selected:
            header(f"6. The UI's first chart of a {fmt_int(ui_points)}-point metric")
            ui = figures["ui"] = bench_ui(tmp, a.url, ui_points)
    finally:
        if not a.tmpdir:
            shutil.rmtree(tmp, ignore_errors=True)

    rows: list[tuple[str, str, str, Optional[bool]]] = []
    names = {"direct": "PostgreSQL direct", "agent": "PostgreSQL via agent", "sqlite": "SQLite direct"}
    for key in ("direct", "agent", "sqlite"):
        for r in ingest.get(key, []):
            label = f"{names[key]}, {r['trainers']} trainer{'s' if r['trainers'] > 1 else ''}"
            rows.append((label, "FAILED" if "failed" in r else f"{fmt_int(r['points_per_s'])} pts/s", "-", None))
    if copy:
        for r in copy["runs"]:
            rows.append((f"binary COPY ceiling, {r['processes']} process{'es' if r['processes'] > 1 else ''}",
                         "FAILED" if "failed" in r else f"{fmt_int(r['rows_per_s'])} rows/s", "-", None))
        eight = [r for r in ingest.get("direct", []) if r["trainers"] == 8 and "failed" not in r]
        if eight and "ceiling_rows_per_s" in copy:
            ratio = eight[0]["points_per_s"] / copy["ceiling_rows_per_s"]
            figures["ratio_direct8_to_ceiling"] = ratio
            rows.append((f"PG direct 8 trainers / ceiling ({copy['ceiling_from']})", f"{100 * ratio:.0f}%",
                         f">= {100 * GOAL:.0f}%", ratio >= GOAL))
    checked = [r for rs in ingest.values() for r in rs if "failed" not in r]
    checked += [r for r in (copy or {}).get("runs", []) if "failed" not in r]
    checked += [r for r in (lat or {}).values() if "failed" not in r]
    if checked:
        bad = [r for r in checked if not r["rows_ok"]]
        rows.append(("rows in db == rows written (every run)", "yes" if not bad else f"NO ({len(bad)} runs)", "yes", not bad))
    if lat:
        for key, label in (("postgresql", "PostgreSQL"), ("postgresql_stalled", "PostgreSQL, connection stalled"),
                           ("sqlite", "SQLite")):
            r = lat.get(key, {})
            rows.append((f"log_metrics_batch p50 / p99, {label}",
                         "FAILED" if "p50_us" not in r else f"{r['p50_us']:.2f} / {r['p99_us']:.2f} us", "-", None))
        s = lat.get("postgresql_stalled", {})
        if "p50_us" in s:
            ok = s["committed_during_loop"] == 0 and s["rows_ok"]
            rows.append(("log call touches the network", "no" if ok else "UNPROVEN",
                         "no", ok))
    if ui:
        for engine, label in (("postgresql", "PostgreSQL"), ("sqlite", "SQLite")):
            r = ui.get(engine, {})
            how = {"http": "HTTP", "ui.data.series on a Reader": "ui.data.series"}.get(r.get("method"), "")
            value = (f"{1000 * r['cold_s']:.0f} ms cold, {1000 * r['warm_s']:.0f} ms warm ({how})"
                     if "cold_s" in r else "FAILED")
            rows.append((f"UI first chart, {fmt_int(ui_points)} pts, {label}", value, "-", None))
    every = [r for rs in ingest.values() for r in rs] + (copy or {}).get("runs", []) + list((lat or {}).values())
    every += list((ui or {}).values())
    restarted = sum(1 for r in every if r.get("server_restarted"))
    figures["runs_with_server_restart"] = restarted
    rows.append(("runs during which PostgreSQL was restarted", str(restarted), "0", restarted == 0))
    header("Summary")
    summary_table(rows)
    if copy and "ratio_direct8_to_ceiling" in figures:
        say(f"\n  8 trainers writing directly reach {100 * figures['ratio_direct8_to_ceiling']:.0f}% of the raw COPY "
            f"ceiling (goal >= {100 * GOAL:.0f}%); PostgreSQL shares this machine's {os.cpu_count()} CPUs with the trainers.")
    if lat and "p50_us" in lat.get("postgresql_stalled", {}):
        s = lat["postgresql_stalled"]
        say(f"  The log call never touches the network: it only queues; the tracker's writer thread does the I/O. "
            f"With the database connection stalled for the whole timed loop, {fmt_int(s['calls'])} calls took "
            f"p50 {s['p50_us']:.2f} us / p99 {s['p99_us']:.2f} us, {fmt_int(s['committed_during_loop'])} rows were "
            f"committed meanwhile, and all {fmt_int(s['rows_in_db'])} arrived once it resumed.")
    return write_figures(figures, rows, started, a.json)


if __name__ == "__main__":
    sys.exit(main())
