"""Model aliases on both engines: set, move, delete, read everywhere, migrate, and the command line.

An alias names one model of the database at a time; moving it is one transaction, so a reader
polling while it moves always finds exactly one of the models it was moved between.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import ml_persistence
from agent_process import AgentProcess, short_socket
from contract_helpers import GUARD, child_env, children, cli, db_rows, engine_of, execute, ok  # noqa: F401
from ml_persistence import (AsyncModelRegistry, ExperimentTracker, InvalidTypeError, InvalidValueError,
                            ModelNotFoundError, ModelRegistry)
from ml_persistence import events as ev
from ml_persistence.sqlite import schema as sqlite_schema
from pg import pg_rows


@pytest.fixture
def db(any_db: str):
    """``any_db``, with every writer of this process stopped before the database is dropped."""
    yield any_db
    ml_persistence.shutdown(timeout=30)


def project(db: str) -> tuple[list[int], list[int]]:
    """Two experiments with two models each; return their ids."""
    tracker = ExperimentTracker(db, capture_environment=False)
    registry = ModelRegistry(db)
    experiments, models = [], []
    for name in ("ppo", "sac"):
        experiment = tracker.start_experiment(name)
        experiments.append(experiment)
        models.append(registry.register_model(experiment, f"models/{name}_a.pth", val_metric=1.0))
        models.append(registry.register_model(experiment, f"models/{name}_b.pth", val_metric=2.0, is_best=True))
        tracker.end_experiment()
    return experiments, models


def version(db: str) -> int:
    if engine_of(db) == "postgresql":
        return pg_rows(db, "SELECT version FROM ml_persistence_schema")[0][0]
    return db_rows(db, "PRAGMA user_version")[0][0]


def tables(db: str) -> set[str]:
    if engine_of(db) == "postgresql":
        return {t for (t,) in pg_rows(db, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    return {t for (t,) in db_rows(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}


# -- the Python API ---------------------------------------------------------------------------------


def test_set_move_and_delete_an_alias(db: str) -> None:
    (e1, e2), (m1, m2, m3, m4) = project(db)
    registry = ModelRegistry(db)
    assert registry.get_model_by_alias("production") is None
    assert registry.set_alias("production", m1) is None
    assert registry.get_model_by_alias("production")["id"] == m1
    registry.set_alias("production", m3)  # moved, across experiments: it names one model of the database
    found = registry.get_model_by_alias("production")
    assert found["id"] == m3 and found["aliases"] == ["production"] and found["experiment_id"] == e2
    assert registry.get_model(m1)["aliases"] == []
    registry.set_alias("champion", m3)
    registry.set_alias("Champion", m2)  # names are case-sensitive
    assert registry.get_model(m3)["aliases"] == ["champion", "production"]
    assert registry.delete_alias("champion") is True
    assert registry.delete_alias("champion") is False
    assert registry.get_model_by_alias("champion") is None
    assert registry.get_model(m3)["aliases"] == ["production"]
    assert [(a["alias"], a["model_id"], a["experiment_id"]) for a in registry.list_aliases()] == [
        ("Champion", m2, e1), ("production", m3, e2)]
    assert [a["alias"] for a in registry.list_aliases(e1)] == ["Champion"]
    assert db_rows(db, "SELECT alias, model_id, experiment_id FROM model_aliases ORDER BY alias") == [
        ("Champion", m2, e1), ("production", m3, e2)]
    assert m4 not in {a["model_id"] for a in registry.list_aliases()}


def test_get_model_by_alias_within_an_experiment(db: str) -> None:
    (e1, e2), (m1, _, m3, _) = project(db)
    registry = ModelRegistry(db)
    registry.set_alias("production", m1)
    assert registry.get_model_by_alias("production", experiment_id=e1)["id"] == m1
    assert registry.get_model_by_alias("production", experiment_id=e2) is None
    registry.set_alias("production", m3)
    assert registry.get_model_by_alias("production", experiment_id=e1) is None
    assert registry.get_model_by_alias("production", experiment_id=e2)["id"] == m3
    assert registry.get_model_by_alias("production", e2 + 100) is None


def test_every_model_read_carries_its_sorted_aliases(db: str) -> None:
    (e1, _), (m1, m2, m3, m4) = project(db)
    registry = ModelRegistry(db)
    for alias, model in (("staging", m2), ("champion", m2), ("b-side", m2), ("production", m4)):
        registry.set_alias(alias, model)
    expected = {m1: [], m2: ["b-side", "champion", "staging"], m3: [], m4: ["production"]}
    assert {m["id"]: m["aliases"] for m in registry.list_models()} == expected
    assert {m["id"]: m["aliases"] for m in registry.list_models(e1, order_by="id", ascending=True, limit=1)} == {m1: []}
    assert registry.get_model(m2)["aliases"] == expected[m2]
    assert registry.get_best_model(e1)["aliases"] == expected[m2]
    assert registry.get_best_model()["aliases"] == expected[m4]
    assert registry.get_model_by_alias("champion")["aliases"] == expected[m2]
    reader = ml_persistence.storage.engine(db).reader(db)
    try:
        assert {m["id"]: m["aliases"] for m in reader.rank_models()} == expected
        assert {m["id"]: m["aliases"] for m in reader.rank_models([e1], marked_only=True)} == {m2: expected[m2]}
    finally:
        reader.close()


@pytest.mark.parametrize("alias, error", [
    ("", InvalidValueError), (" production", InvalidValueError), ("production ", InvalidValueError),
    ("prod\nuction", InvalidValueError), ("prod\x00", InvalidValueError), ("prod\u202euction", InvalidValueError),
    ("42", InvalidValueError), ("x" * 256, InvalidValueError), (42, InvalidTypeError), (None, InvalidTypeError),
    (b"production", InvalidTypeError),
])
def test_a_bad_alias_raises_at_the_call_and_changes_nothing(db_path: str, alias: Any, error: type) -> None:
    (_, _), (m1, *_) = project(db_path)
    registry = ModelRegistry(db_path)
    with pytest.raises(error):
        registry.set_alias(alias, m1)
    with pytest.raises(error):
        registry.delete_alias(alias)
    with pytest.raises(error):
        registry.get_model_by_alias(alias)
    assert registry.list_aliases() == []
    assert db_rows(db_path, "SELECT COUNT(*) FROM model_aliases") == [(0,)]


def test_names_an_alias_may_have(db_path: str) -> None:
    (_, _), (m1, *_) = project(db_path)
    registry = ModelRegistry(db_path)
    names = ["production", "v42", "4x", "champion 2024", "Prüfung", "模型", "a/b.c-d_e", "x" * 255]
    for name in names:
        registry.set_alias(name, m1)
    assert registry.get_model(m1)["aliases"] == sorted(names)


def test_the_agent_refuses_an_alias_event_the_call_would_have_refused() -> None:
    for alias in ("", "12", "a\tb"):
        with pytest.raises(ValueError):
            ev.check(ev.AliasSet(alias=alias, model_id=1, ts=0.0))
        with pytest.raises(ValueError):
            ev.check(ev.AliasDeleted(alias=alias))
    ev.check(ev.AliasSet(alias="production", model_id=1, ts=0.0))


def test_an_unknown_model_raises_a_typed_error_and_nothing_else_is_lost(db: str) -> None:
    tracker = ExperimentTracker(db, capture_environment=False)
    registry = ModelRegistry(db)
    experiment = tracker.start_experiment("run")
    model = registry.register_model(experiment, "models/a.pth")
    registry.set_alias("production", model)
    tracker.log_metric("loss", 1.0, step=0)  # queued around the failing call
    with pytest.raises(ModelNotFoundError) as raised:
        registry.set_alias("production", model + 1000)
    tracker.log_metric("loss", 2.0, step=1)
    assert isinstance(raised.value, InvalidValueError) and isinstance(raised.value, LookupError)
    assert f"no model with id {model + 1000}" in str(raised.value)
    with pytest.raises(ModelNotFoundError):
        registry.set_alias("staging", model + 1000)  # a new alias is not created either
    tracker.end_experiment()
    tracker.flush()  # raises on any loss
    assert [r["value"] for r in ml_persistence.MetricsLogger(db).get_metric_history(experiment, "loss")] == [1.0, 2.0]
    assert registry.get_model_by_alias("production")["id"] == model
    assert registry.get_model_by_alias("staging") is None
    assert db_rows(db, "SELECT alias, model_id FROM model_aliases") == [("production", model)]


def test_set_alias_right_after_register_model_sees_the_model(db: str) -> None:
    tracker = ExperimentTracker(db, capture_environment=False)
    registry = ModelRegistry(db)
    experiment = tracker.start_experiment("run")
    for step in range(50):
        tracker.log_metric("loss", float(step), step=step)  # queued, not yet committed
        model = registry.register_model(experiment, f"models/{step}.pth")
        registry.set_alias("latest-checkpoint", model)
        assert registry.get_model_by_alias("latest-checkpoint")["id"] == model
    tracker.end_experiment()


def test_async_registry_mirrors_the_alias_calls(db: str) -> None:
    (_, e2), (m1, _, m3, _) = project(db)

    async def main() -> None:
        async with AsyncModelRegistry(db) as registry:
            await registry.set_alias("production", m1)
            await registry.set_alias("production", m3)
            assert (await registry.get_model_by_alias("production", e2))["id"] == m3
            assert [a["alias"] for a in await registry.list_aliases()] == ["production"]
            with pytest.raises(ModelNotFoundError):
                await registry.set_alias("production", 10**9)
            assert await registry.delete_alias("production") is True
            assert await registry.get_model_by_alias("production") is None

    asyncio.run(main())


# -- moving is atomic -------------------------------------------------------------------------------

READER = """
import json, sys
from ml_persistence import storage

