"""The filter language's SQL: a parsed filter, as plain data, turned into a query over ``experiments e``.

A mixin of Reader. ml_persistence.filtering parses the text and hands over its nodes as builtins
({"type": "Compare", "ref": {"type": "Param", "name": "lr"}, "op": "<", "value": 0.001}, ...),
which an agent may also receive from a client: every name is checked against the whitelists here,
every value is bound. Engine differences come from dialect hooks (``_real``, ``_text``, ``_mean``,
``_like``, ``_like_param``, ``_nulls_last``, ``_has_tag``, ``_in_list``, ``_list_param``).

Every condition is true or false, never unknown: a comparison with a missing value is false, so
``not`` is a plain negation.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Optional, Sequence

from ..validate import decode_hyperparameter

NUMBER, TEXT = "number", "text"

# The experiment columns a filter may name, and what each holds. status is the effective status
# (a dead 'running' run reads 'crashed' or 'stale'); stored_status is as stored. Times are text,
# 'YYYY-MM-DD HH:MM:SS.ffffff' in the writer's local time, so they compare as text.
COLUMNS: dict[str, str] = {
    "id": NUMBER, "name": TEXT, "description": TEXT, "experiment_type": TEXT, "status": TEXT,
    "stored_status": TEXT, "start_time": TEXT, "end_time": TEXT, "duration_seconds": NUMBER,
    "random_seed": NUMBER, "git_commit": TEXT, "git_branch": TEXT, "git_dirty": NUMBER, "hostname": TEXT,
    "pid": NUMBER, "notes": TEXT, "python_version": TEXT, "platform": TEXT, "command": TEXT,
    "created_at": TEXT, "updated_at": TEXT, "uuid": TEXT,
    "num_checkpoints": NUMBER, "best_val_metric": NUMBER, "best_test_metric": NUMBER,
}
AGGREGATES = ("last", "first", "min", "max", "mean", "count")
MAX_NODES = 5000  # in one filter and order: more is no filter the parser lets through
MAX_DEPTH = 120

_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_METRIC_SCOPE = "FROM metrics fm WHERE fm.experiment_id = e.id AND fm.metric_name = ?"
_PARAM_SCOPE = "FROM hyperparameters fh WHERE fh.experiment_id = e.id AND fh.param_name = ? ORDER BY fh.id DESC LIMIT 1"
_NOT_TEXT = "('int', 'float', 'bool', 'NoneType')"  # param_type values whose text is no string
_ALIAS = "_filter_"  # of the extra select columns, taken off the rows again


class Sql(NamedTuple):
    """A fragment of SQL and the values its ``?`` placeholders take, in order."""

    text: str
    params: tuple = ()


def _joined(separator: str, parts: Iterable[Sql]) -> Sql:
    parts = list(parts)
    return Sql(separator.join(p.text for p in parts), tuple(v for p in parts for v in p.params))


def _false(condition: Sql) -> Sql:
    """Read unknown (a missing value) as false."""
    return Sql(f"COALESCE(({condition.text}), FALSE)", condition.params)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"filter: {what} must be text, got {type(value).__name__}")
    return value


def _value(value: Any) -> Any:
    """A value to bind: text, or a number (booleans as 1 and 0: PostgreSQL has no bigint = boolean)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else float(value)
    if isinstance(value, (float, str)):
        return value
    raise ValueError(f"filter: a value must be text or a number, got {type(value).__name__}")


def _real(value: Any) -> Any:
    """A number compared with a float (a metric, a parameter's number) bound as a float, so that both engines
    compare 64-bit floats: SQLite compares an integer with a real exactly, PostgreSQL casts it to float8."""
    value = _value(value)
    return float(value) if isinstance(value, int) else value


class _Ref(NamedTuple):
    kind: str  # Param, Metric, Tag or Column
    name: str
    aggregate: str = "last"


