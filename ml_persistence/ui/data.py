"""What the web UI shows, read from the database: run lists, one run, downsampled curves, comparisons."""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Optional, Sequence

from .. import filtering, liveness
from ..compare import default_metric, hyperparameter_grid, is_system_metric, metric_candidates
from ..liveness import with_liveness
from . import queries
from .artifacts import ArtifactRoots

AXES = ("episode", "step", "time")  # what a curve can be drawn against (Reader.metric_points)
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


class Selection:
    """Which runs a page lists: a filter expression and its order, and the type, status, tag and name controls."""

    def __init__(self, filter: Optional[str] = None, order: Optional[str] = None, experiment_type: Optional[str] = None,
                 status: Optional[str] = None, tags: Sequence[str] = (), name: Optional[str] = None) -> None:
        self.filter, self.order = filter, order
        self.experiment_type, self.status, self.tags, self.name = experiment_type, status, list(tags), name

    def runs(self, reader: Any) -> list[dict[str, Any]]:
        """Return the selected runs (effective statuses), in the order asked for, else newest first.

        With a filter or an order, each row has ``values``: the params./metrics. values they name
        (filtering.search). A malformed filter or order raises filtering.FilterError.
        """
        if self.filter is None and self.order is None:
            return liveness.list_experiments(reader, self.experiment_type, self.status, self.tags, self.name)
        found = filtering.search(reader, self.filter, self.order)
        return [e for e in found if self._controls_match(e)]

    def _controls_match(self, run: dict[str, Any]) -> bool:
        # The same tests as Reader.list_experiments and liveness.list_experiments, on a filtered row.
        tags = run.get("tags") if isinstance(run.get("tags"), list) else []
        return ((self.experiment_type is None or run.get("experiment_type") == self.experiment_type)
                and (self.status is None or run.get("status") == self.status)
                and all(t in tags for t in self.tags)
                and (self.name is None or self.name in (run.get("name") or "")))


def experiments(reader: Any, selection: Selection) -> dict[str, Any]:
    """Return the selected runs (effective statuses) and the filter choices."""
    found = selection.runs(reader)
    facets = reader.facets()
    for e in found:
        e.pop("metadata", None)
    return {
        "experiments": found,
        "types": facets["types"],
        "statuses": sorted(set(facets["statuses"]) | {"crashed", "stale"}),
        "tags": facets["tags"],
    }


def _catalog(reader: Any, experiment_id: int) -> list[dict[str, Any]]:
    """Return each metric's name, count, first and last value and axes, from the index alone (fast on big runs)."""
    out = []
    for m in reader.metric_catalog(experiment_id):
        first, last = m["first"], m["last"]
        # The axes a metric was logged against, judged by its first and last rows.
        axes = [a for a in ("episode", "step") if first[a] is not None or last[a] is not None]
        out.append({"name": m["name"], "count": m["count"], "first": finite(first["value"]),
                    "last": finite(last["value"]), "axes": [*axes, "time"], "last_id": last["id"],
                    "system": is_system_metric(m["name"])})
    return out


def run(reader: Any, experiment_id: int, roots: ArtifactRoots) -> Optional[dict[str, Any]]:
    """Return everything the run page shows, or None."""
    exp = reader.get_experiment(experiment_id)
    if exp is None:
        return None
    exp = with_liveness(reader, exp)
    best = reader.get_best_model(experiment_id)
    artifacts = reader.list_artifacts(experiment_id)
    for a in artifacts:
        real = roots.locate(a["artifact_path"])  # None: missing, or outside the roots (never served)
        a["url"] = f"/api/experiments/{experiment_id}/artifacts/{a['id']}" if real is not None else None
        a["is_image"] = str(real or a["artifact_path"]).lower().endswith(IMAGE_SUFFIXES)
    metrics = _catalog(reader, experiment_id)
    return {
        "experiment": exp,
        "datasets": reader.experiment_datasets(experiment_id),
        "models": reader.list_models(experiment_id, order_by="id", ascending=True),
        "best_model_id": None if best is None else best["id"],
        "artifacts": artifacts,
        "metrics": metrics,
        "last_metric_id": max((m["last_id"] for m in metrics), default=0),
    }


def series(reader: Any, experiment_id: int, name: str, axis: str, points: int) -> dict[str, Any]:
    """Return one metric against ``axis``; past 2 * points rows, the min and max of each of ``points`` buckets.

    Buckets are runs of consecutive rows in logging order (row id), so one pass over the metric's
    rows does it. Keeping each bucket's extremes keeps the spikes and dips a plain stride would skip.
    """
    points = max(10, min(points, MAX_POINTS))
    total, first_id, last_id = reader.metric_span(experiment_id, name)
    pairs: list[tuple[Any, Any]] = []
    downsampled = total > 2 * points
    if not downsampled:
        pairs = reader.metric_points(experiment_id, name, axis)
    else:
        # Infinities are left out of a bucket's extremes, or one would blank the whole bucket.
        rows = reader.metric_buckets(experiment_id, name, axis, points, first_id, last_id, PLOTTABLE)
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

    def get(self, reader: Any, key: tuple, experiment_id: int, name: str, axis: str,
            points: int) -> dict[str, Any]:
        """Return the series for ``key`` from the cache when still good, else compute and keep it."""
        last_id = reader.last_metric_id(experiment_id, name)
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None:
            made, cost, cached_last, value = hit
            if cached_last == last_id or (cost > 0.05 and now - made < 4 * cost):
                with self._lock:
                    self.hits += 1
                return value
        value = series(reader, experiment_id, name, axis, points)
        with self._lock:
            self.misses += 1
            if len(self._items) >= self.entries:
                self._items.pop(next(iter(self._items)))
            self._items[key] = (now, time.monotonic() - now, last_id, value)
        return value


def compare(reader: Any, ids: Sequence[int]) -> Optional[dict[str, Any]]:
    """Return runs side by side (hyperparameters with differing ones marked), or None if one is missing."""
    runs = []
    for i in ids:
        exp = reader.get_experiment(i)
        if exp is None:
            return None
        exp = with_liveness(reader, exp)
        exp.pop("git_diff", None)
        exp.pop("packages", None)
        runs.append(exp)
    rows = hyperparameter_grid(runs)  # a run that never set a parameter has no key for it
    names = queries.metric_names(reader, ids)
    counts = queries.metric_counts(reader, ids, metric_candidates(names))  # only what the default is chosen among
    metrics = sorted({n for per_run in names.values() for n in per_run})
    return {"experiments": runs, "hyperparameters": rows, "metrics": metrics, "default_metric": default_metric(counts)}


def artifact_path(reader: Any, experiment_id: int, artifact_id: int) -> Optional[str]:
    """Return the path registered for an artifact of this run, or None (no such artifact, or no path)."""
    found = reader.artifact_path(experiment_id, artifact_id)
    return found if isinstance(found, str) else None
