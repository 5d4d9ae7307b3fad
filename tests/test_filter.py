"""The filter language (ml_persistence.filtering): a table of filters against the runs they must find,
on SQLite and on PostgreSQL; hostile and malformed filters; order_by; the Python API and the CLI."""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import pytest

import ml_persistence
from conftest import PYTHON
from contract_helpers import child_env, cli, db_rows, ok
from ml_persistence import ExperimentTracker, ModelRegistry, storage
from ml_persistence.filtering import FilterError, key_text, parse, parse_order, search
from pg import fresh_database

# Run 6 of the table: logged by a trainer that is then killed (SIGKILL), so it reads 'crashed'.
CRASHING_TRAINER = r"""
import sys
from ml_persistence import ExperimentTracker

t = ExperimentTracker(sys.argv[1])
t.start_experiment("crashed", experiment_type="rl", tags=["ppo"])
t.log_hyperparameters_batch({"lr": 1e-4})
t.log_metric("val_sharpe", 0.1, step=0)
t.flush()
print(t.experiment_id, flush=True)
sys.stdin.readline()
"""


class Runs(NamedTuple):
    db: str
    ids: dict[str, int]  # run name -> experiment id
    reader: Any


def _log(db: str, name: str, params: dict, metrics: dict, tags: list[str], kind: str = "rl",
         end: str | None = "completed") -> tuple[int, ExperimentTracker]:
    t = ExperimentTracker(db)  # capturing the host and pid, by which a dead run is told from a live one
    exp_id = t.start_experiment(name, experiment_type=kind, tags=tags)
    if params:
        t.log_hyperparameters_batch(params)
    for metric, values in metrics.items():
        for step, value in enumerate(values):
            t.log_metric(metric, value, step=step)
    if end is not None:
        t.end_experiment(status=end)
    t.flush()
    return exp_id, t


def _write(db: str, sql: str, params: list[Any]) -> None:
    if db.startswith("postgresql://"):
        db_rows(db, sql, params)  # autocommit
        return
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql, params)
    conn.close()