def _ref(node: Any) -> _Ref:
    """Check a name node against the whitelists."""
    kind = node.get("type") if isinstance(node, dict) else None
    name = _text(node.get("name"), "a name") if kind else ""
    if kind == "Column":
        if name not in COLUMNS:
            raise ValueError(f"filter: unknown column {name!r}")
        return _Ref(kind, name)
    if kind == "Metric":
        aggregate = node.get("aggregate", "last")
        if aggregate not in AGGREGATES:
            raise ValueError(f"filter: unknown aggregate {aggregate!r}")
        return _Ref(kind, name, aggregate)
    if kind in ("Param", "Tag"):
        return _Ref(kind, name)
    raise ValueError(f"filter: not a name: {node!r:.80}")


def _cost(node: Any, depth: int = 0) -> int:
    """Rank a condition by what it reads: 2 for a metric aggregate over every point, 1 for one row, 0 for none."""
    if not isinstance(node, dict) or depth > MAX_DEPTH:
        return 0
    if node.get("type") in ("And", "Or"):
        items = node.get("items")
        return max((_cost(item, depth + 1) for item in items), default=0) if isinstance(items, (list, tuple)) else 0
    if node.get("type") == "Not":
        return _cost(node.get("item"), depth + 1)
    ref = node.get("ref")
    kind = ref.get("type") if isinstance(ref, dict) else None
    if kind == "Metric":
        return 1 if ref.get("aggregate", "last") in ("last", "first") else 2
    return 1 if kind == "Param" else 0


