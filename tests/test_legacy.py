"""migrate_legacy(): carrying the older project's experiments.db over into ml_experiments.db."""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Optional

import pytest

from conftest import rows
from ml_persistence import ExperimentTracker, InvalidValueError, MetricsLogger
from ml_persistence.sqlite import schema
from ml_persistence.sqlite.legacy import LegacyFormatError, LegacyReport, migrate_legacy

# As the older project created its file: the four tables and its summary view.
LEGACY_SCHEMA = """
CREATE TABLE experiments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    description TEXT,
    start_time TIMESTAMP,
    end_time TIMESTAMP,
    status TEXT,
    state_dim INTEGER,
    action_dim INTEGER,
    learning_rate REAL,
    gamma REAL,
    train_start_date TEXT,
    train_end_date TEXT,
    test_start_date TEXT,
    test_end_date TEXT,
    best_test_sharpe REAL,
    best_test_return REAL,
    final_episode INTEGER,
    early_stopped BOOLEAN DEFAULT 0,
    notes TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE episodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id INTEGER,
    episode_num INTEGER,
    train_return REAL,
    train_reward REAL,
    episode_length INTEGER,
    test_return REAL,
    test_sharpe REAL,
    is_best_model BOOLEAN DEFAULT 0,
    avg_policy_loss REAL,
    avg_value_loss REAL,
    timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (experiment_id) REFERENCES experiments(id),
    UNIQUE(experiment_id, episode_num)
);
CREATE TABLE regime_analysis (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id INTEGER,
    analysis_date TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    final_value REAL,
    total_return REAL,
    total_steps INTEGER,
    bull_steps INTEGER,
    bear_steps INTEGER,
    neutral_steps INTEGER,
    bull_buy_prob REAL,
    bear_buy_prob REAL,
    neutral_buy_prob REAL,
    buy_prob_difference REAL,
    FOREIGN KEY (experiment_id) REFERENCES experiments(id)
);
CREATE TABLE hyperparameters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id INTEGER,
    param_name TEXT,
    param_value TEXT,
    FOREIGN KEY (experiment_id) REFERENCES experiments(id)
);
CREATE VIEW experiment_summary AS
SELECT e.id, e.name, e.status, e.best_test_sharpe, COUNT(ep.id) AS num_episodes, MAX(ep.test_sharpe) AS max_test_sharpe
FROM experiments e LEFT JOIN episodes ep ON ep.experiment_id = e.id
GROUP BY e.id;
CREATE TABLE trade_log (id INTEGER PRIMARY KEY, experiment_id INTEGER, action TEXT, price REAL);
"""

EPISODE_METRICS = (
    "train_return", "train_reward", "episode_length", "test_return", "test_sharpe",
    "is_best_model", "avg_policy_loss", "avg_value_loss",
)
REGIME_METRICS = (
    "final_value", "total_return", "total_steps", "bull_steps", "bear_steps", "neutral_steps",
    "bull_buy_prob", "bear_buy_prob", "neutral_buy_prob", "buy_prob_difference",
)
TABLES = ("experiments", "metrics", "hyperparameters", "datasets", "experiment_datasets", "legacy_imports")
HOSTILE = 'x"; DROP TABLE experiments; --'


@dataclass
class Run:
    """One experiment as the older project recorded it."""

    name: str
    status: Optional[str]
    start: str
    end: Optional[str]
    episodes: int
    early_stopped: int
    train: tuple[Optional[str], Optional[str]]
    test: tuple[Optional[str], Optional[str]]
    learning_rate: float
    final_episode: Optional[int]


RUNS = [
    Run("ppo_baseline", "completed", "2024-03-01 12:00:00", "2024-03-01 15:30:00", 300, 0,
        ("2018-01-01", "2022-12-31"), ("2023-01-01", "2023-12-31"), 3e-4, 299),
    Run("ppo_high_lr", "completed", "2024-03-02 09:00:00", "2024-03-02 10:15:30", 150, 1,
        ("2018-01-01", "2022-12-31"), ("2023-01-01", "2023-12-31"), 1e-3, 149),
    Run("ppo_crashed", "failed", "2024-03-03 08:00:00", "2024-03-03 08:40:00", 80, 0,
        (None, None), (None, None), 3e-4, None),
    Run("ppo_long_window", "running", "2024-03-04 20:00:00", None, 220, 0,
        ("2015-01-01", "2022-12-31"), ("2023-01-01", "2024-02-29"), 5e-4, None),
]
LEGACY_PARAMS = [("batch_size", "64"), ("clip_epsilon", "0.2"), ("optimizer", "adam"), ("n_steps", "2048")]


