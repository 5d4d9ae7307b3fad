"""Streaming export of tracker tables to CSV, JSON Lines or Parquet.

Rows come from one query of the Reader (sqlite/export.py; PostgreSQL's in postgres/export.py),
fetched ``batch_rows`` at a time, so memory stays flat however many rows a table holds; every query
streams in id order (no temporary sort of the big tables).
Columns are the database's own, in the table's column order, plus a few derived ones:
experiments get num_checkpoints, best_val_metric, best_test_metric (as Reader.get_experiment);
datasets get experiment_id and usage_type, one row per linked experiment (unlinked datasets once,
with NULLs). JSON text columns (tags, metadata, hyperparameters, packages, feature_columns,
target_columns, value_json) are written as the text the database holds, never decoded.

How values are written (both engines store NaN as NULL; in metrics.value, NULL means NaN):

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
  datetimes unless told otherwise. The Reader substitutes ±inf (in SQL on SQLite, only for
  columns whose affinity can hold a float), so this side stays a plain tuple-to-JSON encode.
* parquet (needs pyarrow: ``pip install 'ml_persistence[parquet]'``): column types from the
  declared types: INTEGER -> int64, REAL -> float64, everything else (TIMESTAMP included) ->
  string (PostgreSQL: bigint -> int64, double precision -> float64, text -> string), all nullable; metrics.value NULL becomes NaN. One row group per batch. SQLite is
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
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Optional, Sequence

import msgspec

from .errors import MLPersistenceError, ReadError

WHATS = ("experiments", "metrics", "models", "hyperparameters", "datasets", "artifacts")
FORMATS = ("csv", "jsonl", "parquet")

_INSTALL_HINT = "pip install 'ml_persistence[parquet]'"
_CHUNK_ROWS = 5_000  # rows of a batch encoded to csv/jsonl text at a time


class ExportError(MLPersistenceError):
    """An export could not be written (missing optional dependency, value unfit for the format)."""


@dataclass(frozen=True)
class _Column:
    """One exported column: its name, its declared type and table."""

    name: str
    declared: str
    table: str

    @property
    def affinity(self) -> str:
        """SQLite's type affinity for the declared type (section 3.1 of the datatypes page; PostgreSQL's
        bigint, double precision and text map to INTEGER, REAL and TEXT)."""
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


# -- input checks -----------------------------------------------------------------------------


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{kind} must be one of: {', '.join(choices)}; got {value!r}")


def _ids(experiment_ids: Sequence[int]) -> Optional[list[int]]:
    ids = []
    for value in experiment_ids:
        if isinstance(value, bool):
            raise TypeError(f"experiment_ids: expected integers, got {value!r}")
        try:
            ids.append(operator.index(value))
        except TypeError:
            raise TypeError(f"experiment_ids: expected integers, got {value!r:.60}") from None
    return ids or None


def _names(metric_names: Sequence[str]) -> Optional[list[str]]:
    names = [metric_names] if isinstance(metric_names, str) else list(metric_names)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"metric_names: expected strings, got {name!r:.60}")
    return names or None


# -- the rows ---------------------------------------------------------------------------------


def _reader(source: Any) -> Any:
    """The Reader to export from: ``source`` itself, or a Reader over a DB-API connection to an SQLite file."""
    if hasattr(source, "export_batches"):
        return source
    from .sqlite.reads import Reader  # the connection export_rows took before there were Readers

    return Reader(source, "")


def _columns(reader: Any, what: str) -> list[_Column]:
    try:
        return [_Column(*c) for c in reader.export_layout(what)]
    except ReadError as exc:
        raise ExportError(str(exc)) from None


def _is_metric_value(what: str, column: _Column) -> bool:
    return what == "metrics" and column.table == "metrics" and column.name == "value"


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


def _write_csv(batches: Iterable[list[tuple]], what: str, columns: list[_Column], out: BinaryIO) -> int:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.name for c in columns])
    _write_all(out, buffer.getvalue().encode("utf-8"))
    count = 0
    for rows in batches:
        for chunk in _chunks(rows):
            buffer.seek(0)
            buffer.truncate()
            writer.writerows(chunk)
            _write_all(out, buffer.getvalue().encode("utf-8"))
        count += len(rows)
    return count


def _write_jsonl(batches: Iterable[list[tuple]], what: str, columns: list[_Column], out: BinaryIO) -> int:
    # A Struct is ~4x faster to build and encode than a dict per row; the field names are
    # placeholders renamed to the column names, which need not be Python identifiers.
    fields = [f"c{i}" for i in range(len(columns))]
    row_type = msgspec.defstruct(
        "ExportRow", fields, rename={f: c.name for f, c in zip(fields, columns)}
    )
    encoder = msgspec.json.Encoder()
    count = 0
    for rows in batches:
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


def _write_parquet(batches: Iterable[list[tuple]], what: str, columns: list[_Column], out: BinaryIO) -> int:
    pa, pc, pq = _pyarrow()
    types = [_arrow_type(pa, c) for c in columns]
    schema = pa.schema([pa.field(c.name, t) for c, t in zip(columns, types)])
    nan_columns = {i for i, c in enumerate(columns) if _is_metric_value(what, c)}
    sink = _Sink(out)
    writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema)
    count = 0
    try:
        for rows in batches:
            count += len(rows)
            size = len(rows)
            values: list[Any] = list(zip(*rows))
            rows = []
            ids = values[0]
            arrays = []
            for i, (column, arrow_type) in enumerate(zip(columns, types)):
                try:
                    array = pa.array(values[i], type=arrow_type)
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
                    raise _misfit(column, arrow_type, values[i], ids) from None
                values[i] = None  # drop each column's Python objects as soon as Arrow holds them
                if i in nan_columns and array.null_count:
                    array = pc.fill_null(array, math.nan)
                arrays.append(array)
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=size)
    except BaseException:
        sink.discard = True  # no footer: a reader must not take the partial file for a whole one
        raise
    finally:
        writer.close()
    return count


_WRITERS = {"csv": _write_csv, "jsonl": _write_jsonl, "parquet": _write_parquet}


# -- the API ----------------------------------------------------------------------------------


def export_columns(source: Any, what: str) -> list[str]:
    """Return the column names an export of ``what`` writes, in order (``source``: as export_rows)."""
    _check_choice("what", what, WHATS)
    return [c.name for c in _columns(_reader(source), what)]


def export_rows(
    source: Any,
    what: str,
    out: BinaryIO,
    fmt: str,
    experiment_ids: Sequence[int] = (),
    metric_names: Sequence[str] = (),
    batch_rows: int = 50_000,
) -> int:
    """Stream every row of ``what`` (optionally only some experiments/metrics) to ``out`` as ``fmt``; return the row count.

    ``source`` is a Reader (``storage.engine(db).reader(db)``), or a DB-API connection to an SQLite file.
    """
    _check_choice("what", what, WHATS)
    _check_choice("fmt", fmt, FORMATS)
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    ids, names = _ids(experiment_ids), _names(metric_names)
    if names is not None and what != "metrics":
        raise ValueError(f"metric_names only filters the metrics export, not {what}")
    reader = _reader(source)
    columns = _columns(reader, what)
    if fmt == "parquet":
        _pyarrow()  # fail before the query runs, not after
    batches = reader.export_batches(what, ids, names, batch_rows, nan_text=fmt == "csv", infinity_text=fmt == "jsonl")
    try:
        count = _WRITERS[fmt](batches, what, columns, out)
    finally:
        batches.close()
    flush = getattr(out, "flush", None)
    if flush is not None:
        flush()
    return count
