"""FilterError: a filter or order_by that cannot be used, shown with a caret under the place."""

from __future__ import annotations

from ..errors import InvalidValueError

_SHOWN = 76  # characters of a long line shown around the position


def caret(text: str, position: int) -> str:
    """Return the line of ``text`` holding ``position`` and a caret under it, both indented by two."""
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    line = text[start:len(text) if end < 0 else end]
    column = position - start
    if len(line) > _SHOWN:
        left = max(0, min(column - _SHOWN // 2, len(line) - _SHOWN))
        cut = line[left:left + _SHOWN]
        line = ("..." if left else "") + cut + ("..." if left + _SHOWN < len(line) else "")
        column = column - left + (3 if left else 0)
    # One character for one: the caret stays under its place, and nothing drives a terminal.
    line = "".join("?" if ord(ch) < 32 or 127 <= ord(ch) < 160 else ch for ch in line)
    return f"  {line}\n  {' ' * column}^"


class FilterError(InvalidValueError):
    """A filter (or order_by) string that does not parse or names something unknown; ``position`` is 0-based."""

    def __init__(self, reason: str, text: str, position: int, what: str = "filter") -> None:
        self.reason = reason
        self.text = text
        self.position = position
        self.what = what
        super().__init__(f"{what}: {reason} at position {position}:\n{caret(text, position)}")
