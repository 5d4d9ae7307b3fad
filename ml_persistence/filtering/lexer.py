"""Split a filter string into tokens: names (dotted paths), strings, numbers, comparators, punctuation."""

from __future__ import annotations

import math
import re
from typing import Any, Iterator, Optional

import msgspec

from .errors import FilterError

MAX_LENGTH = 10_000  # characters of a filter or an order_by item

COMPARATORS = {"=": "=", "==": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_SIGNED_INF = re.compile(r"[-+]?inf(?![\w/\-.`])", re.IGNORECASE)
_INTEGER = re.compile(r"[-+]?\d+")
_INT64 = 2**63
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}


class Token(msgspec.Struct, frozen=True):
    """One token: kind is name, string, number, op, (, ), ',' or end; ``start``/``end`` index the text."""

    kind: str
    value: Any
    start: int
    end: int


class Segment(msgspec.Struct, frozen=True):
    """One dot-separated part of a name; ``quoted`` if it was written in backticks."""

    text: str
    quoted: bool


def name_char(ch: str) -> bool:
    """True for the characters of an unquoted name part: letters, digits, _, / and -."""
    return ch.isalnum() or ch in "_/-"


def scan(text: str, what: str = "filter") -> Iterator[Token]:
    """Yield the tokens of ``text``, then 'end' tokens for ever; raise FilterError where it cannot be read.

    Lazily, so that a parser reports the first mistake in the text, whether of grammar or of spelling.
    """
    if len(text) > MAX_LENGTH:
        raise FilterError(f"too long (more than {MAX_LENGTH} characters)", text, MAX_LENGTH, what)
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            while True:
                yield Token("end", None, n, n)
        ch = text[i]
        if ch in "(),":
            yield Token(ch, ch, i, i + 1)
            i += 1
        elif ch in "=!<>":
            two = text[i:i + 2]
            op = two if two in COMPARATORS else ch
            if op not in COMPARATORS:
                raise FilterError("'!' must be followed by '=' (write 'not' to negate)", text, i, what)
            yield Token("op", COMPARATORS[op], i, i + len(op))
            i += len(op)
        elif ch in "'\"":
            value, end = _string(text, i, what)
            yield _storable(text, Token("string", value, i, end), what)
            i = end
        elif ch.isdigit() or (ch in ".-+" and (_NUMBER.match(text, i) or _SIGNED_INF.match(text, i))):
            value, end = _number(text, i, what)
            yield Token("number", value, i, end)
            i = end
        elif ch == "`" or ch.isalpha() or ch == "_":
            segments, end = _name(text, i, what)
            yield _storable(text, Token("name", tuple(segments), i, end), what)
            i = end
        else:
            _storable(text, Token("?", ch, i, i + 1), what)
            raise FilterError(f"unexpected character {ch!r}", text, i, what)


def _storable(text: str, token: Token, what: str) -> Token:
    """Return ``token``, or raise at a character in it that no database can take."""
    part = text[token.start:token.end]
    if "\x00" in part:
        position = token.start + part.index("\x00")
        raise FilterError("a NUL character cannot be matched by any database", text, position, what)
    if not part.isascii():
        try:
            part.encode("utf-8")
        except UnicodeEncodeError as exc:
            position = token.start + exc.start
            raise FilterError("a lone surrogate is not text UTF-8 can hold", text, position, what) from None
    return token


def _string(text: str, start: int, what: str) -> tuple[str, int]:
    """Read a quoted string at ``start``: backslash escapes \\\\ \\' \\" \\n \\t (others keep the
    backslash, so LIKE's \\% and \\_ pass through) and a doubled quote stand for one character."""
    quote = text[start]
    out: list[str] = []
    i, n = start + 1, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            nxt = text[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
        elif ch == quote:
            if text[i + 1:i + 2] == quote:
                out.append(quote)
                i += 2
            else:
                return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    raise FilterError(f"unterminated string (no closing {quote})", text, start, what)


def _number(text: str, start: int, what: str) -> tuple[float | int, int]:
    found = _SIGNED_INF.match(text, start)
    if found:
        return (-math.inf if found.group().startswith("-") else math.inf), found.end()
    found = _NUMBER.match(text, start)
    assert found is not None
    end = found.end()
    if end < len(text) and (name_char(text[end]) or text[end] in ".`"):
        raise FilterError(f"malformed number {text[start:end + 1]!r}", text, start, what)
    literal = found.group()
    if _INTEGER.fullmatch(literal):
        value = int(literal)
        if -_INT64 <= value < _INT64:
            return value, end
    return float(literal), end  # beyond float's range: ±inf, as Python reads it


def _name(text: str, start: int, what: str) -> tuple[list[Segment], int]:
    """Read a dotted name at ``start``; each part is a run of name characters or a `backticked` text."""
    segments: list[Segment] = []
    i, n = start, len(text)
    while True:
        if i < n and text[i] == "`":
            value, i = _quoted(text, i, what)
            segments.append(Segment(value, True))
        else:
            j = i
            while j < n and name_char(text[j]):
                j += 1
            if j == i:
                raise FilterError("expected a name after '.'", text, i, what)
            segments.append(Segment(text[i:j], False))
            i = j
        if i < n and text[i] == ".":
            i += 1
            continue
        return segments, i


def _quoted(text: str, start: int, what: str) -> tuple[str, int]:
    out: list[str] = []
    i, n = start + 1, len(text)
    while i < n:
        if text[i] == "`":
            if text[i + 1:i + 2] == "`":
                out.append("`")
                i += 2
                continue
            if not out:
                raise FilterError("empty name in backticks", text, start, what)
            return "".join(out), i + 1
        out.append(text[i])
        i += 1
    raise FilterError("unterminated name (no closing `)", text, start, what)


def shown(text: str, token: Token) -> str:
    """Return a token as written, for a message (cut when long)."""
    written = text[token.start:token.end]
    return written if len(written) <= 40 else written[:37] + "..."


def keyword(token: Token) -> Optional[str]:
    """Return the keyword a name token spells (lower case), if it is one unquoted word."""
    if token.kind != "name" or len(token.value) != 1 or token.value[0].quoted:
        return None
    return token.value[0].text.lower()
