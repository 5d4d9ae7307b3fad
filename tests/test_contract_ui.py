"""The web UI on both engines: the same runs, catalog, downsampled series and comparison from an SQLite file
and from a PostgreSQL database."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest

pytest.importorskip("starlette")

from ml_persistence import ExperimentTracker, ModelRegistry  # noqa: E402
from ml_persistence.ui.server import create_app  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    TestClient = pytest.importorskip("starlette.testclient").TestClient


def _log_runs(db: str) -> tuple[int, int]:
    tracker = ExperimentTracker(db)
    first = tracker.start_experiment("ppo-a", experiment_type="rl", tags=["ppo", "btc"])
    tracker.log_hyperparameters_batch({"lr": 3e-4, "gamma": 0.99})
    for step in range(5000):
        tracker.log_metrics_batch({"loss": 1.0 / (step + 1), "val_sharpe": step / 5000}, step=step)
    tracker.log_metric("loss", float("nan"), step=5000)
    ModelRegistry(db).register_model(first, "policy", "/ckpt/a.pt", val_metric=1.5, is_best=True)
    tracker.end_experiment()
    second = tracker.start_experiment("ppo-b", experiment_type="rl", tags=["ppo"])
    tracker.log_hyperparameters_batch({"lr": 1e-3, "gamma": 0.99})
    for step in range(100):
        tracker.log_metric("val_sharpe", step / 50, step=step)
    tracker.end_experiment("failed")
    tracker.flush()
    return first, second


def _get(client: Any, url: str) -> Any:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    return response.json()


def test_the_ui_shows_runs_series_and_comparisons(any_db: str) -> None:
    first, second = _log_runs(any_db)
    with TestClient(create_app(any_db)) as client:
        listed = _get(client, "/api/experiments")
        runs = listed["experiments"]
        assert [(r["id"], r["name"], r["status"]) for r in runs] == [(second, "ppo-b", "failed"), (first, "ppo-a", "completed")]
        assert (listed["types"], sorted(listed["statuses"]), listed["tags"]) == (["rl"], ["completed", "crashed", "failed", "stale"], ["btc", "ppo"])
        assert [r["id"] for r in _get(client, "/api/experiments?tag=btc")["experiments"]] == [first]

        run = _get(client, f"/api/experiments/{first}")
        text = repr(run)
        assert "ppo-a" in text and "policy" in text and "val_sharpe" in text and "loss" in text

        series = _get(client, f"/api/experiments/{first}/metric?name=loss&x=step&points=500")
        assert (series["name"], series["total"], series["downsampled"]) == ("loss", 5001, True)
        assert len(series["xs"]) == len(series["ys"]) <= 2 * 500 and max(series["xs"]) == 5000  # the NaN point at step 5000 is charted too
        assert max(y for y in series["ys"] if y is not None) == 1.0  # the first step's loss survives downsampling

        compared = _get(client, f"/api/compare?ids={first},{second}")
        assert "lr" in repr(compared) and "val_sharpe" in repr(compared)

        assert client.get("/api/experiments/999999").status_code == 404


def test_series_points_are_the_same_on_both_engines(any_db: str, tmp_path: Any) -> None:
    # The downsampled chart of one run, from this engine and from an SQLite file holding the same data.
    first, _ = _log_runs(any_db)
    reference = str(tmp_path / "reference.db")
    ref_first, _ = _log_runs(reference)
    url = "/api/experiments/{}/metric?name=loss&x=step&points=500"
    with TestClient(create_app(any_db)) as client, TestClient(create_app(reference)) as ref_client:
        got = _get(client, url.format(first))
        want = _get(ref_client, url.format(ref_first))

    def numbers(value: Any) -> list[float]:
        if isinstance(value, dict):
            return [n for k in sorted(value) if k not in ("id", "experiment_id") for n in numbers(value[k])]
        if isinstance(value, list):
            return [n for v in value for n in numbers(v)]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [float(value)]
        return []

    got_numbers, want_numbers = numbers(got), numbers(want)
    assert len(got_numbers) == len(want_numbers) > 100
    assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12) for a, b in zip(got_numbers, want_numbers))
