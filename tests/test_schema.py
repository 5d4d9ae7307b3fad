"""Schema creation and in-place upgrade of files written by the seed's original implementation."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from conftest import rows, subprocess_env
from ml_persistence import ExperimentTracker, MetricsLogger, ModelRegistry
from ml_persistence.sqlite import schema

# As the original implementation wrote it (user_version 0): its types, NOT NULL constraints, defaults, views.
ORIGINAL = """
CREATE TABLE experiments (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, description TEXT,
  experiment_type TEXT, status TEXT DEFAULT 'running', git_commit TEXT, git_branch TEXT, python_version TEXT,
  random_seed INTEGER, start_time TIMESTAMP NOT NULL, end_time TIMESTAMP, duration_seconds REAL, tags TEXT, notes TEXT,
  metadata TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE models (id INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id INTEGER NOT NULL, name TEXT NOT NULL, version TEXT,
  architecture_type TEXT, state_dim INTEGER, action_dim INTEGER, checkpoint_path TEXT NOT NULL, checkpoint_size_mb REAL,
  episode_num INTEGER, global_step INTEGER, train_metric REAL, val_metric REAL, test_metric REAL,
  is_best BOOLEAN DEFAULT 0, hyperparameters TEXT, metadata TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  FOREIGN KEY (experiment_id) REFERENCES experiments(id));
CREATE TABLE datasets (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version TEXT,
  dataset_type TEXT, data_path TEXT, data_hash TEXT, split_type TEXT, num_samples INTEGER, start_date TEXT,
  end_date TEXT, feature_columns TEXT, target_columns TEXT, metadata TEXT,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, UNIQUE(name, version, split_type));
CREATE TABLE metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id INTEGER NOT NULL, model_id INTEGER,
  metric_name TEXT NOT NULL, metric_type TEXT, episode INTEGER, step INTEGER, epoch INTEGER, value REAL,
  value_json TEXT, split TEXT, phase TEXT, timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE hyperparameters (id INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id INTEGER NOT NULL, model_id INTEGER,
  param_name TEXT NOT NULL, param_value TEXT NOT NULL, param_type TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE artifacts (id INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id INTEGER NOT NULL, model_id INTEGER,
  artifact_type TEXT NOT NULL, artifact_path TEXT NOT NULL, artifact_name TEXT, file_size_mb REAL, description TEXT, metadata TEXT,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE experiment_datasets (experiment_id INTEGER NOT NULL, dataset_id INTEGER NOT NULL, usage_type TEXT,
  PRIMARY KEY (experiment_id, dataset_id, usage_type));
CREATE VIEW experiment_summary AS SELECT e.id, e.name, e.status, COUNT(DISTINCT m.id) AS num_checkpoints,
  MAX(CASE WHEN m.is_best = 1 THEN m.val_metric END) AS best_val_metric
  FROM experiments e LEFT JOIN models m ON e.id = m.experiment_id GROUP BY e.id ORDER BY e.start_time DESC;
CREATE VIEW best_models AS SELECT * FROM models WHERE is_best = 1;
INSERT INTO experiments (name, experiment_type, status, start_time, end_time, tags, metadata)
  VALUES ('old run', 'rl', 'completed', '2024-05-01 10:00:00.000000', '2024-05-01 11:00:00.000000', '["rl"]', '{"a": 1}');
INSERT INTO models (experiment_id, name, checkpoint_path, val_metric, is_best) VALUES (1, 'm', 'old.pth', 1.5, 1);
INSERT INTO metrics (experiment_id, metric_name, episode, value, timestamp)
  VALUES (1, 'train_return', 0, 0.5, '2024-05-01 10:30:00.000000'), (1, 'train_return', 1, 0.7, '2024-05-01 10:31:00.000000');
INSERT INTO hyperparameters (experiment_id, param_name, param_value, param_type) VALUES (1, 'gamma', '0.99', 'float');
INSERT INTO datasets (name, version, split_type) VALUES ('BTC', 'v1', 'train');
INSERT INTO experiment_datasets VALUES (1, 1, 'train');
"""


@pytest.fixture
def original_db(db_path: str) -> str:
    conn = sqlite3.connect(db_path)
    conn.executescript(ORIGINAL)
    conn.close()
    return db_path


def table_counts(path: str) -> dict[str, int]:
    return {t: rows(path, f"SELECT COUNT(*) FROM {t}")[0][0] for t in schema.TABLES}


def test_original_file_upgrades_in_place_without_losing_a_row(original_db: str) -> None:
    before = table_counts(original_db)
    assert rows(original_db, "PRAGMA user_version") == [(0,)]
    tracker = ExperimentTracker(original_db)
    listed = tracker.list_experiments()
    assert table_counts(original_db) == before
    assert rows(original_db, "PRAGMA user_version") == [(schema.SCHEMA_VERSION,)]
    assert [(e["id"], e["name"], e["status"], e["best_val_metric"], e["tags"]) for e in listed] == [
        (1, "old run", "completed", 1.5, ["rl"])
    ]
    assert [r["value"] for r in MetricsLogger(original_db).get_metric_history(1, "train_return")] == [0.5, 0.7]
    assert ModelRegistry(original_db).get_best_model(1)["checkpoint_path"] == "old.pth"
    new = tracker.start_experiment("new run", experiment_type="rl")
    tracker.log_metrics_batch({"train_return": 0.9}, episode=0)
    tracker.log_hyperparameters_batch({"gamma": 0.9, "scheduler": None})
    ModelRegistry(original_db).register_model(new, "")
    tracker.end_experiment()
    assert tracker.get_hyperparameters(new) == {"gamma": 0.9, "scheduler": None}
    assert new == 2
    # Old and new timestamps share one text format, so they sort together.
    stamps = [r[0] for r in rows(original_db, "SELECT timestamp FROM metrics ORDER BY timestamp")]
    assert stamps[:2] == ["2024-05-01 10:30:00.000000", "2024-05-01 10:31:00.000000"] and len(stamps[2]) == 26
    summary = rows(original_db, "SELECT id, num_checkpoints, best_val_metric FROM experiment_summary ORDER BY id")
    assert summary == [(1, 1, 1.5), (2, 1, None)]
    assert rows(original_db, "SELECT experiment_name FROM best_models") == [("old run",)]


def test_core_module_reports_upgrade_then_nothing_to_do(original_db: str) -> None:
    def core() -> str:
        done = subprocess.run([sys.executable, "-m", "ml_persistence.core", "--db", original_db],
                              env=subprocess_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = core()
    assert "Upgraded" in first and f"schema version 0 to {schema.SCHEMA_VERSION}" in first and "metrics.metadata" in first
    assert "up to date" in core()
    assert rows(original_db, "SELECT COUNT(*) FROM metrics") == [(2,)]


def test_new_file_has_every_column_of_the_original_schema(db_path: str) -> None:
    conn = schema.connect(db_path)
    expected = {
        "experiments": "id name description experiment_type status git_commit git_branch python_version random_seed "
                       "start_time end_time duration_seconds tags notes metadata created_at updated_at",
        "models": "id experiment_id name version architecture_type state_dim action_dim checkpoint_path "
                  "checkpoint_size_mb episode_num global_step train_metric val_metric test_metric is_best "
                  "hyperparameters metadata created_at",
        "datasets": "id name version dataset_type data_path data_hash split_type num_samples start_date end_date "
                    "feature_columns target_columns metadata created_at",
        "metrics": "id experiment_id model_id metric_name metric_type episode step epoch value value_json split phase timestamp",
        "hyperparameters": "id experiment_id model_id param_name param_value param_type created_at",
        "artifacts": "id experiment_id model_id artifact_type artifact_path artifact_name file_size_mb description metadata created_at",
        "experiment_datasets": "experiment_id dataset_id usage_type",
    }
    for table, names in expected.items():
        assert set(names.split()) <= set(schema.columns(conn, table)), table
    plan = " ".join(r[3] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT value FROM metrics WHERE experiment_id = 1 AND metric_name = 'x' ORDER BY id"))
    assert "idx_metrics_experiment_name" in plan
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_newer_schema_is_refused_with_a_clear_error(db_path: str) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(schema.SchemaError, match="newer"):
        schema.connect(db_path)


def _foreign_file(path: str) -> bytes:
    """Write an SQLite file of another application; return its bytes."""
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users (name) VALUES ('ada');")
    conn.close()
    with open(path, "rb") as handle:
        return handle.read()


def test_a_file_of_another_application_is_refused_untouched_by_library_and_cli(db_path: str) -> None:
    before = _foreign_file(db_path)
    tracker = ExperimentTracker(db_path, capture_environment=False)
    with pytest.raises(schema.SchemaError, match=r"other tables \(users\).*a new path, or an empty file"):
        tracker.start_experiment("lands in the wrong file")
    with pytest.raises(schema.SchemaError, match="other tables"):
        MetricsLogger(db_path).list_metric_names(1)
    with pytest.raises(schema.SchemaError, match="other tables"):
        schema.connect(db_path)
    command = [sys.executable, "-m", "ml_persistence", "ls", "--db", db_path]
    listed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert listed.returncode == 1 and "other tables (users)" in listed.stderr and "Traceback" not in listed.stderr
    core = [sys.executable, "-m", "ml_persistence.core", "--db", db_path]
    upgraded = subprocess.run(core, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 1 and "other tables (users)" in upgraded.stderr
    with open(db_path, "rb") as handle:
        assert handle.read() == before
    assert rows(db_path, "SELECT name FROM sqlite_master") == [("users",)]


def test_new_empty_and_our_own_files_still_open(db_path: str, tmp_path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    shared = str(tmp_path / "shared.db")
    ExperimentTracker(shared).list_experiments()  # our schema first, then the user's own table beside it
    conn = sqlite3.connect(shared)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.close()
    for path in (db_path, str(empty), shared):
        tracker = ExperimentTracker(path, capture_environment=False)
        tracker.start_experiment("fine")
        tracker.end_experiment()
        assert rows(path, "SELECT name, status FROM experiments") == [("fine", "completed")]
