"""Parse a filter or an order_by list into nodes, checking every name and value kind (no database needed).

Grammar (keywords case-insensitive)::

    filter     := or
    or         := and ('or' and)*
    and        := unary ('and' unary)*
    unary      := 'not' unary | '(' or ')' | condition
    condition  := tags.NAME
                | name ('=' | '!=' | '<' | '<=' | '>' | '>=') value
                | name ['not'] 'like' string
                | name ['not'] 'in' '(' value (',' value)* ')'
                | name 'is' ['not'] 'null'
    value      := string | number | 'true' | 'false' | 'inf'
    order item := name ['asc' | 'desc']      (items separated by commas)
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Union

from ..errors import InvalidTypeError, InvalidValueError
from ..sqlite.filters import COLUMNS, NUMBER, TEXT
from .errors import FilterError
from .lexer import Token, keyword, scan, shown
from .nodes import (AGGREGATES, And, Column, Compare, HasTag, In, IsNull, Like, Metric, Node, Not, Or, OrderKey,
                    Param, Ref, Tag)

MAX_DEPTH = 50  # nested parentheses and 'not's
MAX_CONDITIONS = 200  # conditions in one filter: each is a subquery per run
MAX_VALUES = 1000  # values in one filter's 'in' lists together

NAMESPACES = {"params": Param, "param": Param, "metrics": Metric, "metric": Metric, "tags": Tag, "tag": Tag}
KEYWORDS = frozenset({"and", "or", "not", "like", "in", "is", "null", "true", "false", "asc", "desc", "inf"})
_NAMES_HINT = "params.NAME, metrics.NAME[." + "|.".join(AGGREGATES) + "], tags.NAME or a column"


def _columns_hint() -> str:
    return "columns: " + ", ".join(COLUMNS)


class _Parser:
    def __init__(self, text: str, what: str) -> None:
        self.text = text
        self.what = what
        self.scanner = scan(text, what)
        self.tokens: list[Token] = []
        self.i = 0
        self.depth = 0
        self.conditions = 0
        self.values = 0

    # -- tokens --------------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> Token:
        while len(self.tokens) <= self.i + ahead:
            self.tokens.append(next(self.scanner))
        return self.tokens[self.i + ahead]

    @property
    def token(self) -> Token:
        return self.peek()

    def advance(self) -> Token:
        token = self.peek()
        self.i += 1
        return token

    def at(self, word: str) -> bool:
        return keyword(self.token) == word

    def fail(self, reason: str, position: Optional[int] = None) -> FilterError:
        return FilterError(reason, self.text, self.token.start if position is None else position, self.what)

    def described(self, token: Token) -> str:
        return "the end" if token.kind == "end" else repr(shown(self.text, token))

    # -- conditions ----------------------------------------------------------------------------

    def filter(self) -> Optional[Node]:
        if self.token.kind == "end":
            return None
        node = self.disjunction()
        if self.token.kind != "end":
            if self.token.kind == ")":
                raise self.fail("unmatched ')'")
            raise self.fail(f"expected 'and', 'or' or the end, found {self.described(self.token)}")
        return node

    def disjunction(self) -> Node:
        items = [self.conjunction()]
        while self.at("or"):
            self.advance()
            items.append(self.conjunction())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conjunction(self) -> Node:
        items = [self.unary()]
        while self.at("and"):
            self.advance()
            items.append(self.unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def nested(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nested too deeply (more than {MAX_DEPTH} levels of parentheses and 'not')")

    def unary(self) -> Node:
        if self.at("not"):
            self.nested()
            self.advance()
            node: Node = Not(self.unary())
            self.depth -= 1
            return node
        if self.token.kind == "(":
            self.nested()
            opening = self.advance()
            node = self.disjunction()
            if self.token.kind != ")":
                raise self.fail(
                    f"expected ')' to close the '(' at position {opening.start}, found {self.described(self.token)}")
            self.advance()
            self.depth -= 1
            return node
        return self.condition()

    def condition(self) -> Node:
        start = self.token
        ref = self.name("a condition")
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise self.fail(f"too many conditions (at most {MAX_CONDITIONS})", start.start)
        written = shown(self.text, start)
        if isinstance(ref, Tag):
            if self.token.kind == "op" or keyword(self.token) in ("like", "in", "is"):
                raise self.fail(f"{written} is a condition by itself (true when the run has the tag); "
                                "it takes no comparator (write 'not " + written + "' for runs without it)")
            return HasTag(ref)
        negated = False
        if self.at("not") and keyword(self.peek(1)) in ("like", "in"):
            self.advance()
            negated = True
        if self.at("is"):
            self.advance()
            if self.at("not"):
                self.advance()
                negated = True
            if not self.at("null"):
                raise self.fail(f"expected 'null' after 'is', found {self.described(self.token)}")
            self.advance()
            node: Node = IsNull(ref)
        elif self.at("like"):
            self.advance()
            if self.token.kind != "string":
                raise self.fail(f"expected a quoted pattern after 'like', found {self.described(self.token)}")
            if not isinstance(ref, Param) and self.kind_check_fails(ref, "text"):
                raise self.fail(f"'like' matches text, and {written} is a number", self.token.start)
            node = Like(ref, self.advance().value)
        elif self.at("in"):
            self.advance()
            node = In(ref, self.values_list(ref, written))
        elif self.token.kind == "op":
            op = self.advance()
            node = Compare(ref, op.value, self.value(ref, written, f"after '{shown(self.text, op)}'"))
        else:
            raise self.fail(f"expected a comparator after {written!r}, found {self.described(self.token)}")
        return Not(node) if negated else node

    def values_list(self, ref: Ref, written: str) -> tuple:
        if self.token.kind != "(":
            raise self.fail(f"expected '(' after 'in', found {self.described(self.token)}")
        self.advance()
        values = [self.listed(ref, written, "in the 'in' list")]
        while self.token.kind == ",":
            self.advance()
            values.append(self.listed(ref, written, "after ','"))
        if self.token.kind != ")":
            raise self.fail(f"expected ',' or ')' in the 'in' list, found {self.described(self.token)}")
        self.advance()
        return tuple(values)

    def listed(self, ref: Ref, written: str, where: str) -> Union[str, int, float, bool]:
        self.values += 1
        if self.values > MAX_VALUES:
            raise self.fail(f"too many values in 'in' lists (at most {MAX_VALUES})")
        return self.value(ref, written, where)

    def value(self, ref: Ref, written: str, where: str) -> Union[str, int, float, bool]:
        token = self.token
        word = keyword(token)
        if token.kind in ("string", "number"):
            value = token.value
        elif word in ("true", "false"):
            value = word == "true"
        elif word == "inf":
            value = float("inf")
        elif word == "null":
            raise self.fail("compare with null by 'is null' or 'is not null'")
        else:
            raise self.fail(f"expected a value (a quoted string, a number, true or false) {where}, "
                            f"found {self.described(token)}")
        self.kind_check(ref, written, "text" if isinstance(value, str) else "number", token)
        self.advance()
        return value

    @staticmethod
    def kind_check_fails(ref: Ref, kind: str) -> bool:
        """True where a value of ``kind`` cannot be compared with ``ref`` at all (parameters take either kind)."""
        if isinstance(ref, Param):
            return False
        return kind != (NUMBER if isinstance(ref, Metric) else COLUMNS[ref.name])  # type: ignore[union-attr]

    def kind_check(self, ref: Ref, written: str, kind: str, token: Token) -> None:
        if not self.kind_check_fails(ref, kind):
            return
        if kind == TEXT:
            raise self.fail(f"{written} is a number; compare it with a number, not text", token.start)
        raise self.fail(f"{written} is text; compare it with a quoted string", token.start)

    # -- names ---------------------------------------------------------------------------------

    def name(self, wanted: str) -> Ref:
        token = self.token
        if token.kind != "name" or keyword(token) in KEYWORDS:
            raise self.fail(f"expected {wanted} ({_NAMES_HINT}), found {self.described(token)}")
        self.advance()
        segments = token.value
        head = segments[0]
        if len(segments) == 1:
            column = head.text.lower() if not head.quoted else head.text
            if column in NAMESPACES and not head.quoted:
                raise self.fail(f"expected a name after '{head.text}.'", token.end)
            if column not in COLUMNS:
                raise self.fail(f"unknown column {head.text!r}; use {_NAMES_HINT} ({_columns_hint()})", token.start)
            return Column(column)
        kind = NAMESPACES.get(head.text.lower()) if not head.quoted else None
        if head.text.lower() in ("attributes", "attribute", "attr") and not head.quoted and len(segments) == 2:
            column = segments[1].text if segments[1].quoted else segments[1].text.lower()
            if column not in COLUMNS:
                raise self.fail(f"unknown column {segments[1].text!r} ({_columns_hint()})", token.start)
            return Column(column)
        if kind is None:
            raise self.fail(f"unknown name {shown(self.text, token)!r}; use {_NAMES_HINT}", token.start)
        rest = segments[1:]
        if kind is Metric and len(rest) > 1 and not rest[-1].quoted and rest[-1].text.lower() in AGGREGATES:
            return Metric(".".join(s.text for s in rest[:-1]), rest[-1].text.lower())
        return kind(".".join(s.text for s in rest))

    # -- order_by ------------------------------------------------------------------------------

    def order(self) -> list[OrderKey]:
        keys: list[OrderKey] = []
        while True:
            start = self.token
            ref = self.name("a name to order by")
            if isinstance(ref, Tag):
                raise self.fail("tags cannot order runs; order by a column, params.NAME or metrics.NAME", start.start)
            descending = False
            if self.at("asc") or self.at("desc"):
                descending = self.at("desc")
                self.advance()
            keys.append(OrderKey(ref, descending))
            if self.token.kind == "end":
                return keys
            if self.token.kind != ",":
                raise self.fail(f"expected 'asc', 'desc', ',' or the end, found {self.described(self.token)}")
            self.advance()


def parse(text: Optional[str]) -> Optional[Node]:
    """Return the filter's condition tree, or None for no filter (None, or only whitespace)."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise InvalidTypeError(f"filter: expected a string, got {type(text).__name__}")
    return _Parser(text, "filter").filter()


def parse_order(items: Union[str, Iterable[str], None]) -> list[OrderKey]:
    """Return the order keys of ``items``: one string or several, each 'NAME [asc|desc]' (commas separate more)."""
    if items is None:
        return []
    if isinstance(items, str):
        items = [items]
    keys: list[OrderKey] = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidTypeError(f"order_by: expected strings, got {type(item).__name__}")
        parser = _Parser(item, "order_by")
        if parser.token.kind == "end":
            continue
        keys += parser.order()
        if len(keys) > MAX_CONDITIONS:
            raise FilterError(f"too many order keys (at most {MAX_CONDITIONS})", item, 0, "order_by")
    return keys


def check_limit(limit: Any) -> Optional[int]:
    """Return ``limit`` as an int >= 0 or None; raise TypeError/ValueError otherwise."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidTypeError(f"limit: expected an integer or None, got {type(limit).__name__}")
    if limit < 0:
        raise InvalidValueError(f"limit must be >= 0, got {limit}")
    return limit
