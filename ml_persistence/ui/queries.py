"""Reads over many runs at once for the sweep and compare views: one query for all the runs, not one per run.

Written like sqlite/views.py, on the Reader's primitives (``_tuples``) and dialect hooks
(``_in_list``, ``_list_param``, ``_averaged``) only, so the same SQL runs on SQLite and PostgreSQL.
Every value is bound; the only text put into the SQL comes from AGGREGATES below.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from .. import storage
from ..validate import decode_hyperparameter

# What a run's metric is summarized by in a sweep: the SQL aggregate over its rows (first and last go by row id).
AGGREGATES = {"last": "MAX(id)", "first": "MIN(id)", "min": "MIN(value)", "max": "MAX(value)", "mean": "AVG({})"}


def metric_counts(reader: Any, ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Return {run id: {metric name: row count}} for ``ids`` (a run without metrics has an empty dict)."""
    found: dict[int, dict[str, int]] = {i: {} for i in ids}
    rows = reader._tuples(
        "SELECT experiment_id, metric_name, COUNT(*) FROM metrics WHERE "
        f"{reader._in_list('experiment_id')} GROUP BY experiment_id, metric_name",
        (reader._list_param(ids),),
    )
    for run, name, count in rows:
        found.setdefault(run, {})[name] = count
    return found


def hyperparameters(reader: Any, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Return {run id: {name: value}} for ``ids``, types restored and the last logged value winning (as get_hyperparameters)."""
    found: dict[int, dict[str, Any]] = {i: {} for i in ids}
    rows = reader._tuples(
        "SELECT experiment_id, param_name, param_value, param_type FROM hyperparameters WHERE "
        f"{reader._in_list('experiment_id')} ORDER BY id",
        (reader._list_param(ids),),
    )
    for run, name, text, kind in rows:
        found.setdefault(run, {})[name] = decode_hyperparameter(text, kind)
    return found


def metric_aggregates(reader: Any, ids: Sequence[int], name: str, aggregate: str) -> dict[int, tuple[float, int]]:
    """Return {run id: (value, row count)} of metric ``name`` summarized by ``aggregate`` (a key of AGGREGATES).

    Runs that never logged the metric are left out. A NaN value (stored as NULL) reads as NaN, as in
    Reader.metric_stats; min, max and mean skip NaN rows.
    """
    expression = AGGREGATES[aggregate]
    if aggregate == "mean":
        expression = expression.format(reader._averaged()[0])
    try:
        rows = reader._tuples(
            f"SELECT experiment_id, COUNT(*), {expression} FROM metrics WHERE "
            f"{reader._in_list('experiment_id')} AND metric_name = ? GROUP BY experiment_id",
            (reader._list_param(ids), name),
        )
    except storage.database_errors():
        if aggregate != "mean":
            raise
        # PostgreSQL raises where a float8 sum leaves its range; metric_stats averages those in numeric.
        stats = {i: reader.metric_stats(i, name) for i in ids}
        return {i: (s["mean"], s["count"]) for i, s in stats.items() if s["count"]}
    if aggregate not in ("first", "last"):
        return {run: (_number(value), count) for run, count, value in rows}
    row_ids = {row_id: (run, count) for run, count, row_id in rows}
    values = reader._tuples(
        f"SELECT id, value FROM metrics WHERE {reader._in_list('id')}", (reader._list_param(list(row_ids)),))
    return {row_ids[row_id][0]: (_number(value), row_ids[row_id][1]) for row_id, value in values}


def _number(value: Optional[float]) -> float:
    # NULL is a NaN row (every metric row has a value); PostgreSQL's AVG of a numeric cast reads as Decimal.
    return math.nan if value is None else float(value)
