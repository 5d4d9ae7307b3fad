"""System metrics (issue 16): opt-in samples stored as ``system/`` metrics, stopped with the run, never in a fork.

Real runs happen in child processes that wait for the sampler's own counter (a condition polled
with a deadline, never a sleep); the GPU path runs against a fake ``pynvml`` module, as this
machine has no GPU. Timeouts only turn a hang into a failure.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import ml_persistence
from ml_persistence import ExperimentTracker, InvalidTypeError, InvalidValueError
from ml_persistence.errors import MissingDependencyError
from ml_persistence.system_metrics import THREAD_NAME, gpu, settings
from contract_helpers import GUARD, child_env, db_rows

HOST_NAMES = {
    "system/cpu_percent", "system/process_cpu_percent", "system/memory_percent", "system/memory_available_mb",
    "system/process_rss_mb", "system/disk_read_mb_s", "system/disk_write_mb_s", "system/network_sent_mb_s",
    "system/network_recv_mb_s",
}
SYSTEM = "system/%"  # LIKE pattern, bound (PostgreSQL's driver reads a literal % as a placeholder)
ENV_NAMES = (settings.ENABLE_ENV, settings.INTERVAL_ENV, "CUDA_VISIBLE_DEVICES")

# What every child script starts with: wait_for polls a condition with a deadline while doing
# a little CPU work, as a training loop would.
PRELUDE = """
import json, os, sys, threading, time
from ml_persistence import ExperimentTracker
from ml_persistence.system_metrics import THREAD_NAME

def wait_for(condition):
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            sys.exit("timed out")
        sum(range(20000))

def sampler_threads():
    return [t.name for t in threading.enumerate() if t.name == THREAD_NAME]
"""


@pytest.fixture(autouse=True)
def _no_sampling_settings(monkeypatch: pytest.MonkeyPatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(settings, "_warned", set())


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until true; fail after GUARD seconds (a hang guard, not a synchronisation device)."""
    deadline = time.monotonic() + GUARD
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def samples(db: str, experiment_id: int) -> dict[str, dict[str, float]]:
    """Return the experiment's system samples as {timestamp: {name: value}} (one event = one timestamp)."""
    found: dict[str, dict[str, float]] = {}
    for name, value, timestamp in db_rows(
        db, "SELECT metric_name, value, timestamp FROM metrics WHERE experiment_id = ? AND metric_name LIKE ?",
        (experiment_id, SYSTEM),
    ):
        found.setdefault(timestamp, {})[name] = value
    return found


