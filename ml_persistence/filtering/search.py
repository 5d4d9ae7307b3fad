"""Run a filter: experiments as liveness.list_experiments returns them, matching it, in order."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Optional, Union

import msgspec

from .. import liveness
from .nodes import NODES, Column, Metric, Node, Param, key_text, refs
from .parse import check_limit, parse, parse_order


class BackendReads:
    """A Reader-like view of a tracker's backend: each method call is ``backend.read(name, ...)``
    (the reads search() makes, which an agent answers too)."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return functools.partial(self._backend.read, name)


def live_statuses(reader: Any) -> dict[int, str]:
    """Return {id: effective status} of every experiment stored as 'running' (few: each is judged on its own)."""
    running = reader.list_experiments(None, "running", None, None, None)
    return {e["id"]: liveness.with_liveness(reader, e)["status"] for e in running}


def search(
    reader: Any,
    filter: Union[str, Node, None] = None,
    order_by: Union[str, Iterable[str], None] = None,
    limit: Optional[int] = None,
) -> list[dict[str, Any]]:
    """Return the experiments matching ``filter`` ordered by ``order_by`` (default: newest first), at most ``limit``.

    Each row is as liveness.list_experiments gives it (effective ``status``, ``stored_status``), plus
    ``values``: {name: value} for each params./metrics. name the filter or order_by uses, spelled
    canonically (e.g. "metrics.val_sharpe.max"); None where the run has none (or the value is NaN).
    ``filter`` may also be a condition parse() returned. ``reader`` is a Reader (or BackendReads).
    """
    node = filter if isinstance(filter, NODES) else parse(filter)
    keys = parse_order(order_by)
    limit = check_limit(limit)
    used = refs(node) + [k.ref for k in keys]
    statuses = live_statuses(reader) if Column("status") in used else None
    shown = list(dict.fromkeys(r for r in used if isinstance(r, (Param, Metric))))
    found = reader.filter_experiments(
        None if node is None else msgspec.to_builtins(node),
        msgspec.to_builtins(keys),
        msgspec.to_builtins(shown),
        [[i, s] for i, s in sorted((statuses or {}).items()) if s != "running"],
        limit,
    )
    for row in found:
        row["values"] = dict(zip(map(key_text, shown), row["values"]))
        if statuses is None:
            liveness.with_liveness(reader, row)
        else:
            # The status the filter judged by, so a row never contradicts the condition it matched.
            row["stored_status"] = row["status"]
            if row["status"] == "running":
                row["status"] = statuses.get(row["id"]) or liveness.with_liveness(reader, row)["status"]
    return found
