"""Run a filter: experiments as liveness.list_experiments returns them, matching it, in order."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Union

from .. import liveness
from ..validate import decode_hyperparameter
from .compile import Compiler
from .nodes import NODES, Column, Metric, Node, Param, key_text, refs
from .parse import check_limit, parse, parse_order


def live_statuses(reader: Any) -> dict[int, str]:
    """Return {id: effective status} of every experiment stored as 'running' (few: they are judged one by one)."""
    return {e["id"]: liveness.with_liveness(reader, e)["status"] for e in reader.list_experiments(status="running")}


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
    ``filter`` may also be a condition parse() returned.
    """
    node = filter if isinstance(filter, NODES) else parse(filter)
    keys = parse_order(order_by)
    limit = check_limit(limit)
    used = refs(node) + [k.ref for k in keys]
    statuses = live_statuses(reader) if Column("status") in used else None
    compiler = Compiler(reader, statuses)
    where, order, shown = compiler.where(node), compiler.order(keys), compiler.shown(used)
    columns = compiler.select_list()
    found = reader.select_experiments(
        columns.text, where.text, order.text, [*columns.params, *where.params, *order.params], limit
    )
    for row in found:
        row["values"] = {key_text(ref): _shown_value(ref, [row[a] for a in aliases]) for ref, aliases in shown}
        for _, alias in compiler.columns:
            del row[alias]
        if statuses is None:
            liveness.with_liveness(reader, row)
        else:
            # The status the filter judged by, so a row never contradicts the condition it matched.
            row["stored_status"] = row["status"]
            if row["status"] == "running":
                row["status"] = statuses.get(row["id"]) or liveness.with_liveness(reader, row)["status"]
    return found


def _shown_value(ref: Any, raw: list[Any]) -> Any:
    if isinstance(ref, Param):
        text, kind = raw
        return None if text is None else decode_hyperparameter(text, kind)
    value = raw[0]
    return value if isinstance(ref, Metric) and ref.aggregate == "count" else (None if value is None else float(value))
