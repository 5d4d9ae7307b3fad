"""Choosing experiments for a command by the filter language: --filter EXPR, --order-by KEY."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn, Optional

from .. import filtering
from ..filtering import FilterError
from ..filtering.nodes import And, Column, Compare, HasTag, In, Like, Node, Tag
from .database import USAGE
from .output import printable

FILTER_HELP = ('only experiments matching EXPR, e.g. \'params.lr < 1e-3 and metrics.val_sharpe > 1.5 and '
               '(tags.ppo or status = "running")\' (see the README\'s filter language)')
ORDER_HELP = ("order by KEY [asc|desc]: a column, params.NAME or metrics.NAME[.max|...] (repeatable, or "
              "comma-separated; NULLs last, ties newest id first)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --filter and --order-by to a command."""
    parser.add_argument("--filter", metavar="EXPR", help=FILTER_HELP)
    parser.add_argument("--order-by", action="append", metavar="KEY", help=ORDER_HELP)


def _usage_error(exc: FilterError) -> NoReturn:
    # Printed whole (the caret needs its lines), then exit 2 as argparse does for a usage error.
    first, *rest = str(exc).split("\n")
    print("\n".join([f"ml-persistence: {printable(first)}", *map(printable, rest)]), file=sys.stderr)
    raise SystemExit(USAGE)


def selecting(args: argparse.Namespace) -> bool:
    """True if the command was given --filter or --order-by."""
    return args.filter is not None or bool(args.order_by)


def condition(args: argparse.Namespace) -> Optional[Node]:
    """Return the command's --filter, and its --type/--status/--tag/--name if it has them, as one condition
    (a malformed --filter or --order-by: its message with a caret on stderr, exit 2)."""
    try:
        parsed = filtering.parse(args.filter)
        filtering.parse_order(args.order_by)
    except FilterError as exc:
        _usage_error(exc)
    items: list[Node] = [] if parsed is None else [parsed]
    if getattr(args, "type", None) is not None:
        items.append(Compare(Column("experiment_type"), "=", args.type))
    if getattr(args, "status", None) is not None:
        items.append(Compare(Column("status"), "=", args.status))
    items += [HasTag(Tag(t)) for t in getattr(args, "tag", None) or ()]
    if getattr(args, "name", None) is not None:
        escaped = "".join("\\" + ch if ch in "%_\\" else ch for ch in args.name)
        items.append(Like(Column("name"), f"%{escaped}%"))
    return None if not items else items[0] if len(items) == 1 else And(tuple(items))


def ids_condition(ids: Any) -> Node:
    """Return the condition 'id in (ids)'."""
    return In(Column("id"), tuple(int(i) for i in ids))


def search(reader: Any, node: Optional[Node], order_by: Any, limit: Optional[int] = None) -> list[dict[str, Any]]:
    """Return the experiments matching ``node`` in ``order_by`` order (default newest first), as filtering.search."""
    try:
        return filtering.search(reader, node, order_by, limit)
    except FilterError as exc:
        _usage_error(exc)
