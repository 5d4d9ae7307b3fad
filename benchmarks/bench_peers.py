#!/usr/bin/env python3
"""The same 4-metric logging workload through ml_persistence and the trackers people would otherwise pick.

    python benchmarks/bench_peers.py --install-only           # build or reuse the venvs (no timing)
    flock /work/notes/bench.lock python benchmarks/bench_peers.py   # the measured run (~4 min)
    python benchmarks/bench_peers.py --calls 20000 --only mlflow-async,wandb
    python benchmarks/bench_peers.py --json out.json          # figures as JSON too ('-' for stdout)
    python benchmarks/bench_peers.py --fresh                  # rebuild every venv

Trackers: ml_persistence (the reference), MLflow on its SQLite store with synchronous and with
asynchronous logging, trackio (local), W&B offline, tensorboardX, Aim. Each one gets a venv of its
own under --cache (default ~/.cache/ml_persistence-bench-peers), installed from the package index
with pip and reused on the next run; ml_persistence's venv is a pip install of this checkout's
HEAD commit (`git archive`, so uncommitted edits are not measured; --mlp-python runs another
interpreter instead, e.g. the repo's .venv for the working tree).

Each tracker runs in a child process (a small script run by its venv's python, reporting JSON on
stdout), in a fresh directory, with HOME pointed there, telemetry and error reporting turned off
by each project's own settings, and, where `unshare` works (root on Linux), in a network namespace
of its own with only loopback up, so nothing can leave the machine. The child:

1. imports the tracker and starts a run ("start s": import + init, not counted below);
2. calls the tracker's log function `--calls` times in a tight loop, one call per step with the
   same 4 metrics (MLflow `log_metrics`, trackio `log`, W&B `run.log`, Aim `run.track` of a dict,
   tensorboardX 4 x `add_scalar`, ml_persistence `log_metrics_batch`), timing each call;
   a tracker still looping after --budget seconds stops there, and the points it did log count;
3. finishes the run (`end_run`, `finish`, `close`, `end_experiment`): "finish s";
4. reads its own peak RSS (VmHWM), then checks that the data is there (row counts in the SQLite
   files, record counts in the event/transaction files, Aim's reader API).

Committed points/s = points logged / time from the first log call until the finish returned.
"RSS+helpers" is the peak of the summed RSS of the child and its descendants (W&B's wandb-core,
a writer process), sampled every 50 ms by this script until the child reports it is done.
Ratios are tracker / ml_persistence for every column (for points/s, below 1 means slower).
Background system-metrics samplers are off where a tracker has them (W&B stats, trackio CPU/GPU,
Aim system tracking, Aim terminal capture), so every tracker does only the metric logging.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path.home() / ".cache" / "ml_persistence-bench-peers"
REFERENCE = "ml_persistence"

# -- the child harness: stdlib only, runs in each tracker's venv ------------------------------------

HARNESS = r'''
import json, math, os, sys, time, traceback
from importlib import metadata

ARGS = json.loads(sys.argv[1])


def percentile(ordered, q):
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return None
    k = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def peak_rss_mib():
    """VmHWM of this process, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def versions(names):
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def metrics_for(step):
    return {"train_loss": 1.0 / (step + 1), "train_acc": (step % 1000) / 1000.0,
            "lr": 3e-4, "grad_norm": (step % 97) / 7.0}


