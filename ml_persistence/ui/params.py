"""What the web UI accepts in a URL: ids, curve resolutions, filter lists; anything else is a 400 or a 404."""

from __future__ import annotations

from typing import Optional, Sequence

from .data import POINTS

MAX_ID = 2**63 - 1  # sqlite3 cannot bind a larger id, and no row has one
MAX_TAGS = 32  # each tag is one more condition in the query: SQLite caps an expression's depth
MAX_COMPARED = 64
MAX_TEXT = 1000  # a name or tag filter longer than this matches nothing anyone typed
MAX_FILTER = 4000  # a filter expression: room for a long `in (...)` list
DEFAULT_POINTS = 2000


class BadRequest(Exception):
    """A parameter that can never be answered: the message is the 400's."""


def row_id(text: str) -> Optional[int]:
    """Return a path segment as a row id, or None when it cannot name one (then: 404)."""
    digits = text.lstrip("0") or ("0" if text else "")
    if not digits.isdigit() or not digits.isascii() or len(digits) > len(str(MAX_ID)):
        return None
    value = int(digits)
    return value if value <= MAX_ID else None


def points(text: Optional[str]) -> int:
    """Return the allowed resolution nearest to ``points=`` (the larger on a tie); not an integer: BadRequest."""
    if not text:
        return DEFAULT_POINTS
    body = text[1:] if text[0] in "+-" else text
    if not (body.isascii() and body.isdigit()):
        raise BadRequest(f"points must be an integer (served: {', '.join(map(str, POINTS))})")
    if len(body) > 12:  # far beyond either end
        return POINTS[0] if text[0] == "-" else POINTS[-1]
    wanted = int(text)
    return min(POINTS, key=lambda p: (abs(p - wanted), -p))


def ids(text: Optional[str], most: int = MAX_COMPARED, verb: str = "compared") -> list[Optional[int]]:
    """Return the distinct ids of ``ids=1,2,...`` in order (None: one no run can have); malformed: BadRequest."""
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    if not parts:
        raise BadRequest("ids=1,2,... is required")
    if len(parts) > most:
        raise BadRequest(f"at most {most} runs can be {verb}")
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise BadRequest("ids must be run ids: ids=1,2,...")
    return list(dict.fromkeys(row_id(p) for p in parts))


def tags(given: Sequence[str]) -> list[str]:
    """Return the distinct non-empty ``tag=`` values; too many: BadRequest."""
    found = list(dict.fromkeys(t for t in given if t))
    if len(found) > MAX_TAGS:
        raise BadRequest(f"at most {MAX_TAGS} tag= filters")
    if any("\x00" in t for t in found):
        raise BadRequest("tag must not contain a NUL character")
    return found


def text(value: Optional[str], name: str, most: int = MAX_TEXT) -> Optional[str]:
    """Return a text filter (empty: None); longer than ``most``: BadRequest."""
    if not value:
        return None
    if len(value) > most:
        raise BadRequest(f"{name} is longer than {most} characters")
    if "\x00" in value:
        raise BadRequest(f"{name} must not contain a NUL character")
    return value


def choice(value: Optional[str], name: str, allowed: Sequence[str]) -> str:
    """Return ``value`` when it is one of ``allowed`` (empty: the first), else BadRequest."""
    if not value:
        return allowed[0]
    if value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}")
    return value
