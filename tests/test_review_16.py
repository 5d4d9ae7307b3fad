"""Hostile review of issue 16 (filter language, model aliases, system metrics, sweep UI): each test is one
finding or one check a demanding MLflow/W&B user makes, on both engines where it applies.

Processes are synchronized on their exits and on database state, never on sleeps; timeouts are hang guards.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from contract_helpers import child_env, cli, ok, run_script
from ml_persistence import ExperimentTracker


def _run(db: str, name: str, params: dict, metrics: dict | None = None) -> int:
    t = ExperimentTracker(db, capture_environment=False)
    exp_id = t.start_experiment(name, tags=["review"])
    t.log_hyperparameters_batch(params)
    for metric, values in (metrics or {}).items():
        for step, value in enumerate(values):
            t.log_metric(metric, value, step=step)
    t.end_experiment()
    t.flush()
    return exp_id


def _names(db: str, text: str, **kwargs) -> list[str]:
    return sorted(r["name"] for r in ExperimentTracker(db).search_experiments(text, **kwargs))


# -- finding 1: a number past 2**53 did not equal itself on SQLite (it did on PostgreSQL) ------------------


def test_an_integer_past_2_53_equals_its_own_value_on_both_engines(any_db: str) -> None:
    """README: "Numbers compare as 64-bit floats". SQLite compared the bound integer with the parameter's REAL
    exactly, so a seed of 2**53 + 1 did not match `params.seed = 9007199254740993`, while PostgreSQL did."""
    seed = 2**53 + 1
    _run(any_db, "big", {"seed": seed}, {"id_like": [seed]})
    _run(any_db, "small", {"seed": 1}, {"id_like": [1]})
    assert _names(any_db, f"params.seed = {seed}") == ["big"]
    assert _names(any_db, f"params.seed in (1, {seed})") == ["big", "small"]
    assert _names(any_db, f"metrics.id_like = {seed}") == ["big"]
    assert _names(any_db, f"metrics.id_like.max >= {seed}") == ["big"]
    assert _names(any_db, f"params.seed != {seed}") == ["small"]


# -- the issue's own example, as a user runs it ---------------------------------------------------------

ISSUE_FILTER = 'params.learning_rate < 1e-3 and metrics.val_sharpe > 1.5 and (tags.ppo or status = "running")'


def _sweep(db: str) -> dict[str, int]:
    t = ExperimentTracker(db)
    ids = {}
    for name, lr, sharpe, tags in [("ppo-low", 3e-4, [0.2, 2.0], ["ppo"]), ("ppo-high", 1e-2, [2.5], ["ppo"]),
                                   ("dqn-low", 1e-4, [1.7], ["dqn"]), ("ppo-text", "0.0001", [3.0], ["ppo"]),
                                   ("ppo-weak", 5e-4, [3.0, 1.0], ["ppo"])]:
        ids[name] = t.start_experiment(name, experiment_type="rl", tags=tags)
        t.log_hyperparameters_batch({"learning_rate": lr, "batch": 64})
        for step, value in enumerate(sharpe):
            t.log_metric("val_sharpe", value, step=step)
        t.end_experiment()
    t.flush()
    return ids


def test_the_issue_filter_in_python_by_keyword_and_position_and_async(any_db: str) -> None:
    import asyncio

    from ml_persistence import AsyncExperimentTracker

    ids = _sweep(any_db)
    tracker = ExperimentTracker(any_db)
    by_keyword = tracker.search_experiments(filter=ISSUE_FILTER, order_by=["metrics.val_sharpe desc"], limit=10)
    assert [r["id"] for r in by_keyword] == [ids["ppo-low"]]
    assert by_keyword[0]["values"] == {"params.learning_rate": 3e-4, "metrics.val_sharpe": 2.0}
    assert [r["id"] for r in tracker.search_experiments(ISSUE_FILTER, ["metrics.val_sharpe desc"], 10)] == [ids["ppo-low"]]
    ranked = tracker.search_experiments(filter="tags.ppo", order_by=["metrics.val_sharpe.max desc"], limit=2)
    assert [r["id"] for r in ranked] == [ids["ppo-weak"], ids["ppo-text"]]  # a tie at 3.0: newest id first

    async def main() -> list[int]:
        async with AsyncExperimentTracker(any_db) as t:
            return [r["id"] for r in await t.search_experiments(filter=ISSUE_FILTER, order_by=["metrics.val_sharpe desc"])]

    assert asyncio.run(main()) == [ids["ppo-low"]]


def test_the_issue_filter_on_the_command_line(any_db: str, tmp_path: Path) -> None:
    ids = _sweep(any_db)
    shown = ok(cli("ls", "--db", any_db, "--filter", ISSUE_FILTER, "--order-by", "metrics.val_sharpe desc", cwd=tmp_path))
    header, *lines = shown.stdout.splitlines()
    assert "params.learning_rate" in header and "metrics.val_sharpe" in header
    assert [line.split()[1] for line in lines] == ["ppo-low"]
    rows = json.loads(ok(cli("ls", "--db", any_db, "--filter", "tags.ppo", "--order-by", "metrics.val_sharpe.max desc",
                             "--json", cwd=tmp_path)).stdout)
    assert [r["name"] for r in rows] == ["ppo-weak", "ppo-text", "ppo-high", "ppo-low"]

    bad = cli("ls", "--db", any_db, "--filter", "params.learning_rate < 1e-3 and metrics.val_sharpe >", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "position 52" in bad.stderr and bad.stderr.splitlines()[-1] == " " * (2 + 52) + "^", bad.stderr
    bad_order = cli("ls", "--db", any_db, "--order-by", "metrics.val_sharpe sideways", cwd=tmp_path)
    assert bad_order.returncode == 2 and "position 19" in bad_order.stderr

    compared = ok(cli("compare", "--db", any_db, "--filter", "tags.ppo and params.learning_rate < 1e-3", "--json",
                      cwd=tmp_path))
    assert sorted(e["id"] for e in json.loads(compared.stdout)["experiments"]) == sorted([ids["ppo-low"], ids["ppo-weak"]])
    exported = ok(cli("export", "--db", any_db, "--what", "metrics", "--filter", ISSUE_FILTER, "--format", "jsonl",
                      cwd=tmp_path))
    assert {json.loads(line)["experiment_id"] for line in exported.stdout.splitlines()} == {ids["ppo-low"]}
    for command in ("compare", "export"):
        refused = cli(command, "--db", any_db, "--filter", "name = ", cwd=tmp_path)
        assert refused.returncode == 2 and "position 7" in refused.stderr, (command, refused.stderr)


# -- system metrics, in real processes ------------------------------------------------------------------

TRAINER = r"""
import sys, threading, time
from ml_persistence import ExperimentTracker, MetricsLogger

