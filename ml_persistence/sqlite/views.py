"""Reads for the web UI and `tail`: metric catalogs, curve points and buckets, rows after an id.

A mixin of Reader: every method uses only Reader's primitives (``_first``, ``_tuples``) and dialect
hooks, so the PostgreSQL Reader inherits them unchanged except where postgres/views.py says otherwise.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

# The column each curve axis reads. Timestamps are fixed-format text: MIN/MAX and ORDER BY on the
# text itself order them in time.
AXES = {"episode": "episode", "step": "step", "time": "timestamp"}

_SCOPE = "FROM metrics WHERE experiment_id = ? AND metric_name = ?"
_ENDS = f"SELECT id, value, episode, step {_SCOPE} ORDER BY id"
_END_KEYS = ("id", "value", "episode", "step")
# What `tail` prints of a metric row, in this order.
TAIL_COLUMNS = ("id", "timestamp", "episode", "step", "metric_name", "value", "split", "value_json")


def _axis(axis: str) -> str:
    try:
        return AXES[axis]
    except KeyError:
        raise ValueError(f"axis must be one of {', '.join(AXES)}; got {axis!r}") from None


class Views:
    """Reader methods for the web UI's curves and the `tail` command."""

    def _unplanned(self, column: str) -> str:
        """SQL for ``column`` that the planner will not look up through an index (SQLite: a unary +)."""
        return f"+{column}"

    # -- the web UI ------------------------------------------------------------------------------

    def metric_catalog(self, experiment_id: int) -> list[dict[str, Any]]:
        """Return each metric's name, row count and first and last rows ({id, value, episode, step}), from the index."""
        out = []
        for name in self.metric_names(experiment_id):
            params = (experiment_id, name)
            count = self._first(f"SELECT COUNT(*) {_SCOPE}", params)
            first = self._first(_ENDS + " LIMIT 1", params)
            last = self._first(_ENDS + " DESC LIMIT 1", params)
            if count is None or first is None or last is None:
                continue  # deleted between two reads
            out.append({"name": name, "count": count[0], "first": dict(zip(_END_KEYS, first)),
                        "last": dict(zip(_END_KEYS, last))})
        return out

    def metric_span(self, experiment_id: int, metric_name: str) -> tuple[int, int, int]:
        """Return (row count, first id, last id) of one metric; ids 0 when it has no rows."""
        found = self._first(
            f"SELECT COUNT(*), COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) {_SCOPE}", (experiment_id, metric_name))
        return (0, 0, 0) if found is None else (found[0], found[1], found[2])

    def last_metric_id(self, experiment_id: int, metric_name: str) -> int:
        """Return the id of one metric's newest row, 0 if it has none."""
        found = self._first(f"SELECT COALESCE(MAX(id), 0) {_SCOPE}", (experiment_id, metric_name))
        return 0 if found is None else found[0]

    def metric_points(self, experiment_id: int, metric_name: str, axis: str) -> list[tuple[Any, Any]]:
        """Return one metric's (x, value) rows with an x, ordered by x (``axis``: episode, step or time)."""
        x = _axis(axis)
        return self._tuples(
            f"SELECT {x}, value {_SCOPE} AND {x} IS NOT NULL ORDER BY {x}, id", (experiment_id, metric_name))

    def metric_buckets(
        self, experiment_id: int, metric_name: str, axis: str, buckets: int, first_id: int, last_id: int,
        plottable: float,
    ) -> list[tuple[Any, Any, Any, Any]]:
        """Return (min x, max x, min value, max value) of ``buckets`` runs of consecutive rows, in id order.

        Values of magnitude ``plottable`` or more (±inf among them) are left out of the extremes.
        """
        x = _axis(axis)
        capped = "CASE WHEN abs(value) < ? THEN value END"
        return self._tuples(
            f"SELECT MIN({x}), MAX({x}), MIN({capped}), MAX({capped}) {_SCOPE} AND {x} IS NOT NULL "
            "GROUP BY (id - ?) * ? / ? ORDER BY MIN(id)",
            (plottable, plottable, experiment_id, metric_name, first_id, buckets, last_id - first_id + 1),
        )

    # -- tail ------------------------------------------------------------------------------------

    def newest_metric_id(self) -> int:
        """Return the highest metric row id in the database (0 if none)."""
        found = self._first("SELECT COALESCE(MAX(id), 0) FROM metrics")
        return 0 if found is None else found[0]

    def _tail_sql(self, names: Optional[Sequence[str]]) -> tuple[str, list[Any]]:
        # Unplanned experiment_id: SQLite then walks the rowid range (new rows only), not the experiment's index.
        sql = (f"SELECT {', '.join(TAIL_COLUMNS)} FROM metrics "
               f"WHERE id > ? AND {self._unplanned('experiment_id')} = ?")
        params: list[Any] = []
        if names:
            sql += " AND " + self._in_list("metric_name")
            params.append(self._list_param(names))
        return sql, params

    def recent_metric_rows(
        self, experiment_id: int, names: Optional[Sequence[str]] = None, limit: int = 10
    ) -> list[tuple[Any, ...]]:
        """Return an experiment's last ``limit`` metric rows (only ``names``, if given), oldest first, as TAIL_COLUMNS."""
        sql, extra = self._tail_sql(names)
        found = self._tuples(sql + " ORDER BY id DESC LIMIT ?", [0, experiment_id, *extra, int(limit)])
        return found[::-1]

    def metric_rows_after(
        self, experiment_id: int, after_id: int, names: Optional[Sequence[str]] = None
    ) -> list[tuple[Any, ...]]:
        """Return an experiment's metric rows with ids above ``after_id`` (only ``names``, if given), as TAIL_COLUMNS."""
        sql, extra = self._tail_sql(names)
        return self._tuples(sql + " ORDER BY id", [after_id, experiment_id, *extra])
