"""Issue 12, findings 5 and 6 (library): bad values raise typed errors naming the argument, at the call;
start_experiment is atomic per tracker."""

from __future__ import annotations

import functools
import math
import os
import stat
import subprocess
import sys
import textwrap
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import PYTHON, rows, subprocess_env
from ml_persistence import DatasetManager, ExperimentTracker, MetricsLogger, ModelRegistry
from ml_persistence import validate as v
from ml_persistence.errors import InvalidTypeError, InvalidValueError


@pytest.fixture
def tracker(db_path: str) -> ExperimentTracker:
    tracker = ExperimentTracker(db_path, capture_environment=False)
    tracker.start_experiment("findings")
    return tracker


def nested(depth: int, leaf: Any = 1) -> Any:
    """Return ``depth`` dicts, each holding the next under 'a'."""
    return functools.reduce(lambda inner, _: {"a": inner}, range(depth), leaf)


# -- numbers out of range ------------------------------------------------------------------------


def test_a_number_beyond_a_float_raises_naming_it_and_nan_and_inf_still_store(tracker: ExperimentTracker, db_path: str) -> None:
    with pytest.raises(InvalidValueError, match="loss.*out of range"):
        tracker.log_metric("loss", 10**400)
    with pytest.raises(InvalidValueError, match="loss.*out of range"):
        tracker.log_metrics_batch({"ok": 1.0, "loss": -(10**400)}, step=1)
    with pytest.raises(InvalidValueError, match="loss.*out of range"):
        tracker.log_metric("loss", Fraction(10**400, 3))
    with pytest.raises(InvalidValueError, match="lr.*out of range"):
        tracker.log_hyperparameter("lr", Fraction(10**400))
    with pytest.raises(InvalidValueError, match="step"):
        tracker.log_metric("loss", 1.0, step=10**400)
    with pytest.raises(InvalidValueError, match="epoch"):
        tracker.log_metrics_batch({"loss": 1.0}, epoch=-(2**63) - 1)
    with pytest.raises(InvalidValueError, match="val_metric"):
        ModelRegistry(db_path).register_model(tracker.experiment_id, "m.pt", val_metric=10**400)
    with pytest.raises(InvalidValueError, match="seed.*out of range"):
        tracker.log_hyperparameter("seed", 10**5000)  # past the 4,299 digits kept exactly
    with pytest.raises(InvalidValueError, match="metadata.*out of range"):
        tracker.log_metric("loss", 1.0, metadata={"n": [10**5000]})
    tracker.log_metrics_batch({"loss": math.inf, "gap": -math.inf, "bad": math.nan, "big": 2**63}, step=2)
    tracker.log_hyperparameters_batch({"entropy": 2**127, "huge": 10**400})
    tracker.log_metric("note", 1.0, metadata={"seed": 2**127})
    tracker.flush()
    stored = dict(rows(db_path, "SELECT metric_name, value FROM metrics"))
    assert stored["loss"] == math.inf and stored["gap"] == -math.inf and stored["bad"] is None  # SQLite's NULL for NaN
    assert stored["big"] == float(2**63) and "ok" not in stored
    assert tracker.get_hyperparameters() == {"entropy": 2**127, "huge": 10**400}
    history = MetricsLogger(db_path).get_metric_history(tracker.experiment_id, "note")
    assert history[0]["metadata"] == {"seed": 2**127}


# -- nesting -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argument, call",
    [
        ("metadata", lambda t, deep: t.start_experiment("deep", metadata=deep)),
        ("metadata", lambda t, deep: t.log_metric("loss", 1.0, metadata=deep)),
        ("value_json", lambda t, deep: t.log_metric("loss", 1.0, value_json=deep)),
        ("value_json", lambda t, deep: t.log_metric("loss", 1.0, value_json="[" * 10_000 + "]" * 10_000)),
        ("config", lambda t, deep: t.log_hyperparameters_batch({"config": deep})),
        ("metadata", lambda t, deep: t.log_artifact("plot.png", metadata=deep)),
        ("hyperparameters", lambda t, deep: ModelRegistry(t.db_path).register_model(t.experiment_id, "m.pt", hyperparameters=deep)),
        ("metadata", lambda t, deep: DatasetManager(t.db_path).register_dataset("d", "1", metadata=deep)),
    ],
)
def test_nesting_10000_deep_raises_naming_the_argument(
    tracker: ExperimentTracker, argument: str, call: Callable[[ExperimentTracker, Any], Any]
) -> None:
    with pytest.raises(InvalidValueError, match=f"{argument}.*deeper than {v.MAX_DEPTH}"):
        call(tracker, nested(10_000))


