"""The PostgreSQL write side against a real server: schema, every event, marks, dedupe, errors, reconnects."""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from pg import pg_rows

psycopg = pytest.importorskip("psycopg")

from ml_persistence import storage  # noqa: E402
from ml_persistence.events import (  # noqa: E402
    ArtifactLogged,
    DatasetLinked,
    DatasetRegistered,
    Environment,
    ExperimentEnded,
    ExperimentReopened,
    ExperimentResumed,
    ExperimentStarted,
    HyperparametersLogged,
    MetricsLogged,
    ModelRegistered,
)
from ml_persistence.postgres import connect, schema  # noqa: E402
from ml_persistence.postgres.store import Store, classify  # noqa: E402
from ml_persistence.rows import local_text  # noqa: E402

pytestmark = pytest.mark.anyio
T0 = 1_700_000_000.25


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def started(name: str = "run", ts: float = T0) -> ExperimentStarted:
    env = Environment(git_commit="abc", git_dirty=True, hostname="h1", pid=41, command="train.py", packages="{}")
    return ExperimentStarted(name, "rl", "desc", ["a", "b"], 7, '{"k": 1}', env, ts)


def model(exp: int, version: str | None = None, **kw: Any) -> ModelRegistered:
    fields = dict(
        name="policy", version=version, architecture_type="mlp", state_dim=4, action_dim=2,
        checkpoint_path="/ck.pt", checkpoint_size_mb=1.5, episode_num=3, global_step=30,
        train_metric=float("nan"), val_metric=0.5, test_metric=None, is_best=True,
        hyperparameters='{"lr": 1}', metadata=None, ts=T0 + 1,
    )
    fields.update(kw)
    return ModelRegistered(exp, **fields)


def dataset(split: str | None = "train") -> DatasetRegistered:
    return DatasetRegistered("prices", "v1", "csv", "/d.csv", "h", split, 10, None, None, None, None, None, T0)


def metrics(exp: int, n: int, **kw: Any) -> MetricsLogged:
    fields = dict(episode=1, step=None, epoch=None, split=None, ts=T0 + 2)
    fields.update(kw)
    return MetricsLogged(exp, [f"m{i}" for i in range(n)], [float(i) for i in range(n)], **fields)


async def opened(url: str, busy_timeout_ms: int = 5000) -> Store:
    store = Store(url, busy_timeout_ms)
    await store.open()
    return store


def count(url: str, table: str) -> int:
    assert table in schema.OUR_TABLES
    return pg_rows(url, f"SELECT count(*) FROM {table}")[0][0]


def terminate(url: str, store: Store) -> None:
    """Kill the store's server process from another connection, as an admin or a crash would."""
    pid = store.conn.info.backend_pid
    assert pg_rows(url, "SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]


# --- schema -------------------------------------------------------------------------------------


def test_schema_matches_sqlite(pg_db: str, tmp_path: Path) -> None:
    from ml_persistence import postgres
    from ml_persistence.sqlite import schema as sqlite_schema

    first = postgres.ensure(pg_db)
    assert first["created"] and (first["before"], first["after"]) == (0, schema.SCHEMA_VERSION)
    assert first["counts"] == dict.fromkeys(schema.TABLES, 0)
    again = postgres.ensure(pg_db)
    assert not again["created"] and again["done"] == [] and (again["before"], again["after"]) == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)

    lite = sqlite_schema.connect(str(tmp_path / "x.db"))
    with connect.connect(pg_db) as conn:
        for table in schema.TABLES:
            assert schema.columns(conn, table) == sqlite_schema.columns(lite, table), table
        assert set(schema.tables(conn)) == schema.OUR_TABLES | {schema.VERSION_TABLE}
    found = lite.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'idx_%'")
    lite_indexes = {r[0] for r in found}
    pg_indexes = {r[0] for r in pg_rows(pg_db, "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'idx_%%'")}
    assert pg_indexes == lite_indexes
    assert {r[0] for r in pg_rows(pg_db, "SELECT viewname FROM pg_views WHERE schemaname = 'public'")} == {
        "experiment_summary", "best_models"
    }
    lite.close()


def test_schema_refuses_newer_version_and_foreign_experiments(pg_db: str, postgres_url: str) -> None:
    from ml_persistence.errors import SchemaError
    from ml_persistence import postgres

    postgres.ensure(pg_db)
    pg_rows(pg_db, "UPDATE ml_persistence_schema SET version = 99")
    with pytest.raises(SchemaError, match="newer"):
        postgres.ensure(pg_db)

    from pg import fresh_database

    with fresh_database(postgres_url) as other:
        pg_rows(other, "CREATE TABLE experiments (id integer, state_dim integer)")
        with pytest.raises(SchemaError, match="not ml_persistence's"):
            postgres.ensure(other)


