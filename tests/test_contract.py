"""The backend contract: the same assertions on SQLite and on PostgreSQL (the ``any_db`` fixture).

Every public call of the seed API, its async twins, the seed README's examples run verbatim, the
command line's outputs (the same text on both engines for the same logged data) and schema
creation. What differs legitimately between engines is named where it is asserted: ``vacuum``
and ``backup`` on PostgreSQL, and the README examples that open the file with ``sqlite3``.

Child processes synchronise through their stdout lines and the test's lines on their stdin;
timeouts only turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import ml_persistence
from ml_persistence.sqlite.schema import SCHEMA_VERSION
from contract_helpers import (child_env, children, cli, comparable, db_rows, engine_of,  # noqa: F401
                              normalize_output, ok, pin, run_script)
from pg import fresh_database, pg_rows
from test_seed_readme import PY, QUICKSTART_PRELUDE, SH  # the README's blocks, extracted as that test does

# The test server's password (what must never be printed); a placeholder when there is no server.
PASSWORD = urlsplit(os.environ.get("ML_PERSISTENCE_TEST_POSTGRES", "")).password or "no-password-given"


@pytest.fixture
def db(any_db: str):
    """``any_db``, with every writer of this process stopped before the database is dropped."""
    yield any_db
    ml_persistence.shutdown(timeout=30)


def engine(db: str) -> str:
    return engine_of(db)


# -- the seed API ----------------------------------------------------------------------------------

ODD = [math.nan, math.inf, -math.inf, 0.1 + 0.2, 1e308, -0.0, 5e-324, -1.5, 2**53 + 1.0]


def scenario(db: str) -> dict[str, Any]:
    """Log a small, complete project through every seed call; return what every read gives back."""
    from ml_persistence import DatasetManager, ExperimentTracker, MetricsLogger, ModelRegistry

    t = ExperimentTracker(db, capture_environment=False)
    reg, ds, ml = ModelRegistry(db), DatasetManager(db), MetricsLogger(db)
    train = ds.register_dataset("BTC-USD-Daily", "2023", split_type="train", start_date="2023-01-01",
                                end_date="2023-12-31", num_samples=365, dataset_type="ohlcv",
                                feature_columns=["open", "close"], target_columns=["ret"], metadata={"src": "x"})
    test = ds.register_dataset("BTC-USD-Daily", "2023", split_type="test", num_samples=182)
    again = ds.register_dataset("BTC-USD-Daily", "2023", split_type="train")

    e1 = t.start_experiment("ppo-baseline", experiment_type="rl", description="PPO on BTC-USD",
                            tags=["rl", "ppo", "btc"], random_seed=42, metadata={"asset": "BTC", "n": {"a": [1, 2]}})
    t.log_hyperparameters_batch({"learning_rate": 3e-4, "gamma": 0.99, "batch_size": 128, "use_gae": True,
                                 "layers": [64, 64], "optimizer": "adam", "scheduler": None, "cfg": {"a": 1}})
    t.log_hyperparameter("clip", 0.2)
    ds.link_dataset_to_experiment(e1, train, "train")
    ds.link_dataset_to_experiment(e1, test, "test")
    for episode, (ret, sharpe) in enumerate([(0.1, 1.25), (0.2, -0.5), (0.35, 2.0)]):
        t.log_metrics_batch({"train_return": ret, "val_sharpe": sharpe}, episode=episode)
    read_now = ml.get_metric_history(e1, "val_sharpe")  # read your writes: no flush before it
    for step, value in enumerate(ODD):
        t.log_metric("odd", value, step=step)
    t.log_metric("loss", 0.9, step=1, split="train")
    t.log_metric("loss", 0.8, step=1, split="val")
    t.log_metric("loss", 0.7, step=2, split="train", epoch=1)
    t.log_metric("action_distribution", 0.0, value_json=json.dumps({"hold": 0.5, "buy": 0.3}), episode=3)
    t.log_metric("return_bull", 0.3, episode=3, metadata={"regime": "bull"})
    m0 = reg.register_model(e1, "models/e1_ep0.pth", architecture_type="ppo", state_dim=43, action_dim=3,
                            episode_num=0, global_step=100, train_metric=0.1, val_metric=1.5, test_metric=0.7,
                            hyperparameters={"lr": 3e-4}, metadata={"k": "v"})
    m1 = reg.register_model(e1, "models/e1_ep1.pth", episode_num=1, val_metric=2.5, is_best=True)
    m2 = reg.register_model(e1, "models/e1_ep2.pth", episode_num=2, val_metric=0.5)
    art = t.log_artifact("plots/returns.png", "plot", artifact_name="returns-plot", description="returns",
                         metadata={"dpi": 100}, model_id=m1)
    t.end_experiment("completed", notes="Training completed successfully")

    e2 = t.start_experiment("ppo-tuned", experiment_type="rl", tags=["rl"], random_seed=7)
    t.log_metrics_batch({"val_sharpe": 3.0}, episode=0)
    t.log_metrics_batch({"val_sharpe": 1.0}, episode=1)
    m3 = reg.register_model(e2, "models/e2.pth", val_metric=3.0, test_metric=0.1)
    m4 = reg.register_model(e2, "models/e2.pth", val_metric=1.0)  # same name: version 2
    t.end_experiment("failed", notes="diverged")
    e3 = t.start_experiment("lstm", experiment_type="supervised", tags=["supervised", "rl-like"])

    observed = {
        "ids": {"train": train, "test": test, "again": again, "e": [e1, e2, e3], "m": [m0, m1, m2, m3, m4], "art": art},
        "read_now": comparable(read_now),
        "experiment": comparable(t.get_experiment(e1)),
        "hyperparameters": t.get_hyperparameters(e1),
        "list": {
            "all": [x["id"] for x in t.list_experiments()],
            "rl": [x["id"] for x in t.list_experiments(experiment_type="rl")],
            "completed": [x["id"] for x in t.list_experiments(status="completed")],
            "running": [x["id"] for x in t.list_experiments(status="running")],
            "tag_ppo": [x["id"] for x in t.list_experiments(tags=["ppo"])],
            "tag_rl": [x["id"] for x in t.list_experiments(tags="rl")],
            "tags_both": [x["id"] for x in t.list_experiments(tags=["rl", "btc"])],
            "name": [x["id"] for x in t.list_experiments(name="ppo-tuned")],
            "limit": [x["id"] for x in t.list_experiments(limit=2)],
            "rows": comparable(t.list_experiments()),
        },
        "best": {"e1": comparable(reg.get_best_model(e1)), "e2": reg.get_best_model(e2)["id"],
                 "any": reg.get_best_model()["id"], "none": reg.get_best_model(e3)},
        "models": {
            "by_val": [m["id"] for m in reg.list_models(order_by="val_metric")],
            "by_val_asc": [m["id"] for m in reg.list_models(order_by="val_metric", ascending=True)],
            "best": [m["id"] for m in reg.list_models(is_best=True)],
            "not_best": [m["id"] for m in reg.list_models(is_best=False)],
            "e1": [m["id"] for m in reg.list_models(experiment_id=e1)],
            "limit": [m["id"] for m in reg.list_models(limit=2, order_by="id", ascending=True)],
            "versions": [(m["name"], m["version"]) for m in reg.list_models(experiment_id=e2, order_by="id", ascending=True)],
            "one": comparable(reg.get_model(m0)),
        },
        "history": {
            "odd": comparable(ml.get_metric_history(e1, "odd")),
            "loss_train": [h["value"] for h in ml.get_metric_history(e1, "loss", split="train")],
            "split_inferred": sorted({(h["metric_name"], h["split"]) for n in ("train_return", "val_sharpe")
                                      for h in ml.get_metric_history(e1, n)}),
            "json": [(h["value"], h["value_json"], h["episode"]) for h in ml.get_metric_history(e1, "action_distribution")],
            "meta": [h["metadata"] for h in ml.get_metric_history(e1, "return_bull")],
        },
        "compare": comparable(ml.compare_metrics_across_experiments([e1, e2, e3], "val_sharpe")),
        "compare_split": comparable(ml.compare_metrics_across_experiments([e1], "loss", split="val")),
        "summary": comparable(ml.get_metrics_summary(e1)),
        "summary_train": comparable(ml.get_metrics_summary(e1, split="train")),
        "names": sorted(ml.list_metric_names(e1)),
        "datasets": {
            "get": comparable(ds.get_dataset(train)),
            "find": ds.find_dataset("BTC-USD-Daily", "2023", "test")["id"],
            "find_none": ds.find_dataset("BTC-USD-Daily", "1999"),
            "list": [d["id"] for d in ds.list_datasets(name="BTC-USD-Daily")],
            "list_split": [d["id"] for d in ds.list_datasets(split_type="train")],
            "of_experiment": sorted((d["id"], d["usage_type"]) for d in ds.get_experiment_datasets(e1)),
            "experiments_of": [(x["id"], x["usage_type"]) for x in ds.get_dataset_experiments(train)],
        },
        "artifacts": comparable(t.list_artifacts(e1)),
        "artifact_types": [a["id"] for a in t.list_artifacts(e1, artifact_type="log")],
    }
    t.end_experiment("completed")  # not left to this process's exit, when the database may be gone
    return observed


def test_seed_api_round_trip(db: str, tmp_path: Path) -> None:
    got = scenario(db)
    ids = got["ids"]
    e1, e2, e3 = ids["e"]
    m0, m1, m2, m3, m4 = ids["m"]
    assert ids["again"] == ids["train"] != ids["test"]
    assert e1 < e2 < e3 and m0 < m1 < m2 < m3 < m4

    assert [(h["value"], h["episode"]) for h in got["read_now"]] == [(1.25, 0), (-0.5, 1), (2.0, 2)]
    exp = got["experiment"]
    assert (exp["name"], exp["experiment_type"], exp["description"], exp["status"], exp["notes"], exp["random_seed"]) == (
        "ppo-baseline", "rl", "PPO on BTC-USD", "completed", "Training completed successfully", 42)
    assert exp["tags"] == ["rl", "ppo", "btc"] and exp["metadata"] == {"asset": "BTC", "n": {"a": [1, 2]}}
    assert exp["start_time"] == exp["end_time"] == "<time>" and exp["duration_seconds"] == "<duration>"
    assert got["hyperparameters"] == {"learning_rate": 3e-4, "gamma": 0.99, "batch_size": 128, "use_gae": True,
                                      "layers": [64, 64], "optimizer": "adam", "scheduler": None, "cfg": {"a": 1},
                                      "clip": 0.2}
    assert [type(v).__name__ for v in got["hyperparameters"].values()] == [
        "float", "float", "int", "bool", "list", "str", "NoneType", "dict", "float"]

    lists = got["list"]
    assert lists["all"] == [e3, e2, e1] and lists["rl"] == [e2, e1] and lists["completed"] == [e1]
    assert lists["running"] == [e3] and lists["tag_ppo"] == [e1] and lists["tag_rl"] == [e2, e1]
    assert lists["tags_both"] == [e1] and lists["name"] == [e2] and lists["limit"] == [e3, e2]
    by_id = {row["id"]: row for row in lists["rows"]}
    assert (by_id[e1]["num_checkpoints"], by_id[e1]["best_val_metric"]) == (3, 2.5)
    assert (by_id[e2]["num_checkpoints"], by_id[e2]["best_val_metric"]) == (2, 3.0)
    assert by_id[e2]["status"] == "failed" and by_id[e3]["tags"] == ["supervised", "rl-like"]

    best = got["best"]
    assert best["e1"]["id"] == m1 and best["e1"]["is_best"] and best["e1"]["val_metric"] == 2.5
    assert best["e2"] == m3  # none marked: the highest val_metric
    assert best["any"] == m1 and best["none"] is None
    models = got["models"]
    assert models["by_val"] == [m3, m1, m0, m4, m2] and models["by_val_asc"] == [m2, m4, m0, m1, m3]
    assert models["best"] == [m1] and sorted(models["not_best"]) == [m0, m2, m3, m4]
    assert models["e1"] == [m2, m1, m0] and models["limit"] == [m0, m1]
    assert models["versions"] == [("e2", "1"), ("e2", "2")]
    one = models["one"]
    assert (one["name"], one["architecture_type"], one["state_dim"], one["action_dim"], one["episode_num"],
            one["global_step"], one["train_metric"], one["val_metric"], one["test_metric"], bool(one["is_best"])) == (
        "e1_ep0", "ppo", 43, 3, 0, 100, 0.1, 1.5, 0.7, False)
    assert one["hyperparameters"] == {"lr": 3e-4} and one["metadata"] == {"k": "v"}
    with pytest.raises(ValueError, match="val_metric"):
        ml_persistence.ModelRegistry(db).list_models(order_by="val_metric; DROP TABLE models")

    history = got["history"]
    assert [(h["step"], h["value"]) for h in history["odd"]] == [
        (i, "nan" if isinstance(v, float) and math.isnan(v) else v) for i, v in enumerate(ODD)]
    assert history["loss_train"] == [0.9, 0.7]
    assert history["split_inferred"] == [("train_return", "train"), ("val_sharpe", "val")]
    assert history["json"] == [(0.0, '{"hold": 0.5, "buy": 0.3}', 3)]
    assert history["meta"] == [{"regime": "bull"}]

    compare = {int(k): v for k, v in got["compare"].items()}
    assert compare[e1]["count"] == 3 and compare[e1]["max"] == 2.0 and compare[e1]["first"] == 1.25
    assert compare[e1]["last"] == 2.0 and compare[e1]["min"] == -0.5
    assert math.isclose(compare[e1]["mean"], 2.75 / 3)
    assert compare[e2]["count"] == 2 and compare[e2]["mean"] == 2.0 and compare[e2]["std"] == 1.0
    assert compare[e3]["count"] == 0 and compare[e3]["mean"] == "nan"
    assert [v["count"] for v in got["compare_split"].values()] == [1]
    summary = got["summary"]
    assert summary["odd"]["count"] == len(ODD) and summary["odd"]["max"] == math.inf and summary["odd"]["min"] == -math.inf
    assert set(got["summary_train"]) == {"loss", "train_return"}
    assert got["names"] == ["action_distribution", "loss", "odd", "return_bull", "train_return", "val_sharpe"]

    datasets = got["datasets"]
    train = datasets["get"]
    assert (train["name"], train["version"], train["split_type"], train["start_date"], train["end_date"],
            train["num_samples"], train["dataset_type"]) == ("BTC-USD-Daily", "2023", "train", "2023-01-01",
                                                             "2023-12-31", 365, "ohlcv")
    assert train["feature_columns"] == '["open","close"]' and train["metadata"] == {"src": "x"}
    assert datasets["find"] == ids["test"] and datasets["find_none"] is None
    assert sorted(datasets["list"]) == sorted([ids["train"], ids["test"]]) and datasets["list_split"] == [ids["train"]]
    assert datasets["of_experiment"] == sorted([(ids["train"], "train"), (ids["test"], "test")])
    assert datasets["experiments_of"] == [(e1, "train")]
    (artifact,) = got["artifacts"]
    assert (artifact["id"], artifact["artifact_type"], artifact["artifact_name"], artifact["description"],
            artifact["model_id"], artifact["metadata"]) == (ids["art"], "plot", "returns-plot", "returns", m1, {"dpi": 100})
    assert got["artifact_types"] == []

    # NaN is stored as NULL, as SQLite stores it; the read gives NaN back (checked above).
    assert db_rows(db, "SELECT value FROM metrics WHERE experiment_id = ? AND metric_name = 'odd' AND step = 0", (e1,)) == [(None,)]
    assert db_rows(db, "SELECT tags FROM experiments WHERE id = ?", (e1,)) == [('["rl","ppo","btc"]',)]

    if engine(db) == "postgresql":
        # The very same reads on a SQLite file, in this process: equal after masking times.
        ml_persistence.shutdown(timeout=30)
        reference = scenario(str(tmp_path / "reference.db"))
        assert got == reference


def test_ids_per_process_and_read_your_writes(db: str, tmp_path: Path, children) -> None:
    body = """
    import json, sys
    from ml_persistence import ExperimentTracker, MetricsLogger, ModelRegistry
    worker = sys.argv[1]
    t = ExperimentTracker(capture_environment=False)
    sys.stdin.readline()  # go
    exp = t.start_experiment(f"worker-{worker}")
    t.log_metric("loss", 1.0, step=0)
    seen = [h["value"] for h in MetricsLogger().get_metric_history(exp, "loss")]  # no flush: read your writes
    model = ModelRegistry().register_model(exp, f"w{worker}.pth", val_metric=float(exp))
    got = ModelRegistry().get_model(model)
    t.end_experiment()
    print("result", json.dumps({"exp": exp, "model": model, "seen": seen, "model_exp": got["experiment_id"],
                                "name": t.get_experiment(exp)["name"], "status": t.get_experiment(exp)["status"]}), flush=True)
    """
    procs = [children.start(tmp_path, body, str(i), name=f"w{i}.py", env=child_env(db)) for i in range(4)]
    for p in procs:
        p.send("go")
    results = [json.loads(p.line("result")) for p in procs]
    for p in procs:
        assert p.wait() == 0, p.describe()
    assert len({r["exp"] for r in results}) == 4 and len({r["model"] for r in results}) == 4
    for i, r in enumerate(results):
        assert r["seen"] == [1.0] and r["model_exp"] == r["exp"]
        assert (r["name"], r["status"]) == (f"worker-{i}", "completed")
        assert db_rows(db, "SELECT name FROM experiments WHERE id = ?", (r["exp"],)) == [(f"worker-{i}",)]
        assert db_rows(db, "SELECT experiment_id FROM models WHERE id = ?", (r["model"],)) == [(r["exp"],)]


def test_async_twins(db: str) -> None:
    from ml_persistence import AsyncDatasetManager, AsyncExperimentTracker, AsyncMetricsLogger, AsyncModelRegistry

    async def main() -> dict[str, Any]:
        async with AsyncExperimentTracker(db, capture_environment=False) as tracker:
            exp = await tracker.start_experiment("async run", experiment_type="rl", tags=["async"])
            tracker.log_hyperparameters_batch({"lr": 0.1})
            for step in range(5):
                tracker.log_metrics_batch({"loss": 1.0 / (step + 1), "nan": math.nan}, step=step)
            history = await AsyncMetricsLogger(db).get_metric_history(exp, "loss")
            registry = AsyncModelRegistry(db)
            model = await registry.register_model(exp, "a.pth", val_metric=0.5, is_best=True)
            datasets = AsyncDatasetManager(db)
            dataset = await datasets.register_dataset("d", "1", split_type="train")
            datasets.link_dataset_to_experiment(exp, dataset, "train")
            linked = await datasets.get_experiment_datasets(exp)
            artifact = await tracker.log_artifact("plot.png", "plot")
            result = {
                "exp": exp, "history": [h["value"] for h in history],
                "nan": [h["value"] for h in await AsyncMetricsLogger(db).get_metric_history(exp, "nan")],
                "best": (await registry.get_best_model(exp))["id"] == model,
                "models": [m["id"] for m in await registry.list_models(experiment_id=exp)] == [model],
                "linked": [(d["id"], d["usage_type"]) for d in linked] == [(dataset, "train")],
                "found": (await datasets.find_dataset("d", "1", "train"))["id"] == dataset,
                "artifacts": [a["id"] for a in await tracker.list_artifacts(exp)] == [artifact],
                "params": await tracker.get_hyperparameters(exp),
                "summary": (await AsyncMetricsLogger(db).get_metrics_summary(exp))["loss"]["count"],
                "names": sorted(await AsyncMetricsLogger(db).list_metric_names(exp)),
                "listed": [e["id"] for e in await tracker.list_experiments(tags=["async"])],
            }
        result["status"] = (await AsyncExperimentTracker(db).get_experiment(exp))["status"]
        return result

    got = asyncio.run(main())
    assert got["history"] == [1.0, 0.5, 1.0 / 3, 0.25, 0.2]
    assert len(got["nan"]) == 5 and all(math.isnan(v) for v in got["nan"])
    assert got["best"] and got["models"] and got["linked"] and got["found"] and got["artifacts"]
    assert got["params"] == {"lr": 0.1} and got["summary"] == 5 and got["names"] == ["loss", "nan"]
    assert got["listed"] == [got["exp"]] and got["status"] == "completed"


# -- the seed README, verbatim -----------------------------------------------------------------------

SQLITE_ONLY = "this example opens ml_experiments.db with the sqlite3 module / shell; on PostgreSQL use the CLI"


def readme_python(db: str, cwd: Path, heading: str, prelude: str = "", after: str = "") -> str:
    code = textwrap.dedent(prelude) + PY[heading] + textwrap.dedent(after)
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=child_env(db), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


def readme_shell(db: str, cwd: Path, heading: str) -> str:
    import shlex

    script = SH[heading].replace("python3", shlex.quote(sys.executable))
    done = subprocess.run(["bash", "-euc", script], cwd=cwd, env=child_env(db), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_quick_start_and_queries(db: str, tmp_path: Path) -> None:
    readme_python(db, tmp_path, "Quick Start", QUICKSTART_PRELUDE)
    assert db_rows(db, "SELECT name, experiment_type, status, notes, random_seed, tags FROM experiments") == [
        ("PPO Bitcoin Trading v1", "rl", "completed", "Training completed successfully", 42, '["rl","bitcoin","ppo"]')]
    assert db_rows(db, "SELECT metric_name, COUNT(*), MIN(episode), MAX(episode) FROM metrics GROUP BY metric_name "
                       "ORDER BY metric_name") == [("policy_loss", 100, 0, 99), ("train_return", 100, 0, 99),
                                                   ("train_reward", 100, 0, 99), ("value_loss", 100, 0, 99)]
    assert db_rows(db, "SELECT COUNT(*), SUM(is_best) FROM models") == [(10, 10)]
    assert db_rows(db, "SELECT param_name, param_value, param_type FROM hyperparameters ORDER BY id") == [
        ("learning_rate", "0.0003", "float"), ("gamma", "0.99", "float"), ("batch_size", "128", "int"),
        ("hidden_dim", "256", "int")]
    assert db_rows(db, "SELECT usage_type FROM experiment_datasets") == [("train",)]
    imports = "from ml_persistence import ExperimentTracker, ModelRegistry\n"
    listed = readme_python(db, tmp_path, "List All Experiments", imports)
    assert "1: PPO Bitcoin Trading v1" in listed and "Status: completed" in listed and "Best metric: 0.8" in listed
    best = readme_python(db, tmp_path, "Get Best Models", imports)
    assert "Best checkpoint: models/checkpoint_ep90.pth" in best and best.count(" - 0.8000") == 10
    assert readme_shell(db, tmp_path, "Query Experiments").strip() == "1: PPO Bitcoin Trading v1 - completed"
    assert not (tmp_path / "ml_experiments.db").exists() or engine(db) == "sqlite"


def test_readme_train_py_integration(db: str, tmp_path: Path) -> None:
    code = PY["Modify `rl/train.py`"].replace(  # ExperimentTracker("ml_experiments.db") follows $ML_PERSISTENCE_DB
        "def train(...):",
        "def train(symbol, start_date, end_date, env, agent, num_episodes, save_freq, final_return,\n"
        "          episode_reward, episode_steps, metrics, checkpoint_path, best_return):",
    )
    after = """
    env = SimpleNamespace(market_data=list(range(365)), observation_space=SimpleNamespace(shape=(43,)),
                          action_space=SimpleNamespace(n=3))
    agent = SimpleNamespace(lr=3e-4, gamma=0.99, eps_clip=0.2, k_epochs=4)
    train("BTC-USD", "2023-01-01", "2023-12-31", env, agent, num_episodes=20, save_freq=5, final_return=1.2,
          episode_reward=3.4, episode_steps=365, metrics={"policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.9},
          checkpoint_path="models/ppo.pth", best_return=1.0)
    """
    prelude = "from datetime import datetime\nfrom types import SimpleNamespace\n"
    done = subprocess.run([sys.executable, "-c", prelude + code + textwrap.dedent(after)], cwd=tmp_path,
                          env=child_env(db), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert db_rows(db, "SELECT experiment_type, status, tags FROM experiments") == [("rl", "completed", '["rl","ppo","btc-usd"]')]
    assert db_rows(db, "SELECT COUNT(*) FROM metrics") == [(20 * 6,)]
    assert db_rows(db, "SELECT COUNT(*), MIN(episode_num), MAX(episode_num) FROM models") == [(4, 0, 15)]
    assert db_rows(db, "SELECT name, version, split_type, num_samples FROM datasets") == [
        ("BTC-USD-Daily", "2023-01-01_2023-12-31", "train", 365)]
    if engine(db) == "postgresql":
        assert not (tmp_path / "ml_experiments.db").exists()  # the explicit default name followed the URL


def test_readme_compare_and_advanced_examples(db: str, tmp_path: Path) -> None:
    setup = """
    from ml_persistence import ExperimentTracker
    t = ExperimentTracker()
    for run in range(3):
        t.start_experiment(f"run{run}")
        for ep in range(4):
            t.log_metric("val_sharpe", ep + run, episode=ep)
    t.end_experiment()
    """
    ok(run_script(tmp_path, setup, env=child_env(db)))
    assert readme_python(db, tmp_path, "Compare Experiments").splitlines() == [
        "Experiment 1: Mean=1.5000, Max=3.0000", "Experiment 2: Mean=2.5000, Max=4.0000",
        "Experiment 3: Mean=3.5000, Max=5.0000"]
    prelude = """
    from ml_persistence import ExperimentTracker
    tracker = ExperimentTracker()
    tracker.start_experiment("advanced")
    episode = 7
    returns = {"bull": 0.3, "bear": -0.2, "sideways": 0.01}
    """
    readme_python(db, tmp_path, "Custom Metrics", prelude,
                  PY["Regime-Specific Tracking"] + PY["Multi-Asset Tracking"])
    assert db_rows(db, "SELECT metric_name, value, value_json, episode, metadata FROM metrics WHERE experiment_id = 4 "
                       "ORDER BY id") == [
        ("action_distribution", 0.0, '{"hold": 0.5, "buy": 0.3, "sell": 0.2}', 7, None),
        ("return_bull", 0.3, None, 7, '{"regime":"bull"}'),
        ("return_bear", -0.2, None, 7, '{"regime":"bear"}'),
        ("return_sideways", 0.01, None, 7, '{"regime":"sideways"}')]
    assert db_rows(db, "SELECT name, tags, metadata FROM experiments WHERE id > 4 ORDER BY id") == [
        ("PPO_BTC-USD", '["multi-asset","BTC-USD"]', '{"asset":"BTC-USD"}'),
        ("PPO_ETH-USD", '["multi-asset","ETH-USD"]', '{"asset":"ETH-USD"}'),
        ("PPO_SOL-USD", '["multi-asset","SOL-USD"]', '{"asset":"SOL-USD"}')]
    readme_python(db, tmp_path, "Migration from Legacy `experiments.db`")


def test_readme_initialize_database(db: str, tmp_path: Path) -> None:
    created = readme_shell(db, tmp_path, "Initialize Database")
    assert "Created" in created, created
    if engine(db) == "postgresql":
        assert pg_rows(db, "SELECT version FROM ml_persistence_schema") == [(SCHEMA_VERSION,)]
        assert not (tmp_path / "ml_experiments.db").exists()
    else:
        assert db_rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_readme_sqlite_maintenance_and_pandas_export(db: str, tmp_path: Path) -> None:
    if engine(db) == "postgresql":
        pytest.skip(SQLITE_ONLY)
    pytest.importorskip("pandas")
    if shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 command-line shell is not installed")
    readme_python(db, tmp_path, "Quick Start", QUICKSTART_PRELUDE)
    readme_shell(db, tmp_path, "Vacuum Database")
    readme_shell(db, tmp_path, "Backup Database")
    readme_python(db, tmp_path, "Export to CSV")
    assert (tmp_path / "experiments.csv").read_text().startswith("id,name,experiment_type,status")


# -- the command line: the same text on both engines ------------------------------------------------

BUILD = r'''
import math
import ml_persistence
from ml_persistence import DatasetManager, ExperimentTracker, ModelRegistry

t, reg, ds = ExperimentTracker(), ModelRegistry(), DatasetManager()
train = ds.register_dataset("BTC-USD-Daily", "2023", split_type="train", start_date="2023-01-01",
                            end_date="2023-12-31", num_samples=365)
test = ds.register_dataset("BTC-USD-Daily", "2023", split_type="test", num_samples=182)
e1 = t.start_experiment("ppo-baseline", experiment_type="rl", description="PPO on BTC-USD",
                        tags=["rl", "ppo", "btc"], random_seed=42, metadata={"asset": "BTC"})
t.log_hyperparameters_batch({"learning_rate": 0.0003, "gamma": 0.99, "batch_size": 128, "use_gae": True,
                             "layers": [64, 64], "optimizer": "adam", "scheduler": None})
ds.link_dataset_to_experiment(e1, train, "train")
ds.link_dataset_to_experiment(e1, test, "test")
for episode, (ret, sharpe) in enumerate([(0.1, 1.25), (0.2, -0.5), (0.35, 2.0)]):
    t.log_metrics_batch({"train_return": ret}, episode=episode)
    t.log_metric("val_sharpe", sharpe, episode=episode)
for step, value in enumerate([math.nan, math.inf, -math.inf, 0.1 + 0.2, 1e-300, 123456789.125]):
    t.log_metric("odd", value, step=step)
t.log_metric("loss", 0.9, step=1, split="train")
t.log_metric("loss", 0.8, step=1, split="val")
t.log_metric("dist", 0.0, value_json='{"a": 1}', step=2, metadata={"k": "v"})
reg.register_model(e1, "models/e1_ep0.pth", episode_num=0, global_step=100, train_metric=0.1, val_metric=1.5,
                   test_metric=0.7)
reg.register_model(e1, "models/e1_ep1.pth", episode_num=1, global_step=200, val_metric=2.5, is_best=True)
t.log_artifact("plots/returns.png", "plot", artifact_name="returns-plot", description="returns")
t.end_experiment("completed", notes="Training completed successfully")

e2 = t.start_experiment("ppo-tuned-lr", experiment_type="rl", tags=["rl", "ppo"], random_seed=7)
t.log_hyperparameters_batch({"learning_rate": 0.001, "gamma": 0.99, "batch_size": "128", "clip": 0.2})
t.log_metrics_batch({"train_return": 0.5}, episode=0)
t.log_metric("val_sharpe", 3.0, episode=1)
reg.register_model(e2, "models/e2_ep0.pth", episode_num=0, val_metric=3.0, test_metric=0.1, is_best=True)
t.end_experiment("failed", notes="diverged")
t.start_experiment("lstm-forecast", experiment_type="supervised", tags=["supervised"])
t.end_experiment("interrupted")
ml_persistence.shutdown()
'''

CLI_COMMANDS = [
    ["ls"], ["ls", "--json"], ["ls", "--type", "rl"], ["ls", "--tag", "ppo", "--status", "completed"],
    ["show", "1"], ["show", "2"], ["show", "1", "--json"], ["compare", "1", "2"],
    ["compare", "1", "2", "--metric", "val_sharpe"], ["compare", "1", "2", "--json"],
    ["best"], ["best", "--experiment", "1"], ["best", "--marked", "--json"], ["best", "--by", "test_metric"],
    ["metrics", "1", "odd"], ["metrics", "1", "odd", "--format", "csv"], ["metrics", "1", "odd", "--format", "json"],
    ["metrics", "1", "loss", "--split", "val"],
    *[["export", "--what", what, "--format", fmt]
      for what in ("experiments", "metrics", "models", "hyperparameters", "datasets", "artifacts") for fmt in ("csv", "jsonl")],
    ["export", "--what", "metrics", "--experiment", "1", "--metric", "odd", "--format", "csv"],
]
CLI_FAILURES = [["show", "99"], ["metrics", "1", "nope"], ["compare", "1", "99"]]


def _outputs(db: str, cwd: Path) -> dict[str, tuple[int, str, str]]:
    cwd.mkdir(exist_ok=True)
    made = run_script(cwd, BUILD, name="build.py", env=child_env(db))
    assert made.returncode == 0, made.stderr
    pin(db)
    found = {}
    for argv in CLI_COMMANDS + CLI_FAILURES:
        done = cli(*argv, "--db", db, cwd=cwd)
        found[" ".join(argv)] = (done.returncode, normalize_output(done.stdout, db), normalize_output(done.stderr, db))
    return found


def test_cli_outputs_are_the_same_text_on_both_engines(db: str, tmp_path: Path) -> None:
    got = _outputs(db, tmp_path / "run")
    broken = [argv for argv in CLI_COMMANDS
              if got[" ".join(argv)][0] != 0 or not got[" ".join(argv)][1] or "Traceback" in got[" ".join(argv)][2]]
    broken += [argv for argv in CLI_FAILURES
               if got[" ".join(argv)][0] != 1 or "Traceback" in got[" ".join(argv)][2]
               or len(got[" ".join(argv)][2].strip().splitlines()) != 1]
    problems = [f"{argv}: exit {got[' '.join(argv)][0]}\n{got[' '.join(argv)][2]}" for argv in broken]
    if engine(db) == "postgresql":
        assert PASSWORD not in "".join(out + err for _, out, err in got.values())
        reference = _outputs(str(tmp_path / "ref" / "ml_experiments.db"), tmp_path / "ref")
        for argv in got:
            if got[argv] != reference[argv] and argv.split() not in broken:
                problems.append(f"{argv}: prints differently\n--- sqlite (exit {reference[argv][0]}):\n"
                                f"{reference[argv][1]}{reference[argv][2]}\n--- postgresql (exit {got[argv][0]}):\n"
                                f"{got[argv][1]}{got[argv][2]}")
    assert not problems, f"{len(problems)} of {len(got)} commands:\n" + "\n".join(problems)


# -- init, schema creation and migrations -----------------------------------------------------------


def _version(db: str) -> int:
    if engine(db) == "postgresql":
        return pg_rows(db, "SELECT version FROM ml_persistence_schema")[0][0]
    return db_rows(db, "PRAGMA user_version")[0][0]


def test_init_creates_then_reports_up_to_date(db: str, tmp_path: Path) -> None:
    first = ok(cli("init", "--db", db, cwd=tmp_path))
    assert "Created" in first.stdout and _version(db) == SCHEMA_VERSION, first.stdout
    again = ok(cli("init", "--db", db, cwd=tmp_path))
    assert "Created" not in again.stdout and _version(db) == SCHEMA_VERSION, again.stdout
    assert normalize_output(first.stdout, db) and PASSWORD not in first.stdout + first.stderr + again.stdout
    tables = {"experiments", "models", "datasets", "metrics", "hyperparameters", "artifacts", "experiment_datasets",
              "agent_clients", "agent_requests", "legacy_imports", "model_aliases"}
    if engine(db) == "postgresql":
        found = {t for (t,) in pg_rows(db, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    else:
        found = {t for (t,) in db_rows(db, "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    assert tables | {"experiment_summary", "best_models"} <= found


def test_reading_commands_never_create_a_database(db: str, tmp_path: Path) -> None:
    done = cli("ls", "--db", db, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert PASSWORD not in done.stderr
    if engine(db) == "postgresql":
        assert pg_rows(db, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == [(0,)]
    else:
        assert not os.path.exists(db)


RACER = """
import json, sys
from ml_persistence import ExperimentTracker
t = ExperimentTracker(capture_environment=False)
sys.stdin.readline()  # go: every racer starts its first write at once
exp = t.start_experiment("racer-" + sys.argv[1])
t.log_metric("loss", 1.0, step=0)
t.end_experiment()
print("done", exp, flush=True)
"""


def test_processes_racing_to_create_a_fresh_postgresql_database_all_succeed(postgres_url: str, tmp_path: Path,
                                                                             children) -> None:
    for round_ in range(3):
        with fresh_database(postgres_url) as url:
            racers = [children.start(tmp_path, RACER, str(i), name=f"racer{round_}_{i}.py", env=child_env(url))
                      for i in range(4)]
            for r in racers:
                r.send("go")
            ids = [int(r.line("done")) for r in racers]
            for r in racers:
                assert r.wait() == 0, r.describe()
            assert len(set(ids)) == 4
            assert pg_rows(url, "SELECT version FROM ml_persistence_schema") == [(SCHEMA_VERSION,)]
            assert pg_rows(url, "SELECT count(*), count(DISTINCT name) FROM experiments") == [(4, 4)]
            assert pg_rows(url, "SELECT count(*) FROM metrics") == [(4,)]
            ml_persistence.shutdown(timeout=30)


def test_two_inits_racing_on_a_fresh_database(db: str, tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-m", "ml_persistence", "init", "--db", db], cwd=tmp_path,
                              env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert _version(db) == SCHEMA_VERSION
    assert sum("Created" in out for out, _ in outs) >= 1, outs


# -- maintenance commands that differ by engine -----------------------------------------------------


def test_vacuum(db: str, tmp_path: Path) -> None:
    ok(run_script(tmp_path, "from ml_persistence import ExperimentTracker\nExperimentTracker().start_experiment('x')\n",
                  env=child_env(db)))
    done = cli("vacuum", "--db", db, cwd=tmp_path)
    if engine(db) == "sqlite":
        ok(done)
        return
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr
    message = done.stderr.strip().lower()
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "vacuum" in message and "postgresql" in message, done.stderr


def _restore(dump: Path, url: str) -> None:
    """Load a pg_dump output (custom archive or plain SQL) into the empty database at url."""
    if dump.read_bytes()[:5] == b"PGDMP":
        args = ["pg_restore", "--no-owner", "-d", url, str(dump)]
    else:
        args = ["psql", "-v", "ON_ERROR_STOP=1", "-q", "-d", url, "-f", str(dump)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_backup(db: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    made = run_script(tmp_path, """
        from ml_persistence import ExperimentTracker
        t = ExperimentTracker()
        t.start_experiment("backed-up")
        for i in range(1000):
            t.log_metric("loss", float(i), step=i)
        t.end_experiment()
    """, env=child_env(db))
    ok(made)
    dest = tmp_path / "backups"
    dest.mkdir()
    if engine(db) == "postgresql" and shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed")
    done = ok(cli("backup", str(dest), "--db", db, cwd=tmp_path))
    assert PASSWORD not in done.stdout + done.stderr
    (backup,) = list(dest.iterdir())
    assert "1 experiments" in done.stdout or "1 experiment" in done.stdout, done.stdout
    if engine(db) == "sqlite":
        assert db_rows(str(backup), "SELECT COUNT(*) FROM metrics") == [(1000,)]
        return
    assert PASSWORD not in backup.read_bytes().decode("latin-1")
    postgres_url = request.getfixturevalue("postgres_url")
    with fresh_database(postgres_url) as restored:
        _restore(backup, restored)
        assert pg_rows(restored, "SELECT count(*), count(DISTINCT step) FROM metrics") == [(1000, 1000)]
        assert pg_rows(restored, "SELECT name, status FROM experiments") == [("backed-up", "completed")]


def test_backup_without_pg_dump_on_path(pg_db: str, tmp_path: Path) -> None:
    db = pg_db
    ok(run_script(tmp_path, "from ml_persistence import ExperimentTracker\nExperimentTracker().start_experiment('x')\n",
                  env=child_env(db)))
    empty = tmp_path / "no-tools"
    empty.mkdir()
    dest = tmp_path / "backups"
    dest.mkdir()
    done = cli("backup", str(dest), "--db", db, cwd=tmp_path, env=child_env(PATH=str(empty)))
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "pg_dump" in done.stderr, done.stderr
    assert list(dest.iterdir()) == []


def test_url_password_never_printed_by_the_cli(pg_db: str, tmp_path: Path) -> None:
    db = pg_db
    ok(run_script(tmp_path, BUILD, name="build.py", env=child_env(db)))
    for argv in (["ls"], ["show", "1"], ["show", "1", "--json"], ["show", "99"], ["check"],
                 ["export", "--what", "experiments", "--format", "jsonl"]):
        done = cli(*argv, "--db", db, cwd=tmp_path)
        assert done.returncode in (0, 1), (argv, done.stderr)
        assert PASSWORD not in done.stdout + done.stderr, argv
