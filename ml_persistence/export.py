"""Streaming export of tracker tables to CSV, JSON Lines or Parquet.

Rows come straight from one SELECT, fetched ``batch_rows`` at a time, so memory stays flat however
many rows a table holds; every query streams in id order (no temporary sort of the big tables).
Columns are the database's own, in PRAGMA table_info order, plus a few derived ones:
experiments get num_checkpoints, best_val_metric, best_test_metric (as queries.SUMMARY_FIGURES);
datasets get experiment_id and usage_type, one row per linked experiment (unlinked datasets once,
with NULLs). JSON text columns (tags, metadata, hyperparameters, packages, feature_columns,
target_columns, value_json) are written as the text the database holds, never decoded.

How values are written (SQLite stores NaN as NULL; in metrics.value, NULL means NaN):

* csv: a header row, UTF-8, "\\n" line ends, quoting by the csv module. NULL is an empty cell,
  except metrics.value, where it is ``nan``. Floats are written as repr() (round-trip exact), so
  ±inf are ``inf``/``-inf``. CSV cannot tell NULL from an empty string: both are empty.
  pandas.read_csv reads it all back exactly; to keep text such as "None" or "NA" (a hyperparameter
  logged as None is the text "None") and numeric-looking text ("1") as text, pass
  ``keep_default_na=False, na_values={text column: [""], numeric column: ["", "nan"]}`` and
  ``dtype={text column: str, INTEGER column: "Int64"}``.
* jsonl: one object per line keyed by column name, strict JSON (jq and json.loads parse it).
  NULL is null, and so is a NaN metric value. JSON has no infinity, and msgspec would write null
  (losing the sign and the difference from NaN), so +inf/-inf are written as the strings
  "Infinity"/"-Infinity" (the spelling Python's float() and JavaScript's Number() accept).
  pandas.read_json(lines=True) turns them back into ±inf in a float column (with its default
  dtype inference, or an explicit float64 dtype); pass precise_float=True for exact floats.
  pandas' own limits, not this file's: precise_float=True rejects subnormal numbers (< 2.2e-308),
  integers beyond 2**53 in a column with nulls lose precision, and *_at/timestamp columns become
  datetimes unless told otherwise. The substitution of ±inf happens in SQL, only for columns
  whose affinity can hold a float, so the Python side stays a plain tuple-to-JSON encode.
* parquet (needs pyarrow: ``pip install 'ml_persistence[parquet]'``): column types from the
  declared types: INTEGER -> int64, REAL -> float64, everything else (TIMESTAMP included) ->
  string, all nullable; metrics.value NULL becomes NaN. One row group per batch. SQLite is
  dynamically typed: a value that does not fit its column's type (text in an INTEGER column)
  raises ExportError naming it, and the output is left without a Parquet footer so no reader
  takes the partial file for a complete one.

SQLite itself stores -0.0 as 0.0, so a negative zero never reaches an export. BLOB values, which
ml_persistence never writes, come out as base64 strings in jsonl, as Python bytes literals in
csv, and are refused by parquet unless they are UTF-8 in a text column.
"""

from __future__ import annotations

import csv
import io
import math
import operator
import sqlite3
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator, Optional, Sequence

import msgspec

from .errors import MLPersistenceError
from .queries import SUMMARY_FIGURES

WHATS = ("experiments", "metrics", "models", "hyperparameters", "datasets", "artifacts")
FORMATS = ("csv", "jsonl", "parquet")

_INSTALL_HINT = "pip install 'ml_persistence[parquet]'"
_CHUNK_ROWS = 5_000  # rows of a batch encoded to csv/jsonl text at a time


class ExportError(MLPersistenceError):
    """An export could not be written (missing optional dependency, value unfit for the format)."""


@dataclass(frozen=True)
class _Column:
    """One exported column: its name, the SQL that reads it, its declared type and table."""

    name: str
    sql: str
    declared: str
    table: str

    @property
    def affinity(self) -> str:
        """SQLite's type affinity for the declared type (section 3.1 of the datatypes page)."""
        kind = self.declared.upper()
        if "INT" in kind:
            return "INTEGER"
        if "CHAR" in kind or "CLOB" in kind or "TEXT" in kind:
            return "TEXT"
        if "BLOB" in kind or not kind:
            return "BLOB"
        if "REAL" in kind or "FLOA" in kind or "DOUB" in kind:
            return "REAL"
        return "NUMERIC"