def _race(url: str, barrier: Any) -> None:
    import asyncio

    barrier.wait()
    store = Store(url, 5000)

    async def main() -> None:
        await store.open()
        await store.close()

    asyncio.run(main())


def test_eight_processes_racing_first_use_all_succeed(pg_db: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_race, args=(pg_db, barrier)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    assert pg_rows(pg_db, "SELECT version FROM ml_persistence_schema") == [(schema.SCHEMA_VERSION,)]


# --- events -------------------------------------------------------------------------------------


async def test_every_event_type_lands_as_sqlite_would(pg_db: str) -> None:
    store = await opened(pg_db)
    try:
        [exp] = await store.apply_requests([started()])
        m1, m2, m3 = await store.apply_requests([model(exp), model(exp), model(exp, version="best")])
        d1, d2, d3 = await store.apply_requests([dataset(), dataset(), dataset(None)])
        [art] = await store.apply_requests(
            [ArtifactLogged(exp, m1, "plot", "/a.png", "a", float("nan"), "d", None, T0 + 3)]
        )
        await store.apply([
            HyperparametersLogged(exp, ["lr", "layers"], ["0.1", "3"], ["float", "int"], T0 + 4, model_id=m1),
            MetricsLogged(
                exp, ["train_loss", "val_acc", "x"], [1.5, float("nan"), float("inf")], 2, 20, None, None, T0 + 5
            ),
            MetricsLogged(
                exp, ["q"], [0.0], None, None, 1, "test", T0 + 6,
                model_id=m2, phase="eval", value_json="[1]", metadata="{}",
            ),
            MetricsLogged(exp, ["train_y"], [1.0], None, None, None, "", T0 + 6),
            DatasetLinked(exp, d1, "train"),
            DatasetLinked(exp, d1, "train"),
            DatasetLinked(exp, d3, "test"),
        ])
        await store.apply([ExperimentEnded(exp, "completed", "first", T0 + 100.123456)])
        await store.apply([ExperimentEnded(exp, "failed", "second", T0 + 200)])
        await store.apply([ExperimentResumed(exp, "h2", 42, T0 + 300)])  # not running: no effect
        await store.apply([ExperimentReopened(exp, "h3", 43, T0 + 400)])
        await store.apply([ExperimentResumed(exp, "h4", 44, T0 + 500)])
    finally:
        await store.close()

    assert exp == 1 and (m1, m2, m3) == (1, 2, 3) and (d1, d2) == (1, 1) and d3 == 2 and art == 1
    (row,) = pg_rows(
        pg_db,
        "SELECT name, status, tags, metadata, random_seed, git_dirty, hostname, pid, start_time, end_time, "
        "duration_seconds, notes, updated_at FROM experiments",
    )
    assert row == (
        "run", "running", '["a","b"]', '{"k": 1}', 7, 1, "h4", 44, local_text(T0), None, None,
        "first\nsecond", local_text(T0 + 500),
    )
    assert pg_rows(pg_db, "SELECT version, train_metric, val_metric, is_best FROM models ORDER BY id") == [
        ("1", None, 0.5, 1), ("2", None, 0.5, 1), ("best", None, 0.5, 1)
    ]
    assert pg_rows(pg_db, "SELECT file_size_mb, created_at FROM artifacts") == [(None, local_text(T0 + 3))]
    assert pg_rows(pg_db, "SELECT param_name, param_value, param_type, model_id FROM hyperparameters ORDER BY id") == [
        ("lr", "0.1", "float", 1), ("layers", "3", "int", 1)
    ]
    assert pg_rows(
        pg_db,
        "SELECT metric_name, metric_type, value, split, episode, step, epoch, model_id, phase, value_json, "
        "metadata, timestamp FROM metrics ORDER BY id",
    ) == [
        ("train_loss", "scalar", 1.5, "train", 2, 20, None, None, None, None, None, local_text(T0 + 5)),
        ("val_acc", "scalar", None, "val", 2, 20, None, None, None, None, None, local_text(T0 + 5)),
        ("x", "scalar", math.inf, None, 2, 20, None, None, None, None, None, local_text(T0 + 5)),
        ("q", "json", 0.0, "test", None, None, 1, 2, "eval", "[1]", "{}", local_text(T0 + 6)),
        ("train_y", "scalar", 1.0, "train", None, None, None, None, None, None, None, local_text(T0 + 6)),
    ]
    assert pg_rows(pg_db, "SELECT * FROM experiment_datasets ORDER BY dataset_id") == [(1, 1, "train"), (1, 2, "test")]


async def test_duration_is_sqlites_to_the_bit(pg_db: str) -> None:
    store = await opened(pg_db)
    starts = [T0 + 0.0005, T0 + 0.3455, T0 + 12.999999]
    try:
        ids = await store.apply_requests([started(f"r{i}", ts) for i, ts in enumerate(starts)])
        await store.apply([ExperimentEnded(i, "completed", None, ts + 3600.1234567) for i, ts in zip(ids, starts)])
    finally:
        await store.close()
    lite = sqlite3.connect(":memory:")
    stored = pg_rows(pg_db, "SELECT start_time, end_time, duration_seconds FROM experiments ORDER BY id")
    for start, end, duration in stored:
        assert duration == lite.execute("SELECT (julianday(?) - julianday(?)) * 86400.0", (end, start)).fetchone()[0]


async def test_marks_only_move_up(pg_db: str) -> None:
    store = await opened(pg_db)
    try:
        await store.apply([], marks={"c1": 5, "c2": 3})
        await store.apply([], marks={"c1": 4, "c2": 9})
        assert [await store.client_mark(c) for c in ("c1", "c2", "nobody")] == [5, 9, 0]
        assert await store.client_mark(store.client_id) == 2  # this Store's own mark: one per transaction
    finally:
        await store.close()


async def test_keyed_events_apply_once(pg_db: str) -> None:
    store = await opened(pg_db)
    try:
        [exp] = await store.apply_requests([started()], keys=[("cl", 1)])
        assert await store.apply_requests([started("again")], keys=[("cl", 1)]) == [exp]
        batch = [metrics(exp, 1), metrics(exp, 2)]
        assert await store.apply_keyed(batch, [("cl", 2), ("cl", 3)]) == 2
        assert await store.apply_keyed(batch, [("cl", 2), ("cl", 3)]) == 0
        assert await store.apply_keyed(batch + [metrics(exp, 4)], [("cl", 2), ("cl", 3), ("cl", 4)]) == 1
        await store.apply([metrics(exp, 8), metrics(exp, 16)], marks={"cl": 5}, keys=[("cl", 4), ("cl", 5)])
        assert await store.client_mark("cl") == 5
    finally:
        await store.close()
    assert count(pg_db, "experiments") == 1
    assert count(pg_db, "metrics") == 1 + 2 + 4 + 16
    assert pg_rows(pg_db, "SELECT client_id, seq, row_id FROM agent_requests") == [("cl", 1, exp)]


# --- failures -----------------------------------------------------------------------------------


def _error(sqlstate: str) -> Exception:
    return psycopg.errors.lookup(sqlstate)("x")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_error("08006"), storage.ENVIRONMENT),
        (_error("08001"), storage.ENVIRONMENT),
        (_error("57P01"), storage.ENVIRONMENT),
        (_error("53100"), storage.ENVIRONMENT),
        (_error("53300"), storage.ENVIRONMENT),
        (_error("40001"), storage.BUSY),
        (_error("40P01"), storage.BUSY),
        (_error("55P03"), storage.BUSY),
        (_error("23505"), storage.REFUSED),
        (_error("23502"), storage.REFUSED),
        (_error("22003"), storage.REFUSED),
        (_error("22021"), storage.REFUSED),
        (_error("42P01"), storage.FATAL),
        (_error("42501"), storage.FATAL),
        (_error("XX000"), storage.FATAL),
        (psycopg.OperationalError("server closed the connection unexpectedly"), storage.ENVIRONMENT),
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), storage.REFUSED),
        (OverflowError("int too big to convert"), storage.REFUSED),
        (UnicodeEncodeError("utf-8", "\udc00", 0, 1, "surrogates not allowed"), storage.REFUSED),
        (ConnectionResetError(), storage.ENVIRONMENT),
        (RuntimeError("a bug"), storage.FATAL),
    ],
)
def test_classify(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


async def test_refused_events_leave_the_store_usable(pg_db: str) -> None:
    store = await opened(pg_db)
    try:
        [exp] = await store.apply_requests([started()])
        for bad in (
            [metrics(exp, 1, phase="a\x00b")],
            [HyperparametersLogged(exp, ["lr"], [None], ["none"], T0)],
            [metrics(exp, 1, episode=2**70)],
            [model(exp, global_step=2**70)],
        ):
            with pytest.raises(Exception) as caught:
                await store.apply(bad)
            assert classify(caught.value) == storage.REFUSED, caught.value
        await store.apply([metrics(exp, 3)])
    finally:
        await store.close()
    assert count(pg_db, "metrics") == 3 and count(pg_db, "hyperparameters") == 0 and count(pg_db, "models") == 0


async def test_lock_timeout_is_busy(pg_db: str) -> None:
    store = await opened(pg_db, busy_timeout_ms=50)
    try:
        [exp] = await store.apply_requests([started()])
        with connect.connect(pg_db) as holder:
            holder.execute("BEGIN")
            holder.execute("UPDATE experiments SET notes = 'held' WHERE id = %s", (exp,))
            with pytest.raises(psycopg.Error) as caught:
                await store.apply([ExperimentEnded(exp, "completed", None, T0 + 9)])
            assert classify(caught.value) == storage.BUSY
            holder.execute("ROLLBACK")
        await store.apply([ExperimentEnded(exp, "completed", None, T0 + 9)])
    finally:
        await store.close()
    assert pg_rows(pg_db, "SELECT status FROM experiments") == [("completed",)]


async def test_reconnects_after_the_server_drops_the_connection(pg_db: str) -> None:
    store = await opened(pg_db)
    try:
        [exp] = await store.apply_requests([started()])
        await store.apply([metrics(exp, 5)])
        terminate(pg_db, store)
        batch = [metrics(exp, 7)]
        with pytest.raises(psycopg.Error) as caught:
            await store.apply(batch)
        assert classify(caught.value) == storage.ENVIRONMENT
        await store.apply(batch)  # the writer's retry: a new connection
        await store.apply([metrics(exp, 11)])
        assert await store.client_mark(store.client_id) >= 3
    finally:
        await store.close()
    assert count(pg_db, "metrics") == 5 + 7 + 11


class _LoseCommitReply:
    """Make the store's next COMMIT land on the server while the client never hears back."""

    def __init__(self, store: Store, url: str, land: bool = True) -> None:
        self.store, self.url, self.land, self.fired = store, url, land, False
        conn = store.conn
        self.real = conn.execute

        async def execute(query: Any, *args: Any, **kw: Any) -> Any:
            if query == "COMMIT" and not self.fired:
                self.fired = True
                if self.land:
                    await self.real(query, *args, **kw)
                terminate(self.url, store)
                await self.real("SELECT 1")  # raises: the connection is gone
            return await self.real(query, *args, **kw)

        conn.execute = execute  # type: ignore[method-assign]


@pytest.mark.parametrize("land", [True, False])
async def test_exactly_once_across_a_lost_commit(pg_db: str, land: bool) -> None:
    store = await opened(pg_db)
    try:
        [exp] = await store.apply_requests([started()])
        batch = [metrics(exp, 4), HyperparametersLogged(exp, ["lr"], ["1"], ["int"], T0)]
        _LoseCommitReply(store, pg_db, land)
        with pytest.raises(psycopg.Error) as caught:
            await store.apply(batch)
        assert classify(caught.value) == storage.ENVIRONMENT
        await store.apply(batch)
        await store.apply([metrics(exp, 1)])
    finally:
        await store.close()
    assert (count(pg_db, "metrics"), count(pg_db, "hyperparameters")) == (5, 1)


@pytest.mark.parametrize("land", [True, False])
async def test_requests_exactly_once_across_a_lost_commit(pg_db: str, land: bool) -> None:
    store = await opened(pg_db)
    try:
        [exp] = await store.apply_requests([started()])
        requests = [started("second"), model(exp)]
        _LoseCommitReply(store, pg_db, land)
        with pytest.raises(psycopg.Error):
            await store.apply_requests(requests)
        ids = await store.apply_requests(requests)
    finally:
        await store.close()
    assert (count(pg_db, "experiments"), count(pg_db, "models")) == (2, 1)
    assert ids == [
        pg_rows(pg_db, "SELECT max(id) FROM experiments")[0][0],
        pg_rows(pg_db, "SELECT id FROM models")[0][0],
    ]


async def test_a_retry_waits_for_a_commit_still_under_way(pg_db: str) -> None:
    store = await opened(pg_db)
    try:
        [exp] = await store.apply_requests([started()])
        old = store.conn
        real, real_close = old.execute, old.close

        async def execute(query: Any, *args: Any, **kw: Any) -> Any:
            if query == "COMMIT":  # the network fails: the client gives up, the server has not decided yet
                raise psycopg.OperationalError("consuming input failed: timed out")
            return await real(query, *args, **kw)

        async def unheard_close() -> None:  # nor does the server hear the client hang up
            pass

        old.execute, old.close = execute, unheard_close  # type: ignore[method-assign]
        batch = [metrics(exp, 3)]
        with pytest.raises(psycopg.OperationalError):
            await store.apply(batch)
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.apply, batch)
            with anyio.fail_after(30):
                while store.conn is None or not pg_rows(
                    pg_db, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                    (store.conn.info.backend_pid,),
                ):
                    await anyio.sleep(0.01)
            await real("COMMIT")  # the first transaction lands now, while the retry waits on its mark
        await real_close()
    finally:
        await store.close()
    assert count(pg_db, "metrics") == 3


