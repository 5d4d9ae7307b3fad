"""Reads over many runs at once for the sweep and compare views, through the Reader's reads and the filter language.

No SQL here (only the engines hold it). The runs' hyperparameters come in one export query, and
metric aggregates and row counts in one filter search for all the runs (a search shows the value
of each name its order uses). Metric names are the Reader's per-run index skip-scan.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from .. import filtering
from ..filtering.nodes import Column, In, Metric
from ..validate import decode_hyperparameter

# What a run's metric is summed up by in a sweep (the filter language's metric aggregates, but count).
AGGREGATES = ("last", "first", "min", "max", "mean")
KEYS_PER_SEARCH = 100  # order keys in one search: each is a column of its own, and the language caps them


def metric_names(reader: Any, ids: Sequence[int]) -> dict[int, list[str]]:
    """Return {run id: the names of the metrics it logged, sorted}."""
    return {i: reader.metric_names(i) for i in ids}


def hyperparameters(reader: Any, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Return {run id: {name: value}} for ``ids``, types restored and the last logged value winning (as get_hyperparameters)."""
    found: dict[int, dict[str, Any]] = {i: {} for i in ids}
    if not ids:
        return found
    columns = [name for name, _, _ in reader.export_layout("hyperparameters")]
    at = {name: columns.index(name) for name in ("experiment_id", "param_name", "param_value", "param_type")}
    for rows in reader.export_batches("hyperparameters", list(ids)):  # in id order: a later value replaces
        for row in rows:
            found.setdefault(row[at["experiment_id"]], {})[row[at["param_name"]]] = decode_hyperparameter(
                row[at["param_value"]], row[at["param_type"]])
    return found


def metric_values(reader: Any, ids: Sequence[int], refs: Iterable[Metric]) -> dict[int, dict[str, Any]]:
    """Return {run id: {"metrics.NAME.AGG": value}} for each metric aggregate in ``refs`` (None: no value, or NaN)."""
    found: dict[int, dict[str, Any]] = {i: {} for i in ids}
    keys = list(dict.fromkeys(filtering.key_text(r) for r in refs))
    if not ids or not keys:
        return found
    runs = In(Column("id"), tuple(ids))
    for start in range(0, len(keys), KEYS_PER_SEARCH):
        for row in filtering.search(reader, runs, keys[start:start + KEYS_PER_SEARCH]):
            found.setdefault(row["id"], {}).update(row["values"])
    return found


def metric_counts(reader: Any, ids: Sequence[int], names: Iterable[str]) -> dict[int, dict[str, int]]:
    """Return {run id: {name: row count}} of the metrics ``names`` each run logged (none: left out)."""
    keys = {name: filtering.key_text(Metric(name, "count")) for name in names}
    values = metric_values(reader, ids, [Metric(name, "count") for name in keys])
    return {i: {name: values[i][key] for name, key in keys.items() if values[i].get(key)} for i in ids}


def metric_aggregates(reader: Any, ids: Sequence[int], name: str, aggregate: str) -> dict[int, tuple[Any, int]]:
    """Return {run id: (value, row count)} of metric ``name`` summed up by ``aggregate`` (one of AGGREGATES).

    Runs that never logged the metric are left out; the value is None where it is NaN (min, max
    and mean skip NaN rows).
    """
    value, count = Metric(name, aggregate), Metric(name, "count")
    found = metric_values(reader, ids, [value, count])
    return {i: (v.get(filtering.key_text(value)), v[filtering.key_text(count)]) for i, v in found.items()
            if v.get(filtering.key_text(count))}
