"""The web UI's filter box, sweep view, default metric, System flag and aliases, over HTTP on both engines.

Every run here is logged through the library; the expected numbers are the ones logged, so each
aggregate the server sends is checked against what a user wrote, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
import warnings
from typing import Any, Iterator

import pytest

pytest.importorskip("starlette")

import ml_persistence  # noqa: E402
from ml_persistence import ExperimentTracker, ModelRegistry  # noqa: E402
from ml_persistence.compare import default_metric, metric_candidates  # noqa: E402
from ml_persistence.ui import params  # noqa: E402
from ml_persistence.ui.server import create_app  # noqa: E402
from ml_persistence.ui.sweep import association  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    TestClient = pytest.importorskip("starlette.testclient").TestClient

from pg import pg_rows  # noqa: E402

NAN = float("nan")


def strict(text: bytes) -> Any:
    """Parse JSON, refusing NaN / Infinity (what a browser's JSON.parse refuses)."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def get(client: Any, url: str, status: int = 200, **kwargs: Any) -> Any:
    response = client.get(url, **kwargs)
    assert response.status_code == status, (url, response.status_code, response.text[:400])
    return strict(response.content)


def log_sweep(db: str) -> dict[str, int]:
    """Four runs: a, b, c of a small sweep (c without val_sharpe), d with system metrics only, plus a model alias."""
    tracker = ExperimentTracker(db)
    a = tracker.start_experiment("sweep-a", experiment_type="rl", tags=["sweep", "ppo"])
    tracker.log_hyperparameters_batch({"lr": 0.001, "gamma": 0.9, "batch_size": 16, "optimizer": "adam"})
    for step in range(10):
        tracker.log_metric("loss", 1.0 / (step + 1), step=step)
    for step, value in enumerate([0.5, 1.5, 1.0]):
        tracker.log_metric("val_sharpe", value, step=step)
    tracker.log_metric("a_final", 1.0, step=9)  # one point, alphabetically first
    model = ModelRegistry(db).register_model(a, "/ckpt/a.pt", val_metric=1.5, is_best=True)
    tracker.end_experiment("completed")

    b = tracker.start_experiment("sweep-b", experiment_type="rl", tags=["sweep"])
    tracker.log_hyperparameters_batch({"lr": 0.01, "gamma": 0.99, "batch_size": 64, "optimizer": "sgd"})
    for step in range(20):
        tracker.log_metric("loss", 2.0 / (step + 1), step=step)
    for step, value in enumerate([2.0, NAN, 3.0]):
        tracker.log_metric("val_sharpe", value, step=step)
    tracker.log_metric("a_final", 2.0, step=19)
    tracker.end_experiment("completed")

    c = tracker.start_experiment("sweep-c", experiment_type="sl", tags=["sweep"])
    tracker.log_hyperparameters_batch({"lr": 0.1, "gamma": 0.9, "batch_size": 16})
    for step in range(5):
        tracker.log_metric("loss", 3.0, step=step)
    tracker.end_experiment("failed")

    d = tracker.start_experiment("with-system", experiment_type="sl")
    for n in range(4):
        tracker.log_metrics_batch({"system/cpu_percent": 10.0 * n, "system/memory_percent": 50.0})
    tracker.log_metric("val_sharpe", -1.0, step=0)
    tracker.end_experiment("completed")

    registry = ModelRegistry(db)
    registry.set_alias("champion", model)
    registry.flush()
    tracker.flush()
    ml_persistence.shutdown()
    return {"a": a, "b": b, "c": c, "d": d, "model": model}


@pytest.fixture
def logged(any_db: str) -> dict[str, int]:
    return log_sweep(any_db)


@pytest.fixture
def client(any_db: str, logged: dict[str, int]) -> Iterator[Any]:
    with TestClient(create_app(any_db)) as c:
        yield c


def ids_of(payload: dict[str, Any]) -> list[int]:
    return [e["id"] for e in payload["experiments"]]


# -- compare.default_metric ------------------------------------------------------------------------


def test_default_metric_is_the_one_with_most_points_all_runs_share() -> None:
    counts = {1: {"accuracy": 1, "loss": 500, "reward": 40}, 2: {"accuracy": 1, "loss": 30, "reward": 40}}
    assert default_metric(counts) == "reward"  # loss has more rows in run 1, but only 30 in run 2
    assert default_metric({1: {"b": 5, "a": 5}, 2: {"b": 7, "a": 9}}) == "a"  # a tie on 5: by name
    # Nothing shared: the metric the most runs logged, then its smallest count.
    assert default_metric({1: {"x": 3, "y": 100}, 2: {"y": 2}, 3: {"z": 50}}) == "y"
    assert default_metric({1: {"x": 3}, 2: {"z": 50}, 3: {}}) == "z"
    # system/ metrics only when there is nothing else, however many points they have.
    assert default_metric({1: {"system/cpu_percent": 9000, "loss": 3}, 2: {"system/cpu_percent": 9000, "loss": 3}}) == "loss"
    assert default_metric({1: {"system/gpu0/utilization_percent": 12, "system/cpu_percent": 12}}) == "system/cpu_percent"
    assert default_metric({1: {}, 2: {}}) is None
    assert default_metric({}) is None


@pytest.mark.parametrize("counts", [
    {1: {"accuracy": 1, "loss": 500, "reward": 40}, 2: {"accuracy": 1, "loss": 30, "reward": 40}},
    {1: {"x": 3, "y": 100}, 2: {"y": 2}, 3: {"z": 50}},
    {1: {"x": 3}, 2: {"z": 50}, 3: {}},
    {1: {"system/cpu_percent": 9000, "loss": 3}, 2: {"system/cpu_percent": 9000}},
    {1: {"system/gpu0/utilization_percent": 12, "system/cpu_percent": 12}},
    {1: {}, 2: {}},
])
def test_counting_only_the_candidates_gives_the_same_default(counts: dict[int, dict[str, int]]) -> None:
    # The UI counts rows only of the metrics the default can be among (metric_candidates, from the names).
    candidates = metric_candidates({run: list(per) for run, per in counts.items()})
    counted = {run: {n: c for n, c in per.items() if n in candidates} for run, per in counts.items()}
    assert default_metric(counted) == default_metric(counts)
    assert candidates == sorted(candidates)


def test_association_finds_the_parameter_that_goes_with_the_metric() -> None:
    def run(i: int, lr: float, seed: int, name: str, value: float) -> dict[str, Any]:
        return {"id": i, "params": {"lr": lr, "seed": seed, "tag": name}, "value": value}

    # The value follows lr exactly; seed is noise; tag is unique per run (says nothing).
    runs = [run(i, lr, seed, f"run{i}", lr * 10) for i, (lr, seed) in
            enumerate([(0.1, 3), (0.2, 1), (0.3, 4), (0.4, 1), (0.5, 5), (0.6, 9)])]
    assert association(runs, "lr", "numeric") == pytest.approx(1.0)
    assert association(runs, "seed", "numeric") < 0.7
    assert association(runs, "tag", "categorical") == 0.0
    # Grouped settings: a categorical parameter that splits the values cleanly.
    split = [{"id": i, "params": {"opt": "adam" if i % 2 else "sgd"}, "value": 1.0 + (i % 2) * 5 + i * 0.01}
             for i in range(8)]
    assert association(split, "opt", "categorical") > 0.99
    assert association(split[:2], "opt", "categorical") == 0.0  # too few runs to say


def test_compare_sends_the_default_metric(client: Any, logged: dict[str, int]) -> None:
    a, b, c = logged["a"], logged["b"], logged["c"]
    got = get(client, f"/api/compare?ids={a},{b}")
    assert got["metrics"] == ["a_final", "loss", "val_sharpe"]
    assert got["default_metric"] == "loss"  # 10 and 20 points, not a_final's one (alphabetically first)
    assert get(client, f"/api/compare?ids={a},{c}")["default_metric"] == "loss"
    assert get(client, f"/api/compare?ids={a},{logged['d']}")["default_metric"] == "val_sharpe"  # shared, not system/


# -- the filter box --------------------------------------------------------------------------------


@pytest.mark.parametrize("expression, expected", [
    ("params.lr < 0.05", "ab"),
    ("params.lr < 1e-2", "a"),
    ("metrics.val_sharpe > 1.2", "b"),  # the last value: a's is 1.0
    ("metrics.val_sharpe.max >= 1.5", "ab"),
    ("metrics.loss.count >= 10", "ab"),
    ('params.optimizer = "adam" or params.batch_size = 64', "ab"),
    ("params.optimizer is null and params.lr is not null", "c"),
    ("tags.ppo", "a"),
    ('status = "failed" or (experiment_type = "rl" and params.gamma > 0.95)', "bc"),
    ('name like "sweep-%" and not params.gamma = 0.9', "b"),
    ("params.gamma in (0.9, 0.99) and metrics.val_sharpe is null", "c"),
])
def test_filter_selects_runs(client: Any, logged: dict[str, int], expression: str, expected: str) -> None:
    found = get(client, "/api/experiments", params={"filter": expression})
    assert sorted(ids_of(found)) == sorted(logged[k] for k in expected)
    assert found["types"] == ["rl", "sl"]  # the controls' choices come with a filtered list too


def test_filter_with_order_and_the_values_it_names(client: Any, logged: dict[str, int]) -> None:
    a, b, c = logged["a"], logged["b"], logged["c"]
    found = get(client, "/api/experiments", params={"filter": 'tags.sweep', "order": "metrics.val_sharpe desc"})
    assert ids_of(found)[:2] == [b, a] and set(ids_of(found)) == {a, b, c}
    by_id = {e["id"]: e for e in found["experiments"]}
    assert by_id[a]["values"] == {"metrics.val_sharpe": 1.0}
    assert by_id[c]["values"] == {"metrics.val_sharpe": None}
    assert by_id[a]["status"] == "completed" and by_id[c]["status"] == "failed"
    # an order alone (no filter) orders every run
    ordered = get(client, "/api/experiments", params={"order": "params.lr desc, id"})
    assert ids_of(ordered)[:3] == [c, b, a]


@pytest.mark.parametrize("extra, expected", [
    ({"type": "rl"}, "ab"),
    ({"status": "failed"}, "c"),
    ({"tag": "ppo"}, "a"),
    ({"q": "-b"}, "b"),
    ({"type": "sl", "status": "completed"}, ""),
])
def test_filter_and_the_list_controls_together(client: Any, logged: dict[str, int], extra: dict[str, str],
                                               expected: str) -> None:
    found = get(client, "/api/experiments", params={"filter": "params.gamma is not null", **extra})
    assert sorted(ids_of(found)) == sorted(logged[k] for k in expected)


def test_a_blank_filter_is_no_filter(client: Any, logged: dict[str, int]) -> None:
    everything = sorted(ids_of(get(client, "/api/experiments")))
    assert sorted(ids_of(get(client, "/api/experiments", params={"filter": "   ", "order": ""}))) == everything
    assert len(everything) == 4


@pytest.mark.parametrize("query, position, what", [
    ({"filter": "params.lr <"}, 11, "filter"),
    ({"filter": "params.lr < 0.1 and"}, 19, "filter"),
    ({"filter": "(params.lr < 0.1"}, 16, "filter"),
    ({"filter": "params.lr << 1"}, 11, "filter"),
    ({"filter": "bogus.lr = 1"}, 0, "filter"),
    ({"filter": "params.lr = 'unterminated"}, 12, "filter"),
    ({"order": "metrics.val_sharpe sideways"}, 19, "order_by"),
    ({"filter": "params.lr > 0", "order": "no_such_column"}, 0, "order_by"),
])
def test_a_malformed_filter_is_a_400_with_its_position(client: Any, logged: dict[str, int], query: dict[str, str],
                                                       position: int, what: str) -> None:
    for url in ("/api/experiments", "/api/sweep"):
        got = get(client, url, status=400, params=query)
        assert got["position"] == position and got["what"] == what, got
        assert got["error"].startswith(what + ": ")
        # The message shows the text with a caret under the position.
        line, caret = got["error"].splitlines()[-2:]
        assert line == "  " + query["order" if what == "order_by" else "filter"]
        assert caret == " " * (2 + position) + "^"


HOSTILE_FILTERS = [
    'name = "x\'; DROP TABLE experiments; --"',
    "params.`lr; DROP TABLE metrics; --` > 0",
    'tags.`x"); DELETE FROM experiments; --`',
    "metrics.`loss') OR 1=1; --`.max > 0",
    'name like "%\'; UPDATE experiments SET name = \'pwned\'; --"',
]
HOSTILE_MALFORMED = [
    "1; DROP TABLE experiments",
    "params.lr > 0; DELETE FROM metrics",
    "params.lr > 0 -- comment",
    "name = 'x' OR 1=1",
    "params.lr > (SELECT 1)",
    "experiments.id > 0",
    "params.lr > 0 UNION SELECT * FROM experiments",
    "`unclosed",
    "params." + "x" * 300 + " = 1) OR (1 = 1",
]


def _table_counts(db: str) -> list[tuple]:
    sql = ("SELECT (SELECT COUNT(*) FROM experiments), (SELECT COUNT(*) FROM metrics), "
           "(SELECT COUNT(*) FROM hyperparameters), (SELECT COUNT(*) FROM models), "
           "(SELECT MAX(name) FROM experiments)")
    if db.startswith("postgresql"):
        return pg_rows(db, sql)
    # Read-only: a read-write connection's close could checkpoint the WAL into the file compared below.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def _fingerprint(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _settled(path: str) -> None:
    """Wait until the writer process has closed the file: the last connection's close checkpoints the WAL and
    removes it, which changes the file (the private writer finishes that after shutdown() has returned)."""
    deadline = time.monotonic() + 30
    while os.path.exists(path + "-wal"):
        assert time.monotonic() < deadline, "the writer never closed the database"
        time.sleep(0.01)


def test_a_hostile_filter_cannot_reach_sql(any_db: str, logged: dict[str, int]) -> None:
    file_before = None
    if not any_db.startswith("postgresql"):
        _settled(any_db)
        file_before = _fingerprint(any_db)
    before = _table_counts(any_db)
    with TestClient(create_app(any_db)) as client:
        for expression in HOSTILE_FILTERS:
            # Well-formed: the quoted text is a value or a name, bound, and matches nothing.
            for url in ("/api/experiments", "/api/sweep"):
                got = get(client, url, params={"filter": expression})
                assert got["experiments" if "experiments" in got else "runs"] == [], (expression, got)
        for expression in HOSTILE_MALFORMED:
            for url in ("/api/experiments", "/api/sweep"):
                got = get(client, url, status=400, params={"filter": expression})
                assert isinstance(got["position"], int) and 0 <= got["position"] <= len(expression), got
        assert get(client, "/api/experiments", status=400, params={"order": "id; DROP TABLE experiments"})["what"] == "order_by"
        too_long = get(client, "/api/experiments", status=400, params={"filter": "x" * (params.MAX_FILTER + 1)})
        assert "longer than" in too_long["error"]
        assert "NUL" in get(client, "/api/experiments", status=400, params={"filter": "name = \"a\x00b\""})["error"]
        assert len(ids_of(get(client, "/api/experiments"))) == 4
    assert _table_counts(any_db) == before
    if file_before is not None:
        assert _fingerprint(any_db) == file_before
        # A reader may leave an empty WAL beside the file; nothing was written to it.
        assert not os.path.exists(any_db + "-wal") or os.path.getsize(any_db + "-wal") == 0


# -- the sweep view's data -------------------------------------------------------------------------


@pytest.mark.parametrize("aggregate, a, b", [
    ("last", 1.0, 3.0),
    ("first", 0.5, 2.0),
    ("min", 0.5, 2.0),  # b's NaN row is skipped
    ("max", 1.5, 3.0),
    ("mean", 1.0, 2.5),
])
def test_sweep_values(client: Any, logged: dict[str, int], aggregate: str, a: float, b: float) -> None:
    ids = [logged[k] for k in "abc"]
    got = get(client, f"/api/sweep?ids={','.join(map(str, ids))}&metric=val_sharpe&agg={aggregate}")
    assert (got["metric"], got["aggregate"]) == ("val_sharpe", aggregate)
    runs = got["runs"]
    assert [r["id"] for r in runs] == [logged["b"], logged["a"], logged["c"]]  # best first, no value last
    assert [r["value"] for r in runs] == [b, a, None]
    assert [r["count"] for r in runs] == [3, 3, 0]
    assert got["with_value"] == 2 and got["total"] == 3 and got["missing"] == [] and got["truncated"] is False


def test_sweep_parameters_metrics_and_default(client: Any, logged: dict[str, int]) -> None:
    a, b, c = logged["a"], logged["b"], logged["c"]
    got = get(client, f"/api/sweep?ids={a},{b},{c}")
    assert got["metric"] == "loss"  # the default: the metric with the most points all three share
    assert [r["id"] for r in got["runs"]] == [c, a, b]  # 3.0, then 0.1 and 0.1 by id
    by_id = {r["id"]: r for r in got["runs"]}
    assert by_id[a]["value"] == pytest.approx(0.1) and by_id[b]["value"] == pytest.approx(0.1)
    assert by_id[c]["value"] == 3.0
    assert by_id[a]["params"] == {"lr": 0.001, "gamma": 0.9, "batch_size": 16, "optimizer": "adam"}
    assert type(by_id[a]["params"]["batch_size"]) is int
    assert by_id[c]["params"] == {"lr": 0.1, "gamma": 0.9, "batch_size": 16}
    assert by_id[a]["name"] == "sweep-a" and by_id[c]["status"] == "failed"
    parameters = {p["name"]: p for p in got["parameters"]}
    assert parameters == {
        "batch_size": {"name": "batch_size", "kind": "numeric", "differs": True, "set": 3},
        "gamma": {"name": "gamma", "kind": "numeric", "differs": True, "set": 3},
        "lr": {"name": "lr", "kind": "numeric", "differs": True, "set": 3},
        "optimizer": {"name": "optimizer", "kind": "categorical", "differs": True, "set": 2},
    }
    assert got["metrics"] == [{"name": "a_final", "runs": 2}, {"name": "loss", "runs": 3}, {"name": "val_sharpe", "runs": 2}]
    assert got["suggested"] in parameters


def test_sweep_selects_by_filter_and_controls(client: Any, logged: dict[str, int]) -> None:
    a, b, c, d = (logged[k] for k in "abcd")
    got = get(client, "/api/sweep", params={"filter": "params.gamma = 0.9", "metric": "val_sharpe"})
    assert [r["id"] for r in got["runs"]] == [a, c]
    got = get(client, "/api/sweep", params={"tag": "sweep", "type": "rl", "metric": "val_sharpe", "agg": "max"})
    assert [(r["id"], r["value"]) for r in got["runs"]] == [(b, 3.0), (a, 1.5)]
    # ids and a filter together: the ids the filter keeps; ids that name no run are reported
    got = get(client, "/api/sweep", params={"ids": f"{a},{b},{d},987654", "filter": "tags.sweep"})
    assert sorted(r["id"] for r in got["runs"]) == [a, b]
    assert got["missing"] == [d, 987654]
    # every run, system metrics among the metric choices but never the default
    got = get(client, "/api/sweep")
    assert len(got["runs"]) == 4 and got["metric"] == "loss"
    assert {"system/cpu_percent", "system/memory_percent"} <= {m["name"] for m in got["metrics"]}


def test_sweep_refuses_what_it_cannot_answer(client: Any, logged: dict[str, int]) -> None:
    assert "agg must be one of" in get(client, "/api/sweep?agg=median", status=400)["error"]
    assert get(client, "/api/sweep?ids=1,x", status=400)
    too_many = ",".join(str(i) for i in range(1, 1003))
    assert "at most 1000 runs" in get(client, f"/api/sweep?ids={too_many}", status=400)["error"]
    empty = get(client, "/api/sweep", params={"filter": 'name = "nothing"'})
    assert empty["runs"] == [] and empty["metric"] is None and empty["parameters"] == []
    unknown = get(client, f"/api/sweep?ids={logged['a']}&metric=nope")
    assert [r["value"] for r in unknown["runs"]] == [None]


def test_sweep_mean_of_huge_values(any_db: str) -> None:
    # A sum past the float range: PostgreSQL raises in float8 where SQLite overflows to inf.
    tracker = ExperimentTracker(any_db)
    run = tracker.start_experiment("huge")
    for step, value in enumerate([1e308, 1e308, -1e308, 1.0]):
        tracker.log_metric("x", value, step=step)
    tracker.end_experiment()
    ml_persistence.shutdown()
    with TestClient(create_app(any_db)) as client:
        got = get(client, f"/api/sweep?ids={run}&metric=x&agg=mean")
    value = got["runs"][0]["value"]
    assert value == "Infinity" or (isinstance(value, float) and math.isclose(value, 2.5e307, rel_tol=1e-9))


# -- the run page: System flag, aliases ------------------------------------------------------------


def test_run_page_marks_system_metrics_and_shows_aliases(client: Any, logged: dict[str, int]) -> None:
    d = get(client, f"/api/experiments/{logged['d']}")
    flags = {m["name"]: m["system"] for m in d["metrics"]}
    assert flags == {"system/cpu_percent": True, "system/memory_percent": True, "val_sharpe": False}
    a = get(client, f"/api/experiments/{logged['a']}")
    assert [(m["id"], m["aliases"]) for m in a["models"]] == [(logged["model"], ["champion"])]
    assert all(not m["system"] for m in a["metrics"])


def test_the_sweep_reads_values_for_all_runs_at_once(db_path: str) -> None:
    # Hundreds of runs: hyperparameters, counts and the aggregate are one statement each for all the runs;
    # only the metric names are probed per run (an index skip-scan: a statement per name, plus one).
    tracker = ExperimentTracker(db_path)
    for n in range(300):
        tracker.start_experiment(f"run{n}")
        tracker.log_hyperparameters_batch({"lr": 10 ** -(n % 4), "seed": n})
        tracker.log_metrics_batch({"val_sharpe": n / 100, "loss": 1.0}, step=0)
        tracker.log_metric("val_sharpe", n / 50, step=1)
        tracker.end_experiment()
    ml_persistence.shutdown()
    from ml_persistence.sqlite.reads import Reader
    from ml_persistence.ui import sweep

    reader = Reader.open(db_path, create=False)
    statements: list[str] = []
    reader.conn.set_trace_callback(statements.append)
    try:
        runs = reader.list_experiments()
        statements.clear()
        got = sweep.sweep(reader, runs, "val_sharpe", "last")
    finally:
        reader.close()
    assert len(got["runs"]) == 300 and got["with_value"] == 300
    assert got["runs"][0]["value"] == 299 / 50
    probes = [s for s in statements if "MIN(metric_name)" in s]
    assert len(probes) == 300 * 3  # two metrics a run
    reads = [s for s in statements if s not in probes and not s.startswith("PRAGMA")]  # PRAGMA: column lists
    assert sum("FROM hyperparameters" in s for s in reads) == 1
    assert len(reads) == 2, reads  # the hyperparameters, and one search for the aggregate and its count
