"""`ml-persistence sync SRC DST` (issue 15), table-driven: what lands in DST, counted row by row.

Every source is written by the real API (ExperimentTracker, ModelRegistry, DatasetManager), plus the
few rows the API cannot write (a hyperparameter tied to a model, a dataset without version or split),
inserted with SQL as an older file would hold them. Each test compares SRC and DST experiment by
experiment (found by uuid): the experiment row, and the multiset of every owned row with its model
reference replaced by that model's content, so a lost, duplicated or mis-mapped row is seen; and it
counts every table of DST, so no row lands twice or outside its experiment. Syncs go through the
Python API here (tests/test_sync_faults.py runs the command line); the selection tests run both.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import pytest

import ml_persistence
from contract_helpers import GUARD, child_env, children, engine_of, execute  # noqa: F401
from ml_persistence import DatasetManager, ExperimentTracker, ModelRegistry

OWNED = ("models", "hyperparameters", "metrics", "artifacts", "experiment_datasets")
ALL_TABLES = ("experiments",) + OWNED + ("datasets",)
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


# -- reading either engine -----------------------------------------------------------------------------

def query(db: str, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple]]:
    """Run one query (``?`` placeholders) on either engine's database; return (column names, rows)."""
    if engine_of(db) == "postgresql":
        import psycopg

        with psycopg.connect(db, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql.replace("?", "%s"), tuple(params))
            return [d.name for d in cur.description], cur.fetchall()
    conn = sqlite3.connect(db)
    try:
        cur = conn.execute(sql, tuple(params))
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        conn.close()


def scalar(db: str, sql: str, params: Sequence[Any] = ()) -> Any:
    return query(db, sql, params)[1][0][0]


