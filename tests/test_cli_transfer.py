"""`ml-persistence migrate-legacy` and `export`, run as a user would, in subprocesses."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from conftest import rows, subprocess_env
from test_legacy import build_legacy


def cli(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ml_persistence", *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120, input=stdin)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_migrate_legacy_reports_imports_and_is_idempotent(tmp_path: Path) -> None:
    legacy = build_legacy(tmp_path / "experiments.db")
    before = digest(legacy)
    first = cli("migrate-legacy", str(legacy), "--db", "ml.db", "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    episodes_values = rows(str(legacy), """
        SELECT SUM((train_return IS NOT NULL) + (train_reward IS NOT NULL) + (episode_length IS NOT NULL)
                   + (test_return IS NOT NULL) + (test_sharpe IS NOT NULL) + (is_best_model IS NOT NULL)
                   + (avg_policy_loss IS NOT NULL) + (avg_value_loss IS NOT NULL))
        FROM episodes WHERE experiment_id IN (SELECT id FROM experiments)""")[0][0]
    assert report["experiments_imported"] == 4 and report["metrics"] > episodes_values
    assert rows(str(tmp_path / "ml.db"), "SELECT COUNT(*) FROM metrics WHERE metric_type = 'legacy_episode'") == [
        (episodes_values,)
    ]
    counts = rows(str(tmp_path / "ml.db"), "SELECT (SELECT COUNT(*) FROM experiments), (SELECT COUNT(*) FROM metrics)")
    second = cli("migrate-legacy", str(legacy), "--db", "ml.db", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "experiments imported: 0" in second.stdout and "unchanged: 4" in second.stdout
    assert rows(str(tmp_path / "ml.db"), "SELECT (SELECT COUNT(*) FROM experiments), (SELECT COUNT(*) FROM metrics)") == counts
    assert digest(legacy) == before
    listed = json.loads(cli("ls", "--db", "ml.db", "--json", "--tag", "legacy", cwd=tmp_path).stdout)
    assert sorted(e["name"] for e in listed) == sorted(
        r[0] for r in rows(str(legacy), "SELECT name FROM experiments")
    )


def test_migrate_legacy_errors_are_one_line(tmp_path: Path) -> None:
    missing = cli("migrate-legacy", "nope.db", "--db", "ml.db", cwd=tmp_path)
    assert missing.returncode == 1 and "nope.db" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "ml.db").exists()
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    junk = cli("migrate-legacy", "junk.db", "--db", "ml.db", cwd=tmp_path)
    assert junk.returncode == 1 and "Traceback" not in junk.stderr and len(junk.stderr.strip().splitlines()) == 1
    usage = cli("migrate-legacy", cwd=tmp_path)
    assert usage.returncode == 2 and "usage" in usage.stderr


def _library_db(tmp_path: Path) -> str:
    script = """
import math
from ml_persistence import ExperimentTracker, ModelRegistry
t = ExperimentTracker("lib.db")
for run in range(2):
    t.start_experiment(f"run {run}, \\"quoted\\"", experiment_type="rl", tags=["a", "b"])
    t.log_hyperparameters_batch({"lr": 1e-3 * (run + 1), "gamma": 0.99})
    for ep in range(50):
        t.log_metrics_batch({"loss": 1 / (ep + 1), "odd": math.nan if ep % 7 == 0 else (math.inf if ep == 3 else ep)}, episode=ep)
    ModelRegistry("lib.db").register_model(experiment_id=t.current_experiment_id, checkpoint_path=f"m{run}.pt", val_metric=run)
    t.end_experiment("completed")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return str(tmp_path / "lib.db")


def test_export_formats_round_trip_through_pandas(tmp_path: Path) -> None:
    import math

    import pandas as pd
    from test_export import CSV_EXACT

    db = _library_db(tmp_path)
    expected = rows(db, "SELECT id, metric_name, episode, value FROM metrics WHERE experiment_id = 2 ORDER BY id")
    readers = {
        "csv": lambda p: pd.read_csv(p, **CSV_EXACT),
        "jsonl": lambda p: pd.read_json(p, lines=True, precise_float=True),
        "parquet": pd.read_parquet,
    }
    for fmt, read in readers.items():
        out = tmp_path / f"m.{fmt}"
        done = cli("export", "--db", db, "--what", "metrics", "--experiment", "2", "--out", str(out), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert f"Exported {len(expected)} metrics rows" in done.stderr
        frame = read(out)
        assert list(frame["id"]) == [r[0] for r in expected]
        for got, (_, _, _, want) in zip(frame["value"], expected):
            want = math.nan if want is None else want
            assert (math.isnan(got) and math.isnan(want)) or got == want, (fmt, got, want)


def test_export_streams_to_stdout_and_checks_its_arguments(tmp_path: Path) -> None:
    db = _library_db(tmp_path)
    done = cli("export", "--db", db, "--what", "experiments", "--format", "jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    exported = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["id"], e["name"], e["num_checkpoints"]) for e in exported] == [
        (1, 'run 0, "quoted"', 1), (2, 'run 1, "quoted"', 1)
    ]
    assert cli("export", "--db", db, "--experiment", "99", cwd=tmp_path).returncode == 1
    assert cli("export", "--db", db, "--what", "nothing", cwd=tmp_path).returncode == 2
    assert cli("export", "--db", db, "--what", "models", "--metric", "loss", cwd=tmp_path).returncode == 2
    missing = cli("export", "--db", "missing.db", cwd=tmp_path)
    assert missing.returncode == 1 and not (tmp_path / "missing.db").exists()


def test_export_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    db = _library_db(tmp_path)
    export = subprocess.Popen([sys.executable, "-m", "ml_persistence", "export", "--db", db, "--what", "metrics"],
                              cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert export.stdout is not None and export.stdout.readline().startswith(b"id,")
        export.stdout.close()  # like `| head -1`
        _, err = export.communicate(timeout=60)
    finally:
        export.kill()
    assert export.returncode == 0 and b"Traceback" not in err


def test_a_legacy_file_is_never_upgraded_in_place(tmp_path: Path) -> None:
    import pytest

    from ml_persistence.sqlite import schema

    legacy = build_legacy(tmp_path / "experiments.db")
    before = digest(legacy)
    listed = cli("ls", "--db", str(legacy), cwd=tmp_path)
    assert listed.returncode == 1 and "migrate-legacy" in listed.stderr and "Traceback" not in listed.stderr
    with pytest.raises(schema.SchemaError, match="legacy experiments.db"):
        schema.connect(str(legacy))
    assert digest(legacy) == before