def run_child(tmp_path: Path, body: str, *args: str, env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Run PRELUDE + body to completion; return the JSON object it printed last."""
    script = tmp_path / "child.py"
    script.write_text(PRELUDE + body)
    done = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env or child_env(),
                          capture_output=True, text=True, timeout=GUARD * 2, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- a real run ---------------------------------------------------------------------------------------


def test_enabled_run_stores_sane_host_samples_against_time(tmp_path: Path) -> None:
    db = str(tmp_path / "runs.db")
    out = run_child(tmp_path, """
t = ExperimentTracker(sys.argv[1], capture_environment=False)
eid = t.start_experiment("sampled", system_metrics=0.2)
sampler = t._sampler
wait_for(lambda: sampler.samples >= 3)
t.end_experiment()
print(json.dumps({"id": eid, "samples": sampler.samples, "threads": sampler_threads(), "cpus": os.cpu_count()}))
""", db)
    assert out["threads"] == []
    found = samples(db, out["id"])
    assert len(found) == out["samples"] >= 3
    for sample in found.values():
        assert set(sample) == HOST_NAMES
        assert 0 <= sample["system/cpu_percent"] <= 100
        assert 0 <= sample["system/process_cpu_percent"] <= 100 * out["cpus"]
        assert sample["system/process_rss_mb"] > 0
        assert 0 < sample["system/memory_percent"] <= 100
        assert sample["system/memory_available_mb"] > 0
        assert min(sample[n] for n in HOST_NAMES if n.endswith("_mb_s")) >= 0
    # Against time only (the UI's time axis): no step, episode or epoch; all within the run.
    assert db_rows(db, "SELECT COUNT(*) FROM metrics WHERE metric_name LIKE ? AND "
                       "(step IS NOT NULL OR episode IS NOT NULL OR epoch IS NOT NULL)", (SYSTEM,)) == [(0,)]
    (start, end), = db_rows(db, "SELECT start_time, end_time FROM experiments WHERE id = ?", (out["id"],))
    assert start <= min(found) and max(found) <= end


def test_not_enabled_means_no_thread_no_rows_and_no_psutil(tmp_path: Path) -> None:
    db = str(tmp_path / "runs.db")
    out = run_child(tmp_path, """
t = ExperimentTracker(sys.argv[1], capture_environment=False)
plain = t.start_experiment("plain")
t.log_metrics_batch({"loss": 0.5}, step=1)
threads = sampler_threads()
t.end_experiment()
refused = t.start_experiment("refused", system_metrics=False)  # False wins over the environment
threads += sampler_threads()
t.end_experiment()
print(json.dumps({"ids": [plain, refused], "threads": threads, "psutil": "psutil" in sys.modules}))
""", db, env=child_env(**{settings.ENABLE_ENV: "0"}))
    assert out["threads"] == [] and out["psutil"] is False
    assert db_rows(db, "SELECT COUNT(*) FROM metrics WHERE metric_name LIKE ?", (SYSTEM,)) == [(0,)]
    assert db_rows(db, "SELECT metric_name FROM metrics") == [("loss",)]

    out = run_child(tmp_path, """
t = ExperimentTracker(sys.argv[1], capture_environment=False)
eid = t.start_experiment("refused", system_metrics=False)
threads = sampler_threads()
t.end_experiment()
print(json.dumps({"id": eid, "threads": threads}))
""", db, env=child_env(**{settings.ENABLE_ENV: "1", settings.INTERVAL_ENV: "0.1"}))
    assert out["threads"] == [] and samples(db, out["id"]) == {}


def test_environment_variable_enables_sampling_for_a_plain_start(tmp_path: Path) -> None:
    db = str(tmp_path / "runs.db")
    out = run_child(tmp_path, """
t = ExperimentTracker(sys.argv[1], capture_environment=False)
eid = t.start_experiment("from the environment")
sampler = t._sampler
wait_for(lambda: sampler.samples >= 2)
t.end_experiment()
print(json.dumps({"id": eid, "interval": sampler.interval, "samples": sampler.samples}))
""", db, env=child_env(**{settings.ENABLE_ENV: "1", settings.INTERVAL_ENV: "0.2"}))
    assert out["interval"] == 0.2
    found = samples(db, out["id"])
    assert len(found) == out["samples"] >= 2
    assert all(set(s) == HOST_NAMES for s in found.values())


# -- stopped with the run -------------------------------------------------------------------------------


def test_end_experiment_stops_the_sampler_and_nothing_lands_after_it(any_db: str) -> None:
    t = ExperimentTracker(any_db, capture_environment=False)
    eid = t.start_experiment("sampled", system_metrics=0.1)
    sampler = t._sampler
    wait_for(lambda: sampler.samples >= 2, "two samples")
    t.end_experiment()
    assert not sampler.alive and sampler_threads() == []  # joined: nothing more can be appended
    stored = samples(any_db, eid)
    assert len(stored) == sampler.samples
    # A later run's commit is a barrier behind anything queued before it: still the same samples.
    other = t.start_experiment("not sampled")
    t.log_metric("loss", 1.0)
    t.end_experiment()
    assert samples(any_db, eid) == stored and samples(any_db, other) == {}
    assert db_rows(any_db, "SELECT COUNT(*) FROM metrics m JOIN experiments e ON e.id = m.experiment_id "
                           "WHERE m.metric_name LIKE ? AND m.timestamp > e.end_time", (SYSTEM,)) == [(0,)]


def test_another_start_close_and_the_with_block_stop_the_sampler(db_path: str) -> None:
    t = ExperimentTracker(db_path, capture_environment=False)
    t.start_experiment("first", system_metrics=0.1)
    first = t._sampler
    t.start_experiment("second", system_metrics=0.1)
    second = t._sampler
    assert not first.alive and second.alive
    t.close()
    assert not second.alive

    with ExperimentTracker(db_path, capture_environment=False) as t:
        eid = t.start_experiment("in a with block", system_metrics=0.1)
        third = t._sampler
        wait_for(lambda: third.samples >= 1, "a sample")
    assert not third.alive and sampler_threads() == []
    assert len(samples(db_path, eid)) == third.samples


def test_resume_samples_a_claimed_run_only(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    t = ExperimentTracker(db_path, capture_environment=False)
    eid = t.start_experiment("resumed")
    t.end_experiment()
    t.resume_experiment(eid, system_metrics=0.1)
    sampler = t._sampler
    wait_for(lambda: sampler.samples >= 1, "a sample")
    t.end_experiment()
    assert len(samples(db_path, eid)) == sampler.samples >= 1

    monkeypatch.setenv(settings.ENABLE_ENV, "1")
    joined = ExperimentTracker(db_path, capture_environment=False)
    joined.resume_experiment(eid, claim=False)  # another process's run: not this one's to sample
    assert joined._sampler is None and sampler_threads() == []
    with pytest.raises(InvalidValueError, match="claim=False"):
        joined.resume_experiment(eid, claim=False, system_metrics=True)


def test_sigterm_ends_the_run_promptly_with_every_sample_so_far(tmp_path: Path) -> None:
    db = str(tmp_path / "runs.db")
    (tmp_path / "child.py").write_text(PRELUDE + """
t = ExperimentTracker(sys.argv[1], capture_environment=False)
eid = t.start_experiment("killed", system_metrics=0.1)
sampler = t._sampler
wait_for(lambda: sampler.samples >= 3)
print(json.dumps({"id": eid, "samples": sampler.samples}), flush=True)
while True:  # training, until SIGTERM
    sum(range(20000))
""")
    child = subprocess.Popen([sys.executable, "child.py", db], cwd=tmp_path, env=child_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        ready = json.loads(child.stdout.readline())
        child.send_signal(signal.SIGTERM)
        child.wait(GUARD)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGTERM, child.stderr.read()
    found = samples(db, ready["id"])
    assert len(found) >= ready["samples"]
    assert all(set(s) == HOST_NAMES for s in found.values())  # no sample cut in half
    assert db_rows(db, "SELECT status FROM experiments WHERE id = ?", (ready["id"],)) == [("interrupted",)]


def test_normal_exit_with_the_sampler_running_ends_the_run(tmp_path: Path) -> None:
    db = str(tmp_path / "runs.db")
    out = run_child(tmp_path, """
t = ExperimentTracker(sys.argv[1], capture_environment=False)
quick = t.start_experiment("quick", system_metrics=0.1)
sampler = t._sampler
wait_for(lambda: sampler.samples >= 3)
slow = ExperimentTracker(sys.argv[1], capture_environment=False)
idle = slow.start_experiment("default interval", system_metrics=True)  # waiting out its 10 s when we leave
print(json.dumps({"id": quick, "idle": idle, "samples": sampler.samples}))
# no end_experiment: the exit hook ends both runs
""", db)
    assert len(samples(db, out["id"])) >= out["samples"]
    assert db_rows(db, "SELECT id, status FROM experiments ORDER BY id") == [
        (out["id"], "completed"), (out["idle"], "completed")]


def test_a_forked_child_does_not_run_the_parents_sampler(tmp_path: Path) -> None:
    db = str(tmp_path / "runs.db")
    out = run_child(tmp_path, """
from ml_persistence import system_metrics
t = ExperimentTracker(sys.argv[1], capture_environment=False)
parent_run = t.start_experiment("parent", system_metrics=0.1)
inherited = t._sampler
wait_for(lambda: inherited.samples >= 1)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    seen = {"threads": sampler_threads(), "alive": inherited.alive, "running": len(system_metrics.running())}
    seen["child_run"] = t.start_experiment("child", system_metrics=0.1)  # stops the inherited one: harmless
    own = t._sampler
    wait_for(lambda: own.samples >= 2)
    t.end_experiment()
    seen["child_samples"] = own.samples
    os.write(write, json.dumps(seen).encode())
    os._exit(0)
os.close(write)
with os.fdopen(read) as pipe:
    child = json.loads(pipe.read())
assert os.waitpid(pid, 0)[1] == 0
before = inherited.samples
wait_for(lambda: inherited.samples >= before + 2)  # the parent's sampler goes on
t.end_experiment()
print(json.dumps({"parent_run": parent_run, "parent_samples": inherited.samples, **child}))
""", db)
    assert out["threads"] == [] and out["alive"] is False and out["running"] == 0
    assert len(samples(db, out["parent_run"])) == out["parent_samples"]  # only the parent sampled its run
    assert len(samples(db, out["child_run"])) == out["child_samples"] >= 2
    statuses = dict(db_rows(db, "SELECT id, status FROM experiments"))
    assert statuses == {out["parent_run"]: "completed", out["child_run"]: "completed"}


# -- settings --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 0.05, float("nan"), float("inf")])
def test_an_unusable_interval_raises_before_anything_is_created(db_path: str, bad: float) -> None:
    t = ExperimentTracker(db_path, capture_environment=False)
    with pytest.raises(InvalidValueError, match="system_metrics"):
        t.start_experiment("bad", system_metrics=bad)
    with pytest.raises(InvalidTypeError, match="system_metrics"):
        t.start_experiment("bad", system_metrics="yes")  # type: ignore[arg-type]
    assert t.experiment_id is None and t.list_experiments() == []


def test_environment_settings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert settings.interval_for(None) is None
    assert settings.interval_for(True) == settings.DEFAULT_INTERVAL == 10.0
    assert settings.interval_for(2) == 2.0
    monkeypatch.setenv(settings.INTERVAL_ENV, "0.5")
    assert settings.interval_for(True) == 0.5 and settings.interval_for(3) == 3.0  # the argument wins
    for on in ("1", "true", "Yes", " on "):
        monkeypatch.setenv(settings.ENABLE_ENV, on)
        assert settings.interval_for(None) == 0.5
    assert settings.interval_for(False) is None
    with caplog.at_level(logging.WARNING, logger="ml_persistence"):
        monkeypatch.setenv(settings.INTERVAL_ENV, "soon")
        assert settings.interval_for(None) == settings.DEFAULT_INTERVAL
        monkeypatch.setenv(settings.ENABLE_ENV, "maybe")
        assert settings.interval_for(None) is None
        assert settings.interval_for(None) is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert "ML_PERSISTENCE_SYSTEM_METRICS_INTERVAL='soon'" in warnings[0]
    assert "ML_PERSISTENCE_SYSTEM_METRICS='maybe'" in warnings[1]


def test_without_psutil_asking_outright_raises_and_the_environment_warns_once(
    db_path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil now raises ImportError
    t = ExperimentTracker(db_path, capture_environment=False)
    with pytest.raises(MissingDependencyError, match=r"pip install 'ml_persistence\[system\]'") as raised:
        t.start_experiment("asked", system_metrics=True)
    assert isinstance(raised.value, ImportError)
    assert t.list_experiments() == []

    monkeypatch.setenv(settings.ENABLE_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="ml_persistence"):
        first = t.start_experiment("from the environment")
        second = t.start_experiment("again")
    assert t._sampler is None and sampler_threads() == []
    warnings = [r.getMessage() for r in caplog.records if "psutil" in r.getMessage()]
    assert len(warnings) == 1 and "pip install 'ml_persistence[system]'" in warnings[0]
    t.end_experiment()
    assert [e["status"] for e in t.list_experiments()] == ["completed", "completed"]
    assert samples(db_path, first) == samples(db_path, second) == {}


# -- GPUs, through a fake NVML ----------------------------------------------------------------------------


class FakeNvml(types.ModuleType):
    """Just enough of pynvml: devices with a UUID, figures, and the pids of their compute processes."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, devices: list[dict[str, Any]], fail_init: bool = False) -> None:
        super().__init__("pynvml")
        self.devices = devices
        self.fail_init = fail_init
        self.calls: list[str] = []
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.devices[index]

    def nvmlDeviceGetUUID(self, handle: dict[str, Any]) -> str:
        return handle["uuid"]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: dict[str, Any]) -> list[Any]:
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=1 << 30) for pid in handle["pids"]]

    def _figure(self, handle: dict[str, Any], name: str) -> Any:
        self.calls.append(name)
        value = handle[name]
        if value is None:
            raise self.NVMLError("Not Supported")
        return value

    def nvmlDeviceGetUtilizationRates(self, handle: dict[str, Any]) -> Any:
        return types.SimpleNamespace(gpu=self._figure(handle, "util"), memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> Any:
        used = self._figure(handle, "used")
        return types.SimpleNamespace(used=used, total=handle["total"], free=handle["total"] - used)

    def nvmlDeviceGetTemperature(self, handle: dict[str, Any], sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._figure(handle, "temp")

    def nvmlDeviceGetPowerUsage(self, handle: dict[str, Any]) -> int:
        return self._figure(handle, "power")


def fake_devices(count: int = 3, pids: Optional[dict[int, list[int]]] = None) -> list[dict[str, Any]]:
    return [{"uuid": f"GPU-{i}{i}{i}a0000-feed", "util": 10 * (i + 1), "used": (i + 1) << 30, "total": 16 << 30,
             "temp": 40 + i, "power": 100_000 + i * 1000, "pids": (pids or {}).get(i, [])} for i in range(count)]


@pytest.mark.parametrize("visible, chosen", [
    (None, None),                      # unset: every device, narrowed to this process's by pid
    ("2,0", [2, 0]),
    (" 1 ", [1]),
    ("GPU-111", [1]),                  # a unique UUID prefix, as CUDA takes it
    ("gpu-222a0000-FEED", [2]),
    ("0,-1,1", [0]),                   # CUDA stops reading at an invalid entry
    ("1,7,0", [1]),
    ("0,0", [0]),
    ("GPU-", []),                      # ambiguous prefix
    ("MIG-GPU-000a0000-feed/1/0", []),  # MIG instances are not sampled
    ("", []),
    ("-1", []),
])
def test_cuda_visible_devices_selects_gpus(visible: Optional[str], chosen: Optional[list[int]]) -> None:
    nvml = FakeNvml(fake_devices())
    assert gpu.selected_devices(visible, nvml, nvml.devices) == chosen


def test_gpus_are_found_by_this_process_and_unsupported_figures_left_out() -> None:
    devices = fake_devices(pids={1: [os.getpid(), 1]})
    devices[1]["power"] = None  # a GPU without power readings
    nvml = FakeNvml(devices)
    probe = gpu.GpuProbe(nvml, devices, None)
    assert probe.sample() == {
        "gpu1/utilization_percent": 20.0, "gpu1/memory_used_mb": 2048.0, "gpu1/memory_percent": 12.5,
        "gpu1/temperature_c": 41.0,
    }
    assert nvml.calls.count("power") == 1
    devices[2]["pids"].append(os.getpid())  # the process starts using another GPU
    assert sorted(probe.sample()) == sorted(
        [f"gpu1/{n}" for n in ("utilization_percent", "memory_used_mb", "memory_percent", "temperature_c")]
        + [f"gpu2/{n}" for n in ("utilization_percent", "memory_used_mb", "memory_percent", "temperature_c",
                                 "power_w")])
    assert nvml.calls.count("power") == 2  # device 2's; device 1's is not asked again
    assert probe.devices == [1, 2]


def test_open_gpus_is_quietly_none_without_nvml_a_driver_or_a_gpu_of_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert gpu.open_gpus() is None
    broken = FakeNvml(fake_devices(), fail_init=True)
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert gpu.open_gpus() is None
    nvml = FakeNvml(fake_devices())
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu.open_gpus() is None and nvml.shutdowns == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    probe = gpu.open_gpus()
    assert probe is not None and probe.devices == [2]  # named outright: no pid needed
    probe.close()
    probe.close()
    assert nvml.shutdowns == 2


def test_a_run_records_the_gpus_it_uses(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml(fake_devices(pids={1: [os.getpid()]}))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    t = ExperimentTracker(db_path, capture_environment=False)
    eid = t.start_experiment("on a GPU", system_metrics=0.1)
    sampler = t._sampler
    wait_for(lambda: sampler.samples >= 2, "two samples")
    t.end_experiment()
    found = samples(db_path, eid)
    assert len(found) == sampler.samples
    for sample in found.values():
        gpu_names = {name for name in sample if name.startswith("system/gpu")}
        assert gpu_names == {f"system/gpu1/{n}" for n in ("utilization_percent", "memory_used_mb",
                                                           "memory_percent", "temperature_c", "power_w")}
        assert sample["system/gpu1/utilization_percent"] == 20.0 and sample["system/gpu1/power_w"] == 101.0
    assert nvml.shutdowns == 1  # released when the sampler ended


def test_the_async_twin_takes_the_same_argument(db_path: str) -> None:
    import asyncio

    async def main() -> tuple[int, Any]:
        async with ml_persistence.AsyncExperimentTracker(db_path, capture_environment=False) as t:
            eid = await t.start_experiment("async", system_metrics=0.1)
            sampler = t.sync._sampler
            while sampler.samples < 1:
                await asyncio.sleep(0.01)  # polling a condition; asyncio.wait_for below is the hang guard
        return eid, sampler

    eid, sampler = asyncio.run(asyncio.wait_for(main(), GUARD))
    assert not sampler.alive and len(samples(db_path, eid)) == sampler.samples >= 1


def test_the_real_nvml_binding_has_what_the_probe_calls() -> None:
    pynvml = pytest.importorskip("pynvml")  # nvidia-ml-py, in the test extra
    for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID",
                 "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo",
                 "nvmlDeviceGetTemperature", "NVML_TEMPERATURE_GPU", "nvmlDeviceGetPowerUsage", "NVMLError"):
        assert hasattr(pynvml, name), name
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert gpu.open_gpus() is None  # no driver here: quietly no GPU figures
        return
    pynvml.nvmlShutdown()
    probe = gpu.open_gpus()  # a machine with a driver: whatever it finds of ours is well named
    if probe is not None:
        assert all(name.startswith("gpu") for name in probe.sample())
        probe.close()