def norm(value: Any) -> Any:
    """A stored value made comparable: NaN equal to NaN (both engines store it as NULL, this is belt and braces)."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def counts(db: str) -> dict[str, int]:
    """Rows per copied table in the whole database."""
    return {t: scalar(db, f"SELECT COUNT(*) FROM {t}") for t in ALL_TABLES}


def experiment_ids(db: str) -> list[int]:
    return [i for (i,) in query(db, "SELECT id FROM experiments ORDER BY id")[1]]


def uuid_of(db: str, experiment_id: int) -> str:
    return scalar(db, "SELECT uuid FROM experiments WHERE id = ?", (experiment_id,))


def id_by_uuid(db: str, uuid: str) -> int:
    found = query(db, "SELECT id FROM experiments WHERE uuid = ?", (uuid,))[1]
    assert len(found) == 1, f"{len(found)} experiments with uuid {uuid} in {db}"
    return found[0][0]


def owned_counts(db: str, experiment_id: int) -> dict[str, int]:
    return {t: scalar(db, f"SELECT COUNT(*) FROM {t} WHERE experiment_id = ?", (experiment_id,)) for t in OWNED}


def _keyed(columns: list[str], row: tuple, drop: Iterable[str]) -> tuple:
    d = dict(zip(columns, row))
    return tuple((c, norm(d[c])) for c in sorted(d) if c not in drop)


def snapshot(db: str, experiment_id: int, *, dataset_rows: bool = True) -> dict[str, Any]:
    """Everything one experiment owns, independent of the database's ids.

    The experiment row (all columns but id); a multiset per owned table of its rows (all columns
    but id and experiment_id), each model_id replaced by the referenced model's own content; the
    dataset links as (name, version, split_type, usage_type) and, with ``dataset_rows``, the linked
    datasets' full rows.
    """
    cols, found = query(db, "SELECT * FROM experiments WHERE id = ?", (experiment_id,))
    assert len(found) == 1, (db, experiment_id)
    out: dict[str, Any] = {"experiment": dict(_keyed(cols, found[0], ("id",)))}
    cols, models = query(db, "SELECT * FROM models WHERE experiment_id = ?", (experiment_id,))
    model_key = {}
    for row in models:
        model_key[dict(zip(cols, row))["id"]] = _keyed(cols, row, ("id", "experiment_id"))
    out["models"] = Counter(model_key.values())
    for table in ("hyperparameters", "metrics", "artifacts"):
        cols, found = query(db, f"SELECT * FROM {table} WHERE experiment_id = ?", (experiment_id,))
        at = cols.index("model_id")
        rows_ = Counter()
        for row in found:
            row = list(row)
            if row[at] is not None:
                row[at] = model_key.get(row[at], ("model of another experiment or none",))
            rows_[_keyed(cols, tuple(row), ("id", "experiment_id"))] += 1
        out[table] = rows_
    cols, found = query(db, "SELECT d.*, l.usage_type AS link_usage FROM experiment_datasets l "
                            "LEFT JOIN datasets d ON d.id = l.dataset_id WHERE l.experiment_id = ?", (experiment_id,))
    out["links"] = Counter((r["name"], r["version"], r["split_type"], r["link_usage"])
                           for r in (dict(zip(cols, row)) for row in found))
    if dataset_rows:
        out["datasets"] = Counter(_keyed(cols, row, ("id",)) for row in found)
    return out


def assert_same(src: str, dst: str, src_id: int, *, dataset_rows: bool = True) -> int:
    """Assert the experiment src_id of SRC is in DST once, with exactly the same rows; return its DST id."""
    uuid = uuid_of(src, src_id)
    assert uuid and UUID4.match(uuid), uuid
    dst_id = id_by_uuid(dst, uuid)
    a = snapshot(src, src_id, dataset_rows=dataset_rows)
    b = snapshot(dst, dst_id, dataset_rows=dataset_rows)
    for part in a:
        if isinstance(a[part], Counter):
            missing, extra = a[part] - b[part], b[part] - a[part]
            assert not missing and not extra, (
                f"{part} of experiment {src_id} (uuid {uuid}): {sum(a[part].values())} rows in SRC, "
                f"{sum(b[part].values())} in DST; missing in DST (first 3): {list(missing)[:3]}; "
                f"not in SRC (first 3): {list(extra)[:3]}")
        else:
            assert a[part] == b[part], (part, {k: (a[part][k], b[part].get(k)) for k in a[part]
                                               if a[part][k] != b[part].get(k)})
    assert owned_counts(src, src_id) == owned_counts(dst, dst_id)
    return dst_id


def assert_whole_target(dst: str, sources: Sequence[tuple[str, Sequence[int]]], before: Optional[dict] = None) -> None:
    """DST holds exactly the rows of these source experiments on top of ``before``: none twice, none stray."""
    before = before or dict.fromkeys(ALL_TABLES, 0)
    expected = dict(before)
    expected["experiments"] += sum(len(ids) for _, ids in sources)
    for src, ids in sources:
        for i in ids:
            for table, n in owned_counts(src, i).items():
                expected[table] += n
    got = counts(dst)
    assert {t: got[t] for t in ALL_TABLES if t != "datasets"} == {t: expected[t] for t in ALL_TABLES if t != "datasets"}
    dupes = query(dst, "SELECT name, version, split_type, COUNT(*) FROM datasets "
                       "GROUP BY name, version, split_type HAVING COUNT(*) > 1")[1]
    assert not dupes, f"datasets stored more than once in DST (NULL = NULL): {dupes}"
    dangling = query(dst, "SELECT COUNT(*) FROM experiment_datasets l LEFT JOIN datasets d ON d.id = l.dataset_id "
                          "WHERE d.id IS NULL")[1][0][0]
    assert dangling == 0, "links to datasets missing from DST"
    for table in OWNED:
        stray = scalar(dst, f"SELECT COUNT(*) FROM {table} t LEFT JOIN experiments e ON e.id = t.experiment_id "
                            "WHERE e.id IS NULL")
        assert stray == 0, f"{stray} {table} rows of no experiment in DST"
    for table in ("hyperparameters", "metrics", "artifacts"):
        crossed = scalar(dst, f"SELECT COUNT(*) FROM {table} t LEFT JOIN models m ON m.id = t.model_id "
                              "WHERE t.model_id IS NOT NULL AND (m.id IS NULL OR m.experiment_id <> t.experiment_id)")
        assert crossed == 0, f"{crossed} {table} rows of DST point at a model that is not their experiment's"


# -- making sources with the real API --------------------------------------------------------------------

def _model_rows_the_api_cannot_write(db: str, experiment_id: int, model_id: int) -> None:
    """A hyperparameter tied to a model and a dataset with neither version nor split, as older files hold them."""
    execute(db, "INSERT INTO hyperparameters (experiment_id, model_id, param_name, param_value, param_type, created_at) "
                "VALUES (?, ?, 'dropout', '0.1', 'float', '2024-02-03 04:05:06.000007')", (experiment_id, model_id))
    execute(db, "INSERT INTO hyperparameters (experiment_id, model_id, param_name, param_value, param_type, created_at) "
                "VALUES (?, ?, 'dropout', '0.1', 'float', '2024-02-03 04:05:06.000007')", (experiment_id, model_id))
    if not query(db, "SELECT id FROM datasets WHERE name = 'raw-ticks' AND version IS NULL AND split_type IS NULL")[1]:
        execute(db, "INSERT INTO datasets (name, version, split_type, num_samples, created_at) "
                    "VALUES ('raw-ticks', NULL, NULL, 7, '2024-01-01 00:00:00.000000')")
    (raw,) = query(db, "SELECT id FROM datasets WHERE name = 'raw-ticks' AND version IS NULL AND split_type IS NULL")[1][0]
    execute(db, "INSERT INTO experiment_datasets (experiment_id, dataset_id, usage_type) VALUES (?, ?, 'raw')",
            (experiment_id, raw))


def populate(db: str, name: str = "ppo", *, tags: Sequence[str] = ("rl",), episodes: int = 60, seed: int = 0,
             end: bool = True, capture_environment: bool = False) -> int:
    """One experiment as the seed's README trains it; return its id in db."""
    t = ExperimentTracker(db, capture_environment=capture_environment)
    exp = t.start_experiment(name, experiment_type="rl", description=f"{name} on BTC-USD", tags=list(tags),
                             random_seed=seed, metadata={"asset": "BTC-USD", "seed": seed})
    t.log_hyperparameters_batch({"learning_rate": 3e-4, "gamma": 0.99, "batch_size": 128, "layers": [64, 64],
                                 "scheduler": None, "optimizer": {"name": "adam", "eps": 1e-8}, "name": name})
    dm = DatasetManager(db)
    train = dm.register_dataset("BTC-USD-Daily", "2023-2024", split_type="train", start_date="2023-01-01",
                                end_date="2023-12-31", num_samples=365, feature_columns=["open", "close"])
    val = dm.register_dataset("BTC-USD-Daily", "2023-2024", split_type="val", num_samples=90)
    features = dm.register_dataset(f"{name}-features", "1")  # no split
    for dataset, usage in ((train, "train"), (val, "val"), (features, "features"), (train, "pretrain")):
        dm.link_dataset_to_experiment(exp, dataset, usage)
    registry = ModelRegistry(db)
    models = []
    best = -math.inf
    for episode in range(episodes):
        ret = math.sin(episode / 7 + seed) * 10 + episode / 10
        t.log_metrics_batch({"train_return": ret, "train_reward": ret / 2, "policy_loss": 1 / (episode + 1),
                             "value_loss": 2 / (episode + 1)}, episode=episode)
        if episode % 20 == 0:
            val_sharpe = ret / 5
            model = registry.register_model(exp, f"models/{name}_ep{episode}.pth", architecture_type="ppo",
                                            state_dim=43, action_dim=3, episode_num=episode, val_metric=val_sharpe,
                                            is_best=val_sharpe > best, metadata={"episode": episode})
            best = max(best, val_sharpe)
            models.append(model)
            t.log_metric("val_sharpe", val_sharpe, episode=episode, split="val", model_id=model)
            t.log_artifact(f"plots/{name}_ep{episode}.png", "plot", model_id=model, description="equity curve")
    models.append(registry.register_model(exp, f"models/{name}_final.pth", version="v7", is_best=False,
                                          test_metric=1.25, hyperparameters={"lr": 3e-4}))
    models.append(registry.register_model(exp, f"models/{name}_final.pth", is_best=True))  # same name: next version
    for step, value in enumerate((math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324)):
        t.log_metric("edge", value, step=step)
    t.log_metrics_batch({"nan_loss": math.nan, "inf_loss": math.inf, "neg_inf": -math.inf}, step=99, epoch=3, split="test")
    t.log_metric("action_distribution", 0.0, episode=1, value_json={"hold": 0.5, "buy": 0.3, "sell": 0.2},
                 metadata={"regime": "bull"}, phase="eval")
    t.log_artifact("logs/train.log", "log", artifact_name="train log")
    t.log_artifact("config.yaml")
    t.flush()
    _model_rows_the_api_cannot_write(db, exp, models[1])
    if end:
        t.end_experiment(notes=f"{name} done")
    return exp