def test_nesting_up_to_the_documented_depth_is_kept(tracker: ExperimentTracker, db_path: str) -> None:
    assert v.MAX_DEPTH == 100
    deepest = nested(v.MAX_DEPTH)
    tracker.log_metric("loss", 1.0, metadata=deepest)
    tracker.log_hyperparameter("config", [nested(v.MAX_DEPTH - 1)])
    with pytest.raises(InvalidValueError, match="metadata"):
        tracker.log_metric("loss", 1.0, metadata=nested(v.MAX_DEPTH + 1))
    looped: dict[str, Any] = {}
    looped["self"] = looped
    with pytest.raises(InvalidValueError, match="metadata"):
        tracker.log_metric("loss", 1.0, metadata=looped)
    history = MetricsLogger(db_path).get_metric_history(tracker.experiment_id, "loss")
    assert [h["metadata"] for h in history] == [deepest]
    assert tracker.get_hyperparameters()["config"] == [nested(v.MAX_DEPTH - 1)]


# -- lone surrogates and NUL ---------------------------------------------------------------------

# (argument named in the error, call with a bad string s)
TEXT_ARGUMENTS: list[tuple[str, Callable[[ExperimentTracker, str], Any]]] = [
    ("name", lambda t, s: t.start_experiment(s)),
    ("experiment_type", lambda t, s: t.start_experiment("x", experiment_type=s)),
    ("tags", lambda t, s: t.start_experiment("x", tags=["ok", s])),
    ("metric_name", lambda t, s: t.log_metric(s, 1.0)),
    ("metrics", lambda t, s: t.log_metrics_batch({"ok": 1.0, s: 1.0})),
    ("split", lambda t, s: t.log_metrics_batch({"ok": 1.0}, split=s)),
    ("phase", lambda t, s: t.log_metric("ok", 1.0, phase=s)),
    ("hyperparameter name", lambda t, s: t.log_hyperparameters_batch({s: 1})),
    ("artifact_name", lambda t, s: t.log_artifact("plot.png", artifact_name=s)),
    ("path", lambda t, s: t.log_artifact(f"plots/{s}.png")),
    ("status", lambda t, s: t.end_experiment(s)),
    ("name", lambda t, s: ModelRegistry(t.db_path).register_model(t.experiment_id, "m.pt", name=s)),
    ("checkpoint_path", lambda t, s: ModelRegistry(t.db_path).register_model(t.experiment_id, f"{s}.pt")),
    ("name", lambda t, s: DatasetManager(t.db_path).register_dataset(s, "1")),
    ("version", lambda t, s: DatasetManager(t.db_path).register_dataset("d", s)),
    ("split_type", lambda t, s: DatasetManager(t.db_path).register_dataset("d", "1", split_type=s)),
    ("data_path", lambda t, s: DatasetManager(t.db_path).register_dataset("d", "1", data_path=f"data/{s}")),
    ("usage_type", lambda t, s: DatasetManager(t.db_path).link_dataset_to_experiment(t.experiment_id, 1, s)),
]
# Where text is free (not a name), a NUL is kept, but a lone surrogate still cannot be stored.
FREE_TEXT_ARGUMENTS: list[tuple[str, Callable[[ExperimentTracker, str], Any]]] = [
    ("description", lambda t, s: t.start_experiment("x", description=s)),
    ("metadata", lambda t, s: t.start_experiment("x", metadata={"key": [s]})),
    ("metadata", lambda t, s: t.log_metric("ok", 1.0, metadata={s: 1})),
    ("value_json", lambda t, s: t.log_metric("ok", 1.0, value_json=f'"{s}"')),
    ("lr", lambda t, s: t.log_hyperparameter("lr", s)),
    ("notes", lambda t, s: t.end_experiment("completed", notes=s)),
    ("description", lambda t, s: t.log_artifact("plot.png", description=s)),
    ("feature_columns", lambda t, s: DatasetManager(t.db_path).register_dataset("d", "1", feature_columns=["a", s])),
]


