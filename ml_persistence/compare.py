"""Side-by-side comparison of runs' hyperparameters: which settings differ between them."""

from __future__ import annotations

from typing import Any, Sequence


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