async def test_keyed_apply_exactly_once_across_a_lost_commit(pg_db: str) -> None:
    store = await opened(pg_db)
    try:
        [exp] = await store.apply_requests([started()])
        batch, keys = [metrics(exp, 2), metrics(exp, 3)], [("cl", 1), ("cl", 2)]
        _LoseCommitReply(store, pg_db)
        with pytest.raises(psycopg.Error):
            await store.apply_keyed(batch, keys)
        assert await store.apply_keyed(batch, keys) == 2  # the first call's answer: it committed
    finally:
        await store.close()
    assert count(pg_db, "metrics") == 5


async def test_abandon_from_another_thread_frees_a_stuck_apply(pg_db: str) -> None:
    store = await opened(pg_db, busy_timeout_ms=600_000)
    try:
        [exp] = await store.apply_requests([started()])
        pid = store.conn.info.backend_pid
        with connect.connect(pg_db) as holder:
            holder.execute("BEGIN")
            holder.execute("UPDATE experiments SET notes = 'held' WHERE id = %s", (exp,))
            failures: list[BaseException] = []
            batch = [ExperimentEnded(exp, "completed", None, T0 + 9)]

            async def stuck() -> None:
                try:
                    await store.apply(batch)
                except BaseException as exc:  # noqa: BLE001
                    failures.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(stuck)
                with anyio.fail_after(30):
                    waiting = "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'"
                    while not pg_rows(pg_db, waiting, (pid,)):
                        await anyio.sleep(0.01)
                await anyio.to_thread.run_sync(store.abandon)
            holder.execute("ROLLBACK")
        assert len(failures) == 1 and classify(failures[0]) == storage.ENVIRONMENT
        await store.apply(batch)
    finally:
        await store.close()
    assert pg_rows(pg_db, "SELECT status FROM experiments") == [("completed",)]


