"""What the web UI shows, read from the database: run lists, one run, downsampled curves, comparisons."""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from typing import Any, Optional, Sequence

from .. import queries
from .. import liveness
from ..liveness import with_liveness
from .artifacts import ArtifactRoots

# Timestamps are fixed-format text, so MIN/MAX and ORDER BY on the text itself order them in time.
AXES = {"episode": "episode", "step": "step", "time": "timestamp"}
# The curve resolutions served: a few, so every client's curves share the cache (see params.points).
POINTS = (250, 500, 1000, 2000, 5000)
MAX_POINTS = POINTS[-1]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")


PLOTTABLE = 1e300  # beyond it a chart library's own arithmetic overflows to NaN


def finite(value: Any) -> Any:
    """Make a float safe for a chart: NaN, ±inf and values near the float limit become None."""
    if isinstance(value, float) and not (math.isfinite(value) and abs(value) < PLOTTABLE):
        return None
    return value


def experiments(conn: sqlite3.Connection, experiment_type: Optional[str], status: Optional[str],
                tags: Sequence[str], name: Optional[str]) -> dict[str, Any]:
    """Return the filtered run list (effective statuses) and the filter choices."""
    found = liveness.list_experiments(conn, experiment_type, status, tags, name)
    types = [r[0] for r in conn.execute(
        "SELECT DISTINCT experiment_type FROM experiments WHERE experiment_type IS NOT NULL ORDER BY 1")]
    statuses = [r[0] for r in conn.execute("SELECT DISTINCT status FROM experiments WHERE status IS NOT NULL")]
    tag_rows = conn.execute(
        "SELECT DISTINCT value FROM experiments, json_each(CASE WHEN json_valid(tags) THEN tags ELSE '[]' END) "
        "ORDER BY 1")
    for e in found:
        e.pop("metadata", None)
    return {
        "experiments": found,
        "types": types,
        "statuses": sorted(set(statuses) | {"crashed", "stale"}),
        "tags": [r[0] for r in tag_rows],
    }


# Metric names by a loose index scan: one index seek per name, however many rows each has.
_NAMES = """
WITH RECURSIVE names(name) AS (
    SELECT MIN(metric_name) FROM metrics WHERE experiment_id = :id
    UNION ALL
    SELECT (SELECT MIN(metric_name) FROM metrics WHERE experiment_id = :id AND metric_name > names.name)
    FROM names WHERE names.name IS NOT NULL
)
SELECT name FROM names WHERE name IS NOT NULL
"""
_SCOPE = "FROM metrics WHERE experiment_id = ? AND metric_name = ?"


def _catalog(conn: sqlite3.Connection, experiment_id: int) -> list[dict[str, Any]]:
    """Return each metric's name, count, first and last value and axes, from the index alone (fast on big runs)."""
    out = []
    for (name,) in conn.execute(_NAMES, {"id": experiment_id}).fetchall():
        params = (experiment_id, name)
        (count,) = conn.execute(f"SELECT COUNT(*) {_SCOPE}", params).fetchone()
        ends = f"SELECT id, value, episode, step {_SCOPE} ORDER BY id"
        first = conn.execute(ends + " LIMIT 1", params).fetchone()
        last = conn.execute(ends + " DESC LIMIT 1", params).fetchone()
        # The axes a metric was logged against, judged by its first and last rows.
        axes = [a for i, a in ((2, "episode"), (3, "step")) if first[i] is not None or last[i] is not None]
        out.append({"name": name, "count": count, "first": finite(first[1]), "last": finite(last[1]),
                    "axes": [*axes, "time"], "last_id": last[0]})
    return out


def run(conn: sqlite3.Connection, experiment_id: int, roots: ArtifactRoots) -> Optional[dict[str, Any]]:
    """Return everything the run page shows, or None."""
    exp = queries.get_experiment(conn, experiment_id)
    if exp is None:
        return None
    exp = with_liveness(conn, exp)
    best = queries.get_best_model(conn, experiment_id)
    artifacts = queries.list_artifacts(conn, experiment_id)
    for a in artifacts:
        real = roots.locate(a["artifact_path"])  # None: missing, or outside the roots (never served)
        a["url"] = f"/api/experiments/{experiment_id}/artifacts/{a['id']}" if real is not None else None
        a["is_image"] = str(real or a["artifact_path"]).lower().endswith(IMAGE_SUFFIXES)
    metrics = _catalog(conn, experiment_id)
    return {
        "experiment": exp,
        "datasets": queries.experiment_datasets(conn, experiment_id),
        "models": queries.list_models(conn, experiment_id, order_by="id", ascending=True),
        "best_model_id": None if best is None else best["id"],
        "artifacts": artifacts,
        "metrics": metrics,
        "last_metric_id": max((m["last_id"] for m in metrics), default=0),
    }


