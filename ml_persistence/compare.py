"""Side-by-side comparison of runs: which hyperparameters differ between them, which metric to show first."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence


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


SYSTEM_PREFIX = "system/"  # system metrics (CPU, memory, GPU samples), shown apart from training metrics


def is_system_metric(name: str) -> bool:
    """Return True for a system metric's name (``system/...``)."""
    return name.startswith(SYSTEM_PREFIX)


def metric_candidates(names: Mapping[Any, Iterable[str]]) -> list[str]:
    """Return the metrics default_metric chooses among, from each run's metric names alone (then count only these).

    The ones every run logged, else the ones the most runs logged; ``system/`` ones only when there
    is no other. Sorted.
    """
    runs: dict[str, int] = {}
    for per_run in names.values():
        for name in set(per_run):
            runs[name] = runs.get(name, 0) + 1
    if not runs:
        return []
    rank = {n: (is_system_metric(n), -count) for n, count in runs.items()}
    best = min(rank.values())
    return sorted(n for n, r in rank.items() if r == best)


def default_metric(counts: Mapping[Any, Mapping[str, int]]) -> Optional[str]:
    """Return the metric to show first for runs whose per-metric row counts are ``counts`` ({run: {name: count}}).

    The one with the most points that every run has: among the metrics all runs logged, the largest
    smallest count. With none shared, the metric the most runs logged, again by its smallest count.
    Ties go by name; a ``system/`` metric only when the runs have no other. None: no metrics at all.
    """
    have: dict[str, list[int]] = {}
    for per_run in counts.values():
        for name, count in per_run.items():
            have.setdefault(name, []).append(count)
    if not have:
        return None
    return min(have, key=lambda n: (is_system_metric(n), -len(have[n]), -min(have[n]), n))