db, how = sys.argv[1], sys.argv[2]
tracker = ExperimentTracker(db)
exp_id = tracker.start_experiment("sampled", **({"system_metrics": 0.1} if how == "argument" else {}))
step = 0
deadline = time.monotonic() + 60  # a hang guard: the loop ends on the samples it reads back
while time.monotonic() < deadline:
    tracker.log_metrics_batch({"loss": 1.0 / (step + 1)}, step=step)
    step += 1
    if step % 50 == 0:
        tracker.flush()
        if how == "off" and step >= 2000:
            break
        if how != "off" and len(MetricsLogger(db).get_metric_history(exp_id, "system/cpu_percent")) >= 2:
            break
    time.sleep(0.0005)  # the training step
tracker.end_experiment()
print(exp_id, sorted(t.name for t in threading.enumerate()))
"""


@pytest.mark.parametrize("how", ["environment", "argument", "off"])
def test_system_metrics_in_a_real_process(any_db: str, tmp_path: Path, how: str) -> None:
    env = child_env(any_db)
    env.pop("ML_PERSISTENCE_SYSTEM_METRICS", None)
    if how == "environment":
        env.update(ML_PERSISTENCE_SYSTEM_METRICS="1", ML_PERSISTENCE_SYSTEM_METRICS_INTERVAL="0.1")
    done = run_script(tmp_path, TRAINER, any_db, how, env=env)
    assert done.returncode == 0, done.stderr
    exp_id, threads = done.stdout.split(" ", 1)
    assert "ml-persistence-system-metrics" not in threads  # stopped with the run
    from contract_helpers import db_rows

    system = db_rows(any_db, "SELECT metric_name, step, timestamp FROM metrics WHERE experiment_id = ? "
                             "AND metric_name LIKE ?", [int(exp_id), "system/%"])
    if how == "off":
        assert system == []
        return
    names = {name for name, _, _ in system}
    assert {"system/cpu_percent", "system/process_rss_mb", "system/memory_percent"} <= names, names
    assert all(step is None for _, step, _ in system)
    (end,) = db_rows(any_db, "SELECT end_time FROM experiments WHERE id = ?", [int(exp_id)])[0]
    assert max(str(ts) for _, _, ts in system) <= str(end)  # nothing sampled after the run ended
    found = ExperimentTracker(any_db).search_experiments("metrics.system/cpu_percent.count >= 2")
    assert [r["id"] for r in found] == [int(exp_id)]


def test_system_metrics_without_psutil(db_path: str, tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "psutil.py").write_text("raise ImportError('No module named psutil')\n")
    body = r"""
    import sys
    from ml_persistence import ExperimentTracker, MissingDependencyError
    t = ExperimentTracker(sys.argv[1])
    try:
        t.start_experiment("asked", system_metrics=True)
    except MissingDependencyError as exc:
        assert isinstance(exc, ImportError)
        print("raised:", exc)
    assert t.list_experiments() == []  # before the run is created
    t.start_experiment("by environment")
    t.end_experiment()
    print([e["name"] for e in t.list_experiments()])
    """
    env = child_env(db_path, PYTHONPATH=f"{blocker}:{child_env()['PYTHONPATH']}",
                    ML_PERSISTENCE_SYSTEM_METRICS="1")
    done = run_script(tmp_path, body, db_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "raised:" in done.stdout and "pip install 'ml_persistence[system]'" in done.stdout
    assert "['by environment']" in done.stdout
    assert done.stderr.count("pip install 'ml_persistence[system]'") == 1, done.stderr


# -- model aliases, everywhere they are promised -----------------------------------------------------


def test_an_alias_moves_and_shows_in_show_best_and_json(any_db: str, tmp_path: Path) -> None:
    from ml_persistence import ModelRegistry

    e1 = _run(any_db, "first", {"lr": 1e-3})
    e2 = _run(any_db, "second", {"lr": 1e-4})
    registry = ModelRegistry(any_db)
    m1 = registry.register_model(e1, "ckpt/first.pt", val_metric=1.0, is_best=True)
    m2 = registry.register_model(e2, "ckpt/second.pt", val_metric=2.0, is_best=True)
    registry.set_alias("champion", m1)
    assert registry.get_model_by_alias("champion")["id"] == m1
    registry.set_alias("champion", m2)  # moves it
    assert registry.get_model_by_alias("champion")["id"] == m2
    assert registry.get_model_by_alias("champion", experiment_id=e1) is None
    assert registry.get_model_by_alias("champion", experiment_id=e2)["aliases"] == ["champion"]
    assert registry.get_model(m1)["aliases"] == []

    shown = json.loads(ok(cli("show", str(e2), "--json", "--db", any_db, cwd=tmp_path)).stdout)
    assert [(m["id"], m["aliases"]) for m in shown["models"]] == [(m2, ["champion"])]
    best = json.loads(ok(cli("best", "--json", "--db", any_db, cwd=tmp_path)).stdout)
    assert [(m["id"], m["aliases"]) for m in best] == [(m2, ["champion"]), (m1, [])]
    text = ok(cli("best", "--db", any_db, cwd=tmp_path)).stdout.splitlines()
    assert "ALIASES" in text[0] and "champion" in text[1] and "champion" not in text[2]
    assert "champion" in ok(cli("show", str(e2), "--db", any_db, cwd=tmp_path)).stdout
    assert "champion" not in ok(cli("show", str(e1), "--db", any_db, cwd=tmp_path)).stdout

    assert registry.delete_alias("champion") is True and registry.delete_alias("champion") is False
    assert registry.get_model_by_alias("champion") is None


# -- the sweep and filter routes of the UI, on real runs ---------------------------------------------------


def test_the_ui_routes_filter_and_sweep_real_runs(any_db: str) -> None:
    import warnings
    from urllib.parse import quote

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from ml_persistence.ui.server import create_app

    ids = _sweep(any_db)
    client = TestClient(create_app(any_db))
    found = client.get(f"/api/experiments?filter={quote(ISSUE_FILTER)}&order={quote('metrics.val_sharpe desc')}")
    assert found.status_code == 200
    assert [(r["id"], r["values"]) for r in found.json()["experiments"]] == [
        (ids["ppo-low"], {"params.learning_rate": 3e-4, "metrics.val_sharpe": 2.0})]
    bad = client.get(f"/api/experiments?filter={quote('params.learning_rate <')}")
    assert bad.status_code == 400 and bad.json()["position"] == 22 and bad.json()["what"] == "filter"

    sweep = client.get(f"/api/sweep?filter={quote('tags.ppo')}&metric=val_sharpe&agg=max").json()
    assert {r["id"] for r in sweep["runs"][:2]} == {ids["ppo-weak"], ids["ppo-text"]}  # a tie at 3.0
    assert [r["id"] for r in sweep["runs"][2:]] == [ids["ppo-high"], ids["ppo-low"]]
    assert [r["value"] for r in sweep["runs"]] == [3.0, 3.0, 2.5, 2.0]
    by_name = {p["name"]: p for p in sweep["parameters"]}
    assert by_name["learning_rate"]["differs"] and not by_name["batch"]["differs"]
    text_run = next(r for r in sweep["runs"] if r["id"] == ids["ppo-text"])
    assert text_run["params"]["learning_rate"] == "0.0001"  # text stays text