def _when(start: str, minutes: int) -> str:
    """Return ``start`` plus ``minutes`` as the older project wrote timestamps."""
    return (datetime.fromisoformat(start) + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S")


def _episode_row(rng: random.Random, experiment_id: int, run: Run, num: int, best: float) -> tuple[tuple[Any, ...], float]:
    """Return one episodes row (test_* only every 10th episode, as the original logged them) and the new best."""
    evaluated = num % 10 == 0
    sharpe = rng.gauss(0.8, 0.5) if evaluated else None
    is_best = int(sharpe is not None and sharpe > best)
    missing_loss = rng.random() < 0.03  # the original left losses NULL when an update was skipped
    row = (
        experiment_id, num, rng.gauss(0.02, 0.1), rng.gauss(1.0, 3.0), rng.randint(180, 252),
        rng.gauss(0.03, 0.08) if evaluated else None, sharpe, is_best,
        None if missing_loss else rng.uniform(0.001, 0.2), None if missing_loss else rng.uniform(0.01, 2.0),
        _when(run.start, num),
    )
    return row, max(best, sharpe) if sharpe is not None else best


def _insert_episodes(conn: sqlite3.Connection, rng: random.Random, experiment_id: int, run: Run, nums: range) -> None:
    """Append episodes ``nums`` of one run."""
    best = -math.inf
    for num in nums:
        row, best = _episode_row(rng, experiment_id, run, num, best)
        conn.execute(
            "INSERT INTO episodes (experiment_id, episode_num, train_return, train_reward, episode_length, "
            "test_return, test_sharpe, is_best_model, avg_policy_loss, avg_value_loss, timestamp) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )


def _insert_regime(conn: sqlite3.Connection, rng: random.Random, experiment_id: int, when: str, blank: bool = False) -> None:
    """Insert one regime_analysis row; ``blank`` leaves the buy probabilities NULL as a cut-short analysis did."""
    bull, bear, neutral = rng.randint(100, 900), rng.randint(100, 900), rng.randint(100, 900)
    probs = (None, None, None, None) if blank else (rng.random(), rng.random(), rng.random(), rng.uniform(-0.5, 0.5))
    conn.execute(
        "INSERT INTO regime_analysis (experiment_id, analysis_date, final_value, total_return, total_steps, "
        "bull_steps, bear_steps, neutral_steps, bull_buy_prob, bear_buy_prob, neutral_buy_prob, buy_prob_difference) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (experiment_id, when, rng.uniform(8e3, 14e3), rng.gauss(0.1, 0.2), bull + bear + neutral, bull, bear, neutral, *probs),
    )


def _insert_run(conn: sqlite3.Connection, rng: random.Random, run: Run) -> int:
    """Insert one experiment with its episodes, regime rows and parameter rows; return its legacy id."""
    experiment_id = conn.execute(
        "INSERT INTO experiments (name, description, start_time, end_time, status, state_dim, action_dim, "
        "learning_rate, gamma, train_start_date, train_end_date, test_start_date, test_end_date, "
        "best_test_sharpe, best_test_return, final_episode, early_stopped, notes, created_at) "
        "VALUES (?, ?, ?, ?, ?, 64, 3, ?, 0.99, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run.name, f"PPO on daily bars ({run.name})", run.start, run.end, run.status, run.learning_rate,
            *run.train, *run.test, 1.42 if run.end else None, 0.183 if run.end else None,
            run.final_episode, run.early_stopped, "stopped on plateau" if run.early_stopped else None, run.start,
        ),
    ).lastrowid
    _insert_episodes(conn, rng, experiment_id, run, range(run.episodes))
    for i in range(2 if run.status == "running" else 3):
        _insert_regime(conn, rng, experiment_id, _when(run.start, run.episodes + i), blank=run.status == "failed" and i == 2)
    for name, value in LEGACY_PARAMS:
        conn.execute(
            "INSERT INTO hyperparameters (experiment_id, param_name, param_value) VALUES (?, ?, ?)",
            (experiment_id, name, value),
        )
    return experiment_id


def build_legacy(path: Path, seed: int = 7) -> Path:
    """Write a legacy experiments.db with RUNS, orphan rows and an unknown table."""
    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    conn.executescript(LEGACY_SCHEMA)
    ids = [_insert_run(conn, rng, run) for run in RUNS]
    # ppo_high_lr's table row overrides its gamma column: the later value wins.
    conn.execute("INSERT INTO hyperparameters (experiment_id, param_name, param_value) VALUES (?, 'gamma', '0.995')", (ids[1],))
    # Leftovers of a deleted experiment.
    _insert_episodes(conn, rng, 99, RUNS[0], range(5))
    conn.execute("INSERT INTO hyperparameters (experiment_id, param_name, param_value) VALUES (99, 'batch_size', '32')")
    conn.executemany("INSERT INTO trade_log (experiment_id, action, price) VALUES (1, ?, ?)", [("buy", 101.5), ("sell", 103.0)])
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    """A realistic legacy experiments.db in its own directory."""
    folder = tmp_path / "old_project"
    folder.mkdir()
    return build_legacy(folder / "experiments.db")


def sha256(path: Path | str) -> str:
    """Return the file's SHA-256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def legacy_rows(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read the legacy file (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def counts(db_path: str) -> dict[str, int]:
    """Return the row count of every table the importer writes."""
    return {t: rows(db_path, f"SELECT COUNT(*) FROM {t}")[0][0] for t in TABLES}


def target_id(db_path: str, name: str) -> int:
    """Return the new id of the imported experiment called ``name``."""
    return rows(db_path, "SELECT id FROM experiments WHERE name = ?", (name,))[0][0]


def metadata(db_path: str, name: str) -> dict[str, Any]:
    """Return the imported experiment's metadata as the library reads it."""
    return ExperimentTracker(db_path).get_experiment(target_id(db_path, name))["metadata"]


# -- experiments --------------------------------------------------------------------------------


def test_experiments_are_imported_with_their_fields(legacy: Path, db_path: str) -> None:
    """Each legacy experiment becomes one 'rl' experiment with its text fields kept verbatim."""
    report = migrate_legacy(str(legacy), db_path)
    assert (report.experiments_imported, report.experiments_updated, report.experiments_unchanged) == (4, 0, 0)
    assert report.source == str(legacy.resolve())
    got = rows(
        db_path,
        "SELECT name, description, experiment_type, status, start_time, end_time, duration_seconds, tags, notes, "
        "created_at, updated_at FROM experiments ORDER BY id",
    )
    assert [g[0] for g in got] == [r.name for r in RUNS]
    for row, run in zip(got, RUNS):
        _, description, kind, status, start, end, duration, tags, notes, created, updated = row
        assert description == f"PPO on daily bars ({run.name})"
        assert (kind, status, start, end, tags) == ("rl", run.status, run.start, run.end, '["legacy"]')
        assert created == updated == run.start
        assert notes == ("stopped on plateau" if run.early_stopped else None)
        if run.end is None:
            assert duration is None
        else:
            assert duration == (datetime.fromisoformat(run.end) - datetime.fromisoformat(run.start)).total_seconds()
    assert got[0][6] == 3.5 * 3600
    listed = ExperimentTracker(db_path).list_experiments(tags=["legacy"], status="running")
    assert [e["name"] for e in listed] == ["ppo_long_window"]


def test_hyperparameters_read_back_with_their_types(legacy: Path, db_path: str) -> None:
    """Columns and the legacy table become hyperparameters the library decodes to int / float / str."""
    report = migrate_legacy(str(legacy), db_path)
    assert report.hyperparameters == 4 * (4 + len(LEGACY_PARAMS)) + 1
    tracker = ExperimentTracker(db_path)
    baseline = tracker.get_experiment(target_id(db_path, "ppo_baseline"))["hyperparameters"]
    assert baseline == {
        "state_dim": 64, "action_dim": 3, "learning_rate": 3e-4, "gamma": 0.99,
        "batch_size": 64, "clip_epsilon": 0.2, "optimizer": "adam", "n_steps": 2048,
    }
    assert [type(baseline[k]) for k in ("state_dim", "learning_rate", "batch_size", "clip_epsilon", "optimizer")] == [
        int, float, int, float, str,
    ]
    assert tracker.get_hyperparameters(target_id(db_path, "ppo_high_lr"))["gamma"] == 0.995
    stored = rows(
        db_path,
        "SELECT param_name, param_value, param_type FROM hyperparameters WHERE experiment_id = ? ORDER BY id",
        (target_id(db_path, "ppo_high_lr"),),
    )
    assert stored[:4] == [
        ("state_dim", "64", "int"), ("action_dim", "3", "int"),
        ("learning_rate", "0.001", "float"), ("gamma", "0.99", "float"),
    ]
    assert stored[-1] == ("gamma", "0.995", "float")


def test_date_ranges_become_shared_datasets(legacy: Path, db_path: str) -> None:
    """Train/test ranges become legacy-market-data splits, created once per range and linked by usage."""
    report = migrate_legacy(str(legacy), db_path)
    datasets = rows(db_path, "SELECT name, version, split_type, start_date, end_date FROM datasets ORDER BY id")
    assert datasets == [
        ("legacy-market-data", "2018-01-01_2022-12-31", "train", "2018-01-01", "2022-12-31"),
        ("legacy-market-data", "2023-01-01_2023-12-31", "test", "2023-01-01", "2023-12-31"),
        ("legacy-market-data", "2015-01-01_2022-12-31", "train", "2015-01-01", "2022-12-31"),
        ("legacy-market-data", "2023-01-01_2024-02-29", "test", "2023-01-01", "2024-02-29"),
    ]
    assert rows(db_path, "SELECT DISTINCT dataset_type, metadata FROM datasets") == [
        ("time_series", '{"source":"experiments.db migration"}'),
    ]
    links = rows(
        db_path,
        "SELECT e.name, d.version, ed.usage_type FROM experiment_datasets ed JOIN experiments e ON e.id = ed.experiment_id "
        "JOIN datasets d ON d.id = ed.dataset_id ORDER BY e.id, ed.usage_type DESC",
    )
    assert links == [
        ("ppo_baseline", "2018-01-01_2022-12-31", "train"), ("ppo_baseline", "2023-01-01_2023-12-31", "test"),
        ("ppo_high_lr", "2018-01-01_2022-12-31", "train"), ("ppo_high_lr", "2023-01-01_2023-12-31", "test"),
        ("ppo_long_window", "2015-01-01_2022-12-31", "train"), ("ppo_long_window", "2023-01-01_2024-02-29", "test"),
    ]
    assert (report.datasets_linked, report.datasets_created) == (6, 4)


# -- episodes and regime analysis -----------------------------------------------------------------


def test_episode_metric_counts_equal_legacy_non_null_counts(legacy: Path, db_path: str) -> None:
    """Every non-NULL episode value becomes exactly one metric row, and nothing else does."""
    report = migrate_legacy(str(legacy), db_path)
    expected_total = 0
    for legacy_id, run in enumerate(RUNS, start=1):
        new_id = target_id(db_path, run.name)
        for column in EPISODE_METRICS:
            (expected,) = legacy_rows(legacy, f"SELECT COUNT({column}) FROM episodes WHERE experiment_id = ?", (legacy_id,))[0]
            got = rows(
                db_path,
                "SELECT COUNT(*) FROM metrics WHERE experiment_id = ? AND metric_name = ? AND metric_type = 'legacy_episode'",
                (new_id, column),
            )[0][0]
            assert got == expected, (run.name, column)
            expected_total += expected
    assert rows(db_path, "SELECT COUNT(*) FROM metrics WHERE metric_type = 'legacy_episode'")[0][0] == expected_total
    assert legacy_rows(legacy, "SELECT COUNT(*) FROM episodes WHERE experiment_id = 1 AND test_sharpe IS NOT NULL")[0][0] == 30
    regime = rows(db_path, "SELECT COUNT(*) FROM metrics WHERE metric_type = 'regime_analysis'")[0][0]
    assert report.metrics == expected_total + regime


def test_episode_numbers_timestamps_values_and_splits_are_preserved(legacy: Path, db_path: str) -> None:
    """A metric's history has the legacy episode numbers, original timestamps, values and split."""
    migrate_legacy(str(legacy), db_path)
    new_id = target_id(db_path, "ppo_baseline")
    logger = MetricsLogger(db_path)
    original = legacy_rows(
        legacy,
        "SELECT episode_num, train_return, test_sharpe, is_best_model, timestamp FROM episodes "
        "WHERE experiment_id = 1 ORDER BY id",
    )
    train = logger.get_metric_history(new_id, "train_return")
    assert [(h["episode"], h["value"], h["timestamp"], h["split"]) for h in train] == [
        (num, value, ts, "train") for num, value, _, _, ts in original
    ]
    test = logger.get_metric_history(new_id, "test_sharpe", split="test")
    assert [h["episode"] for h in test] == list(range(0, 300, 10))
    assert [h["value"] for h in test] == [s for _, _, s, _, _ in original if s is not None]
    best = logger.get_metric_history(new_id, "is_best_model")
    assert {h["split"] for h in best} == {None}
    assert [h["value"] for h in best] == [b for _, _, _, b, _ in original]
    assert 1 in {h["value"] for h in best}
    assert train[0]["timestamp"] == "2024-03-01 12:00:00"
    summary = logger.get_metrics_summary(new_id, split="test")
    assert set(summary) == {"test_return", "test_sharpe"}


def test_final_results_and_regime_rows_land_in_metadata_and_metrics(legacy: Path, db_path: str) -> None:
    """Final results, provenance and every regime row are in the metadata; numeric regime values are metrics."""
    report = migrate_legacy(str(legacy), db_path)
    assert report.regime_rows == 3 + 3 + 3 + 2
    meta = metadata(db_path, "ppo_high_lr")
    assert {k: meta[k] for k in ("best_test_sharpe", "best_test_return", "final_episode", "early_stopped")} == {
        "best_test_sharpe": 1.42, "best_test_return": 0.183, "final_episode": 149, "early_stopped": 1,
    }
    assert meta["legacy"] == {"source": str(legacy.resolve()), "experiment_id": 2}
    regime = legacy_rows(legacy, "SELECT * FROM regime_analysis WHERE experiment_id = 2 ORDER BY id")
    columns = [c[1] for c in legacy_rows(legacy, "PRAGMA table_info(regime_analysis)")]
    assert meta["regime_analysis"] == [{c: v for c, v in zip(columns, r) if c != "experiment_id"} for r in regime]
    running = metadata(db_path, "ppo_long_window")
    assert "best_test_sharpe" not in running and "final_episode" not in running
    assert running["early_stopped"] == 0
    crashed = metadata(db_path, "ppo_crashed")
    assert crashed["regime_analysis"][2]["bull_buy_prob"] is None
    history = MetricsLogger(db_path).get_metric_history(target_id(db_path, "ppo_high_lr"), "regime_bull_steps")
    assert [(h["value"], h["episode"], h["timestamp"], h["metadata"]) for h in history] == [
        (r[columns.index("bull_steps")], 149, r[columns.index("analysis_date")], {"legacy_regime_id": r[0]}) for r in regime
    ]
    for name, expected in (("ppo_crashed", 3 * 10 - 4), ("ppo_long_window", 2 * 10)):
        got = rows(
            db_path,
            "SELECT COUNT(*), COUNT(episode) FROM metrics WHERE experiment_id = ? AND metric_type = 'regime_analysis'",
            (target_id(db_path, name),),
        )
        assert got == [(expected, 0)]  # no final_episode known: episode stays NULL
    names = {r[0] for r in rows(db_path, "SELECT DISTINCT metric_name FROM metrics WHERE metric_type = 'regime_analysis'")}
    assert names == {f"regime_{c}" for c in REGIME_METRICS}


def test_orphans_and_unknown_tables_are_reported_not_imported(legacy: Path, db_path: str) -> None:
    """Rows of a missing experiment and tables the importer does not know are counted in the report."""
    report = migrate_legacy(str(legacy), db_path)
    assert report.orphan_rows == 5 + 1
    assert report.skipped_tables == ["trade_log"]
    assert report.carried_columns == {} and report.missing_tables == [] and report.missing_columns == {}
    assert rows(db_path, "SELECT COUNT(*) FROM metrics WHERE experiment_id NOT IN (SELECT id FROM experiments)") == [(0,)]
    lines = report.lines()
    assert "experiments imported: 4" in lines
    assert "rows skipped, their experiment_id matches no legacy experiment: 6" in lines
    assert "trade_log: table not imported (unknown to the legacy importer)" in lines
    assert all("\n" not in line for line in lines)


# -- the legacy file, re-runs and increments --------------------------------------------------------


def test_legacy_file_is_left_byte_for_byte_untouched(legacy: Path, db_path: str) -> None:
    """The import reads the legacy file without changing it or leaving files next to it."""
    before, files = sha256(legacy), sorted(os.listdir(legacy.parent))
    migrate_legacy(str(legacy), db_path)
    migrate_legacy(str(legacy), db_path)
    assert sha256(legacy) == before
    assert sorted(os.listdir(legacy.parent)) == files


def test_second_run_imports_nothing(legacy: Path, db_path: str) -> None:
    """Running again over the same file adds no rows and reports every experiment unchanged."""
    migrate_legacy(str(legacy), db_path)
    before = counts(db_path)
    report = migrate_legacy(str(legacy), db_path)
    assert counts(db_path) == before
    assert (report.experiments_imported, report.experiments_updated, report.experiments_unchanged) == (0, 0, 4)
    assert (report.metrics, report.hyperparameters, report.datasets_linked, report.regime_rows) == (0, 0, 0, 0)
    assert "experiments already imported, unchanged: 4" in report.lines()


def test_copy_at_another_path_imports_nothing_twice(legacy: Path, db_path: str, tmp_path: Path) -> None:
    """The legacy key is the experiment's id, name and start, not the file's path."""
    migrate_legacy(str(legacy), db_path)
    before = counts(db_path)
    copy = tmp_path / "backup" / "experiments copy.db"
    copy.parent.mkdir()
    shutil.copyfile(legacy, copy)
    report = migrate_legacy(str(copy), db_path)
    assert counts(db_path) == before
    assert report.experiments_unchanged == 4 and report.source == str(copy)


def test_incremental_run_imports_only_new_rows(legacy: Path, db_path: str) -> None:
    """Episodes and regime rows added to the legacy file later are imported alone, once."""
    migrate_legacy(str(legacy), db_path)
    before = counts(db_path)
    conn = sqlite3.connect(legacy)
    _insert_episodes(conn, random.Random(11), 4, RUNS[3], range(220, 260))
    _insert_regime(conn, random.Random(12), 4, "2024-03-05 02:00:00")
    conn.commit()
    conn.close()
    new_values = sum(
        legacy_rows(legacy, f"SELECT COUNT({c}) FROM episodes WHERE experiment_id = 4 AND episode_num >= 220")[0][0]
        for c in EPISODE_METRICS
    )
    report = migrate_legacy(str(legacy), db_path)
    assert (report.experiments_imported, report.experiments_updated, report.experiments_unchanged) == (0, 1, 3)
    assert (report.metrics, report.regime_rows, report.hyperparameters) == (new_values + 10, 1, 0)
    after = counts(db_path)
    assert after["metrics"] == before["metrics"] + new_values + 10
    assert {k: v for k, v in after.items() if k != "metrics"} == {k: v for k, v in before.items() if k != "metrics"}
    new_id = target_id(db_path, "ppo_long_window")
    episodes = [h["episode"] for h in MetricsLogger(db_path).get_metric_history(new_id, "train_return")]
    assert episodes == list(range(260))
    meta = metadata(db_path, "ppo_long_window")
    assert [r["analysis_date"] for r in meta["regime_analysis"]][-1] == "2024-03-05 02:00:00"
    assert len(meta["regime_analysis"]) == 3
    highest = legacy_rows(
        legacy,
        "SELECT (SELECT MAX(id) FROM episodes WHERE experiment_id = 4), "
        "(SELECT MAX(id) FROM regime_analysis WHERE experiment_id = 4)",
    )
    recorded = rows(db_path, "SELECT last_episode_id, last_regime_id FROM legacy_imports WHERE experiment_id = ?", (new_id,))
    assert recorded == highest
    again = migrate_legacy(str(legacy), db_path)
    assert (again.experiments_unchanged, again.metrics) == (4, 0)
    assert counts(db_path) == after


def test_legacy_imports_records_each_experiment(legacy: Path, db_path: str) -> None:
    """legacy_imports holds one row per experiment: its key, new id, source and last legacy row ids."""
    migrate_legacy(str(legacy), db_path)
    recorded = rows(
        db_path,
        "SELECT legacy_key, experiment_id, source_path, last_episode_id, last_regime_id FROM legacy_imports "
        "ORDER BY experiment_id",
    )
    expected = legacy_rows(
        legacy,
        "SELECT e.id, e.name, e.start_time, (SELECT MAX(id) FROM episodes WHERE experiment_id = e.id), "
        "(SELECT MAX(id) FROM regime_analysis WHERE experiment_id = e.id) FROM experiments e ORDER BY e.id",
    )
    assert [(r[0], r[2], r[3], r[4]) for r in recorded] == [
        (f'[{i},"{name}","{start}"]', str(legacy.resolve()), ep, reg) for i, name, start, ep, reg in expected
    ]
    assert [r[1] for r in recorded] == [target_id(db_path, run.name) for run in RUNS]


# -- unusual files ---------------------------------------------------------------------------------


def test_unknown_extra_columns_are_carried_over(legacy: Path, db_path: str) -> None:
    """Extra episodes columns become metrics (text in value_json); extra experiments columns go to metadata."""
    conn = sqlite3.connect(legacy)
    for table in ("episodes", "experiments"):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN reward_scale REAL")
        conn.execute(f"ALTER TABLE {table} ADD COLUMN comment TEXT")
    conn.execute("UPDATE episodes SET reward_scale = 0.5 WHERE experiment_id = 1")
    conn.execute("UPDATE episodes SET comment = 'lr warmup done' WHERE experiment_id = 1 AND episode_num = 10")
    conn.execute("UPDATE experiments SET reward_scale = 2.0, comment = 'rerun of #12' WHERE id = 1")
    conn.commit()
    conn.close()
    report = migrate_legacy(str(legacy), db_path)
    assert report.carried_columns == {"experiments": ["reward_scale", "comment"], "episodes": ["reward_scale", "comment"]}
    assert "episodes: unknown columns carried over: reward_scale, comment" in report.lines()
    new_id = target_id(db_path, "ppo_baseline")
    logger = MetricsLogger(db_path)
    scale = logger.get_metric_history(new_id, "reward_scale")
    assert len(scale) == 300 and {h["value"] for h in scale} == {0.5} and {h["split"] for h in scale} == {None}
    comment = logger.get_metric_history(new_id, "comment")
    assert [(h["episode"], h["value_json"]) for h in comment] == [(10, '"lr warmup done"')]
    assert math.isnan(comment[0]["value"])
    assert rows(db_path, "SELECT value FROM metrics WHERE metric_name = 'comment'") == [(None,)]
    meta = metadata(db_path, "ppo_baseline")
    assert (meta["reward_scale"], meta["comment"]) == (2.0, "rerun of #12")
    assert "comment" not in metadata(db_path, "ppo_high_lr")


def test_hostile_column_name_is_carried_over_harmlessly(legacy: Path, db_path: str) -> None:
    """A column name made of SQL is quoted, never executed, and kept as the metric / metadata name."""
    quoted = '"' + HOSTILE.replace('"', '""') + '"'
    conn = sqlite3.connect(legacy)
    conn.execute(f"ALTER TABLE episodes ADD COLUMN {quoted} REAL")
    conn.execute(f"ALTER TABLE experiments ADD COLUMN {quoted} TEXT")
    conn.execute(f"UPDATE episodes SET {quoted} = episode_num * 2 WHERE experiment_id = 2")
    conn.execute(f"UPDATE experiments SET {quoted} = 'payload' WHERE id = 2")
    conn.commit()
    conn.close()
    before = sha256(legacy)
    report = migrate_legacy(str(legacy), db_path)
    assert report.carried_columns == {"experiments": [HOSTILE], "episodes": [HOSTILE]}
    assert rows(db_path, "SELECT COUNT(*) FROM experiments") == [(4,)]
    assert legacy_rows(legacy, "SELECT COUNT(*) FROM experiments") == [(4,)]
    assert sha256(legacy) == before
    history = MetricsLogger(db_path).get_metric_history(target_id(db_path, "ppo_high_lr"), HOSTILE)
    assert [h["value"] for h in history] == [2.0 * n for n in range(150)]
    assert metadata(db_path, "ppo_high_lr")[HOSTILE] == "payload"
    assert any(repr(HOSTILE) in line for line in report.lines())


def test_sparse_legacy_file_uses_what_exists(tmp_path: Path, db_path: str) -> None:
    """A file with only a few experiments columns and no other tables imports with the documented defaults."""
    path = tmp_path / "sparse.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE experiments (id INTEGER PRIMARY KEY, name TEXT, start_time TEXT, end_time TEXT)")
    conn.executemany(
        "INSERT INTO experiments VALUES (?, ?, ?, ?)",
        [(3, None, "2023-11-02T10:00:00", "2023-11-02T10:00:30.5"), (5, "dqn", "2023-11-03 10:00:00", None)],
    )
    conn.commit()
    conn.close()
    report = migrate_legacy(str(path), db_path)
    assert report.experiments_imported == 2
    assert report.missing_tables == ["episodes", "regime_analysis", "hyperparameters"]
    assert "status" in report.missing_columns["experiments"]
    got = rows(db_path, "SELECT name, status, duration_seconds, created_at, updated_at, metadata FROM experiments ORDER BY id")
    assert got == [
        ("legacy experiment 3", "completed", 30.5, "2023-11-02T10:00:00", "2023-11-02T10:00:00",
         f'{{"legacy":{{"source":"{path}","experiment_id":3}}}}'),
        ("dqn", "running", None, "2023-11-03 10:00:00", "2023-11-03 10:00:00",
         f'{{"legacy":{{"source":"{path}","experiment_id":5}}}}'),
    ]
    assert rows(db_path, "SELECT COUNT(*) FROM hyperparameters") == [(0,)]
    assert rows(db_path, "SELECT legacy_key FROM legacy_imports ORDER BY experiment_id") == [
        ('[3,null,"2023-11-02T10:00:00"]',), ('[5,"dqn","2023-11-03 10:00:00"]',),
    ]
    assert migrate_legacy(str(path), db_path).experiments_unchanged == 2