def main():
    calls, budget_s, workdir = ARGS["calls"], ARGS["budget_s"], ARGS["workdir"]
    import sqlite3
    report = {"versions": versions(PACKAGES), "python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version}
    try:
        t0 = time.perf_counter()
        log = start(workdir, ARGS.get("options", {}))
        report["start_s"] = time.perf_counter() - t0
        latencies = [0] * calls
        clock = time.perf_counter_ns
        first = clock()
        deadline = first + int(budget_s * 1e9)
        done = 0
        for step in range(calls):
            values = metrics_for(step)
            t = clock()
            log(step, values)
            latencies[step] = clock() - t
            done += 1
            if t > deadline:
                break
        loop_end = clock()
        report["extra"] = before_finish()
        finish()
        committed = clock()
        report["peak_rss_mib"] = peak_rss_mib()
        with open(ARGS["marker"], "w") as f:
            f.write("measured\n")
        ordered = sorted(latencies[:done])
        points = done * 4
        report.update(
            calls=done, points=points, capped=done < calls,
            p50_us=percentile(ordered, 0.50) / 1000, p99_us=percentile(ordered, 0.99) / 1000,
            p999_us=percentile(ordered, 0.999) / 1000, max_us=ordered[-1] / 1000,
            loop_s=(loop_end - first) / 1e9, finish_s=(committed - loop_end) / 1e9,
            committed_points_per_s=points / ((committed - first) / 1e9),
        )
        report["verify"] = verify(workdir, done)
        report["ok"] = True
    except BaseException as exc:  # report any failure as data, the parent goes on with the others
        report["ok"] = False
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()[-3000:]
    sys.stdout.flush()
    os.write(ARGS["result_fd"], (json.dumps(report) + "\n").encode())
    os._exit(0)


def before_finish():
    return {}
'''

# -- one adapter per tracker: PACKAGES, start() -> log(step, metrics), finish(), verify() ---------

ADAPTER_MLP = r'''
PACKAGES = ["ml_persistence", "msgspec", "aiosqlite", "anyio"]


def start(workdir, options):
    global tracker, experiment_id, db_path
    from ml_persistence import ExperimentTracker
    db_path = os.path.join(workdir, "ml_experiments.db")
    tracker = ExperimentTracker(db_path)
    experiment_id = tracker.start_experiment("bench_peers")
    log_batch = tracker.log_metrics_batch
    return lambda step, values: log_batch(values, step=step)


def before_finish():
    status = tracker.status()
    return {"mode": status.get("mode"), "writer": status.get("writer", "thread (no 'writer' key)")}


def finish():
    tracker.end_experiment("completed")
    tracker.close()


def verify(workdir, calls):
    import sqlite3
    con = sqlite3.connect(db_path)
    rows = con.execute("SELECT count(*) FROM metrics WHERE experiment_id = ?", (experiment_id,)).fetchone()[0]
    con.close()
    return {"expected": calls * 4, "found": rows, "how": "rows in the metrics table"}
'''

ADAPTER_MLFLOW = r'''
PACKAGES = ["mlflow", "mlflow-skinny", "sqlalchemy", "alembic"]


def start(workdir, options):
    global mlflow, run_id, db_path, asynchronous
    import mlflow
    asynchronous = options["async"]
    db_path = os.path.join(workdir, "mlflow.db")
    mlflow.set_tracking_uri("sqlite:///" + db_path)
    mlflow.set_experiment("bench_peers")
    run_id = mlflow.start_run().info.run_id
    log_metrics = mlflow.log_metrics
    synchronous = not asynchronous
    return lambda step, values: log_metrics(values, step=step, synchronous=synchronous)


def finish():
    if asynchronous:
        mlflow.flush_async_logging()
    mlflow.end_run()


def verify(workdir, calls):
    import sqlite3
    con = sqlite3.connect(db_path)
    rows = con.execute("SELECT count(*) FROM metrics WHERE run_uuid = ?", (run_id,)).fetchone()[0]
    con.close()
    return {"expected": calls * 4, "found": rows, "how": "rows in mlflow.db's metrics table"}
'''

ADAPTER_TRACKIO = r'''
PACKAGES = ["trackio", "gradio_client", "huggingface-hub"]


def start(workdir, options):
    global trackio
    import trackio
    trackio.init(project="bench_peers", name="run", auto_log_cpu=False, auto_log_gpu=False, embed=False)
    log = trackio.log
    return lambda step, values: log(values, step=step)


def finish():
    trackio.finish()


def verify(workdir, calls):
    import glob, sqlite3
    paths = glob.glob(os.path.join(os.environ["TRACKIO_DIR"], "bench_peers*.db"))
    if not paths:
        return {"expected": calls * 4, "found": 0, "how": "no trackio database file found"}
    con = sqlite3.connect(paths[0])
    rows, points = con.execute(
        "SELECT count(*), coalesce(sum((SELECT count(*) FROM json_each(m.metrics) "
        "WHERE key NOT LIKE '\\_%' ESCAPE '\\')), 0) FROM metrics m WHERE run_name = 'run'"
    ).fetchone()
    con.close()
    return {"expected": calls * 4, "found": points,
            "how": f"metric values in {os.path.basename(paths[0])}'s metrics table ({rows} rows, one a call)"}
'''

ADAPTER_WANDB = r'''
PACKAGES = ["wandb", "protobuf"]


def start(workdir, options):
    global run
    import wandb
    run = wandb.init(project="bench_peers", mode="offline", dir=workdir)
    run_log = run.log
    return lambda step, values: run_log(values, step=step)


def finish():
    run.finish()


def _records(data):
    """Yield the records of a W&B transaction log (LevelDB-style log blocks of 32 KiB)."""
    import struct
    block, header = 32768, 7
    offset, pending = 7, b""  # the file header: ident, magic, version
    while offset + header <= len(data):
        room = block - offset % block
        if room < header:
            offset += room
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, offset)
        offset += header
        chunk = data[offset:offset + length]
        offset += length
        if kind == 0 and length == 0:
            continue
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def verify(workdir, calls):
    import glob
    from wandb.proto import wandb_internal_pb2 as pb
    paths = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))
    if not paths:
        return {"expected": calls * 4, "found": 0, "how": "no .wandb file found"}
    with open(paths[0], "rb") as f:
        data = f.read()
    steps, points = 0, 0
    for raw in _records(data):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            steps += 1
            points += sum(1 for item in record.history.item
                          if not (item.key or "/".join(item.nested_key)).startswith("_"))
    return {"expected": calls * 4, "found": points,
            "how": f"history items in the offline run's .wandb file ({steps} history records, {len(data) / 2**20:.1f} MiB)"}