@dataclass(frozen=True)
class _Query:
    """The columns of an export and the SQL after the select list, with its parameters."""

    table: str
    columns: list[_Column]
    tail: str
    params: dict[str, str]


# -- input checks -----------------------------------------------------------------------------


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{kind} must be one of: {', '.join(choices)}; got {value!r}")


def _ids_json(experiment_ids: Sequence[int]) -> Optional[str]:
    ids = []
    for value in experiment_ids:
        if isinstance(value, bool):
            raise TypeError(f"experiment_ids: expected integers, got {value!r}")
        try:
            ids.append(operator.index(value))
        except TypeError:
            raise TypeError(f"experiment_ids: expected integers, got {value!r:.60}") from None
    return msgspec.json.encode(ids).decode() if ids else None


def _names_json(metric_names: Sequence[str]) -> Optional[str]:
    names = [metric_names] if isinstance(metric_names, str) else list(metric_names)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"metric_names: expected strings, got {name!r:.60}")
    return msgspec.json.encode(names).decode() if names else None


# -- the SQL ----------------------------------------------------------------------------------


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _declared(conn: sqlite3.Connection, table: str) -> list[tuple[str, str]]:
    """(name, declared type) of each column of ``table`` (a constant of this module), in order."""
    info = conn.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
    if not info:
        raise ExportError(f"the database has no {table} table; is it an ml_persistence database?")
    return [(row[1], row[2] or "") for row in info]


def _require(table: str, declared: list[tuple[str, str]], *names: str) -> None:
    have = {name for name, _ in declared}
    missing = [n for n in names if n not in have]
    if missing:
        raise ExportError(f"table {table} has no column {', '.join(missing)}; is it an ml_persistence database?")


def _table_columns(alias: str, table: str, declared: list[tuple[str, str]]) -> list[_Column]:
    return [_Column(name, f"{alias}.{_quote(name)}", kind, table) for name, kind in declared]


_IN_IDS = "IN (SELECT value FROM json_each(:ids))"
_IN_NAMES = "IN (SELECT value FROM json_each(:names))"


def _experiments_query(conn: sqlite3.Connection, ids: Optional[str]) -> _Query:
    declared = _declared(conn, "experiments")
    _require("experiments", declared, "id")
    figures = [("num_checkpoints", "INTEGER"), ("best_val_metric", "REAL"), ("best_test_metric", "REAL")]
    columns = _table_columns("t", "experiments", declared + figures)
    tail = f"FROM (SELECT e.*, {SUMMARY_FIGURES} FROM experiments e) AS t"
    if ids is not None:
        tail += f" WHERE t.id {_IN_IDS}"
    return _Query("experiments", columns, tail + " ORDER BY t.id", {"ids": ids} if ids else {})


def _metrics_query(conn: sqlite3.Connection, ids: Optional[str], names: Optional[str]) -> _Query:
    declared = _declared(conn, "metrics")
    _require("metrics", declared, "id", "experiment_id", "metric_name", "value")
    params = {k: v for k, v in (("ids", ids), ("names", names)) if v is not None}
    # The unary + keeps the planner off idx_metrics_experiment_name for the main scan: reading
    # through that index would need a temp B-tree to put the rows back in id order, which holds
    # every selected row before the first comes out. The index only narrows the id span.
    where = []
    if ids is not None:
        where.append(f"+t.experiment_id {_IN_IDS}")
    if names is not None:
        where.append(f"+t.metric_name {_IN_NAMES}")
    if ids is not None:
        # Scalar subqueries, not a joined one-row CTE: with a join the planner sorts again.
        span = f"FROM metrics WHERE experiment_id {_IN_IDS}" + (f" AND metric_name {_IN_NAMES}" if names else "")
        where.insert(0, f"t.id BETWEEN (SELECT min(id) {span}) AND (SELECT max(id) {span})")
    tail = "FROM metrics AS t" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY t.id"
    return _Query("metrics", _table_columns("t", "metrics", declared), tail, params)


def _plain_query(conn: sqlite3.Connection, table: str, ids: Optional[str]) -> _Query:
    declared = _declared(conn, table)
    _require(table, declared, "id", "experiment_id")
    tail = f"FROM {table} AS t" + (f" WHERE +t.experiment_id {_IN_IDS}" if ids else "") + " ORDER BY t.id"
    return _Query(table, _table_columns("t", table, declared), tail, {"ids": ids} if ids else {})


