"""PostgreSQL spellings of the export queries (sqlite/export.py): only what differs.

The column listing comes from information_schema instead of PRAGMA table_info. A column holds one
type here, so a NULL metric value cannot become the text 'nan', nor ±inf the text 'Infinity', in
SQL: those substitutions are made on each fetched batch instead, for the columns that need them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

from ..errors import ReadError
from ..sqlite.export import ExportColumn, is_metric_value

_FLOAT_TYPES = ("double precision", "real", "numeric", "REAL")  # REAL: the derived best_*_metric figures
_INFINITY = {math.inf: "Infinity", -math.inf: "-Infinity"}


class Exports:
    """Overrides of sqlite.export.Exports for PostgreSQL."""

    def _declared_columns(self, table: str) -> list[tuple[str, str]]:
        found = [
            (name, kind) for name, kind in self._tuples(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
                (table,),
            )
        ]
        if not found:
            raise ReadError(f"the database has no {table} table; is it an ml_persistence database?")
        return found

    def _export_expr(self, what: str, column: ExportColumn, nan_text: bool, infinity_text: bool) -> str:
        return f'{column.sql} AS "{column.name}"'

    def _export_fix(
        self, what: str, columns: list[ExportColumn], nan_text: bool, infinity_text: bool
    ) -> Optional[Callable[[list[tuple]], list[tuple]]]:
        nan_at = [i for i, c in enumerate(columns) if nan_text and is_metric_value(what, c)]
        inf_at = [i for i, c in enumerate(columns) if infinity_text and c.declared in _FLOAT_TYPES]
        if not nan_at and not inf_at:
            return None

        def fix(rows: list[tuple]) -> list[tuple]:
            out = []
            for row in rows:
                changed: Optional[list[Any]] = None
                for i in nan_at:
                    if row[i] is None:
                        changed = changed or list(row)
                        changed[i] = "nan"
                for i in inf_at:
                    value = row[i]
                    if value is not None and value in _INFINITY:
                        changed = changed or list(row)
                        changed[i] = _INFINITY[value]
                out.append(row if changed is None else tuple(changed))
            return out

        return fix
