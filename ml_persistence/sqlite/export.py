"""The queries behind ml_persistence.export: which columns an export has, and its rows in id order.

A mixin of Reader. Each export is one SELECT streamed through ``_stream``; every query reads in id
order (no temporary sort of the big tables). Formats that need a stored value written differently
(csv: a NULL metric value as 'nan'; jsonl: ±inf as 'Infinity'/'-Infinity') get it from SQL here, so
the writer stays a plain tuple encoder; postgres/export.py does the same in Python.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

from ..errors import ReadError

WHATS = ("experiments", "metrics", "models", "hyperparameters", "datasets", "artifacts")
_FIGURES = (("num_checkpoints", "INTEGER"), ("best_val_metric", "REAL"), ("best_test_metric", "REAL"))


class ExportColumn(NamedTuple):
    """One exported column: its name, the SQL that reads it, its declared type and table."""

    name: str
    sql: str
    declared: str
    table: str


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _require(table: str, declared: list[tuple[str, str]], *names: str) -> None:
    have = {name for name, _ in declared}
    missing = [n for n in names if n not in have]
    if missing:
        raise ReadError(f"table {table} has no column {', '.join(missing)}; is it an ml_persistence database?")


def _columns(alias: str, table: str, declared: list[tuple[str, str]]) -> list[ExportColumn]:
    return [ExportColumn(name, f"{alias}.{_quote(name)}", kind, table) for name, kind in declared]


def is_metric_value(what: str, column: ExportColumn) -> bool:
    """True for metrics.value in a metrics export: the column where NULL means NaN."""
    return what == "metrics" and column.table == "metrics" and column.name == "value"


def _holds_text_only(declared: str) -> bool:
    # SQLite's TEXT affinity (section 3.1 of its datatypes page): such a column cannot hold a float.
    kind = declared.upper()
    return "INT" not in kind and ("CHAR" in kind or "CLOB" in kind or "TEXT" in kind)


class Exports:
    """Reader methods for streaming exports."""

    def _declared_columns(self, table: str) -> list[tuple[str, str]]:
        """(name, declared type) of each column of ``table``, in order; ReadError if there is no such table."""
        found = [(row[1], row[2] or "") for row in self._tuples(f"PRAGMA table_info({_quote(table)})")]
        if not found:
            raise ReadError(f"the database has no {table} table; is it an ml_persistence database?")
        return found

    def _export_query(
        self, what: str, ids: Optional[list[int]], names: Optional[list[str]]
    ) -> tuple[list[ExportColumn], str, list[Any]]:
        """The columns of an export, the SQL after its select list, and that SQL's parameters."""
        if what not in WHATS:
            raise ValueError(f"what must be one of: {', '.join(WHATS)}; got {what!r}")
        if names is not None and what != "metrics":
            raise ValueError(f"metric_names only filters the metrics export, not {what}")
        declared = self._declared_columns("datasets" if what == "datasets" else what)
        params = [] if ids is None else [self._list_param(ids)]
        unplanned_ids = self._in_list(self._unplanned("t.experiment_id"))
        if what == "experiments":
            from .reads import SUMMARY_FIGURES

            _require(what, declared, "id")
            tail = f"FROM (SELECT e.*, {SUMMARY_FIGURES} FROM experiments e) AS t"
            if ids is not None:
                tail += " WHERE " + self._in_list("t.id")
            return _columns("t", what, declared + list(_FIGURES)), tail + " ORDER BY t.id", params
        if what == "metrics":
            _require(what, declared, "id", "experiment_id", "metric_name", "value")
            return _columns("t", what, declared), *self._metrics_tail(ids, names)
        if what == "datasets":
            _require(what, declared, "id")
            links = self._declared_columns("experiment_datasets")
            _require("experiment_datasets", links, "experiment_id", "dataset_id", "usage_type")
            kinds = dict(links)
            columns = _columns("t", what, declared) + [
                ExportColumn("experiment_id", "ed.experiment_id", kinds["experiment_id"], "experiment_datasets"),
                ExportColumn("usage_type", "ed.usage_type", kinds["usage_type"], "experiment_datasets"),
            ]
            tail = "FROM datasets AS t LEFT JOIN experiment_datasets AS ed ON ed.dataset_id = t.id"
            if ids is not None:
                tail += " WHERE " + self._in_list("ed.experiment_id")
            # A small table: sorting the links of each dataset is cheap.
            return columns, tail + " ORDER BY t.id, ed.experiment_id, ed.usage_type", params
        _require(what, declared, "id", "experiment_id")
        tail = f"FROM {what} AS t" + (f" WHERE {unplanned_ids}" if ids is not None else "") + " ORDER BY t.id"
        return _columns("t", what, declared), tail, params

    def _metrics_tail(self, ids: Optional[list[int]], names: Optional[list[str]]) -> tuple[str, list[Any]]:
        # Unplanned filters keep SQLite off idx_metrics_experiment_name for the main scan: reading
        # through that index would need a temp B-tree to put the rows back in id order, which holds
        # every selected row before the first comes out. The index only narrows the id span.
        where: list[str] = []
        params: list[Any] = []
        filters: list[tuple[str, Any]] = []
        if ids is not None:
            filters.append(("experiment_id", self._list_param(ids)))
        if names is not None:
            filters.append(("metric_name", self._list_param(names)))
        if ids is not None:
            # Scalar subqueries, not a joined one-row CTE: with a join the planner sorts again.
            span = "FROM metrics WHERE " + " AND ".join(self._in_list(c) for c, _ in filters)
            where.append(f"t.id BETWEEN (SELECT min(id) {span}) AND (SELECT max(id) {span})")
            params += [p for _, p in filters] * 2
        for column, param in filters:
            where.append(self._in_list(self._unplanned(f"t.{column}")))
            params.append(param)
        return "FROM metrics AS t" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY t.id", params

    def _export_expr(self, what: str, column: ExportColumn, nan_text: bool, infinity_text: bool) -> str:
        """The SQL for one column, with the value adjusted where the format needs it."""
        sql = column.sql
        if nan_text and is_metric_value(what, column):
            sql = f"COALESCE({sql}, 'nan')"
        elif infinity_text and not _holds_text_only(column.declared):
            # 9e999 is how SQL spells +inf.
            sql = f"CASE {sql} WHEN 9e999 THEN 'Infinity' WHEN -9e999 THEN '-Infinity' ELSE {sql} END"
        return f"{sql} AS {_quote(column.name)}"

    def _export_fix(
        self, what: str, columns: list[ExportColumn], nan_text: bool, infinity_text: bool
    ) -> Optional[Callable[[list[tuple]], list[tuple]]]:
        """A function applied to each batch of rows, for what the SQL could not say (here: nothing)."""
        return None

    def export_layout(self, what: str) -> list[tuple[str, str, str]]:
        """Return (name, declared type, table) of each column an export of ``what`` writes, in order."""
        return [(c.name, c.declared, c.table) for c in self._export_query(what, None, None)[0]]

    def export_batches(
        self,
        what: str,
        experiment_ids: Optional[Sequence[int]] = None,
        metric_names: Optional[Sequence[str]] = None,
        size: int = 50_000,
        nan_text: bool = False,
        infinity_text: bool = False,
    ) -> Iterator[list[tuple]]:
        """Yield the rows of an export of ``what`` in batches of up to ``size`` tuples (columns as export_layout).

        ``experiment_ids``/``metric_names`` (None: all) filter; ``nan_text`` writes a NULL metric value
        as 'nan'; ``infinity_text`` writes ±inf as 'Infinity'/'-Infinity'.
        """
        sql, params = self.export_sql(what, experiment_ids, metric_names, nan_text, infinity_text)
        columns = self._export_query(what, None, None)[0]
        fix = self._export_fix(what, columns, nan_text, infinity_text)
        for rows in self._stream(sql, params, size):
            yield rows if fix is None else fix(rows)

    def export_sql(
        self,
        what: str,
        experiment_ids: Optional[Sequence[int]] = None,
        metric_names: Optional[Sequence[str]] = None,
        nan_text: bool = False,
        infinity_text: bool = False,
    ) -> tuple[str, list[Any]]:
        """Return the SELECT export_batches runs and its parameters (to EXPLAIN it, say)."""
        ids = None if experiment_ids is None else [int(i) for i in experiment_ids]
        names = None if metric_names is None else list(metric_names)
        columns, tail, params = self._export_query(what, ids, names)
        select = ", ".join(self._export_expr(what, c, nan_text, infinity_text) for c in columns)
        return f"SELECT {select} {tail}", params
