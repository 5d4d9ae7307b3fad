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
