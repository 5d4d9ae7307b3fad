"""Turn parsed conditions and order keys into SQL over ``experiments e``: whitelisted names, bound values.

Engine differences come from the Reader's dialect hooks (``_real``, ``_text``, ``_mean``, ``_like``,
``_like_param``, ``_has_tag``, ``_in_list``, ``_list_param``). Every condition is true or false,
never unknown: a comparison with a missing value is false, so ``not`` is a plain negation.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence

from ..sqlite.reads import FIGURES
from .columns import COLUMNS, TEXT
from .nodes import And, Column, Compare, HasTag, In, IsNull, Like, Metric, Node, Not, Or, OrderKey, Param, Ref, refs

_SQL_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_METRIC_SCOPE = "FROM metrics fm WHERE fm.experiment_id = e.id AND fm.metric_name = ?"
_PARAM_SCOPE = "FROM hyperparameters fh WHERE fh.experiment_id = e.id AND fh.param_name = ? ORDER BY fh.id DESC LIMIT 1"
_NOT_TEXT = "('int', 'float', 'bool', 'NoneType')"  # param_type values whose text is no string
ALIAS_PREFIX = "_filter_"  # of the extra select columns; search() takes them off the rows


class Sql(NamedTuple):
    """A fragment of SQL and the values its ``?`` placeholders take, in order."""

    text: str
    params: tuple = ()


def _joined(separator: str, parts: Iterable[Sql]) -> Sql:
    parts = list(parts)
    return Sql(separator.join(p.text for p in parts), tuple(v for p in parts for v in p.params))


def _bound(value: Any) -> Any:
    # Booleans compare as 1 and 0 (PostgreSQL has no bigint = boolean).
    return int(value) if isinstance(value, bool) else value


def like_pattern(pattern: str) -> str:
    """Return ``pattern`` with its escapes made canonical: a backslash only before a literal %, _ or backslash."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            literal = pattern[i + 1] if i + 1 < len(pattern) else "\\"
            out.append("\\" + literal if literal in "%_\\" else literal)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _cost(node: Node) -> int:
    """Rank a condition by what it reads: 2 for a metric aggregate over every point, 1 for one row, 0 for none."""
    return max((2 if isinstance(r, Metric) and r.aggregate not in ("last", "first") else 1 if isinstance(r, (Metric, Param))
                else 0 for r in refs(node)), default=0)


def _false(condition: Sql) -> Sql:
    """Read unknown (a missing value) as false."""
    return Sql(f"COALESCE(({condition.text}), FALSE)", condition.params)