# -- errors and the existing database --------------------------------------------------------------


def test_file_without_experiments_table_is_refused_and_target_untouched(tmp_path: Path, db_path: str) -> None:
    """No experiments table, or not SQLite at all: LegacyFormatError, and the target is not touched."""
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE episodes (id INTEGER PRIMARY KEY, experiment_id INTEGER, train_return REAL)")
    conn.commit()
    conn.close()
    text = tmp_path / "notes.db"
    text.write_text("these are not the experiments you are looking for\n" * 20)
    for path in (other, text):
        with pytest.raises(LegacyFormatError):
            migrate_legacy(str(path), db_path)
        assert not os.path.exists(db_path)
    with ExperimentTracker(db_path) as tracker:
        tracker.start_experiment("existing")
        tracker.end_experiment()
    before = sha256(db_path)
    with pytest.raises(LegacyFormatError, match="no experiments table"):
        migrate_legacy(str(other), db_path)
    assert sha256(db_path) == before


def test_missing_legacy_file_raises_file_not_found(tmp_path: Path, db_path: str) -> None:
    """A path that does not exist names itself in a FileNotFoundError."""
    missing = tmp_path / "nowhere" / "experiments.db"
    with pytest.raises(FileNotFoundError, match="legacy experiments database not found") as info:
        migrate_legacy(str(missing), db_path)
    assert info.value.filename == str(missing)
    assert not os.path.exists(db_path)