def series(conn: sqlite3.Connection, experiment_id: int, name: str, axis: str, points: int) -> dict[str, Any]:
    """Return one metric against ``axis``; past 2 * points rows, the min and max of each of ``points`` buckets.

    Buckets are runs of consecutive rows in logging order (row id), so one pass over the metric's
    rows does it. Keeping each bucket's extremes keeps the spikes and dips a plain stride would skip.
    """
    x = AXES[axis]
    points = max(10, min(points, MAX_POINTS))
    params = (experiment_id, name)
    (total,) = conn.execute(f"SELECT COUNT(*) {_SCOPE}", params).fetchone()
    first_id, last_id = (conn.execute(f"SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) {_SCOPE}", params)
                         .fetchone())
    pairs: list[tuple[Any, Any]] = []
    downsampled = total > 2 * points
    if not downsampled:
        pairs = conn.execute(f"SELECT {x}, value {_SCOPE} AND {x} IS NOT NULL ORDER BY {x}, id", params).fetchall()
    else:
        # Infinities are left out of a bucket's extremes, or one would blank the whole bucket.
        plottable = f"CASE WHEN abs(value) < {PLOTTABLE} THEN value END"
        buckets = conn.execute(
            f"SELECT MIN({x}), MAX({x}), MIN({plottable}), MAX({plottable}) {_SCOPE} AND {x} IS NOT NULL "
            "GROUP BY (id - ?) * ? / ?", (*params, first_id, points, last_id - first_id + 1))
        rows = buckets.fetchall()
        for n, (x_first, x_last, low, high) in enumerate(rows):
            # Both extremes at the bucket's middle: a vertical stroke, never a zigzag against the trend
            # (the first and last buckets keep the curve's own ends).
            middle = x_first if n == 0 or not isinstance(x_first, (int, float)) else (
                x_last if n == len(rows) - 1 else (x_first + x_last) / 2)
            pairs += [(middle, low), (middle, high)]
        pairs.sort(key=lambda p: p[0])
    xs = [p[0] for p in pairs]
    if axis == "time":
        xs = [x[:23] if isinstance(x, str) else x for x in xs]  # milliseconds: what a date axis shows
    return {"name": name, "x": axis, "xs": xs, "ys": [finite(p[1]) for p in pairs], "total": total,
            "downsampled": downsampled, "last_metric_id": last_id}


class SeriesCache:
    """Recent series, reused while young: a big live run must not have every poll re-read its millions of rows.

    A curve whose rows changed is computed again, unless it is expensive (over 50 ms) and was
    computed less than 4 x that cost ago: re-reading big live curves then takes at most about a
    fifth of the server's time. A finished run's curves are reused until its rows change.
    ``hits`` and ``misses`` count the lookups answered from the cache and the curves computed.
    """

    def __init__(self, entries: int = 256) -> None:
        self.entries = entries
        self._items: dict[tuple, tuple[float, float, int, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, conn: sqlite3.Connection, key: tuple, experiment_id: int, name: str, axis: str,
            points: int) -> dict[str, Any]:
        """Return the series for ``key`` from the cache when still good, else compute and keep it."""
        (last_id,) = conn.execute(f"SELECT COALESCE(MAX(id), 0) {_SCOPE}", (experiment_id, name)).fetchone()
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None:
            made, cost, cached_last, value = hit
            if cached_last == last_id or (cost > 0.05 and now - made < 4 * cost):
                with self._lock:
                    self.hits += 1
                return value
        value = series(conn, experiment_id, name, axis, points)
        with self._lock:
            self.misses += 1
            if len(self._items) >= self.entries:
                self._items.pop(next(iter(self._items)))
            self._items[key] = (now, time.monotonic() - now, last_id, value)
        return value


def compare(conn: sqlite3.Connection, ids: Sequence[int]) -> Optional[dict[str, Any]]:
    """Return runs side by side (hyperparameters with differing ones marked), or None if one is missing."""
    runs = []
    for i in ids:
        exp = queries.get_experiment(conn, i)
        if exp is None:
            return None
        exp = with_liveness(conn, exp)
        exp.pop("git_diff", None)
        exp.pop("packages", None)
        runs.append(exp)
    rows = queries.hyperparameter_grid(runs)  # a run that never set a parameter has no key for it
    metrics = sorted({n for i in ids for n in queries.metric_names(conn, i)})
    return {"experiments": runs, "hyperparameters": rows, "metrics": metrics}


def artifact_path(conn: sqlite3.Connection, experiment_id: int, artifact_id: int) -> Optional[str]:
    """Return the path registered for an artifact of this run, or None (no such artifact, or no path)."""
    row = conn.execute("SELECT artifact_path FROM artifacts WHERE id = ? AND experiment_id = ?",
                       (artifact_id, experiment_id)).fetchone()
    return None if row is None or not isinstance(row[0], str) else row[0]