'''

ADAPTER_TENSORBOARDX = r'''
PACKAGES = ["tensorboardX", "protobuf", "crc32c"]


def start(workdir, options):
    global writer, logdir
    from tensorboardX import SummaryWriter
    logdir = os.path.join(workdir, "tb")
    writer = SummaryWriter(logdir)
    add_scalar = writer.add_scalar

    def log(step, values):
        for name, value in values.items():
            add_scalar(name, value, step)
    return log


def finish():
    writer.close()


def verify(workdir, calls):
    import glob, struct
    from tensorboardX.proto import event_pb2
    points = 0
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            offset += 12  # length, its masked CRC
            event = event_pb2.Event()
            event.ParseFromString(data[offset:offset + length])
            offset += length + 4  # data, its masked CRC
            points += len(event.summary.value)
    return {"expected": calls * 4, "found": points, "how": "scalar values in the event files"}
'''

ADAPTER_AIM = r'''
PACKAGES = ["aim", "aimrocks"]


def start(workdir, options):
    global run, repo_path, run_hash
    from aim import Run
    repo_path = os.path.join(workdir, "aim")
    os.makedirs(repo_path)
    run = Run(repo=repo_path, experiment="bench_peers", system_tracking_interval=None,
              log_system_params=False, capture_terminal_logs=False)
    run_hash = run.hash
    track = run.track
    return lambda step, values: track(values, step=step)


def finish():
    run.close()


def verify(workdir, calls):
    from aim import Repo
    from aim.sdk.index_manager import RepoIndexManager
    repo = Repo(repo_path)
    RepoIndexManager.get_index_manager(repo).index(run_hash)  # what `aim up` does in the background
    stored = Repo(repo_path).get_run(run_hash)
    points, names = 0, 0
    for metric in stored.metrics():
        if metric.name.startswith("__"):
            continue
        names += 1
        points += len(metric.values.values_list())
    return {"expected": calls * 4, "found": points, "how": f"values read back through aim.Repo ({names} metrics)"}
