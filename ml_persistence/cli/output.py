"""What the command line prints: aligned tables that fit the terminal, value formats, strict JSON."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import shutil
import sys
from typing import Any, Iterable, Optional, Sequence, TextIO

import msgspec

from ..liveness import parse_time
from ..strictjson import decoded_json as decoded_json, json_safe  # re-exported for the commands

MIN_COLUMN = 6
READABLE = 12
GAP = "  "
# Control characters (an ESC starting a terminal escape sequence, say) are shown, never sent raw.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: str) -> str:
    """Return ``value`` with control characters written as \\xNN, so stored text cannot drive the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def number(value: Any) -> str:
    """Format a metric-like number compactly; None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.6g}"
    return str(value)


def text(value: Any) -> str:
    """Format any stored value for a table cell, on one line."""
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return number(value)
    if isinstance(value, (list, tuple)):
        return ",".join(text(v) for v in value)
    if isinstance(value, dict):
        return msgspec.json.encode(json_safe(value)).decode()
    return printable(" ".join(str(value).split()))


def duration(seconds: Optional[float]) -> str:
    """Format a duration as '45.2s', '3m12s', '2h05m' or '3d04h'."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def moment(stamp: Any) -> str:
    """Format a stored timestamp to the minute."""
    if not isinstance(stamp, str):
        return "-"
    return stamp.replace("T", " ")[:16]


def run_duration(experiment: dict[str, Any]) -> Optional[float]:
    """Return a finished run's duration, a running one's time so far, else None."""
    if experiment.get("duration_seconds") is not None:
        return experiment["duration_seconds"]
    if experiment.get("status") == "running":
        started = parse_time(experiment.get("start_time"))
        if started is not None:
            return dt.datetime.now().timestamp() - started
    return None


def terminal_width() -> Optional[int]:
    """Return the width to fit tables to, or None when output goes to a pipe and COLUMNS is unset."""
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return shutil.get_terminal_size((100, 24)).columns
    return None


def clip(line: str, width: Optional[int]) -> str:
    """Return ``line`` cut to ``width`` characters (with '…'), or whole when width is None."""
    return line if width is None else _clip(line, width)


def _clip(cell: str, width: int) -> str:
    return cell if len(cell) <= width else cell[: max(0, width - 1)] + "…"


def _shrink(widths: list[int], flexible: Sequence[int], excess: int, floor: int) -> int:
    """Clip the widest flexible columns, none below ``floor``; return the excess left."""
    while excess > 0:
        candidates = [i for i in flexible if widths[i] > floor]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        others = max([widths[i] for i in candidates if i != widest] + [floor])
        cut = min(excess, widths[widest] - others) or 1
        widths[widest] -= cut
        excess -= cut
    return excess


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    right: Sequence[int] = (),
    flexible: Sequence[int] = (),
    optional: Sequence[int] = (),
    width: Optional[int] = None,
) -> str:
    """Render rows under headers, fitted to the terminal.

    When too wide: clip the ``flexible`` columns (widest first) to a readable width, then leave out
    the ``optional`` columns in the order given, then clip further.
    """
    headers = [printable(h) for h in headers]
    body = [[printable(c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]
    shown = list(range(len(headers)))
    limit = terminal_width() if width is None else width
    if limit is not None:
        def excess() -> int:
            return sum(widths[i] for i in shown) + len(GAP) * (len(shown) - 1) - limit

        if _shrink(widths, flexible, excess(), READABLE) > 0:
            for i in optional:
                if excess() <= 0:
                    break
                shown.remove(i)
            _shrink(widths, [i for i in flexible if i in shown], excess(), MIN_COLUMN)
    lines = []
    for cells in [list(headers), *body]:
        parts = []
        for i in shown:
            cell = _clip(cells[i], widths[i])
            parts.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        lines.append(GAP.join(parts).rstrip())
    return "\n".join(lines)


def print_json(value: Any, out: TextIO = sys.stdout) -> None:
    """Print a value as indented strict JSON."""
    out.write(msgspec.json.format(msgspec.json.encode(json_safe(value)), indent=2).decode() + "\n")


def json_line(value: Any) -> str:
    """Return a value as one line of strict JSON."""
    return msgspec.json.encode(json_safe(value)).decode()


def plural(count: int, noun: str) -> str:
    """Return '1 experiment', '2 experiments'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def section(title: str) -> str:
    """Return a section heading."""
    return f"\n{title}\n{'-' * len(title)}"