class _Compiler:
    """SQL for one search; ``derived`` maps stored-'running' ids to their effective status."""

    def __init__(self, reader: Any, derived: dict[int, str]) -> None:
        self.reader = reader
        self.derived = derived
        self.columns: list[tuple[Sql, str]] = []  # extra select columns and their aliases
        self.nodes = 0

    def count(self, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            raise ValueError("filter: too large or too deeply nested")

    # -- names ---------------------------------------------------------------------------------

    def column(self, name: str) -> Sql:
        if name == "status":
            return self.status()
        if name == "stored_status":
            return Sql("e.status")
        from .reads import FIGURES

        if name in FIGURES:
            return Sql(FIGURES[name])
        return Sql(self.reader._text(f"e.{name}") if COLUMNS[name] == TEXT else f"e.{name}")

    def status(self) -> Sql:
        """The effective status: derived ones (crashed, stale) by id, else the stored one."""
        by_status: dict[str, list[int]] = {}
        for experiment_id, status in sorted(self.derived.items()):
            if status != "running":
                by_status.setdefault(status, []).append(experiment_id)
        if not by_status:
            return Sql("e.status")
        whens = [Sql(f"WHEN {self.reader._in_list('e.id')} THEN ?", (self.reader._list_param(ids), status))
                 for status, ids in sorted(by_status.items())]
        case = _joined(" ", whens)
        return Sql(f"(CASE {case.text} ELSE e.status END)", case.params)

    def metric(self, ref: _Ref) -> Sql:
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

    def param_number(self, ref: _Ref) -> Sql:
        """The parameter as a number: int, float and bool (1/0) parameters; NULL for the others and NaN."""
        real = self.reader._real
        return Sql(
            f"(SELECT CASE fh.param_type WHEN 'int' THEN {real('fh.param_value', 'int')} "
            f"WHEN 'float' THEN {real('fh.param_value', 'float')} "
            "WHEN 'bool' THEN (CASE fh.param_value WHEN 'True' THEN 1.0 WHEN 'False' THEN 0.0 END) END "
            f"{_PARAM_SCOPE})",
            (ref.name,),
        )

    def param_text(self, ref: _Ref) -> Sql:
        """The parameter's stored text when it is a string (or a list/dict as JSON); NULL for numbers."""
        return Sql(
            f"(SELECT CASE WHEN fh.param_type IN {_NOT_TEXT} THEN NULL ELSE fh.param_value END {_PARAM_SCOPE})",
            (ref.name,),
        )

    def param_present(self, ref: _Ref) -> Sql:
        """1 when the parameter's last logged value is neither None nor NaN, else 0."""
        return Sql(
            "COALESCE((SELECT CASE WHEN fh.param_type = 'NoneType' OR "
            f"(fh.param_type = 'float' AND fh.param_value = 'nan') THEN 0 ELSE 1 END {_PARAM_SCOPE}), 0)",
            (ref.name,),
        )

    def value(self, ref: _Ref) -> Sql:
        """The SQL value of a column or a metric (a parameter has two: param_number, param_text)."""
        if ref.kind == "Column":
            return self.column(ref.name)
        if ref.kind == "Metric":
            return self.metric(ref)
        raise ValueError(f"filter: {ref.kind.lower()}s have no single value here")

    # -- conditions ----------------------------------------------------------------------------

    def condition(self, node: Any, depth: int = 0) -> Sql:
        self.count(depth)
        kind = node.get("type") if isinstance(node, dict) else None
        if kind in ("And", "Or"):
            items = node.get("items")
            if not isinstance(items, (list, tuple)) or not items:
                raise ValueError(f"filter: {kind} needs a list of conditions")
            # Cheap conditions first: AND and OR stop early, and no condition here can fail or be unknown.
            items = sorted(items, key=_cost)
            joined = _joined(f" {kind.upper()} ", [self.condition(item, depth + 1) for item in items])
            return Sql(f"({joined.text})", joined.params)
        if kind == "Not":
            inner = self.condition(node.get("item"), depth + 1)
            return Sql(f"(NOT {inner.text})", inner.params)
        ref = _ref(node.get("ref")) if kind else None
        if kind == "HasTag" and ref is not None and ref.kind == "Tag":
            return _false(Sql(self.reader._has_tag("e.tags"), (ref.name,)))
        if ref is None or ref.kind == "Tag":
            raise ValueError(f"filter: not a condition: {node!r:.80}")
        if kind == "IsNull":
            if ref.kind == "Param":
                present = self.param_present(ref)
                return Sql(f"({present.text} = 0)", present.params)
            value = self.value(ref)
            return Sql(f"({value.text} IS NULL)", value.params)
        if kind == "Compare":
            op = _OPS.get(node.get("op"))
            if op is None:
                raise ValueError(f"filter: unknown comparator {node.get('op')!r:.20}")
            return self.sides(ref, [node.get("value")], lambda side, values: _false(
                Sql(f"{side.text} {op} ?", (*side.params, _value(values[0])))))
        if kind == "In":
            values = node.get("values")
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError("filter: 'in' needs a list of values")
            self.nodes += len(values)
            return self.sides(ref, values, lambda side, values: _false(
                Sql(f"{side.text} IN ({', '.join('?' * len(values))})", (*side.params, *map(_value, values)))))
        if kind == "Like":
            pattern = _text(node.get("pattern"), "a like pattern")
            side = self.param_text(ref) if ref.kind == "Param" else self.value(ref)
            bound = self.reader._like_param(like_pattern(pattern))
            return _false(Sql(self.reader._like(side.text), (*side.params, bound)))
        raise ValueError(f"filter: not a condition: {node!r:.80}")

    def sides(self, ref: _Ref, values: list[Any], build: Any) -> Sql:
        """Compare ``ref`` with ``values``: a parameter's numbers with the numbers, its text with the strings."""
        if ref.kind != "Param":
            if ref.kind == "Metric" and ref.aggregate != "count":
                values = [_real(v) for v in values]
            return build(self.value(ref), values)
        numbers = [_real(v) for v in values if not isinstance(v, str)]
        texts = [v for v in values if isinstance(v, str)]
        parts = ([build(self.param_number(ref), numbers)] if numbers else []) + (
            [build(self.param_text(ref), texts)] if texts else [])
        if len(parts) == 1:
            return parts[0]
        joined = _joined(" OR ", parts)
        return Sql(f"({joined.text})", joined.params)

    # -- selected columns: each order key and shown value computed once per row -----------------

    def alias(self, value: Sql) -> str:
        """Return the alias of ``value`` among the extra select columns, adding it if new."""
        for known, alias in self.columns:
            if known == value:
                return alias
        self.columns.append((value, f"{_ALIAS}{len(self.columns)}"))
        return self.columns[-1][1]

    def select_list(self) -> Sql:
        return _joined(", ", [Sql(f"{value.text} AS {alias}", value.params) for value, alias in self.columns])

    def order(self, keys: Sequence[Any]) -> Sql:
        """The ORDER BY list: each key with NULLs last, then id descending; default newest first."""
        if not keys:
            return Sql("e.start_time DESC, e.id DESC")
        terms: list[str] = []
        for key in keys:
            self.count(0)
            ref = _ref(key.get("ref") if isinstance(key, dict) else None)
            direction = "DESC" if key.get("descending") else "ASC"
            # A parameter orders its numbers first, then its strings, then the runs without it.
            sides = [self.param_number(ref), self.param_text(ref)] if ref.kind == "Param" else [self.value(ref)]
            terms += [self.reader._nulls_last(self.alias(side), direction) for side in sides]
        return Sql(", ".join([*terms, "e.id DESC"]))

    def shown(self, refs: Sequence[Any]) -> list[tuple[_Ref, list[str]]]:
        """Select each parameter and metric of ``refs``; return it with its aliases (a parameter's text and type)."""
        shown: list[tuple[_Ref, list[str]]] = []
        for node in refs:
            self.count(0)
            ref = _ref(node)
            if ref.kind == "Param":
                sources = [Sql(f"(SELECT fh.param_value {_PARAM_SCOPE})", (ref.name,)),
                           Sql(f"(SELECT fh.param_type {_PARAM_SCOPE})", (ref.name,))]
            else:
                sources = [self.value(ref)]
            shown.append((ref, [self.alias(source) for source in sources]))
        return shown


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


def _shown_value(ref: _Ref, raw: list[Any]) -> Any:
    if ref.kind == "Param":
        text, kind = raw
        return None if text is None else decode_hyperparameter(text, kind)
    value = raw[0]
    if value is None or (ref.kind == "Metric" and ref.aggregate == "count"):
        return value
    return float(value) if ref.kind == "Metric" else value


class Filters:
    """The Reader method behind ml_persistence.filtering.search."""

    def filter_experiments(
        self,
        condition: Optional[dict[str, Any]],
        order: Sequence[dict[str, Any]] = (),
        shown: Sequence[dict[str, Any]] = (),
        derived: Sequence[Sequence[Any]] = (),
        limit: Optional[int] = None,
    ) -> list[dict[str, Any]]:
        """Return experiment summaries matching ``condition`` in ``order`` (nodes of ml_persistence.filtering as
        builtins), each with ``values``: the value of each name in ``shown``, in order.

        ``derived`` lists [id, status] of stored-'running' experiments whose effective status differs:
        the status the condition and order read for them. The rows keep the stored status.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be None or an integer >= 0, got {limit!r:.20}")
        compiler = _Compiler(self, {int(i): _text(s, "a status") for i, s in derived})
        where = Sql("") if condition is None else compiler.condition(condition)
        ordering = compiler.order(list(order))
        aliases = compiler.shown(list(shown))
        columns = compiler.select_list()
        found = self.select_experiments(  # type: ignore[attr-defined]
            columns.text, where.text, ordering.text, [*columns.params, *where.params, *ordering.params], limit
        )
        for row in found:
            row["values"] = [_shown_value(ref, [row[a] for a in names]) for ref, names in aliases]
            for _, alias in compiler.columns:
                del row[alias]
        return found