def _build(db: str, workdir: Path) -> Iterator[Runs]:
    ids: dict[str, int] = {}
    ids["ppo-a"], _ = _log(db, "ppo-a", {"lr": 1e-4, "gamma": 0.99, "batch": 64, "opt": "adam", "use_gae": True,
                                         "optim.lr": 0.1}, {"val_sharpe": [0.5, 1.8]}, ["ppo", "btc"])
    ModelRegistry(db).register_model(ids["ppo-a"], "ppo", "ckpt/a.pt", val_metric=0.7, is_best=True)
    ids["ppo-b"], _ = _log(db, "ppo-b", {"lr": 3e-3, "gamma": 0.9, "batch": 128, "opt": "sgd", "use_gae": False},
                           {"val_sharpe": [2.5, 1.2]}, ["ppo"], end="failed")
    # Text that looks like a number stays text: it never compares with numbers.
    ids["dqn-a"], _ = _log(db, "dqn-a", {"lr": "0.0005", "gamma": 1, "batch": "64", "opt": "adam"},
                           {"val_sharpe": [1.0, math.nan], "system/cpu_percent": [10.0, 30.0]}, ["dqn"])
    ids["dqn-b"], _ = _log(db, "dqn-b", {"lr": 1e-3, "gamma": 0.95, "layers": [64, 64], "note": 'it\'s "quoted"'},
                           {"val_sharpe": [-math.inf, math.inf], "val.sharpe": [3.0, 1.0]}, ["dqn", "odd tag"])
    ids["sweep_1"], _ = _log(db, "sweep_1", {"lr": 1e-5, "scheduler": None, "eps": math.nan, "clip": math.inf},
                             {"val_loss": [-2.0], "huge": [1e308, 1e308]}, [], kind="sweep")
    trainer = subprocess.Popen([PYTHON, "-c", CRASHING_TRAINER, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=child_env(), cwd=workdir)
    assert trainer.stdout is not None
    ids["crashed"] = int(trainer.stdout.readline())
    trainer.send_signal(signal.SIGKILL)
    trainer.wait(timeout=60)
    ids["live"], live = _log(db, "live", {"lr": 2e-4}, {"val_sharpe": [1.6]}, ["ppo"], end=None)
    ids["stale"], stale = _log(db, "stale", {}, {}, [], end=None)
    # As if logged on another host in 2020, and never heard of since.
    _write(db, "UPDATE experiments SET hostname = 'elsewhere.example', start_time = '2020-01-02 03:04:05.000000', "
               "updated_at = '2020-01-02 03:04:05.000000' WHERE id = ?", [ids["stale"]])
    reader = storage.engine(db).reader(db)
    try:
        yield Runs(db, ids, reader)
    finally:
        reader.close()
        for tracker in (live, stale):
            tracker.end_experiment()
            tracker.close()
        ml_persistence.shutdown(timeout=30)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Eight runs (five ended, one crashed, one running, one stale) on a fresh database of each engine."""
    workdir = tmp_path_factory.mktemp("filter")
    if request.param == "sqlite":
        yield from _build(str(workdir / "runs.db"), workdir)
    else:
        with fresh_database(request.getfixturevalue("postgres_url")) as url:
            yield from _build(url, workdir)


def names(runs: Runs, rows: list[dict[str, Any]]) -> list[str]:
    by_id = {i: n for n, i in runs.ids.items()}
    return [by_id[r["id"]] for r in rows]


ALL = ["ppo-a", "ppo-b", "dqn-a", "dqn-b", "sweep_1", "crashed", "live", "stale"]

TABLE = [
    # the issue's example
    ('params.lr < 1e-3 and metrics.val_sharpe > 1.5 and (tags.ppo or status = "running")', ["ppo-a", "live"]),
    # hyperparameters: numbers as numbers, text as text, bools as 1/0, the last logged value
    ("params.lr < 1e-3", ["ppo-a", "sweep_1", "crashed", "live"]),
    ("params.lr <= 1e-3", ["ppo-a", "dqn-b", "sweep_1", "crashed", "live"]),
    ("params.lr != 1e-4", ["ppo-b", "dqn-b", "sweep_1", "live"]),
    ("params.lr > -inf", ["ppo-a", "ppo-b", "dqn-b", "sweep_1", "crashed", "live"]),
    ('params.lr = "0.0005"', ["dqn-a"]),
    ("params.lr = 0.0005", []),
    ("params.batch = 64", ["ppo-a"]),
    ("params.batch >= 64", ["ppo-a", "ppo-b"]),
    ("params.batch = '64'", ["dqn-a"]),
    ("params.use_gae = true", ["ppo-a"]),
    ("params.use_gae = false", ["ppo-b"]),
    ("params.use_gae = 1", ["ppo-a"]),
    ("params.gamma in (0.9, 1)", ["ppo-b", "dqn-a"]),
    ('params.gamma in (0.9, "adam")', ["ppo-b"]),
    ("params.gamma not in (0.9, 1)", ["ppo-a", "dqn-b", "sweep_1", "crashed", "live", "stale"]),
    ('params.opt like "ad%"', ["ppo-a", "dqn-a"]),
    ('params.opt like "AD%"', []),
    ('params.opt not like "ad%"', ["ppo-b", "dqn-b", "sweep_1", "crashed", "live", "stale"]),
    ("params.lr is null", ["stale"]),
    ("params.scheduler is not null", []),
    ("params.scheduler is null and params.lr is not null", ["ppo-a", "ppo-b", "dqn-a", "dqn-b", "sweep_1", "crashed", "live"]),
    ("params.eps is not null", []),  # a NaN hyperparameter is no value
    ("params.clip > 1e308", ["sweep_1"]),
    ('params.layers = "[64,64]"', ["dqn-b"]),
    ("params.note = 'it''s \"quoted\"'", ["dqn-b"]),
    ('params.note = "it\'s \\"quoted\\""', ["dqn-b"]),
    ("params.optim.lr = 0.1", ["ppo-a"]),
    ("params.`optim.lr` = 0.1", ["ppo-a"]),
    # metrics: the last value by default, NaN as null, infinities as numbers
    ("metrics.val_sharpe > 1.5", ["ppo-a", "dqn-b", "live"]),
    ("metrics.val_sharpe = inf", ["dqn-b"]),
    ("metrics.val_sharpe is null", ["dqn-a", "sweep_1", "stale"]),
    ("metrics.val_sharpe.last > 1.5", ["ppo-a", "dqn-b", "live"]),
    ("metrics.val_sharpe.first = 2.5", ["ppo-b"]),
    ("metrics.val_sharpe.max > 2", ["ppo-b", "dqn-b"]),
    ("metrics.val_sharpe.min = -inf", ["dqn-b"]),
    ("metrics.val_sharpe.max = 1", ["dqn-a"]),  # NaN is skipped by the aggregates
    ("metrics.val_sharpe.mean > 1.5", ["ppo-b", "live"]),  # dqn-b's mean of -inf and inf is NaN: null
    ("metrics.val_sharpe.mean = 1", ["dqn-a"]),
    ("metrics.val_sharpe.count = 2", ["ppo-a", "ppo-b", "dqn-a", "dqn-b"]),
    ("metrics.val_sharpe.count = 0", ["sweep_1", "stale"]),
    ("metrics.`val.sharpe` = 1", ["dqn-b"]),
    ("metrics.val.sharpe.max = 3", ["dqn-b"]),
    ("metrics.`val.sharpe`.first = 3", ["dqn-b"]),
    ("metrics.system/cpu_percent.max >= 30", ["dqn-a"]),
    ("metrics.val_loss = -2", ["sweep_1"]),
    ("metrics.huge.mean > 1e307", ["sweep_1"]),  # a sum past a float's range: PostgreSQL averages in numeric
    # tags
    ("tags.ppo", ["ppo-a", "ppo-b", "crashed", "live"]),
    ("tags.`odd tag`", ["dqn-b"]),
    ("not tags.ppo", ["dqn-a", "dqn-b", "sweep_1", "stale"]),
    ("tags.ppo and tags.btc", ["ppo-a"]),
    # the effective status, and the one stored
    ('status = "crashed"', ["crashed"]),
    ('status = "stale"', ["stale"]),
    ('status = "running"', ["live"]),
    ('status in ("failed", "crashed")', ["ppo-b", "crashed"]),
    ('status != "completed"', ["ppo-b", "crashed", "live", "stale"]),
    ('stored_status = "running"', ["crashed", "live", "stale"]),
    ('status like "%ed"', ["ppo-a", "ppo-b", "dqn-a", "dqn-b", "sweep_1", "crashed"]),
    # other columns
    ('experiment_type = "sweep"', ["sweep_1"]),
    ('name like "ppo-%"', ["ppo-a", "ppo-b"]),
    ('name like "%\\_%"', ["sweep_1"]),
    ('name like "%_%"', ALL),
    ("end_time is null", ["crashed", "live", "stale"]),
    ("duration_seconds >= 0", ["ppo-a", "ppo-b", "dqn-a", "dqn-b", "sweep_1"]),
    ('start_time < "2021"', ["stale"]),
    ("best_val_metric > 0.5 and num_checkpoints = 1", ["ppo-a"]),
    ('attributes.status = "stale"', ["stale"]),
    # combinations: keywords in any case, not as a plain negation (a missing value compares false)
    ("NOT (params.lr < 1e-3)", ["ppo-b", "dqn-a", "dqn-b", "stale"]),
    ("params.lr < 1e-3 OR tags.dqn", ["ppo-a", "dqn-a", "dqn-b", "sweep_1", "crashed", "live"]),
    ("(tags.ppo or tags.dqn) and not (metrics.val_sharpe > 1.5 or params.lr >= 3e-3)", ["dqn-a", "crashed"]),
    ("", ALL),
    (None, ALL),
]


@pytest.mark.parametrize("text, expected", TABLE, ids=[str(t) for t, _ in TABLE])
def test_filter_finds_exactly_these_runs(runs: Runs, text: str, expected: list[str]) -> None:
    assert sorted(names(runs, search(runs.reader, text))) == sorted(expected)


def test_rows_are_list_experiments_rows_with_effective_status_and_the_values_named(runs: Runs) -> None:
    [crashed] = search(runs.reader, 'status = "crashed"')
    assert (crashed["status"], crashed["stored_status"]) == ("crashed", "running")
    [row] = search(runs.reader, "metrics.val_sharpe.max > 2 and params.gamma < 0.95")
    shape = ml_persistence.liveness.list_experiments(runs.reader, limit=1)[0]
    assert set(row) == set(shape) | {"values"}
    assert row["values"] == {"metrics.val_sharpe.max": 2.5, "params.gamma": 0.9}
    [row] = search(runs.reader, "tags.dqn and metrics.val_sharpe is null", ["params.lr", "metrics.val_sharpe.count"])
    assert row["values"] == {"metrics.val_sharpe": None, "params.lr": "0.0005", "metrics.val_sharpe.count": 2}


def test_order_by(runs: Runs) -> None:
    def order(*keys: str) -> list[str]:
        return names(runs, search(runs.reader, None, list(keys)))

    # NULLs last in both directions, ties by id, newest first.
    nulls = ["stale", "sweep_1", "dqn-a"]
    assert order("metrics.val_sharpe desc") == ["dqn-b", "ppo-a", "live", "ppo-b", "crashed", *nulls]
    assert order("metrics.val_sharpe asc") == ["crashed", "ppo-b", "live", "ppo-a", "dqn-b", *nulls]
    # A parameter: its numbers, then its strings, then the runs without it.
    assert order("params.lr") == ["sweep_1", "crashed", "ppo-a", "live", "dqn-b", "ppo-b", "dqn-a", "stale"]
    assert order("status, name desc") == ["sweep_1", "ppo-a", "dqn-b", "dqn-a", "crashed", "ppo-b", "live", "stale"]
    assert order("status", "name DESC") == order("status, name desc")
    # Default: start_time newest first (the stale run started in 2020).
    assert names(runs, search(runs.reader)) == ["live", "crashed", "sweep_1", "dqn-b", "dqn-a", "ppo-b", "ppo-a", "stale"]
    assert names(runs, search(runs.reader, "tags.ppo", "metrics.val_sharpe desc", limit=2)) == ["ppo-a", "live"]
    assert search(runs.reader, "tags.ppo", limit=0) == []


def test_python_api_sync_and_async(runs: Runs) -> None:
    import asyncio

    tracker = ExperimentTracker(runs.db, capture_environment=False)
    found = tracker.search_experiments("tags.ppo", order_by="metrics.val_sharpe desc", limit=3)
    assert names(runs, found) == ["ppo-a", "live", "ppo-b"]
    assert found[1]["status"] == "running"
    with pytest.raises(FilterError) as caught:
        tracker.search_experiments("tags.ppo and")
    assert caught.value.position == 12
    assert isinstance(caught.value, ml_persistence.errors.InvalidValueError)

    async def main() -> list[dict[str, Any]]:
        async with ml_persistence.AsyncExperimentTracker(runs.db, capture_environment=False) as t:
            return await t.search_experiments('status = "crashed"')

    assert names(runs, asyncio.run(main())) == ["crashed"]


def test_through_an_agent(tmp_path: Path) -> None:
    from agent_process import AgentProcess, short_socket

    db = str(tmp_path / "agent.db")
    with AgentProcess(db, [short_socket(tmp_path)], tmp_path) as agent:
        tracker = ExperimentTracker(agent=agent.url, capture_environment=False)
        first = tracker.start_experiment("a", tags=["x"])
        tracker.log_metric("loss", 0.5)
        tracker.end_experiment()
        tracker.start_experiment("b")
        tracker.log_metric("loss", 0.25)
        tracker.end_experiment()
        found = tracker.search_experiments('(metrics.loss > 0.3 or tags.x) and status = "completed"', ["metrics.loss"])
        assert [r["id"] for r in found] == [first] and found[0]["values"] == {"metrics.loss": 0.5}
        with pytest.raises(FilterError):
            tracker.search_experiments("metrics.loss >")  # raised here, never sent
        tracker.close()


# -- hostile and malformed filters ----------------------------------------------------------------

MALFORMED = [
    ("'; DROP TABLE experiments; --", 0, "unterminated string"),
    ('name = "x"; DROP TABLE experiments', 10, "unexpected character ';'"),
    ('name = "x" -- comment', 11, "unexpected character '-'"),
    ('name = "x") or (1=1', 10, "unmatched ')'"),
    ('name = "x" UNION SELECT * FROM experiments', 11, "expected 'and', 'or' or the end"),
    ("1 = 1", 0, "expected a condition"),
    ("name = x", 7, "expected a value"),
    ("name = ?", 7, "unexpected character '?'"),
    ("$1 = 1", 0, "unexpected character '$'"),
    ("e.id = 1", 0, "unknown name 'e.id'"),
    ("params.lr < 1e-3 and", 20, "expected a condition"),
    ("params.lr < 1e-3 params.gamma > 0", 17, "expected 'and', 'or' or the end"),
    ("params.lr 3", 10, "expected a comparator after 'params.lr'"),
    ("params.lr", 9, "expected a comparator"),
    ("params.use_gae and tags.x", 15, "expected a comparator after 'params.use_gae'"),
    ("params. = 1", 7, "expected a name after '.'"),
    ("params = 1", 6, "expected a name after 'params.'"),
    ("params.lr = null", 12, "is null"),
    ("params.lr is nul", 13, "expected 'null'"),
    ("params.lr ! 3", 10, "'!' must be followed by '='"),
    ('name in ("a",', 13, "expected a value"),
    ('name in "a"', 8, "expected '('"),
    ('name = "a" and ()', 16, "expected a condition"),
    ("(name = 'a'", 11, "expected ')' to close the '(' at position 0"),
    ("metrics.x = '1'", 12, "metrics.x is a number"),
    ("name > 3", 7, "name is text"),
    ('metrics.x like "a%"', 15, "'like' matches text"),
    ("tags.ppo = true", 9, "takes no comparator"),
    ("nonexistent = 1", 0, "unknown column 'nonexistent'"),
    ("foo.bar = 1", 0, "unknown name 'foo.bar'"),
    ("status = `running`", 9, "expected a value"),
    ("`unterminated", 0, "unterminated name"),
    ("params.`` = 1", 7, "empty name in backticks"),
    ("name = 1e5x", 7, "malformed number"),
    ('name = "\x00"', 8, "NUL"),
    ('name = "\ud800"', 8, "lone surrogate"),
    ("(" * 60 + "tags.a" + ")" * 60, 50, "nested too deeply"),
    ("not " * 100 + "tags.a", 200, "nested too deeply"),
    ("tags.a or " * 300 + "tags.a", 2000, "too many conditions"),
    ("name in (" + ", ".join(["'a'"] * 1001) + ")", 5009, "too many values"),
    ("x" * 20_000, 10_000, "too long"),
]


@pytest.mark.parametrize("text, position, reason", MALFORMED, ids=[repr(t[:40]) for t, _, _ in MALFORMED])
def test_malformed_filter_raises_filter_error_at_its_position(text: str, position: int, reason: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse(text)
    error = caught.value
    assert error.position == position and reason in error.reason, str(error)
    message = str(error)
    assert message.startswith("filter: ") and f"at position {position}:" in message
    snippet, caret = message.split("\n")[-2:]
    column = len(caret) - 1
    assert caret.strip() == "^"
    if position < len(text):
        assert snippet[column] in (text[position], "?"), message
    else:
        assert column == len(snippet), message


def test_caret_sits_under_the_position() -> None:
    with pytest.raises(FilterError) as caught:
        parse("params.lr 3")
    assert str(caught.value) == (
        "filter: expected a comparator after 'params.lr', found '3' at position 10:\n  params.lr 3\n            ^")


def test_caret_of_a_multi_line_or_long_filter() -> None:
    with pytest.raises(FilterError) as caught:
        parse('tags.ppo\n  and name = 3\n  and tags.x')
    assert caught.value.position == 22
    assert str(caught.value).split("\n")[1:] == ["    and name = 3", "               ^"]
    long = "tags.a and " * 50 + "name = 3"
    with pytest.raises(FilterError) as caught:
        parse(long)
    snippet, caret = str(caught.value).split("\n")[1:]
    assert snippet.startswith("  ...") and snippet[len(caret) - 1] == "3" and len(snippet) < 100


def test_hostile_filters_reach_sql_only_as_bound_values(runs: Runs) -> None:
    before = db_rows(runs.db, "SELECT id, name, status, tags FROM experiments ORDER BY id")
    for text, _, _ in MALFORMED:
        with pytest.raises(FilterError):
            search(runs.reader, text)
    # Well-formed filters whose values and names carry SQL: they match nothing and change nothing.
    for text in ['name = "x\'; DROP TABLE experiments; --"', "params.`lr'; DROP TABLE metrics; --` = 1",
                 'tags.`ppo"); DROP TABLE experiments; --`', "metrics.`x') OR 1=1 --`.max > 0",
                 'name like "%\'; DELETE FROM experiments; --"', 'status in ("x\' OR \'1\'=\'1")']:
        assert search(runs.reader, text) == [], text
    with pytest.raises(FilterError):
        search(runs.reader, None, ["name; DROP TABLE experiments"])
    assert db_rows(runs.db, "SELECT id, name, status, tags FROM experiments ORDER BY id") == before


def _deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "HasTag", "ref": {"type": "Tag", "name": "ppo"}}
    for _ in range(levels):
        node = {"type": "Not", "item": node}
    return node


HOSTILE_DATA = [
    # What an agent client could send instead of what parse() makes: refused before any SQL runs.
    ({"type": "Compare", "ref": {"type": "Column", "name": "id; DROP TABLE experiments"}, "op": "=", "value": 1}, [], []),
    ({"type": "Compare", "ref": {"type": "Column", "name": "name"}, "op": "= 1 OR 1 =", "value": 1}, [], []),
    ({"type": "Compare", "ref": {"type": "Metric", "name": "x", "aggregate": "sum(1)); --"}, "op": "=", "value": 1},
     [], []),
    ({"type": "Compare", "ref": {"type": "Column", "name": "name"}, "op": "=", "value": {"$ne": 1}}, [], []),
    ({"type": "Raw", "sql": "1=1"}, [], []),
    ({"type": "In", "ref": {"type": "Column", "name": "id"}, "values": []}, [], []),
    (_deep(10_000), [], []),
    (None, [{"type": "OrderKey", "ref": {"type": "Column", "name": "(SELECT 1)"}, "descending": True}], []),
    (None, [], [{"type": "Tag", "name": "ppo"}]),
]


@pytest.mark.parametrize("condition, order, shown", HOSTILE_DATA, ids=[str(i) for i in range(len(HOSTILE_DATA))])
def test_the_reader_checks_the_plain_data_it_is_handed(runs: Runs, condition: Any, order: list, shown: list) -> None:
    with pytest.raises(ValueError):
        runs.reader.filter_experiments(condition, order, shown, [], None)


def test_parse_and_parse_order_need_no_database() -> None:
    assert parse("   ") is None
    keys = parse_order(["metrics.`val.max`.max desc, params.lr", "name ASC"])
    assert [(key_text(k.ref), k.descending) for k in keys] == [
        ("metrics.`val.max`.max", True), ("params.lr", False), ("name", False)]
    assert parse_order(None) == [] and parse_order("") == []
    for bad, position in [("tags.ppo", 0), ("name sideways", 5), ("metrics.x desc desc", 15), ("", None)]:
        if position is None:
            continue
        with pytest.raises(FilterError) as caught:
            parse_order(bad)
        assert caught.value.position == position and str(caught.value).startswith("order_by: ")
    with pytest.raises(TypeError):
        parse(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["val_sharpe", "val.sharpe", "val.max", "system/gpu0/util", "a b", "max", "x`y"])
def test_key_text_parses_back(name: str) -> None:
    from ml_persistence.filtering.nodes import Metric

    for aggregate in ("last", "max"):
        ref = Metric(name, aggregate)
        assert parse_order(key_text(ref))[0].ref == ref


# -- the command line -----------------------------------------------------------------------------


def _ids(runs: Runs, *wanted: str) -> list[int]:
    return [runs.ids[n] for n in wanted]


def test_cli_ls_filter_and_order(runs: Runs, tmp_path: Path) -> None:
    done = ok(cli("ls", "--db", runs.db, "--filter", "tags.ppo and params.lr < 1e-3", "--order-by",
                  "metrics.val_sharpe desc", "--json", cwd=tmp_path))
    found = json.loads(done.stdout)
    assert [r["id"] for r in found] == _ids(runs, "ppo-a", "live", "crashed")
    assert found[2]["status"] == "crashed" and found[0]["values"] == {"params.lr": 1e-4, "metrics.val_sharpe": 1.8}
    table = ok(cli("ls", "--db", runs.db, "--filter", 'status = "stale" or name = "ppo-b"', "--status", "failed",
                   cwd=tmp_path)).stdout.splitlines()
    assert [line.split()[0] for line in table[1:]] == [str(runs.ids["ppo-b"])]
    table = ok(cli("ls", "--db", runs.db, "--order-by", "params.batch desc", "--limit", "2", cwd=tmp_path)).stdout
    header, *body = table.splitlines()
    assert "params.batch" in header and [line.split()[0] for line in body] == [str(i) for i in _ids(runs, "ppo-b", "ppo-a")]


def test_cli_syntax_error_exits_2_with_the_caret(runs: Runs, tmp_path: Path) -> None:
    done = cli("ls", "--db", runs.db, "--filter", "params.lr 3", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr == ("ml-persistence: filter: expected a comparator after 'params.lr', found '3' at position 10:\n"
                           "  params.lr 3\n            ^\n")
    # Checked before the database is opened: the same for a database that does not exist.
    done = cli("compare", "--db", str(tmp_path / "missing.db"), "--filter", "x = 1", cwd=tmp_path)
    assert done.returncode == 2 and "unknown column 'x'" in done.stderr
    done = cli("export", "--db", runs.db, "--order-by", "tags.a", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("ml-persistence: order_by: tags cannot order runs")


def test_cli_compare_and_export_by_filter(runs: Runs, tmp_path: Path) -> None:
    done = ok(cli("compare", "--db", runs.db, "--filter", "tags.dqn", "--order-by", "name", "--json", cwd=tmp_path))
    assert [e["id"] for e in json.loads(done.stdout)["experiments"]] == _ids(runs, "dqn-a", "dqn-b")
    done = ok(cli("compare", str(runs.ids["stale"]), "--db", runs.db, "--filter", "tags.ppo", "--limit", "1",
                  "--json", cwd=tmp_path))
    assert [e["id"] for e in json.loads(done.stdout)["experiments"]] == _ids(runs, "stale", "live")
    assert "matches more than 1" in done.stderr
    done = cli("compare", "--db", runs.db, "--filter", "tags.btc", cwd=tmp_path)
    assert done.returncode == 1 and "the filter selects 1" in done.stderr
    done = ok(cli("export", "--db", runs.db, "--what", "hyperparameters", "--filter", "params.lr >= 1e-3",
                  "--format", "jsonl", cwd=tmp_path))
    assert {json.loads(line)["experiment_id"] for line in done.stdout.splitlines()} == set(_ids(runs, "ppo-b", "dqn-b"))
    done = ok(cli("export", "--db", runs.db, "--filter", "tags.nothing", cwd=tmp_path))
    assert done.stdout.splitlines()[0].startswith("id,name,") and len(done.stdout.splitlines()) == 1
    done = ok(cli("export", "--db", runs.db, "--what", "metrics", "--order-by", "metrics.val_sharpe.max desc",
                  "--limit", "1", "--experiment", str(runs.ids["ppo-a"]), "--experiment", str(runs.ids["ppo-b"]),
                  "--format", "jsonl", cwd=tmp_path))
    assert {json.loads(line)["experiment_id"] for line in done.stdout.splitlines()} == {runs.ids["ppo-b"]}

