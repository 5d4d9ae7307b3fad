"""The read side: plain SQL over a sqlite3 connection, returning dicts with JSON columns decoded."""

from __future__ import annotations

import math
import sqlite3
from typing import Any, Iterable, Optional, Sequence

import msgspec

from .schema import columns

_JSON_COLUMNS = frozenset({"tags", "metadata", "hyperparameters", "packages"})


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON_COLUMNS.intersection(out):
        text = out[key]
        if isinstance(text, str) and text:
            try:
                out[key] = msgspec.json.decode(text)
            except (msgspec.DecodeError, RecursionError):
                pass  # legacy free text, or nesting no writer of ours makes, stays text
    if out.get("tags") is None and "tags" in out:
        out["tags"] = []
    if "is_best" in out and out["is_best"] is not None:
        out["is_best"] = bool(out["is_best"])
    if "git_dirty" in out and out["git_dirty"] is not None:
        out["git_dirty"] = bool(out["git_dirty"])
    return out


def _all(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    return [_row(r) for r in conn.execute(sql, params)]


def _one(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Optional[dict[str, Any]]:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else _row(row)


def _limit(limit: Optional[int]) -> int:
    return -1 if limit is None else int(limit)


# -- experiments --------------------------------------------------------------------------------

_BEST = (
    "COALESCE((SELECT m.{0} FROM models m WHERE m.experiment_id = e.id AND m.is_best = 1 "
    "ORDER BY m.id DESC LIMIT 1), (SELECT MAX(m.{0}) FROM models m WHERE m.experiment_id = e.id))"
)
# As get_best_model: the newest best-marked model's figure (a loss falls as bests come), else the highest.
SUMMARY_FIGURES = (
    "(SELECT COUNT(*) FROM models m WHERE m.experiment_id = e.id) AS num_checkpoints, "
    + _BEST.format("val_metric") + " AS best_val_metric, "
    + _BEST.format("test_metric") + " AS best_test_metric"
)

_SUMMARY = f"""
SELECT e.id, e.name, e.description, e.experiment_type, e.status, e.start_time, e.end_time,
       e.duration_seconds, e.tags, e.notes, e.random_seed, e.git_commit, e.git_branch,
       e.hostname, e.pid, e.metadata, e.updated_at, {SUMMARY_FIGURES}
FROM experiments e
"""


def list_experiments(
    conn: sqlite3.Connection,
    experiment_type: Optional[str] = None,
    status: Optional[str] = None,
    tags: Optional[Iterable[str]] = None,
    limit: Optional[int] = None,
    name: Optional[str] = None,
) -> list[dict[str, Any]]:
    """Return experiments newest first, filtered by type, status, all of ``tags``, name substring."""
    where, params = [], []
    if experiment_type is not None:
        where.append("e.experiment_type = ?")
        params.append(experiment_type)
    if status is not None:
        where.append("e.status = ?")
        params.append(status)
    for tag in tags or ():
        where.append("EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid(e.tags) THEN e.tags ELSE '[]' END) WHERE value = ?)")
        params.append(tag)
    if name is not None:
        where.append("instr(e.name, ?) > 0")
        params.append(name)
    sql = _SUMMARY + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY e.start_time DESC, e.id DESC LIMIT ?"
    return _all(conn, sql, [*params, _limit(limit)])


def get_experiment(conn: sqlite3.Connection, experiment_id: int) -> Optional[dict[str, Any]]:
    """Return every column of one experiment plus its summary figures, or None."""
    exp = _one(conn, f"SELECT e.*, {SUMMARY_FIGURES} FROM experiments e WHERE e.id = ?", (experiment_id,))
    if exp is not None:
        exp["hyperparameters"] = get_hyperparameters(conn, experiment_id)
    return exp


def experiment_exists(conn: sqlite3.Connection, experiment_id: int) -> bool:
    """Return True if the experiment row exists."""
    return conn.execute("SELECT 1 FROM experiments WHERE id = ?", (experiment_id,)).fetchone() is not None


def get_hyperparameters(conn: sqlite3.Connection, experiment_id: int) -> dict[str, Any]:
    """Return {name: value} with each value's logged type restored; the last logged value wins."""
    from .validate import decode_hyperparameter

    rows = conn.execute(
        "SELECT param_name, param_value, param_type FROM hyperparameters "
        "WHERE experiment_id = ? ORDER BY id",
        (experiment_id,),
    )
    return {name: decode_hyperparameter(text, kind) for name, text, kind in rows}


# -- models -------------------------------------------------------------------------------------


def get_model(conn: sqlite3.Connection, model_id: int) -> Optional[dict[str, Any]]:
    """Return one model row, or None."""
    return _one(conn, "SELECT * FROM models WHERE id = ?", (model_id,))


def get_best_model(conn: sqlite3.Connection, experiment_id: Optional[int]) -> Optional[dict[str, Any]]:
    """Return the newest model marked best; failing that, the highest val_metric; else None."""
    scope, params = ("WHERE experiment_id = ?", [experiment_id]) if experiment_id is not None else ("", [])
    marked = _one(
        conn,
        f"SELECT * FROM models {scope} {'AND' if scope else 'WHERE'} is_best = 1 "
        "ORDER BY created_at DESC, id DESC LIMIT 1",
        params,
    )
    if marked is not None:
        return marked
    return _one(
        conn,
        f"SELECT * FROM models {scope} {'AND' if scope else 'WHERE'} val_metric IS NOT NULL "
        "ORDER BY val_metric DESC, id DESC LIMIT 1",
        params,
    )


def list_models(
    conn: sqlite3.Connection,
    experiment_id: Optional[int] = None,
    is_best: Optional[bool] = None,
    order_by: str = "created_at",
    ascending: bool = False,
    limit: Optional[int] = None,
) -> list[dict[str, Any]]:
    """Return models filtered and ordered by a column of ``models`` (whitelisted)."""
    allowed = columns(conn, "models")
    if order_by not in allowed:
        raise ValueError(f"order_by must be a column of models, one of: {', '.join(allowed)}; got {order_by!r}")
    where, params = [], []
    if experiment_id is not None:
        where.append("experiment_id = ?")
        params.append(experiment_id)
    if is_best is not None:
        where.append("is_best = ?")
        params.append(1 if is_best else 0)
    direction = "ASC" if ascending else "DESC"
    sql = (
        "SELECT * FROM models" + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY {order_by} IS NULL, {order_by} {direction}, id {direction} LIMIT ?"
    )
    return _all(conn, sql, [*params, _limit(limit)])


RANKABLE = ("val_metric", "test_metric", "train_metric")


def rank_models(
    conn: sqlite3.Connection,
    experiment_ids: Sequence[int] = (),
    by: str = "val_metric",
    marked_only: bool = False,
    limit: Optional[int] = None,
) -> list[dict[str, Any]]:
    """Return models best first by ``by`` (highest first, unscored last), with their experiment's name."""
    if by not in RANKABLE:
        raise ValueError(f"by must be one of {', '.join(RANKABLE)}; got {by!r}")
    where, params = [], []
    if experiment_ids:
        where.append("m.experiment_id IN (SELECT value FROM json_each(?))")
        params.append(msgspec.json.encode(list(experiment_ids)).decode())
    if marked_only:
        where.append("m.is_best = 1")
    sql = (
        "SELECT m.*, e.name AS experiment_name FROM models m JOIN experiments e ON e.id = m.experiment_id"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY m.{by} IS NULL, m.{by} DESC, m.id DESC LIMIT ?"
    )
    return _all(conn, sql, [*params, _limit(limit)])


# -- datasets -----------------------------------------------------------------------------------


def get_dataset(conn: sqlite3.Connection, dataset_id: int) -> Optional[dict[str, Any]]:
    """Return one dataset row, or None."""
    return _one(conn, "SELECT * FROM datasets WHERE id = ?", (dataset_id,))


def find_dataset(
    conn: sqlite3.Connection, name: str, version: str, split_type: Optional[str]
) -> Optional[dict[str, Any]]:
    """Return the dataset with this name, version and split, or None."""
    return _one(
        conn,
        "SELECT * FROM datasets WHERE name = ? AND version = ? AND split_type IS ? ORDER BY id LIMIT 1",
        (name, version, split_type),
    )


def list_datasets(
    conn: sqlite3.Connection,
    name: Optional[str] = None,
    version: Optional[str] = None,
    split_type: Optional[str] = None,
) -> list[dict[str, Any]]:
    """Return datasets, newest first, optionally filtered."""
    where, params = [], []
    for column, value in (("name", name), ("version", version), ("split_type", split_type)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    sql = "SELECT * FROM datasets" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
    return _all(conn, sql, params)


def experiment_datasets(conn: sqlite3.Connection, experiment_id: int) -> list[dict[str, Any]]:
    """Return the datasets linked to an experiment, each with its usage_type."""
    return _all(
        conn,
        "SELECT d.*, ed.usage_type FROM experiment_datasets ed JOIN datasets d ON d.id = ed.dataset_id "
        "WHERE ed.experiment_id = ? ORDER BY d.id, ed.usage_type",
        (experiment_id,),
    )


def dataset_experiments(conn: sqlite3.Connection, dataset_id: int) -> list[dict[str, Any]]:
    """Return the experiments that used a dataset, each with its usage_type."""
    return _all(
        conn,
        "SELECT e.id, e.name, e.experiment_type, e.status, e.start_time, ed.usage_type "
        "FROM experiment_datasets ed JOIN experiments e ON e.id = ed.experiment_id "
        "WHERE ed.dataset_id = ? ORDER BY e.id",
        (dataset_id,),
    )


# -- artifacts ----------------------------------------------------------------------------------


def list_artifacts(
    conn: sqlite3.Connection, experiment_id: Optional[int] = None, artifact_type: Optional[str] = None
) -> list[dict[str, Any]]:
    """Return artifacts in logging order, optionally filtered."""
    where, params = [], []
    if experiment_id is not None:
        where.append("experiment_id = ?")
        params.append(experiment_id)
    if artifact_type is not None:
        where.append("artifact_type = ?")
        params.append(artifact_type)
    sql = "SELECT * FROM artifacts" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
    return _all(conn, sql, params)


# -- metrics ------------------------------------------------------------------------------------


def _value(value: Any) -> float:
    # SQLite stores NaN as NULL; every metric row has a value, so NULL reads back as NaN.
    return math.nan if value is None else value


def metric_history(
    conn: sqlite3.Connection, experiment_id: int, metric_name: str, split: Optional[str] = None
) -> list[dict[str, Any]]:
    """Return one metric's rows in logging order."""
    sql = (
        "SELECT id, metric_name, value, value_json, episode, step, epoch, split, phase, model_id, "
        "timestamp, metadata FROM metrics WHERE experiment_id = ? AND metric_name = ?"
    )
    params: list[Any] = [experiment_id, metric_name]
    if split is not None:
        sql += " AND split = ?"
        params.append(split)
    rows = _all(conn, sql + " ORDER BY id", params)
    for row in rows:
        row["value"] = _value(row["value"])
    return rows


_STATS = """
SELECT COUNT(*), AVG(value), MIN(value), MAX(value), COUNT(value),
       (SELECT value FROM metrics WHERE {scope} ORDER BY id ASC LIMIT 1),
       (SELECT value FROM metrics WHERE {scope} ORDER BY id DESC LIMIT 1)
FROM metrics WHERE {scope}
"""


def metric_stats(
    conn: sqlite3.Connection, experiment_id: int, metric_name: str, split: Optional[str] = None
) -> dict[str, Any]:
    """Return count, mean, std (population), min, max, first, last; NaN values are skipped by the aggregates."""
    scope = "experiment_id = ? AND metric_name = ?" + (" AND split = ?" if split is not None else "")
    one = [experiment_id, metric_name] + ([split] if split is not None else [])
    count, mean, lo, hi, valued, first, last = conn.execute(_STATS.format(scope=scope), one * 3).fetchone()
    if count == 0:
        nan = math.nan
        return {"count": 0, "mean": nan, "std": nan, "min": nan, "max": nan, "first": nan, "last": nan}
    std = math.nan
    if valued and mean is not None and math.isfinite(mean):
        (variance,) = conn.execute(
            f"SELECT AVG((value - ?) * (value - ?)) FROM metrics WHERE {scope}", [mean, mean, *one]
        ).fetchone()
        std = math.sqrt(variance) if variance is not None else math.nan
    return {
        "count": count,
        "mean": _value(mean),
        "std": std,
        "min": _value(lo),
        "max": _value(hi),
        "first": _value(first),
        "last": _value(last),
    }


def metric_names(conn: sqlite3.Connection, experiment_id: int) -> list[str]:
    """Return the names of every metric an experiment logged, sorted."""
    rows = conn.execute(
        "SELECT DISTINCT metric_name FROM metrics WHERE experiment_id = ? ORDER BY metric_name",
        (experiment_id,),
    )
    return [r[0] for r in rows]


def compare_metrics(
    conn: sqlite3.Connection, experiment_ids: list[int], metric_name: str, split: Optional[str] = None
) -> dict[int, dict[str, Any]]:
    """Return {experiment_id: metric_stats} for each id."""
    return {i: metric_stats(conn, i, metric_name, split) for i in experiment_ids}


def _kind(value: Any) -> Any:
    # 1 and 1.0 are the same setting; True, 1 and "1" are not.
    return float if type(value) in (int, float) else type(value)


def _same(values: list[Any]) -> bool:
    first = values[0]
    return all(_kind(v) is _kind(first) and (v == first or (v != v and first != first)) for v in values[1:])


def hyperparameter_grid(experiments: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return, per parameter name, {param_name, differs, values: {experiment id: value}} over ``experiments``.

    An experiment that never logged the parameter has no entry in ``values``, and differs from one
    that did (even one that logged None).
    """
    unset = object()
    rows = []
    for name in sorted({k for e in experiments for k in e["hyperparameters"]}):
        values = [e["hyperparameters"].get(name, unset) for e in experiments]
        rows.append({
            "param_name": name,
            "differs": not _same(values),
            "values": {e["id"]: v for e, v in zip(experiments, values) if v is not unset},
        })
    return rows


def metrics_summary(conn: sqlite3.Connection, experiment_id: int, split: Optional[str] = None) -> dict[str, dict[str, Any]]:
    """Return {metric_name: metric_stats} for every metric an experiment logged (with rows in ``split``)."""
    stats = {n: metric_stats(conn, experiment_id, n, split) for n in metric_names(conn, experiment_id)}
    return {n: s for n, s in stats.items() if s["count"]}


# The queries an agent answers for its clients, by name; nothing else is callable over the socket.
REMOTE = {
    f.__name__: f
    for f in (
        list_experiments, get_experiment, experiment_exists, get_hyperparameters, get_model,
        get_best_model, list_models, get_dataset, find_dataset, list_datasets, experiment_datasets,
        dataset_experiments, list_artifacts, metric_history, metric_stats, metric_names,
        compare_metrics, metrics_summary,
    )
}