def test_swapped_arguments_are_refused(legacy: Path, db_path: str) -> None:
    """Neither a library database as the source nor the legacy file (or a copy) as the target is accepted."""
    with ExperimentTracker(db_path) as tracker:
        tracker.start_experiment("existing")
        tracker.end_experiment()
    legacy_hash = sha256(legacy)
    with pytest.raises(LegacyFormatError, match="ml_persistence database"):
        migrate_legacy(db_path, str(legacy))
    with pytest.raises(InvalidValueError, match="is the legacy file itself"):
        migrate_legacy(str(legacy), str(legacy))
    copy = legacy.parent / "copy.db"
    shutil.copyfile(legacy, copy)
    with pytest.raises(schema.SchemaError, match="looks like a legacy"):
        migrate_legacy(str(legacy), str(copy))
    assert sha256(legacy) == sha256(copy) == legacy_hash


def test_existing_library_database_keeps_its_data(legacy: Path, db_path: str) -> None:
    """Importing into a database the library already wrote adds experiments beside the existing one."""
    with ExperimentTracker(db_path) as tracker:
        existing = tracker.start_experiment("sac_live", experiment_type="rl", tags=["prod"], metadata={"owner": "me"})
        tracker.log_hyperparameters_batch({"tau": 0.005, "batch_size": 256})
        for step in range(50):
            tracker.log_metric("train_return", step * 0.1, episode=step)
        tracker.end_experiment()
    report = migrate_legacy(str(legacy), db_path)
    assert report.experiments_imported == 4
    old = ExperimentTracker(db_path).get_experiment(existing)
    assert (old["name"], old["tags"], old["metadata"], old["hyperparameters"]) == (
        "sac_live", ["prod"], {"owner": "me"}, {"tau": 0.005, "batch_size": 256},
    )
    history = MetricsLogger(db_path).get_metric_history(existing, "train_return")
    assert [h["value"] for h in history] == [step * 0.1 for step in range(50)]
    assert {r[0] for r in rows(db_path, "SELECT experiment_id FROM legacy_imports")}.isdisjoint({existing})
    assert rows(db_path, "SELECT COUNT(*) FROM experiments") == [(5,)]