def _datasets_query(conn: sqlite3.Connection, ids: Optional[str]) -> _Query:
    declared = _declared(conn, "datasets")
    _require("datasets", declared, "id")
    links = dict(_declared(conn, "experiment_datasets"))
    _require("experiment_datasets", list(links.items()), "experiment_id", "dataset_id", "usage_type")
    columns = _table_columns("t", "datasets", declared) + [
        _Column("experiment_id", "ed.experiment_id", links["experiment_id"], "experiment_datasets"),
        _Column("usage_type", "ed.usage_type", links["usage_type"], "experiment_datasets"),
    ]
    tail = "FROM datasets AS t LEFT JOIN experiment_datasets AS ed ON ed.dataset_id = t.id"
    if ids is not None:
        tail += f" WHERE ed.experiment_id {_IN_IDS}"
    # A small table: sorting the links of each dataset is cheap.
    tail += " ORDER BY t.id, ed.experiment_id, ed.usage_type"
    return _Query("datasets", columns, tail, {"ids": ids} if ids else {})


def _query(conn: sqlite3.Connection, what: str, ids: Optional[str], names: Optional[str]) -> _Query:
    if names is not None and what != "metrics":
        raise ValueError(f"metric_names only filters the metrics export, not {what}")
    if what == "experiments":
        return _experiments_query(conn, ids)
    if what == "metrics":
        return _metrics_query(conn, ids, names)
    if what == "datasets":
        return _datasets_query(conn, ids)
    return _plain_query(conn, what, ids)


def _is_metric_value(query: _Query, column: _Column) -> bool:
    return query.table == "metrics" and column.table == "metrics" and column.name == "value"


def _select_expr(query: _Query, column: _Column, fmt: str) -> str:
    """The SQL for one column in ``fmt``: the stored value, adjusted where the format needs it."""
    sql = column.sql
    if fmt == "csv" and _is_metric_value(query, column):
        sql = f"COALESCE({sql}, 'nan')"
    elif fmt == "jsonl" and column.affinity != "TEXT":
        # 9e999 is how SQL spells +inf; a TEXT-affinity column cannot hold a float.
        sql = f"CASE {sql} WHEN 9e999 THEN 'Infinity' WHEN -9e999 THEN '-Infinity' ELSE {sql} END"
    return f"{sql} AS {_quote(column.name)}"


def _sql(query: _Query, fmt: str) -> str:
    """The whole SELECT statement for ``query`` written as ``fmt``."""
    return f"SELECT {', '.join(_select_expr(query, c, fmt) for c in query.columns)} {query.tail}"


def _cursor(conn: sqlite3.Connection, query: _Query, fmt: str) -> sqlite3.Cursor:
    cursor = conn.cursor()
    cursor.row_factory = None  # plain tuples whatever the caller's connection uses
    return cursor.execute(_sql(query, fmt), query.params)


# -- writers ----------------------------------------------------------------------------------


def _write_all(out: BinaryIO, data: bytes | memoryview) -> None:
    """Write every byte (a raw, unbuffered stream may take only part of a write)."""
    view = memoryview(data)
    while view.nbytes:
        written = out.write(view)
        if written is None:  # a non-blocking stream with no room: nothing sensible to do but fail
            raise ExportError("the output stream would block; export to a blocking stream")
        view = view[written:]


def _chunks(rows: list[Any]) -> Iterator[list[Any]]:
    """Slices of a fetched batch small enough that their encoded text stays a few MB."""
    for start in range(0, len(rows), _CHUNK_ROWS):
        yield rows[start:start + _CHUNK_ROWS]


def _write_csv(cursor: sqlite3.Cursor, query: _Query, out: BinaryIO, batch_rows: int) -> int:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.name for c in query.columns])
    _write_all(out, buffer.getvalue().encode("utf-8"))
    count = 0
    while rows := cursor.fetchmany(batch_rows):
        for chunk in _chunks(rows):
            buffer.seek(0)
            buffer.truncate()
            writer.writerows(chunk)
            _write_all(out, buffer.getvalue().encode("utf-8"))
        count += len(rows)
    return count


def _write_jsonl(cursor: sqlite3.Cursor, query: _Query, out: BinaryIO, batch_rows: int) -> int:
    # A Struct is ~4x faster to build and encode than a dict per row; the field names are
    # placeholders renamed to the column names, which need not be Python identifiers.
    fields = [f"c{i}" for i in range(len(query.columns))]
    row_type = msgspec.defstruct(
        "ExportRow", fields, rename={f: c.name for f, c in zip(fields, query.columns)}
    )
    encoder = msgspec.json.Encoder()
    count = 0
    while rows := cursor.fetchmany(batch_rows):
        for chunk in _chunks(rows):
            _write_all(out, encoder.encode_lines([row_type(*row) for row in chunk]))
        count += len(rows)
    return count