'''


@dataclass
class Tracker:
    """One line of the table: which venv, which adapter, which environment."""

    key: str
    label: str
    venv: str
    adapter: str
    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    slow: bool = False  # runs min(--calls, --slow-calls) calls: at --calls it would take many minutes


NO_TELEMETRY = {"DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "GRADIO_ANALYTICS_ENABLED": "False"}

TRACKERS = [
    Tracker("mlp", REFERENCE, "ml_persistence", ADAPTER_MLP),
    Tracker("mlflow-sync", "MLflow, sync (sqlite)", "mlflow", ADAPTER_MLFLOW, {"async": False},
            {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}, slow=True),
    Tracker("mlflow-async", "MLflow, async (sqlite)", "mlflow", ADAPTER_MLFLOW, {"async": True},
            {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ASYNC_LOGGING": "true"}, slow=True),
    Tracker("trackio", "trackio (local)", "trackio", ADAPTER_TRACKIO),
    Tracker("wandb", "W&B offline", "wandb", ADAPTER_WANDB,
            env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                 "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
                 "WANDB__DISABLE_STATS": "true", "WANDB_ERROR_REPORTING": "false"}),
    Tracker("tensorboardx", "tensorboardX", "tensorboardx", ADAPTER_TENSORBOARDX),
    Tracker("tensorboardx-crc32c", "tensorboardX + crc32c", "tensorboardx-crc32c", ADAPTER_TENSORBOARDX),
    Tracker("aim", "Aim", "aim", ADAPTER_AIM, env={"AIM_UI_TELEMETRY_ENABLED": "0"}),
]

VENV_REQUIREMENTS = {
    "mlflow": ["mlflow"],
    "trackio": ["trackio"],
    "wandb": ["wandb"],
    "tensorboardx": ["tensorboardX"],
    "tensorboardx-crc32c": ["tensorboardX", "crc32c"],  # its optional native checksum; without it, pure Python
    "aim": ["aim"],
}

# -- venvs ------------------------------------------------------------------------------------------


class InstallError(Exception):
    """A venv could not be built; the message says why."""


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if "is ignored: it is neither" not in line]
    return " | ".join(kept[-lines:])


def _pip(python: Path, args: list[str]) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise InstallError(f"pip install {' '.join(args)} failed ({proc.returncode}): {_tail(proc.stderr)}")


def _build_venv(target: Path, base_python: str, fresh: bool, wanted: dict[str, Any]) -> Path:
    """Create or reuse a venv whose marker file records what it was built for."""
    marker = target / ".bench-peers.json"
    python = target / "bin" / "python"
    if fresh and target.exists():
        shutil.rmtree(target)
    if marker.exists() and python.exists():
        try:
            if json.loads(marker.read_text()) == wanted:
                return python
        except ValueError:
            pass
    if not python.exists():
        proc = subprocess.run([base_python, "-m", "venv", str(target)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise InstallError(f"python -m venv failed: {_tail(proc.stderr)}")
    marker.unlink(missing_ok=True)
    return python


def ensure_peer_venv(cache: Path, name: str, base_python: str, fresh: bool) -> Path:
    """The venv of one peer, installed from the package index the first time."""
    wanted = {"requirements": VENV_REQUIREMENTS[name], "base": base_python}
    target = cache / name
    python = _build_venv(target, base_python, fresh, wanted)
    if not (target / ".bench-peers.json").exists():
        say(f"  installing {name}: pip install {' '.join(VENV_REQUIREMENTS[name])} ...")
        t0 = time.perf_counter()
        _pip(python, VENV_REQUIREMENTS[name])
        (target / ".bench-peers.json").write_text(json.dumps(wanted))
        say(f"  installed {name} in {time.perf_counter() - t0:.0f} s")
    return python


def repo_head() -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InstallError(f"{REPO} is not a git checkout: {_tail(proc.stderr)}")
    return proc.stdout.strip()


def ensure_mlp_venv(cache: Path, base_python: str, fresh: bool) -> Path:
    """ml_persistence's venv: a pip install of the HEAD commit of this checkout."""
    commit = repo_head()
    wanted = {"commit": commit, "base": base_python}
    target = cache / "ml_persistence"
    python = _build_venv(target, base_python, fresh, wanted)
    if not (target / ".bench-peers.json").exists():
        say(f"  installing ml_persistence at {commit[:10]} (git archive HEAD) ...")
        with tempfile.TemporaryDirectory(prefix="mlp-src-") as src:
            archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
            _pip(python, ["--force-reinstall", "--no-deps", src])
            _pip(python, [src])  # its dependencies, if any are missing
        (target / ".bench-peers.json").write_text(json.dumps(wanted))
    return python


# -- running one tracker ----------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return found


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


class TreeRss:
    """Peak summed RSS of a process and its descendants, sampled until a marker file appears."""

    def __init__(self, pid: int, marker: Path, interval: float = 0.05) -> None:
        self.pid, self.marker, self.interval = pid, marker, interval
        self.peak_mib = 0.0
        self.helpers: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and not self.marker.exists():
            pids = _descendants(self.pid)
            self.helpers.update(pids[1:])
            self.peak_mib = max(self.peak_mib, sum(_rss_mib(p) for p in pids))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


NOISY_CORES = 0.15  # other processes' average CPU use above which a tracker's figures are flagged


def network_wrapper() -> list[str]:
    """A command prefix that runs the child without any network but loopback, if this host allows it."""
    if not sys.platform.startswith("linux") or not shutil.which("unshare") or not shutil.which("ip"):
        return []
    probe = subprocess.run(["unshare", "--net", "--", "sh", "-c", "ip link set lo up"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return []
    return ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def run_tracker(tracker: Tracker, python: Path, args: argparse.Namespace, netns: list[str]) -> dict[str, Any]:
    """Run one tracker's child script in a fresh directory; return its report."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-peers-{tracker.key}-", dir=args.workdir))
    try:
        script = workdir / "child.py"
        script.write_text(HARNESS + tracker.adapter + "\nmain()\n")
        home = workdir / "home"
        home.mkdir()
        marker = workdir / "measured"
        read_fd, write_fd = os.pipe()
        calls = min(args.calls, args.slow_calls) if tracker.slow else args.calls
        child_args = {"calls": calls, "budget_s": args.budget, "workdir": str(workdir),
                      "marker": str(marker), "options": tracker.options, "result_fd": write_fd}
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("WANDB_", "MLFLOW_", "TRACKIO_", "AIM_", "ML_PERSISTENCE_", "VIRTUAL_ENV"))}
        env.pop("PYTHONPATH", None)
        env.update(NO_TELEMETRY)
        env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"),
                   TRACKIO_DIR=str(workdir / "trackio"), PYTHONUNBUFFERED="1")
        env.update(tracker.env)
        if args.mlp_writer and tracker.key == "mlp":
            env["ML_PERSISTENCE_WRITER"] = args.mlp_writer
        command = [*netns, str(python), str(script), json.dumps(child_args)]
        t0, busy0, own0 = time.perf_counter(), busy_cpu_seconds(), own_cpu_seconds()
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(write_fd,))
        os.close(write_fd)
        sampler = TreeRss(proc.pid, marker)
        result_chunks: list[bytes] = []
        reader = threading.Thread(target=_drain, args=(read_fd, result_chunks), daemon=True)
        reader.start()
        try:
            out, err = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            sampler.stop()
            return {"ok": False, "error": f"timed out after {args.timeout:.0f} s", "stderr": _tail(err.decode(errors='replace'))}
        finally:
            sampler.stop()
            reader.join(timeout=5)
            os.close(read_fd)
        text = b"".join(result_chunks).decode(errors="replace").strip()
        if not text:
            return {"ok": False, "error": f"child exited {proc.returncode} without a report",
                    "stderr": _tail(err.decode(errors="replace"), 12)}
        report = json.loads(text.splitlines()[-1])
        report["wall_s"] = time.perf_counter() - t0
        others = busy_cpu_seconds() - busy0 - (own_cpu_seconds() - own0)
        report["others_cpu_cores"] = max(0.0, others) / report["wall_s"]
        report["requested_calls"] = calls
        if report.get("capped"):
            report["limit"] = f"stopped by --budget {args.budget:g} s"
        elif calls < args.calls:
            report["limit"] = f"--slow-calls {calls:,}"
        report["tree_peak_rss_mib"] = max(sampler.peak_mib, report.get("peak_rss_mib") or 0.0)
        report["helper_processes"] = len(sampler.helpers)
        report["stderr_tail"] = _tail(err.decode(errors="replace"), 3)
        return report
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"  kept {workdir}")


def _drain(fd: int, chunks: list[bytes]) -> None:
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        chunks.append(chunk)


# -- report -----------------------------------------------------------------------------------------

_human = sys.stdout


def say(*parts: Any) -> None:
    print(*parts, file=_human, flush=True)


def _ratio(value: Optional[float], reference: Optional[float]) -> str:
    if value is None or not reference:
        return ""
    ratio = value / reference
    return f" ({ratio:.2g}x)" if ratio < 10 else f" ({ratio:,.0f}x)"


COLUMNS = [
    ("call p50 µs", "p50_us", "{:,.2f}"),
    ("call p99 µs", "p99_us", "{:,.2f}"),
    ("committed points/s", "committed_points_per_s", "{:,.0f}"),
    ("finish s", "finish_s", "{:,.3f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:,.0f}"),
    ("RSS+helpers MiB", "tree_peak_rss_mib", "{:,.0f}"),
]


def table(results: list[tuple[Tracker, dict[str, Any]]]) -> list[str]:
    """Markdown rows: absolute value and ratio to ml_persistence in each cell."""
    reference = next((r for t, r in results if t.key == "mlp" and r.get("ok")), {})
    head = ["tracker", *[c[0] for c in COLUMNS], "points logged", "verified", "start s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tracker, result in results:
        if not result.get("ok"):
            lines.append(f"| {tracker.label} | failed: {result.get('error', '?')} |" + " |" * (len(head) - 2))
            continue
        cells = [tracker.label]
        for _, key, fmt in COLUMNS:
            value = result.get(key)
            cells.append(fmt.format(value) + _ratio(value, reference.get(key)) if value is not None else "–")
        limit = f" ({result['limit']})" if result.get("limit") else ""
        cells.append(f"{result['points']:,}{limit}")
        check = result.get("verify", {})
        mark = "yes" if check.get("found") == check.get("expected") else "**NO**"
        cells.append(f"{mark}: {check.get('found', 0):,} / {check.get('expected', 0):,}")
        cells.append(f"{result.get('start_s', 0):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    global _human
    keys = [t.key for t in TRACKERS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", "--points", dest="calls", type=int, default=100_000,
                        help="log calls of 4 metrics per tracker (default 100,000 = 400,000 points)")
    parser.add_argument("--budget", type=float, default=40.0,
                        help="seconds a tracker may spend in its log loop before it stops early (default 40)")
    parser.add_argument("--slow-calls", type=int, default=5_000,
                        help="log calls for the trackers that need milliseconds a call (MLflow; default 5,000)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a tracker's child is killed")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(keys)} (ml_persistence always runs)")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write the results as JSON to FILE ('-': stdout)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"where the venvs live (default {DEFAULT_CACHE})")
    parser.add_argument("--fresh", action="store_true", help="rebuild the venvs")
    parser.add_argument("--install-only", action="store_true", help="build or reuse the venvs, measure nothing")
    parser.add_argument("--python", default=sys.executable, help="interpreter the venvs are made from")
    parser.add_argument("--mlp-python", default=None, help="run ml_persistence with this interpreter instead of its venv")
    parser.add_argument("--mlp-writer", default=None, help="set ML_PERSISTENCE_WRITER for ml_persistence's run")
    parser.add_argument("--no-netns", action="store_true", help="do not run the children in a network namespace")
    parser.add_argument("--workdir", default=None, help="parent directory of the children's working directories")
    parser.add_argument("--keep", action="store_true", help="keep the children's working directories")
    args = parser.parse_args()
    if args.json == "-":
        _human = sys.stderr

    wanted = [k.strip() for k in args.only.split(",") if k.strip()] if args.only else keys
    unknown = sorted(set(wanted) - set(keys))
    if unknown:
        parser.error(f"unknown tracker(s) {', '.join(unknown)}; choose from {', '.join(keys)}")
    selected = [t for t in TRACKERS if t.key == "mlp" or t.key in wanted]

    say(f"bench_peers: {args.calls:,} calls x 4 metrics per tracker, budget {args.budget:.0f} s per loop, "
        f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()} ({args.python})")
    say(f"venvs under {args.cache}")
    args.cache.mkdir(parents=True, exist_ok=True)
    pythons: dict[str, Any] = {}
    for venv in dict.fromkeys(t.venv for t in selected):
        try:
            if venv == "ml_persistence":
                pythons[venv] = Path(args.mlp_python) if args.mlp_python else ensure_mlp_venv(args.cache, args.python, args.fresh)
            else:
                pythons[venv] = ensure_peer_venv(args.cache, venv, args.python, args.fresh)
        except (InstallError, subprocess.SubprocessError, OSError) as exc:
            pythons[venv] = InstallError(f"install failed: {exc}")
            say(f"  {venv}: {pythons[venv]}")
    mlp_source = args.mlp_python or "commit " + json.loads((args.cache / "ml_persistence" / ".bench-peers.json").read_text())["commit"] \
        if not isinstance(pythons.get("ml_persistence"), Exception) else "not installed"
    say(f"ml_persistence measured: {mlp_source}")
    if args.install_only:
        return 0

    netns = [] if args.no_netns else network_wrapper()
    say("network: " + ("each child in its own network namespace, loopback only" if netns
                       else "not isolated (no unshare); telemetry off by environment only"))
    results: list[tuple[Tracker, dict[str, Any]]] = []
    for tracker in selected:
        python = pythons[tracker.venv]
        if isinstance(python, Exception):
            results.append((tracker, {"ok": False, "error": str(python)}))
            continue
        say(f"-- {tracker.label} ...")
        result = run_tracker(tracker, python, args, netns)
        results.append((tracker, result))
        if result.get("ok"):
            check = result["verify"]
            say(f"   {result['points']:,} points{' (' + result['limit'] + ')' if result.get('limit') else ''}; "
                f"p50 {result['p50_us']:.2f} µs, p99 {result['p99_us']:.2f} µs; loop {result['loop_s']:.2f} s, "
                f"finish {result['finish_s']:.3f} s; {result['committed_points_per_s']:,.0f} points/s; "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB ({result['tree_peak_rss_mib']:.0f} with "
                f"{result['helper_processes']} helper process(es))")
            say(f"   verified: {check['found']:,} of {check['expected']:,} points — {check['how']}"
                + ("" if check["found"] == check["expected"] else "  ** MISMATCH **"))
            if result["others_cpu_cores"] > NOISY_CORES:
                say(f"   NOISY: other processes used {result['others_cpu_cores']:.2f} CPU on average meanwhile")
            if result.get("extra"):
                say(f"   {result['extra']}")
        else:
            say(f"   FAILED: {result.get('error')}")
            for key in ("traceback", "stderr"):
                if result.get(key):
                    say("   " + result[key].strip().replace("\n", "\n   "))

    say()
    say("Ratios are tracker / ml_persistence (for points/s, below 1x means slower).")
    for line in table(results):
        say(line)
    noisy = [f"{t.label} ({r['others_cpu_cores']:.2f})" for t, r in results
             if r.get("ok") and r["others_cpu_cores"] > NOISY_CORES]
    say("Other processes' average CPU use during each run: " + ", ".join(
        f"{t.label} {r['others_cpu_cores']:.2f}" for t, r in results if r.get("ok")))
    if noisy:
        say(f"NOISY (others used more than {NOISY_CORES} CPU): " + ", ".join(noisy))
    say()
    say("Versions:")
    for tracker, result in results:
        if result.get("versions"):
            found = ", ".join(f"{name} {version}" for name, version in result["versions"].items() if version)
            say(f"  {tracker.label}: {found} (Python {result.get('python')}, SQLite {result.get('sqlite')})")
    if args.json is not None:
        payload = {"ml_persistence": mlp_source, "calls": args.calls, "budget_s": args.budget, "network_isolated": bool(netns),
                   "results": [{"key": t.key, "label": t.label, **r} for t, r in results]}
        text = json.dumps(payload, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0 if all(r.get("ok") for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