def test_a_failure_midway_imports_nothing(legacy: Path, db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole import is one transaction: an error on the last experiment leaves the target as it was."""
    from ml_persistence import validate

    migrate_legacy(str(build_legacy(legacy.parent / "first.db", seed=1)), db_path)
    before = counts(db_path)
    real = validate.hyperparameter
    calls = {"n": 0}

    def failing(name: Any, value: Any) -> tuple[str, Optional[str], str]:
        calls["n"] += 1
        if calls["n"] > 3 * (4 + len(LEGACY_PARAMS)) + 1:  # the fourth experiment (ppo_high_lr has one more)
            raise RuntimeError("disk on fire")
        return real(name, value)

    conn = sqlite3.connect(legacy)
    conn.execute("UPDATE experiments SET start_time = start_time || '.5'")  # other keys: all four are new
    conn.commit()
    conn.close()
    monkeypatch.setattr(validate, "hyperparameter", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        migrate_legacy(str(legacy), db_path)
    assert counts(db_path) == before
    monkeypatch.setattr(validate, "hyperparameter", real)
    assert migrate_legacy(str(legacy), db_path).experiments_imported == 4


def test_report_lines_state_one_fact_each(legacy: Path, db_path: str) -> None:
    """lines() gives the source, target and every count on its own line."""
    report = migrate_legacy(str(legacy), db_path)
    assert isinstance(report, LegacyReport)
    lines = report.lines()
    assert lines[:10] == [
        f"source: {legacy.resolve()}",
        f"target: {os.path.abspath(db_path)}",
        "experiments imported: 4",
        "experiments updated with new rows: 0",
        "experiments already imported, unchanged: 0",
        f"metric rows inserted: {report.metrics}",
        f"hyperparameters inserted: {report.hyperparameters}",
        "datasets created: 4",
        "dataset links inserted: 6",
        "regime_analysis rows carried over: 11",
    ]
    assert report.metrics == rows(db_path, "SELECT COUNT(*) FROM metrics")[0][0]