def _ids(cases: list[tuple[str, Any]]) -> list[str]:
    return [f"{argument}-{i}" for i, (argument, _) in enumerate(cases)]


@pytest.mark.parametrize("argument, call", TEXT_ARGUMENTS + FREE_TEXT_ARGUMENTS, ids=_ids(TEXT_ARGUMENTS + FREE_TEXT_ARGUMENTS))
def test_a_lone_surrogate_raises_naming_the_argument(
    tracker: ExperimentTracker, db_path: str, argument: str, call: Callable[[ExperimentTracker, str], Any]
) -> None:
    with pytest.raises(InvalidValueError, match=f"{argument}.*lone surrogate"):
        call(tracker, "bad\udcffname")
    tracker.log_metric("after", 1.0)  # the tracker goes on
    tracker.flush()
    assert rows(db_path, "SELECT metric_name FROM metrics") == [("after",)]


@pytest.mark.parametrize("argument, call", TEXT_ARGUMENTS, ids=_ids(TEXT_ARGUMENTS))
def test_a_nul_in_a_name_raises_naming_the_argument(
    tracker: ExperimentTracker, db_path: str, argument: str, call: Callable[[ExperimentTracker, str], Any]
) -> None:
    with pytest.raises(InvalidValueError, match=f"{argument}.*NUL"):
        call(tracker, "cut\x00here")
    tracker.flush()
    assert rows(db_path, "SELECT COUNT(*) FROM experiments") == [(1,)]
    assert rows(db_path, "SELECT COUNT(*) FROM metrics") == [(0,)]


def test_a_nul_in_free_text_is_refused_at_the_call_and_nothing_else_is_lost(tracker: ExperimentTracker, db_path: str) -> None:
    # PostgreSQL's text cannot hold a NUL, and a run must be storable (and copyable) on either engine.
    with pytest.raises(InvalidValueError, match="prompt.*NUL"):
        tracker.log_hyperparameter("prompt", "a\x00b")
    with pytest.raises(InvalidValueError, match="notes.*NUL"):
        tracker.end_experiment("completed", notes="x\x00y")
    with pytest.raises(InvalidValueError, match="metadata.*NUL"):
        tracker.log_artifact("plot", __file__, metadata={"caption": "a\x00"})
    tracker.log_hyperparameter("prompt", "ab")
    tracker.end_experiment("completed", notes="xy")
    assert rows(db_path, "SELECT status, notes FROM experiments") == [("completed", "xy")]
    assert ExperimentTracker(db_path).get_hyperparameters(1) == {"prompt": "ab"}


