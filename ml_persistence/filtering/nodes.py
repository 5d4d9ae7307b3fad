"""The parsed filter: what a name refers to, and the conditions that combine them.

Tagged structs: msgspec.to_builtins turns a tree into the plain data Reader.filter_experiments takes.
"""

from __future__ import annotations

from typing import Union

import msgspec

from ..sqlite.filters import AGGREGATES as AGGREGATES  # the engine's whitelist, re-exported
from .lexer import name_char


class Param(msgspec.Struct, frozen=True, tag=True):
    """``params.NAME``: the hyperparameter's last logged value."""

    name: str


class Metric(msgspec.Struct, frozen=True, tag=True):
    """``metrics.NAME[.AGGREGATE]``: an aggregate of the metric's values (last by row id by default)."""

    name: str
    aggregate: str = "last"


class Tag(msgspec.Struct, frozen=True, tag=True):
    """``tags.NAME``: true when the run has the tag."""

    name: str


class Column(msgspec.Struct, frozen=True, tag=True):
    """One of the experiment's own columns (``status`` is the effective status)."""

    name: str


Ref = Union[Param, Metric, Tag, Column]
Value = Union[str, int, float, bool]


class Compare(msgspec.Struct, frozen=True, tag=True):
    """``ref OP value`` with OP one of = != < <= > >=."""

    ref: Ref
    op: str
    value: Value


class Like(msgspec.Struct, frozen=True, tag=True):
    """``ref like 'pattern'`` (case-sensitive; % any run, _ one character, backslash escapes)."""

    ref: Ref
    pattern: str


class In(msgspec.Struct, frozen=True, tag=True):
    """``ref in (v1, v2, ...)``."""

    ref: Ref
    values: tuple


class IsNull(msgspec.Struct, frozen=True, tag=True):
    """``ref is null``: no value (never logged, logged as None, or NaN)."""

    ref: Ref


class HasTag(msgspec.Struct, frozen=True, tag=True):
    """A bare ``tags.NAME``."""

    ref: Tag


class Not(msgspec.Struct, frozen=True, tag=True):
    item: "Node"


class And(msgspec.Struct, frozen=True, tag=True):
    items: tuple


class Or(msgspec.Struct, frozen=True, tag=True):
    items: tuple


Node = Union[Compare, Like, In, IsNull, HasTag, Not, And, Or]
NODES = (Compare, Like, In, IsNull, HasTag, Not, And, Or)


class OrderKey(msgspec.Struct, frozen=True, tag=True):
    """One ``order_by`` item: a name and its direction (NULLs last either way)."""

    ref: Ref
    descending: bool = False


def refs(node: "Node | None") -> list[Ref]:
    """Return every name ``node`` refers to, in order of appearance (repeats kept)."""
    if node is None:
        return []
    if isinstance(node, (And, Or)):
        return [r for item in node.items for r in refs(item)]
    if isinstance(node, Not):
        return refs(node.item)
    return [node.ref]


def _path(name: str, metric: bool = False) -> str:
    parts = name.split(".")
    bare = all(p and all(name_char(ch) for ch in p) for p in parts)
    # A metric name whose last dotted part spells an aggregate would be read as one: quote it whole.
    if bare and not (metric and len(parts) > 1 and parts[-1].lower() in AGGREGATES):
        return name
    return "`" + name.replace("`", "``") + "`"


def key_text(ref: Ref) -> str:
    """Return the canonical spelling of a name, e.g. ``metrics.`val.max`.max`` (it parses back to ``ref``)."""
    if isinstance(ref, Column):
        return ref.name
    if isinstance(ref, Param):
        return "params." + _path(ref.name)
    if isinstance(ref, Tag):
        return "tags." + _path(ref.name)
    return "metrics." + _path(ref.name, metric=True) + ("" if ref.aggregate == "last" else "." + ref.aggregate)
