"""The sweep view's data: many runs' hyperparameters against one aggregate of a metric."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from ..compare import default_metric, hyperparameter_grid, metric_candidates
from . import queries

MAX_SWEPT = 1000  # runs in one sweep view; a parallel-coordinates chart of more is a solid block of lines


def sweep(reader: Any, runs: Sequence[dict[str, Any]], metric: Optional[str], aggregate: str) -> dict[str, Any]:
    """Return runs' hyperparameters and one metric aggregate each, for the sweep view.

    ``runs`` are run rows (list_experiments' or filtering.search's), at most MAX_SWEPT of them are
    used; without ``metric`` the default one (compare.default_metric). Rows come best first (highest
    value), runs without a value last. ``parameters`` names every hyperparameter: numeric (every set
    value a finite number) or categorical, and whether it differs between the runs; ``suggested``
    is the one that goes most with the metric (see association).
    """
    runs = list(runs)[:MAX_SWEPT]
    ids = [e["id"] for e in runs]
    names = queries.metric_names(reader, ids)
    if metric is None:
        metric = default_metric(queries.metric_counts(reader, ids, metric_candidates(names)))
    values = queries.metric_aggregates(reader, ids, metric, aggregate) if ids and metric is not None else {}
    params = queries.hyperparameters(reader, ids)
    rows = []
    for e in runs:
        value, count = values.get(e["id"], (None, 0))
        rows.append({"id": e["id"], "name": e.get("name"), "status": e.get("status"),
                     "experiment_type": e.get("experiment_type"), "start_time": e.get("start_time"),
                     "tags": e.get("tags"), "params": params.get(e["id"], {}), "value": value, "count": count})
    rows.sort(key=_best_first)
    grid = hyperparameter_grid([{"id": r["id"], "hyperparameters": r["params"]} for r in rows])
    parameters = [{"name": g["param_name"], "kind": _kind(g["values"].values()), "differs": g["differs"],
                   "set": len(g["values"])} for g in grid]
    scored = [(association(rows, p["name"], p["kind"]), p["name"]) for p in parameters if p["differs"]]
    having: dict[str, int] = {}
    for per_run in names.values():
        for name in per_run:
            having[name] = having.get(name, 0) + 1
    return {
        "metric": metric,
        "aggregate": aggregate,
        "runs": rows,
        "parameters": parameters,
        "suggested": min(scored, key=lambda s: (-s[0], s[1]))[1] if scored else None,
        "metrics": [{"name": n, "runs": count} for n, count in sorted(having.items())],
        "with_value": sum(1 for r in rows if _has_value(r["value"])),
    }


def association(rows: Sequence[dict[str, Any]], name: str, kind: str) -> float:
    """Return how much hyperparameter ``name`` goes with the runs' values, 0 to 1.

    Over the runs with a finite value that set it: grouped by setting when there are at most half
    as many settings as runs, the correlation ratio (eta: the share of the value's spread that lies
    between the groups, square-rooted); else, for a number, the absolute Spearman rank correlation;
    else (text that is nearly unique per run, such as a name) 0.
    """
    pairs = [(r["params"][name], r["value"]) for r in rows
             if name in r["params"] and _has_value(r["value"]) and math.isfinite(r["value"])]
    if len(pairs) < 3:
        return 0.0
    groups: dict[str, list[float]] = {}
    for setting, value in pairs:
        groups.setdefault(repr(setting), []).append(value)
    if len(groups) <= len(pairs) / 2:
        mean = sum(v for _, v in pairs) / len(pairs)
        total = sum((v - mean) ** 2 for _, v in pairs)
        between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values())
        return math.sqrt(between / total) if total > 0 else 0.0
    if kind != "numeric":
        return 0.0
    return abs(_pearson(_ranks([x for x, _ in pairs]), _ranks([y for _, y in pairs])))


def _ranks(values: list[float]) -> list[float]:
    # Tied values share their average rank.
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2
        start = end + 1
    return ranks


def _pearson(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def _has_value(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _best_first(row: dict[str, Any]) -> tuple:
    value = row["value"]
    return (0, -value, row["id"]) if _has_value(value) else (1, 0, row["id"])


def _kind(values: Any) -> str:
    """Return 'numeric' when every value is a finite int or float (bools are not), else 'categorical'."""
    return "numeric" if all(type(v) in (int, float) and math.isfinite(v) for v in values) else "categorical"