def _pyarrow() -> tuple[Any, Any, Any]:
    """Import pyarrow (an optional dependency) or raise ExportError saying how to install it."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError as exc:
        raise ExportError(f"parquet export needs pyarrow ({exc}); install it with: {_INSTALL_HINT}") from None
    return pyarrow, pyarrow.compute, pyarrow.parquet


class _Sink(io.RawIOBase):
    """What pyarrow writes to: counts bytes itself (the stream may be a pipe) and can go deaf."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__()
        self._out = out
        self._position = 0
        self.discard = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if not self.discard:
            _write_all(self._out, data)
        self._position += size
        return size

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        """Close this wrapper only: the caller's stream stays open."""
        super().close()


def _arrow_type(pa: Any, column: _Column) -> Any:
    return {"INTEGER": pa.int64(), "REAL": pa.float64()}.get(column.affinity, pa.string())


def _misfit(column: _Column, arrow_type: Any, values: Sequence[Any], ids: Sequence[Any]) -> ExportError:
    """The ExportError for the first value of ``values`` that ``arrow_type`` cannot hold."""
    fits: Callable[[Any], bool] = {
        "int64": lambda x: type(x) is int,
        "double": lambda x: type(x) in (int, float),
    }.get(str(arrow_type), lambda x: type(x) is str)
    for value, row_id in zip(values, ids):
        if value is not None and not fits(value):
            return ExportError(
                f"cannot write parquet: {column.table}.{column.name} of row id {row_id} holds "
                f"{type(value).__name__} {value!r:.60}, but the column is declared {column.declared or 'untyped'} "
                f"({arrow_type}); export as csv or jsonl instead, which keep any value"
            )
    return ExportError(f"cannot write parquet: {column.table}.{column.name} does not fit {arrow_type}")


def _write_parquet(cursor: sqlite3.Cursor, query: _Query, out: BinaryIO, batch_rows: int) -> int:
    pa, pc, pq = _pyarrow()
    types = [_arrow_type(pa, c) for c in query.columns]
    schema = pa.schema([pa.field(c.name, t) for c, t in zip(query.columns, types)])
    nan_columns = {i for i, c in enumerate(query.columns) if _is_metric_value(query, c)}
    sink = _Sink(out)
    writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema)
    count = 0
    try:
        while rows := cursor.fetchmany(batch_rows):
            count += len(rows)
            values: list[Any] = list(zip(*rows))
            rows = []
            ids = values[0]
            arrays = []
            for i, (column, arrow_type) in enumerate(zip(query.columns, types)):
                try:
                    array = pa.array(values[i], type=arrow_type)
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
                    raise _misfit(column, arrow_type, values[i], ids) from None
                values[i] = None  # drop each column's Python objects as soon as Arrow holds them
                if i in nan_columns and array.null_count:
                    array = pc.fill_null(array, math.nan)
                arrays.append(array)
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=batch_rows)
    except BaseException:
        sink.discard = True  # no footer: a reader must not take the partial file for a whole one
        raise
    finally:
        writer.close()
    return count


_WRITERS = {"csv": _write_csv, "jsonl": _write_jsonl, "parquet": _write_parquet}


# -- the API ----------------------------------------------------------------------------------


def export_columns(conn: sqlite3.Connection, what: str) -> list[str]:
    """Return the column names an export of ``what`` writes, in order."""
    _check_choice("what", what, WHATS)
    return [c.name for c in _query(conn, what, None, None).columns]


def export_rows(
    conn: sqlite3.Connection,
    what: str,
    out: BinaryIO,
    fmt: str,
    experiment_ids: Sequence[int] = (),
    metric_names: Sequence[str] = (),
    batch_rows: int = 50_000,
) -> int:
    """Stream every row of ``what`` (optionally only some experiments/metrics) to ``out`` as ``fmt``; return the row count."""
    _check_choice("what", what, WHATS)
    _check_choice("fmt", fmt, FORMATS)
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    query = _query(conn, what, _ids_json(experiment_ids), _names_json(metric_names))
    if fmt == "parquet":
        _pyarrow()  # fail before the query runs, not after
    cursor = _cursor(conn, query, fmt)
    try:
        count = _WRITERS[fmt](cursor, query, out, batch_rows)
    finally:
        cursor.close()
    flush = getattr(out, "flush", None)
    if flush is not None:
        flush()
    return count