class Compiler:
    """SQL for one search; ``statuses`` maps stored-'running' ids to their effective status."""

    def __init__(self, reader: Any, statuses: Optional[Mapping[int, str]] = None) -> None:
        self.reader = reader
        self.statuses = statuses or {}
        self.columns: list[tuple[Sql, str]] = []  # extra select columns and their aliases

    # -- names ---------------------------------------------------------------------------------

    def column(self, name: str) -> Sql:
        assert name in COLUMNS  # only whitelisted names reach SQL
        if name == "status":
            return self.status()
        if name == "stored_status":
            return Sql("e.status")
        if name in FIGURES:
            return Sql(FIGURES[name])
        return Sql(self.reader._text(f"e.{name}") if COLUMNS[name] == TEXT else f"e.{name}")

    def status(self) -> Sql:
        """The effective status: derived ones (crashed, stale) by id, else the stored one."""
        derived: dict[str, list[int]] = {}
        for experiment_id, status in sorted(self.statuses.items()):
            if status != "running":
                derived.setdefault(status, []).append(experiment_id)
        if not derived:
            return Sql("e.status")
        whens = [Sql(f"WHEN {self.reader._in_list('e.id')} THEN ?", (self.reader._list_param(ids), status))
                 for status, ids in sorted(derived.items())]
        case = _joined(" ", whens)
        return Sql(f"(CASE {case.text} ELSE e.status END)", case.params)

    def metric(self, ref: Metric) -> Sql:
        scope = _METRIC_SCOPE
        text = {
            "last": f"(SELECT fm.value {scope} ORDER BY fm.id DESC LIMIT 1)",
            "first": f"(SELECT fm.value {scope} ORDER BY fm.id ASC LIMIT 1)",
            "min": f"(SELECT MIN(fm.value) {scope})",
            "max": f"(SELECT MAX(fm.value) {scope})",
            "count": f"(SELECT COUNT(*) {scope})",
            "mean": f"(SELECT {self.reader._mean('fm.value')} {scope})",
        }[ref.aggregate]
        return Sql(text, (ref.name,))

    def param_number(self, ref: Param) -> Sql:
        """The parameter as a number: int, float and bool (1/0) parameters; NULL for the others and NaN."""
        real = self.reader._real
        return Sql(
            f"(SELECT CASE fh.param_type WHEN 'int' THEN {real('fh.param_value', 'int')} "
            f"WHEN 'float' THEN {real('fh.param_value', 'float')} "
            "WHEN 'bool' THEN (CASE fh.param_value WHEN 'True' THEN 1.0 WHEN 'False' THEN 0.0 END) END "
            f"{_PARAM_SCOPE})",
            (ref.name,),
        )

    def param_text(self, ref: Param) -> Sql:
        """The parameter's stored text when it is a string (or a list/dict as JSON); NULL for numbers."""
        return Sql(
            f"(SELECT CASE WHEN fh.param_type IN {_NOT_TEXT} THEN NULL ELSE fh.param_value END {_PARAM_SCOPE})",
            (ref.name,),
        )

    def param_present(self, ref: Param) -> Sql:
        """1 when the parameter's last logged value is neither None nor NaN, else 0."""
        return Sql(
            "COALESCE((SELECT CASE WHEN fh.param_type = 'NoneType' OR "
            f"(fh.param_type = 'float' AND fh.param_value = 'nan') THEN 0 ELSE 1 END {_PARAM_SCOPE}), 0)",
            (ref.name,),
        )

    def value(self, ref: Ref) -> Sql:
        """The SQL value of a column or metric (parameters have two: param_number, param_text)."""
        if isinstance(ref, Column):
            return self.column(ref.name)
        if isinstance(ref, Metric):
            return self.metric(ref)
        raise TypeError(f"no single value for {ref!r}")

    # -- conditions ----------------------------------------------------------------------------

    def where(self, node: Optional[Node]) -> Sql:
        """Return the condition as SQL (empty for no condition)."""
        return Sql("") if node is None else self.condition(node)

    def condition(self, node: Node) -> Sql:
        if isinstance(node, (And, Or)):
            # Cheap conditions first: AND and OR stop early, and no condition here can fail or be unknown.
            items = sorted(node.items, key=_cost)
            joined = _joined(" AND " if isinstance(node, And) else " OR ", map(self.condition, items))
            return Sql(f"({joined.text})", joined.params)
        if isinstance(node, Not):
            inner = self.condition(node.item)
            return Sql(f"(NOT {inner.text})", inner.params)
        if isinstance(node, HasTag):
            return _false(Sql(self.reader._has_tag("e.tags"), (node.ref.name,)))
        if isinstance(node, IsNull):
            if isinstance(node.ref, Param):
                present = self.param_present(node.ref)
                return Sql(f"({present.text} = 0)", present.params)
            value = self.value(node.ref)
            return Sql(f"({value.text} IS NULL)", value.params)
        if isinstance(node, Compare):
            return self._sides(node.ref, [node.value], lambda side, values: _false(
                Sql(f"{side.text} {_SQL_OPS[node.op]} ?", (*side.params, _bound(values[0])))))
        if isinstance(node, In):
            return self._sides(node.ref, list(node.values), lambda side, values: _false(
                Sql(f"{side.text} IN ({', '.join('?' * len(values))})", (*side.params, *map(_bound, values)))))
        if isinstance(node, Like):
            side = self.param_text(node.ref) if isinstance(node.ref, Param) else self.value(node.ref)
            return _false(Sql(self.reader._like(side.text),
                              (*side.params, self.reader._like_param(like_pattern(node.pattern)))))
        raise TypeError(f"not a filter node: {node!r}")

    def _sides(self, ref: Ref, values: list[Any], build: Any) -> Sql:
        """Compare ``ref`` with ``values``: a parameter's numbers with the numbers, its text with the strings."""
        if not isinstance(ref, Param):
            return build(self.value(ref), values)
        numbers = [v for v in values if not isinstance(v, str)]
        texts = [v for v in values if isinstance(v, str)]
        parts = ([build(self.param_number(ref), numbers)] if numbers else []) + (
            [build(self.param_text(ref), texts)] if texts else [])
        return parts[0] if len(parts) == 1 else self._or(parts)

    @staticmethod
    def _or(parts: list[Sql]) -> Sql:
        joined = _joined(" OR ", parts)
        return Sql(f"({joined.text})", joined.params)

    # -- selected columns: each order key and shown value computed once per row -----------------

    def alias(self, value: Sql) -> str:
        """Return the alias of ``value`` among the extra select columns, adding it if new."""
        for known, alias in self.columns:
            if known == value:
                return alias
        self.columns.append((value, f"{ALIAS_PREFIX}{len(self.columns)}"))
        return self.columns[-1][1]

    def select_list(self) -> Sql:
        """Return the extra select columns that alias() handed out ("" for none)."""
        return _joined(", ", [Sql(f"{value.text} AS {alias}", value.params) for value, alias in self.columns])

    def order(self, keys: Sequence[OrderKey]) -> Sql:
        """Return the ORDER BY list: each key with NULLs last, then id descending; default newest first."""
        if not keys:
            return Sql("e.start_time DESC, e.id DESC")
        terms: list[str] = []
        for key in keys:
            direction = "DESC" if key.descending else "ASC"
            # A parameter orders its numbers first, then its strings, then the runs without it.
            sides = [self.param_number(key.ref), self.param_text(key.ref)] if isinstance(key.ref, Param) else [
                self.value(key.ref)]
            terms += [self.reader._nulls_last(self.alias(side), direction) for side in sides]
        return Sql(", ".join([*terms, "e.id DESC"]))

    def shown(self, refs: Sequence[Ref]) -> list[tuple[Ref, list[str]]]:
        """Select the parameters and metrics in ``refs``; return each with its aliases (a parameter's text and type)."""
        shown: list[tuple[Ref, list[str]]] = []
        for ref in dict.fromkeys(r for r in refs if isinstance(r, (Param, Metric))):
            if isinstance(ref, Param):
                sources = [Sql(f"(SELECT fh.param_value {_PARAM_SCOPE})", (ref.name,)),
                           Sql(f"(SELECT fh.param_type {_PARAM_SCOPE})", (ref.name,))]
            else:
                sources = [self.metric(ref)]
            shown.append((ref, [self.alias(source) for source in sources]))
        return shown