def test_undecodable_bytes_in_the_command_line_are_stored_replaced(db_path: str) -> None:
    """argv holds lone surrogates for bytes that are not UTF-8; the captured command stores U+FFFD instead."""
    script = "import ml_persistence as mp; t = mp.ExperimentTracker(); t.start_experiment('argv'); t.end_experiment()"
    done = subprocess.run(
        [os.fsencode(PYTHON), b"-c", script.encode(), b"caf\xe9"],
        env=subprocess_env(ML_PERSISTENCE_DB=db_path, LC_ALL="C.UTF-8"), capture_output=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    [(command,)] = rows(db_path, "SELECT command FROM experiments")
    assert "caf\ufffd" in command and "\udce9" not in command


# -- data_path -----------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_an_unreadable_data_path_raises_naming_it(db_path: str) -> None:
    datasets = DatasetManager(db_path)
    with pytest.raises(InvalidValueError, match="data_path.*/proc/self/mem"):
        datasets.register_dataset("d", "1", data_path="/proc/self/mem")
    with pytest.raises(InvalidTypeError, match="data_path"):
        datasets.register_dataset("d", "1", data_path=42)  # type: ignore[arg-type]
    assert datasets.list_datasets() == []


def test_a_permission_denied_data_path_raises_naming_it(other_user: Any, tmp_path: Path) -> None:
    home = other_user.private_dir()
    done = other_user.run(textwrap.dedent(f"""
        import os
        from ml_persistence import DatasetManager, InvalidValueError
        os.makedirs({home!r} + "/data/locked")
        with open({home!r} + "/data/secret.csv", "w") as f:
            f.write("x")
        os.chmod({home!r} + "/data/secret.csv", 0)
        os.chmod({home!r} + "/data/locked", 0)
        datasets = DatasetManager({home!r} + "/db.sqlite")
        for path in ("/data/secret.csv", "/data"):
            try:
                datasets.register_dataset("d", "1", data_path={home!r} + path)
            except InvalidValueError as exc:
                print("refused:", exc)
    """))
    assert done.returncode == 0, done.stderr
    refused = done.stdout.splitlines()
    assert len(refused) == 2 and all("data_path" in line and "Permission denied" in line for line in refused)


def test_a_fifo_is_never_opened_alone_or_in_a_directory(tmp_path: Path, db_path: str) -> None:
    """Hashing waits for no writer: a FIFO hashes as missing, and a directory hashes its regular files."""
    plain, with_fifo = tmp_path / "plain", tmp_path / "with_fifo"
    for folder in (plain, with_fifo):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "rows.csv").write_text("1,2\n")
    os.mkfifo(with_fifo / "sub" / "pipe")
    os.mkfifo(tmp_path / "alone")
    script = textwrap.dedent(f"""
        from ml_persistence import DatasetManager
        datasets = DatasetManager({db_path!r})
        for name, path in (("plain", {str(plain)!r}), ("with_fifo", {str(with_fifo)!r}), ("alone", {str(tmp_path / "alone")!r})):
            datasets.get_dataset(datasets.register_dataset(name, "1", data_path=path))
    """)
    done = subprocess.run([PYTHON, "-c", script], env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    hashes = dict(rows(db_path, "SELECT name, data_hash FROM datasets"))
    assert hashes["plain"].startswith("sha256:") and hashes["with_fifo"] == hashes["plain"]
    assert hashes["alone"] is None and stat.S_ISFIFO(os.stat(tmp_path / "alone").st_mode)


# -- start_experiment is atomic per tracker --------------------------------------------------------


def test_concurrent_start_experiment_leaves_exactly_one_run_open(db_path: str) -> None:
    tracker = ExperimentTracker(db_path, capture_environment=False)
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    started: list[int] = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        barrier.wait()
        try:
            started.append(tracker.start_experiment(f"run {i}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(started) == threads_count
    tracker.flush()
    running = rows(db_path, "SELECT id FROM experiments WHERE status = 'running'")
    assert running == [(tracker.experiment_id,)]
    assert rows(db_path, "SELECT COUNT(*) FROM experiments WHERE status = 'completed'") == [(threads_count - 1,)]
    tracker.end_experiment()
    assert rows(db_path, "SELECT COUNT(*) FROM experiments WHERE status = 'running'") == [(0,)]


def test_concurrent_end_experiment_ends_the_run_once(db_path: str) -> None:
    tracker = ExperimentTracker(db_path, capture_environment=False)
    experiment = tracker.start_experiment("once")
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def end() -> None:
        barrier.wait()
        try:
            tracker.end_experiment("completed", notes=threading.current_thread().name)
            outcomes.append("ended")
        except Exception as exc:  # noqa: BLE001 - counted below
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=end) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(outcomes) == ["NoActiveExperimentError"] * 3 + ["ended"]
    assert rows(db_path, "SELECT id, status FROM experiments") == [(experiment, "completed")]