def test_end_experiments_now(pg_db: str) -> None:
    import asyncio

    async def start() -> list:
        store = await opened(pg_db)
        try:
            return await store.apply_requests([started("a"), started("b")])
        finally:
            await store.close()

    ids = asyncio.run(start())
    from ml_persistence import postgres

    postgres.end_experiments_now(pg_db, [ExperimentEnded(i, "interrupted", "exit", T0 + 60) for i in ids], 2.0)
    rows = pg_rows(pg_db, "SELECT status, notes, duration_seconds FROM experiments ORDER BY id")
    assert [(status, notes) for status, notes, _ in rows] == [("interrupted", "exit")] * 2
    assert [duration for _, _, duration in rows] == [pytest.approx(60.0, abs=1e-3)] * 2  # julianday's ms


def test_unreachable_server_names_where_never_the_password(postgres_url: str) -> None:
    from urllib.parse import urlsplit

    from ml_persistence import postgres

    parts = urlsplit(postgres_url)
    url = f"postgresql://{parts.username}:sekrit-pw@127.0.0.1:1/somedb"
    with pytest.raises(connect.ConnectError) as caught:
        connect.connect(url)
    text = str(caught.value)
    assert "host 127.0.0.1, port 1, database somedb" in text and "sekrit-pw" not in text
    assert classify(caught.value) == storage.ENVIRONMENT
    assert "sekrit-pw" not in (postgres.describe(caught.value, url) or "")

    wrong = parts._replace(netloc=f"{parts.username}:wrong-pw@{parts.hostname}:{parts.port or 5432}").geturl()
    with pytest.raises(connect.ConnectError) as caught:
        connect.connect(wrong)
    assert "wrong-pw" not in str(caught.value)
    if "authentication failed" in str(caught.value):  # a trust/peer server lets anyone in
        assert classify(caught.value) == storage.FATAL


def test_connection_defaults() -> None:
    found = connect.params("postgresql://u:p@h:5433/d?application_name=mine")
    assert found["application_name"] == "mine" and found["connect_timeout"] == "5"
    assert found["host"] == "h" and found["port"] == "5433" and found["dbname"] == "d"
    assert connect.params("postgresql://h/d")["application_name"] == "ml_persistence"
    assert Store("postgresql://u:p@h/d").path == "postgresql://u:***@h/d"