def do_sync(src: str, dst: str, *, dry_run: bool = False, **selection: Any):
    from ml_persistence.sync import Selection, sync

    report = sync(src, dst, Selection(**selection), dry_run=dry_run)
    print(json.dumps(report.to_dict(), default=str)[:4000])
    return report


def copied(report: Any) -> dict[str, int]:
    """The report's totals, every table present ("experiments": rows created or updated)."""
    totals = report.totals()
    return {t: totals.get(t, 0) for t in ALL_TABLES}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {t: after[t] - before[t] for t in ALL_TABLES}


def cli_sync(src: str, dst: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "ml_persistence", "sync", src, dst, *args], cwd=cwd, env=child_env(),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    print(f"sync {' '.join(args)} -> {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return done


@pytest.fixture
def pg(pg_db: str) -> Iterator[str]:
    """pg_db, with this process's trackers closed before the database is dropped (not at exit, against no database)."""
    yield pg_db
    ml_persistence.shutdown(timeout=30)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """DST: a SQLite path that does not exist yet, or a fresh, empty PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "team.db")
    return request.getfixturevalue("pg")


@pytest.fixture
def source(tmp_path: Path) -> str:
    return str(tmp_path / "laptop.db")


# -- full copy, then nothing ------------------------------------------------------------------------------

def test_full_copy_of_several_experiments_then_a_second_sync_copies_nothing(source: str, target: str) -> None:
    ids = [populate(source, "ppo", seed=1, capture_environment=True), populate(source, "sac", seed=2),
           populate(source, "dqn", seed=3, episodes=5)]
    before_src = counts(source)
    report = do_sync(source, target)
    assert counts(source) == before_src
    for i in ids:
        assert_same(source, target, i)
    assert_whole_target(target, [(source, ids)])
    after = counts(target)
    assert copied(report) == after, "the report's totals are the rows that landed"
    assert sorted(e.source_id for e in report.experiments) == ids
    for e in report.experiments:
        assert e.action == "created" and e.status == "completed" and e.ended and not any(e.pending.values()), e
        assert e.uuid == uuid_of(source, e.source_id) and e.target_id == id_by_uuid(target, e.uuid)
    # is_best and versions, spelled out
    for i in ids:
        dst_id = id_by_uuid(target, uuid_of(source, i))
        marks = query(target, "SELECT name, version, is_best FROM models WHERE experiment_id = ? ORDER BY id", (dst_id,))[1]
        assert marks == query(source, "SELECT name, version, is_best FROM models WHERE experiment_id = ? ORDER BY id",
                              (i,))[1]
        assert any(b == 1 for _, _, b in marks) and ("v7" in [v for _, v, _ in marks])
    # the datasets shared by the three runs landed once each
    assert counts(target)["datasets"] == 2 + 3 + 1  # BTC train/val, three *-features, raw-ticks

    again = do_sync(source, target)
    assert copied(again) == dict.fromkeys(ALL_TABLES, 0)
    assert counts(target) == after
    assert [e.action for e in again.experiments] == ["unchanged"] * 3
    for i in ids:
        assert_same(source, target, i)


def test_dry_run_writes_nothing_and_counts_what_would_be_copied(source: str, target: str, tmp_path: Path) -> None:
    ids = [populate(source, "ppo"), populate(source, "sac", seed=2)]
    before = Path(source).read_bytes()
    report = do_sync(source, target, dry_run=True)
    assert Path(source).read_bytes() == before
    if engine_of(target) == "sqlite":
        assert not Path(target).exists() or counts(target)["experiments"] == 0
    else:
        assert not query(target, "SELECT 1 FROM information_schema.tables WHERE table_name = 'metrics'")[1] or \
            counts(target)["experiments"] == 0
    expected = {t: sum(owned_counts(source, i)[t] for i in ids) for t in OWNED}
    assert {t: copied(report)[t] for t in OWNED} == expected
    real = do_sync(source, target)
    assert {t: copied(real)[t] for t in OWNED} == expected


# -- incremental ---------------------------------------------------------------------------------------------

TRAINER = """
import sys
from ml_persistence import ExperimentTracker, ModelRegistry
db = sys.argv[1]
t = ExperimentTracker(db)
exp = t.start_experiment("live", experiment_type="rl", tags=["live"])
t.log_hyperparameters_batch({"lr": 0.1, "gamma": 0.9})
step = 0
def chunk(n):
    global step
    for _ in range(n):
        t.log_metrics_batch({"loss": 1.0 / (step + 1), "reward": float(step)}, step=step)
        step += 1
    t.flush()
chunk(1000)
print("logged", exp, step, flush=True)
while True:
    command = sys.stdin.readline().strip()
    if command == "more":
        model = ModelRegistry(db).register_model(exp, f"ckpt_{step}.pth", is_best=True, global_step=step)
        t.log_metric("val_loss", float("nan"), step=step, model_id=model)
        t.log_artifact(f"ckpt_{step}.png", model_id=model)
        chunk(500)
        print("logged", exp, step, flush=True)
    elif command == "end":
        t.end_experiment(notes="finished")
        print("ended", exp, flush=True)
        break
"""


def test_incremental_sync_of_a_running_trainer_copies_only_new_rows(tmp_path: Path, source: str, target: str,
                                                                    children) -> None:
    trainer = children.start(tmp_path, TRAINER, source, name="trainer.py", env=child_env())
    exp = int(trainer.line("logged").split()[0])
    first = do_sync(source, target)
    assert copied(first)["metrics"] == 2000 and copied(first)["hyperparameters"] == 2
    (report,) = first.experiments
    assert report.action == "created" and report.status == "running" and not report.ended
    dst_id = assert_same(source, target, exp)
    assert scalar(target, "SELECT status FROM experiments WHERE id = ?", (dst_id,)) == "running"

    for round_ in range(2):
        before = counts(target)
        trainer.send("more")
        trainer.line("logged")
        report = do_sync(source, target)
        assert copied(report) == delta(counts(target), before)
        assert {t: copied(report)[t] for t in ALL_TABLES} == {
            "experiments": 0, "models": 1, "hyperparameters": 0, "metrics": 1001, "artifacts": 1,
            "experiment_datasets": 0, "datasets": 0}, f"round {round_}"
        assert_same(source, target, exp)
        assert_whole_target(target, [(source, [exp])])

    trainer.send("end")
    trainer.line("ended")
    assert trainer.wait() == 0, trainer.describe()
    before = counts(target)
    last = do_sync(source, target)
    (report,) = last.experiments
    assert report.action == "updated" and report.status == "completed" and report.ended, report
    assert copied(last) == dict(dict.fromkeys(ALL_TABLES, 0), experiments=1) and counts(target) == before
    assert_same(source, target, exp)  # status, end_time, duration, notes followed
    final = do_sync(source, target)
    assert [e.action for e in final.experiments] == ["unchanged"] and copied(final) == dict.fromkeys(ALL_TABLES, 0)


def test_resumed_run_logs_more_and_only_the_new_rows_are_copied(source: str, target: str) -> None:
    exp = populate(source, "ppo")
    other = populate(source, "sac", seed=2)
    do_sync(source, target)
    synced = counts(target)

    t = ExperimentTracker(source, capture_environment=False)
    t.resume_experiment(exp)
    for step in range(100, 400):
        t.log_metrics_batch({"train_return": float(step), "edge": -math.inf}, episode=step)
    t.log_hyperparameters_batch({"resumed": True})
    model = ModelRegistry(source).register_model(exp, "models/resumed.pth", is_best=True, version="2.0")
    t.log_metric("val_sharpe", 3.0, episode=400, model_id=model)
    t.log_artifact("plots/resumed.png", model_id=model)
    dm = DatasetManager(source)
    dm.link_dataset_to_experiment(exp, dm.register_dataset("BTC-USD-Daily", "2023-2024", split_type="test"), "test")
    dm.link_dataset_to_experiment(exp, dm.register_dataset("BTC-USD-Daily", "2023-2024", split_type="val"), "eval")
    t.end_experiment(notes="resumed and done")

    report = do_sync(source, target)
    assert copied(report) == dict(delta(counts(target), synced), experiments=1)  # one updated
    assert copied(report) == {"experiments": 1, "models": 1, "hyperparameters": 1, "metrics": 601, "artifacts": 1,
                              "experiment_datasets": 2, "datasets": 1}
    actions = {e.source_id: e.action for e in report.experiments}
    assert actions == {exp: "updated", other: "unchanged"}
    assert_same(source, target, exp)
    assert_same(source, target, other)
    assert_whole_target(target, [(source, [exp, other])])
    assert copied(do_sync(source, target)) == dict.fromkeys(ALL_TABLES, 0)


# -- datasets --------------------------------------------------------------------------------------------------

def test_a_dataset_already_in_target_is_linked_not_duplicated(source: str, target: str) -> None:
    # DST already knows two of the source's datasets (one with neither version nor split), from its own run.
    t = ExperimentTracker(target, capture_environment=False)
    own = t.start_experiment("team run")
    dm = DatasetManager(target)
    btc = dm.register_dataset("BTC-USD-Daily", "2023-2024", split_type="train", num_samples=999)
    dm.link_dataset_to_experiment(own, btc, "train")
    t.end_experiment()
    execute(target, "INSERT INTO datasets (name, version, split_type, num_samples) VALUES ('raw-ticks', NULL, NULL, 1)")
    raw = scalar(target, "SELECT id FROM datasets WHERE name = 'raw-ticks'")
    before = counts(target)

    exp = populate(source, "ppo")
    report = do_sync(source, target)
    dst_id = assert_same(source, target, exp, dataset_rows=False)  # links compared by (name, version, split, usage)
    assert_whole_target(target, [(source, [exp])], before)
    # only BTC val and ppo-features were new
    assert counts(target)["datasets"] == before["datasets"] + 2
    assert copied(report)["datasets"] == 2
    linked = dict(query(target, "SELECT usage_type, dataset_id FROM experiment_datasets WHERE experiment_id = ?",
                        (dst_id,))[1])
    assert linked["train"] == linked["pretrain"] == btc and linked["raw"] == raw
    assert scalar(target, "SELECT num_samples FROM datasets WHERE id = ?", (btc,)) == 999  # DST's row is kept


def test_datasets_with_null_version_and_split_match_each_other(source: str, target: str, tmp_path: Path) -> None:
    """Two sources, each with ('raw-ticks', NULL, NULL) and ('x-features', '1', NULL): one row each in DST."""
    other = str(tmp_path / "other.db")
    a = populate(source, "x")
    b = populate(other, "x")
    do_sync(source, target)
    do_sync(other, target)
    assert_same(source, target, a)
    assert_same(other, target, b, dataset_rows=False)
    assert_whole_target(target, [(source, [a]), (other, [b])])
    assert query(target, "SELECT COUNT(*) FROM datasets WHERE name = 'raw-ticks' AND version IS NULL "
                         "AND split_type IS NULL")[1] == [(1,)]
    assert query(target, "SELECT COUNT(*) FROM datasets WHERE name = 'x-features' AND split_type IS NULL")[1] == [(1,)]
    assert counts(target)["datasets"] == 4


def test_a_target_holding_the_same_dataset_twice_links_one_of_them(source: str, target: str) -> None:
    """UNIQUE(name, version, split_type) lets NULLs repeat: DST may hold ('raw-ticks', NULL, NULL) twice already."""
    t = ExperimentTracker(target, capture_environment=False)
    t.start_experiment("team run")
    t.end_experiment()
    for _ in range(2):
        execute(target, "INSERT INTO datasets (name, version, split_type) VALUES ('raw-ticks', NULL, NULL)")
    twins = {i for (i,) in query(target, "SELECT id FROM datasets WHERE name = 'raw-ticks'")[1]}
    exp = populate(source, "ppo", episodes=5)
    do_sync(source, target)
    dst_id = assert_same(source, target, exp, dataset_rows=False)
    assert query(target, "SELECT COUNT(*) FROM datasets WHERE name = 'raw-ticks'")[1] == [(2,)]
    (linked,) = query(target, "SELECT dataset_id FROM experiment_datasets WHERE experiment_id = ? AND usage_type = 'raw'",
                      (dst_id,))[1]
    assert linked[0] in twins


def test_a_seed_original_sqlite_target_is_upgraded_and_keeps_its_rows(source: str, tmp_path: Path) -> None:
    from test_schema import ORIGINAL

    team = str(tmp_path / "team-v0.db")
    conn = sqlite3.connect(team)
    conn.executescript(ORIGINAL)
    conn.close()
    old = snapshot(team, 1)
    old_rows = owned_counts(team, 1)
    before = counts(team)
    exp = populate(source, "ppo")
    report = do_sync(source, team)
    assert [e.action for e in report.experiments] == ["created"]
    assert_same(source, team, exp)
    assert_whole_target(team, [(source, [exp])], before)
    kept = snapshot(team, 1)
    assert UUID4.match(kept["experiment"].pop("uuid") or "")
    for column in set(kept["experiment"]) - set(old["experiment"]):
        assert kept["experiment"].pop(column) is None, column  # columns the upgrade added: empty
    assert kept["experiment"] == old["experiment"] and kept["links"] == old["links"]
    assert owned_counts(team, 1) == old_rows
    settled = counts(team)
    assert copied(do_sync(source, team)) == dict.fromkeys(ALL_TABLES, 0) and counts(team) == settled


# -- selection ------------------------------------------------------------------------------------------------

SELECTIONS = [
    ("experiment", {"experiments": [2, 3]}, ["--experiment", "2", "--experiment", "3"], ["sac", "dqn"]),
    ("since-date", {"since": "2024-01-01"}, ["--since", "2024-01-01"], ["sac", "dqn"]),
    ("since-time", {"since": "2023-06-01 12:00:01"}, ["--since", "2023-06-01 12:00:01"], ["sac", "dqn"]),
    ("since-time-inclusive", {"since": "2023-06-01 12:00"}, ["--since", "2023-06-01 12:00"], ["ppo", "sac", "dqn"]),
    ("tag", {"tags": ["btc"]}, ["--tag", "btc"], ["ppo", "sac"]),
    ("tags-all", {"tags": ["btc", "sac"]}, ["--tag", "btc", "--tag", "sac"], ["sac"]),
    ("tag-and-experiment", {"tags": ["btc"], "experiments": [2, 3]}, ["--tag", "btc", "--experiment", "2",
                                                                      "--experiment", "3"], ["sac"]),
    ("nothing", {"tags": ["nope"]}, ["--tag", "nope"], []),
]


@pytest.mark.parametrize("via", ["api", "cli"])
@pytest.mark.parametrize("case,selection,argv,names", SELECTIONS, ids=[s[0] for s in SELECTIONS])
def test_selection(case: str, selection: dict, argv: list[str], names: list[str], via: str, source: str,
                   target: str, tmp_path: Path) -> None:
    ids = {"ppo": populate(source, "ppo", tags=["rl", "btc"], episodes=10),
           "sac": populate(source, "sac", tags=["rl", "btc", "sac"], episodes=10),
           "dqn": populate(source, "dqn", tags=["rl", "eth"], episodes=10)}
    assert list(ids.values()) == [1, 2, 3]
    execute(source, "UPDATE experiments SET start_time = '2023-06-01 12:00:00.000000' WHERE id = 1")
    if via == "api":
        report = do_sync(source, target, **selection)
        assert sorted(e.source_id for e in report.experiments) == sorted(ids[n] for n in names)
    else:
        done = cli_sync(source, target, *argv, "--json", cwd=tmp_path)
        assert done.returncode == 0 and "Traceback" not in done.stderr
        summary = json.loads(done.stdout)
        assert isinstance(summary, dict)
    chosen = [ids[n] for n in names]
    if not names:
        assert engine_of(target) == "postgresql" or not Path(target).exists() or counts(target)["experiments"] == 0
        return
    assert sorted(name for (name,) in query(target, "SELECT name FROM experiments")[1]) == sorted(names)
    for i in chosen:
        assert_same(source, target, i)
    assert_whole_target(target, [(source, chosen)])


# -- identity: two sources, relays, round trips ------------------------------------------------------------

def test_two_source_files_with_the_same_names_and_ids_land_as_two_experiments(tmp_path: Path, target: str) -> None:
    laptops = [str(tmp_path / f"laptop{i}.db") for i in range(2)]
    for db in laptops:
        assert populate(db, "ppo", seed=0) == 1  # same name, same id, same seed
    uuids = [uuid_of(db, 1) for db in laptops]
    assert uuids[0] != uuids[1]
    for db in laptops:
        report = do_sync(db, target)
        assert [e.action for e in report.experiments] == ["created"]
    for db in laptops:
        assert_same(db, target, 1, dataset_rows=False)
    assert_whole_target(target, [(laptops[0], [1]), (laptops[1], [1])])
    assert sorted(u for (u,) in query(target, "SELECT uuid FROM experiments")[1]) == sorted(uuids)
    for db in laptops:  # and again: nothing
        assert copied(do_sync(db, target)) == dict.fromkeys(ALL_TABLES, 0)
    assert counts(target)["experiments"] == 2


def test_an_experiment_arriving_from_another_source_is_skipped_not_merged(tmp_path: Path, source: str,
                                                                          target: str) -> None:
    relay = str(tmp_path / "relay.db")
    exp = populate(source, "ppo")
    do_sync(source, relay)
    do_sync(source, target)
    settled = counts(target)
    report = do_sync(relay, target)  # same uuid, but DST has it from `source`, not from `relay`
    (e,) = report.experiments
    assert e.action == "skipped" and e.reason, e
    assert e.uuid == uuid_of(source, exp)
    assert copied(report) == dict.fromkeys(ALL_TABLES, 0) and counts(target) == settled

    t = ExperimentTracker(source, capture_environment=False)  # the run goes on at its origin
    t.resume_experiment(exp)
    for step in range(10):
        t.log_metric("after", float(step), step=step)
    t.end_experiment()
    assert [e.action for e in do_sync(relay, target).experiments] == ["skipped"]
    assert counts(target) == settled
    assert copied(do_sync(source, target))["metrics"] == 10
    assert_same(source, target, exp)
    assert_whole_target(target, [(source, [exp])])


def test_a_round_trip_does_not_duplicate_a_run(tmp_path: Path, source: str, target: str) -> None:
    """A run born in DST, synced to SRC and back: skipped on the way back (it started in DST)."""
    team = populate(target, "team-run")
    populate(source, "laptop-run")
    do_sync(target, source)
    before = counts(target)
    report = do_sync(source, target)
    actions = {e.name: e.action for e in report.experiments}
    assert actions == {"laptop-run": "created", "team-run": "skipped"}, actions
    assert next(e for e in report.experiments if e.name == "team-run").reason
    assert counts(target)["experiments"] == before["experiments"] + 1
    assert query(target, "SELECT COUNT(*) FROM experiments WHERE uuid = ?", (uuid_of(target, team),))[1] == [(1,)]


def test_a_metric_of_an_evaluation_run_keeps_pointing_at_the_trained_model(source: str, target: str) -> None:
    """An evaluation run logs test metrics (and an artifact) against a checkpoint of the training run."""
    train = populate(source, "train", episodes=25)
    best = scalar(source, "SELECT id FROM models WHERE experiment_id = ? AND is_best = 1 ORDER BY id DESC", (train,))
    t = ExperimentTracker(source, capture_environment=False)
    evaluation = t.start_experiment("evaluate best checkpoint", tags=["eval"])
    t.log_metric("test_sharpe", 1.7, step=0, split="test", model_id=best)
    t.log_artifact("eval/report.html", "report", model_id=best)
    t.end_experiment()
    do_sync(source, target)
    assert_same(source, target, train)
    dst_eval = id_by_uuid(target, uuid_of(source, evaluation))
    dst_train = id_by_uuid(target, uuid_of(source, train))
    path, version = query(source, "SELECT checkpoint_path, version FROM models WHERE id = ?", (best,))[1][0]
    (dst_best,) = [i for (i,) in query(target, "SELECT id FROM models WHERE experiment_id = ? AND checkpoint_path = ? "
                                               "AND version = ?", (dst_train, path, version))[1]]
    assert query(target, "SELECT metric_name, model_id FROM metrics WHERE experiment_id = ?", (dst_eval,))[1] == [
        ("test_sharpe", dst_best)], "the metric lost (or mis-mapped) its model"
    assert query(target, "SELECT artifact_path, model_id FROM artifacts WHERE experiment_id = ?", (dst_eval,))[1] == [
        ("eval/report.html", dst_best)], "the artifact lost (or mis-mapped) its model"


def test_postgresql_source_rows_committed_out_of_id_order_are_all_copied(pg: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers on one run of a PostgreSQL source (ranks joined with resume_experiment(claim=False)):
    a row whose id is lower commits after higher ones; whatever a sync does meanwhile (copy what is
    committed, wait, or give up the pass as SourceBusy), the row lands once in the end."""
    import psycopg

    from ml_persistence.postgres import sync as pg_sync

    if hasattr(pg_sync, "IN_FLIGHT_WAIT"):
        monkeypatch.setattr(pg_sync, "IN_FLIGHT_WAIT", 1.0)  # give up the pass soon: this transaction stays open
    t = ExperimentTracker(pg, capture_environment=False)
    exp = t.start_experiment("two ranks")
    for step in range(10):
        t.log_metric("loss", float(step), step=step)
    t.flush()
    dst = str(tmp_path / "copy.db")
    with psycopg.connect(pg) as rank1:  # rank 1's writer, mid-transaction: its row has an id, not yet committed
        rank1.execute("INSERT INTO metrics (experiment_id, metric_name, step, value, split, timestamp) "
                      "VALUES (%s, 'rank1_loss', 0, 0.5, 'train', '2024-01-01 00:00:00.000000')", (exp,))
        for step in range(10, 20):  # rank 0 goes on and commits rows with higher ids
            t.log_metric("loss", float(step), step=step)
        t.flush()
        try:
            do_sync(pg, dst)
        except psycopg.OperationalError as exc:  # SourceBusy: retried by --follow
            print(f"first pass given up: {exc}")
        rank1.commit()
    t.end_experiment()
    do_sync(pg, dst)
    assert_same(pg, dst, exp)
    assert_whole_target(dst, [(pg, [exp])])


def test_postgresql_source_row_of_the_newest_open_transaction_is_not_lost(pg: str, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as above with the transaction ids the other way round: rank 0's transaction began writing
    first (older xid), rank 1's (newer xid) took a row id in between, rank 0 committed higher ids. The
    snapshot's xmax then stops below rank 1's xid, so pg_snapshot_xip() does not list it."""
    import psycopg

    from ml_persistence.postgres import sync as pg_sync

    if hasattr(pg_sync, "IN_FLIGHT_WAIT"):
        monkeypatch.setattr(pg_sync, "IN_FLIGHT_WAIT", 1.0)
    t = ExperimentTracker(pg, capture_environment=False)
    exp = t.start_experiment("two ranks")
    t.log_metric("loss", 0.0, step=0)
    t.end_experiment()
    insert = ("INSERT INTO metrics (experiment_id, metric_name, step, value, split, timestamp) "
              "VALUES (%s, %s, %s, 0.5, 'train', '2024-01-01 00:00:00.000000')")
    dst = str(tmp_path / "copy.db")
    with psycopg.connect(pg) as rank0, psycopg.connect(pg) as rank1:  # two writers' transactions
        rank0.execute(insert, (exp, "rank0_loss", 1))  # rank 0 writes first: the older xid
        rank1.execute(insert, (exp, "rank1_loss", 1))  # rank 1: a newer xid, and the next row id
        rank0.execute(insert, (exp, "rank0_loss", 2))  # rank 0: a higher row id
        rank0.commit()
        try:
            do_sync(pg, dst)
        except psycopg.OperationalError as exc:  # SourceBusy: retried by --follow
            print(f"first pass given up: {exc}")
        rank1.commit()
    do_sync(pg, dst)
    assert_same(pg, dst, exp)
    assert_whole_target(dst, [(pg, [exp])])


def test_a_write_transaction_in_another_database_of_the_server_does_not_hold_up_a_postgresql_source(
        pg: str, postgres_url: str, tmp_path: Path) -> None:
    """Transaction ids are the whole server's: a long write in some other database (another team's bulk
    load, a migration) has nothing to do with this source's rows."""
    import psycopg

    from pg import fresh_database

    with fresh_database(postgres_url) as elsewhere, psycopg.connect(elsewhere) as other:
        other.execute("CREATE TABLE bulk (x int)")  # a write transaction, left open while the run logs and syncs
        other.execute("INSERT INTO bulk VALUES (1)")
        exp = populate(pg, "ppo", episodes=5)
        dst = str(tmp_path / "copy.db")
        report = do_sync(pg, dst)
        assert [e.action for e in report.experiments] == ["created"]
        assert_same(pg, dst, exp)
        other.rollback()


def test_postgresql_source_to_sqlite(pg: str, tmp_path: Path) -> None:
    ids = [populate(pg, "ppo", capture_environment=True), populate(pg, "sac", seed=2)]
    dst = str(tmp_path / "copy.db")
    report = do_sync(pg, dst)
    for i in ids:
        assert_same(pg, dst, i)
    assert_whole_target(dst, [(pg, ids)])
    assert copied(report) == counts(dst)
    assert copied(do_sync(pg, dst)) == dict.fromkeys(ALL_TABLES, 0)


def test_the_same_database_on_both_sides_is_refused(source: str, tmp_path: Path) -> None:
    from ml_persistence.sync import SyncError

    populate(source, "ppo", episodes=3)
    before = counts(source)
    with pytest.raises(SyncError):
        do_sync(source, source)
    with pytest.raises(SyncError):
        do_sync(source, str(Path(source).parent / "." / Path(source).name))
    assert counts(source) == before


# -- a file of the seed's original schema ---------------------------------------------------------------------

def test_a_v0_file_syncs_gets_uuids_and_a_second_sync_copies_nothing(tmp_path: Path, target: str) -> None:
    from test_schema import ORIGINAL

    src = str(tmp_path / "seed.db")
    conn = sqlite3.connect(src)
    conn.executescript(ORIGINAL)
    conn.executescript("""
        INSERT INTO experiments (name, experiment_type, status, start_time, tags)
          VALUES ('old run 2', 'sl', 'running', '2024-05-02 10:00:00.000000', NULL);
        INSERT INTO models (experiment_id, name, version, checkpoint_path, val_metric, is_best) VALUES
          (1, 'm', '2', 'old2.pth', 1.1, 0), (2, 'n', NULL, 'n.pth', NULL, 1);
        INSERT INTO metrics (experiment_id, model_id, metric_name, step, value, timestamp) VALUES
          (1, 1, 'val_sharpe', 3, 1.5, '2024-05-01 10:40:00.000000'),
          (1, 2, 'val_sharpe', 4, 1.1, '2024-05-01 10:41:00.000000'),
          (2, 3, 'loss', 0, 0.25, '2024-05-02 10:01:00.000000'),
          (2, NULL, 'loss', 1, 0.125, '2024-05-02 10:02:00.000000');
        INSERT INTO hyperparameters (experiment_id, model_id, param_name, param_value, param_type) VALUES
          (1, 1, 'dropout', '0.1', 'float'), (2, 3, 'dropout', '0.2', 'float'), (2, NULL, 'gamma', '0.9', 'float');
        INSERT INTO artifacts (experiment_id, model_id, artifact_type, artifact_path) VALUES
          (1, 2, 'plot', 'p.png'), (2, NULL, 'log', 'l.txt');
        INSERT INTO datasets (name, version, split_type) VALUES ('raw', NULL, NULL), ('BTC', 'v1', 'val');
        INSERT INTO experiment_datasets VALUES (1, 2, 'raw'), (2, 1, 'train'), (2, 3, 'val');
    """)
    conn.close()
    before = {t: n for t, n in counts(src).items()}
    report = do_sync(src, target)
    assert counts(src) == before
    uuids = [u for (u,) in query(src, "SELECT uuid FROM experiments ORDER BY id")[1]]
    assert len(uuids) == 2 and all(u and UUID4.match(u) for u in uuids) and uuids[0] != uuids[1], uuids
    for i in (1, 2):
        assert_same(src, target, i)
    assert_whole_target(target, [(src, [1, 2])])
    assert copied(report) == counts(target)
    # the v0 file's is_best marks are 1/0 integers, kept as they are
    assert sorted(query(target, "SELECT checkpoint_path, version, is_best FROM models")[1]) == [
        ("n.pth", None, 1), ("old.pth", None, 1), ("old2.pth", "2", 0)]

    settled = counts(target)
    again = do_sync(src, target)
    assert copied(again) == dict.fromkeys(ALL_TABLES, 0)
    assert counts(target) == settled
    assert [u for (u,) in query(src, "SELECT uuid FROM experiments ORDER BY id")[1]] == uuids