db, valid = sys.argv[1], set(json.loads(sys.argv[2]))
reader = storage.engine(db).reader(db, create=False)
observations, bad, seen = 0, [], set()
print("ready", flush=True)
while True:
    kind = observations % 3
    if kind == 0:
        found = reader.get_model_by_alias("production")
        holders = [] if found is None else [found["id"]]
    elif kind == 1:
        holders = [m["id"] for m in reader.list_models() if "production" in m["aliases"]]
    else:
        holders = [m["id"] for m in reader.rank_models() if "production" in m["aliases"]]
    observations += 1
    if len(holders) != 1 or holders[0] not in valid:
        bad.append(holders)
    elif holders[0] not in seen:
        seen.add(holders[0])
        print("seen", holders[0], flush=True)
    if reader.get_model_by_alias("done") is not None:
        break
print("summary", json.dumps({"observations": observations, "bad": bad[:10], "nbad": len(bad)}), flush=True)
"""


def test_a_concurrent_reader_always_finds_exactly_one_model_for_a_moving_alias(
    db: str, tmp_path: Path, children: Any
) -> None:
    _, models = project(db)
    registry = ModelRegistry(db)
    registry.set_alias("production", models[0])
    reader = children.start(tmp_path, READER, db, json.dumps(models), name="reader.py")
    reader.line("ready")
    seen: set[int] = set()
    moves = 0
    # Move until the reader has watched the alias on at least three models (a bound, not a timing).
    while len(seen) < 3:
        assert moves < 20000, f"the reader saw only {seen} in {moves} moves: {reader.describe()}"
        moves += 1
        registry.set_alias("production", models[moves % len(models)])
        while True:
            try:
                line = reader.lines.get_nowait()
            except queue.Empty:
                break
            assert line is not None, reader.describe()
            if line.startswith("seen "):
                seen.add(int(line.split()[1]))
    registry.set_alias("done", models[0])
    summary = json.loads(reader.line("summary"))
    assert reader.wait() == 0, reader.describe()
    assert summary["nbad"] == 0, summary
    assert summary["observations"] >= 3 and seen <= set(models)
    assert db_rows(db, "SELECT COUNT(*) FROM model_aliases WHERE alias = 'production'") == [(1,)]


# -- the schema -------------------------------------------------------------------------------------


def _v4(db: str) -> None:
    """Create the version-4 schema as the previous release did (its migrations), with a little data."""
    if engine_of(db) == "postgresql":
        import psycopg

        from ml_persistence.postgres import schema as pg_schema

        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("BEGIN")
            for target in range(1, 5):
                pg_schema.MIGRATIONS[target](conn)
            pg_schema._run(conn, pg_schema.VIEWS)
            conn.execute(pg_schema.VERSION_TABLE_SQL)
            conn.execute(f"INSERT INTO {pg_schema.VERSION_TABLE} (version) VALUES (4)")
            conn.execute("COMMIT")
    else:
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN")
            for target in range(1, 5):
                sqlite_schema.MIGRATIONS[target](conn)
            for statement in sqlite_schema.VIEWS.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("PRAGMA user_version = 4")
            conn.execute("COMMIT")
        finally:
            conn.close()
    execute(db, "INSERT INTO experiments (name, experiment_type, status, start_time) "
                "VALUES ('old run', 'rl', 'completed', '2024-05-01 10:00:00')")
    for n, (val, best) in enumerate([(1.5, 0), (2.5, 1)]):
        execute(db, "INSERT INTO models (experiment_id, name, version, checkpoint_path, val_metric, is_best, created_at) "
                    "VALUES (1, 'ppo', ?, ?, ?, ?, '2024-05-01 11:00:00')", (str(n + 1), f"models/{n}.pth", val, best))


def _data(db: str) -> list[tuple]:
    return db_rows(db, "SELECT e.id, e.name, e.uuid, m.id, m.name, m.version, m.checkpoint_path, m.val_metric "
                       "FROM experiments e JOIN models m ON m.experiment_id = e.id ORDER BY m.id")


def test_a_version_4_database_reads_without_aliases_and_upgrades_in_place(db: str, tmp_path: Path) -> None:
    _v4(db)
    assert version(db) == 4 and "model_aliases" not in tables(db)
    before = _data(db)
    digest = hashlib.sha256(Path(db).read_bytes()).hexdigest() if engine_of(db) == "sqlite" else None
    shown = json.loads(ok(cli("show", "1", "--json", "--db", db, cwd=tmp_path)).stdout)
    assert [(m["id"], m["aliases"]) for m in shown["models"]] == [(1, []), (2, [])]
    best = json.loads(ok(cli("best", "--json", "--db", db, cwd=tmp_path)).stdout)
    assert [(m["id"], m["aliases"]) for m in best] == [(2, []), (1, [])]
    assert ok(cli("alias", "ls", "--db", db, cwd=tmp_path)).stdout == "no aliases\n"
    reader = ml_persistence.storage.engine(db).reader(db, create=False)
    try:
        assert reader.get_model_by_alias("production") is None and reader.list_aliases() == []
        assert reader.get_model(2)["aliases"] == []
    finally:
        reader.close()
    assert version(db) == 4 and "model_aliases" not in tables(db)  # reading never upgrades
    if digest is not None:
        assert hashlib.sha256(Path(db).read_bytes()).hexdigest() == digest

    registry = ModelRegistry(db)
    registry.set_alias("production", 2)
    assert version(db) == 5 and "model_aliases" in tables(db)
    assert _data(db) == before
    assert registry.get_model_by_alias("production")["id"] == 2
    assert registry.get_best_model()["aliases"] == ["production"]
    ok(cli("check", "--db", db, cwd=tmp_path))


def test_the_seeds_original_file_upgrades_to_hold_aliases(db_path: str, tmp_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    try:
        conn.executescript(sqlite_schema.ORIGINAL_TABLES)
        conn.execute("INSERT INTO experiments (name, experiment_type, status, start_time) "
                     "VALUES ('seed run', 'rl', 'completed', '2023-05-01 10:00:00')")
        conn.execute("INSERT INTO models (experiment_id, name, checkpoint_path, val_metric) VALUES (1, 'm', 'm.pth', 1.0)")
        conn.commit()
    finally:
        conn.close()
    assert db_rows(db_path, "PRAGMA user_version") == [(0,)]
    shown = json.loads(ok(cli("show", "1", "--json", "--db", db_path, cwd=tmp_path)).stdout)
    assert [(m["id"], m["aliases"]) for m in shown["models"]] == [(1, [])]
    assert db_rows(db_path, "PRAGMA user_version") == [(0,)]
    registry = ModelRegistry(db_path)
    registry.set_alias("production", 1)
    assert db_rows(db_path, "PRAGMA user_version") == [(5,)]
    assert registry.get_model_by_alias("production")["name"] == "m"
    assert registry.get_model_by_alias("production")["checkpoint_path"] == "m.pth"


def test_init_reports_the_alias_table_when_it_upgrades(db: str, tmp_path: Path) -> None:
    _v4(db)
    done = ok(cli("init", "--db", db, cwd=tmp_path))
    assert "from schema version 4 to 5:" in done.stdout and "  - created table model_aliases" in done.stdout, done.stdout
    assert version(db) == 5 == sqlite_schema.SCHEMA_VERSION


def test_deleting_an_experiment_deletes_its_models_aliases(db: str, tmp_path: Path) -> None:
    (e1, e2), (m1, m2, m3, _) = project(db)
    registry = ModelRegistry(db)
    registry.set_alias("production", m2)
    registry.set_alias("champion", m1)
    registry.set_alias("staging", m3)
    ml_persistence.shutdown(timeout=30)
    done = ok(cli("delete", str(e1), "-y", "--db", db, cwd=tmp_path))
    assert "2 model aliases, 2 models" in done.stderr, done.stderr
    assert db_rows(db, "SELECT alias, model_id FROM model_aliases") == [("staging", m3)]
    assert ok(cli("check", "--db", db, cwd=tmp_path)).returncode == 0
    assert ModelRegistry(db).get_model_by_alias("staging", e2)["id"] == m3


def test_sync_copies_models_but_not_their_aliases(db: str, tmp_path: Path) -> None:
    from ml_persistence.sync import Selection, sync

    source = str(tmp_path / "source.db")
    (_, _), (m1, m2, _, _) = project(source)
    ModelRegistry(source).set_alias("production", m2)
    ml_persistence.shutdown(timeout=30)
    sync(source, db, Selection())
    target = ModelRegistry(db)
    assert sorted(m["aliases"] == [] for m in target.list_models()) == [True] * 4
    assert target.list_aliases() == []
    copied = target.list_models(order_by="id", ascending=True)[1]["id"]
    target.set_alias("production", copied)  # the target's own decision
    sync(source, db, Selection())
    assert [a["model_id"] for a in target.list_aliases()] == [copied]
    assert ModelRegistry(source).get_model_by_alias("production")["id"] == m2


# -- the command line -------------------------------------------------------------------------------


def _table(text: str, first: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [first])
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def _column(table: list[str], header: str, next_header: str) -> list[str]:
    start, end = table[0].index(header), table[0].index(next_header)
    return [line[start:end].strip() for line in table[1:]]


def test_show_and_best_list_each_models_aliases(db: str, tmp_path: Path) -> None:
    (e1, _), (m1, m2, _, m4) = project(db)
    registry = ModelRegistry(db)
    registry.set_alias("production", m2)
    registry.set_alias("champion", m2)
    registry.set_alias("staging", m4)
    ml_persistence.shutdown(timeout=30)

    shown = ok(cli("show", str(e1), "--db", db, cwd=tmp_path)).stdout
    models = _table(shown[shown.index("Models (* = best)"):], "ID")
    assert models[0].split() == ["ID", "BEST", "ALIASES", "EPISODE", "STEP", "TRAIN", "VAL", "TEST", "CHECKPOINT"]
    assert [line.split()[0] for line in models[1:]] == [str(m1), str(m2)]
    assert _column(models, "ALIASES", "EPISODE") == ["", "champion, production"]
    as_json = json.loads(ok(cli("show", str(e1), "--json", "--db", db, cwd=tmp_path)).stdout)
    assert [(m["id"], m["aliases"]) for m in as_json["models"]] == [(m1, []), (m2, ["champion", "production"])]

    best = ok(cli("best", "--db", db, cwd=tmp_path)).stdout.splitlines()
    assert best[0].split() == ["MODEL", "EXP", "EXPERIMENT", "BEST", "ALIASES", "EPISODE", "STEP", "VAL", "METRIC",
                               "CHECKPOINT"]
    assert dict(zip((line.split()[0] for line in best[1:]), _column(best, "ALIASES", "EPISODE"))) == {
        str(m4): "staging", str(m2): "champion, production", str(m1): "", str(m1 + 2): ""}
    ranked = json.loads(ok(cli("best", "--json", "--db", db, cwd=tmp_path)).stdout)
    assert {m["id"]: m["aliases"] for m in ranked}[m2] == ["champion", "production"]


def test_alias_commands_set_move_list_and_remove(db: str, tmp_path: Path) -> None:
    (e1, _), (m1, m2, m3, _) = project(db)
    ml_persistence.shutdown(timeout=30)
    first = ok(cli("alias", "set", "production", str(m1), "--db", db, cwd=tmp_path)).stdout
    assert first == f"production -> model {m1} (ppo_a v1 of experiment {e1})\n"
    moved = ok(cli("alias", "set", "production", str(m3), "--db", db, cwd=tmp_path)).stdout
    assert moved.strip().endswith(f"moved from model {m1}")
    ok(cli("alias", "set", "champion", str(m2), "--db", db, cwd=tmp_path))
    listed = ok(cli("alias", "ls", "--db", db, cwd=tmp_path)).stdout.splitlines()
    assert listed[0].split()[:3] == ["ALIAS", "MODEL", "EXP"]
    assert [line.split()[:2] for line in listed[1:]] == [["champion", str(m2)], ["production", str(m3)]]
    only = json.loads(ok(cli("alias", "ls", "--experiment", str(e1), "--json", "--db", db, cwd=tmp_path)).stdout)
    assert [(a["alias"], a["model_id"], a["checkpoint_path"]) for a in only] == [("champion", m2, "models/ppo_b.pth")]
    assert ok(cli("alias", "rm", "champion", "--db", db, cwd=tmp_path)).stdout == "removed alias champion\n"
    assert db_rows(db, "SELECT alias, model_id FROM model_aliases") == [("production", m3)]


def test_alias_command_errors(db: str, tmp_path: Path) -> None:
    (_, _), (m1, *_) = project(db)
    ml_persistence.shutdown(timeout=30)
    unknown = cli("alias", "set", "production", "999999", "--db", db, cwd=tmp_path)
    assert unknown.returncode == 1 and unknown.stderr == "ml-persistence: no model 999999; alias 'production' unchanged\n"
    numeric = cli("alias", "set", "7", str(m1), "--db", db, cwd=tmp_path)
    assert numeric.returncode == 2 and "all digits" in numeric.stderr
    missing = cli("alias", "rm", "nothing", "--db", db, cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr == "ml-persistence: no alias 'nothing'\n"
    assert cli("alias", "ls", "--experiment", "999", "--db", db, cwd=tmp_path).returncode == 1
    assert db_rows(db, "SELECT COUNT(*) FROM model_aliases") == [(0,)]
    nowhere = cli("alias", "set", "production", "1", "--db", str(tmp_path / "none.db"), cwd=tmp_path)
    assert nowhere.returncode == 1 and not (tmp_path / "none.db").exists()


# -- agent mode -------------------------------------------------------------------------------------


def test_aliases_through_an_agent(tmp_path: Path) -> None:
    db = str(tmp_path / "agent.db")
    with AgentProcess(db, [short_socket(tmp_path)], tmp_path) as agent:
        tracker = ExperimentTracker(agent=agent.url, capture_environment=False)
        registry = ModelRegistry(agent=agent.url)
        experiment = tracker.start_experiment("through-agent")
        first = registry.register_model(experiment, "models/a.pth", val_metric=1.0)
        registry.set_alias("production", first)  # right after the model: the agent stored it first
        second = registry.register_model(experiment, "models/b.pth", val_metric=2.0)
        registry.set_alias("production", second)
        assert registry.get_model_by_alias("production", experiment)["id"] == second
        assert registry.get_model(first)["aliases"] == []
        assert [m["aliases"] for m in registry.list_models(experiment, order_by="id", ascending=True)] == [
            [], ["production"]]
        with pytest.raises(ModelNotFoundError):
            registry.set_alias("production", second + 100)
        registry.set_alias("champion", first)
        assert registry.delete_alias("champion") is True and registry.delete_alias("champion") is False
        assert [a["alias"] for a in registry.list_aliases()] == ["production"]
        tracker.end_experiment()
        registry.flush()
        assert agent.stop() == 0
    assert db_rows(db, "SELECT alias, model_id FROM model_aliases") == [("production", second)]
