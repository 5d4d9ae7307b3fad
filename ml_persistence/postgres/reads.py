"""The read side on PostgreSQL: the SQLite Reader's queries, run through psycopg with PostgreSQL's spellings."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import psycopg

from psycopg.rows import dict_row

from ..errors import ReadError
from ..sqlite.reads import Reader as SqliteReader
from ..sqlite.reads import decode_row
from ..storage import display
from . import connect, schema
from .connect import translated

_cursor_names = itertools.count(1)


def _mixins() -> tuple[type, ...]:
    """Return the PostgreSQL spellings of the CLI, UI, export and maintenance reads that exist yet."""
    found = []
    for module, name in (("views", "Views"), ("export", "Exports"), ("maintenance", "Maintenance")):
        try:
            found.append(getattr(__import__(f"{__package__}.{module}", fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


class _Primitives(SqliteReader):
    """How the shared queries reach PostgreSQL; the dialect hooks say what PostgreSQL spells differently."""

    engine = "postgresql"
    _LIMIT_ALL = None  # LIMIT NULL is no limit

    @classmethod
    def open(cls, path: str, create: bool = True) -> "Reader":
        """Connect to ``path`` (a URL); with ``create``, create or upgrade the schema, else only read it."""
        conn = connect.connect(path)
        try:
            if create:
                schema.ensure(conn, display(path))
            else:
                _check_readable(conn, path)
        except BaseException:
            conn.close()
            raise
        reader = cls(conn, display(path))
        reader._db = path
        return reader  # type: ignore[return-value]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.conn.close()

    def _live(self) -> Any:
        """Return the connection, connected again if the server closed it (a restart, a network cut)."""
        if self.conn.closed or self.conn.broken:
            self.conn.close()
            self.conn = connect.connect(self._db)
        return self.conn

    def _query(self, sql: str, params: Sequence[Any], fetch: Callable[[Any], Any], row_factory: Any = None) -> Any:
        """Run one read and ``fetch`` its result; a connection lost before or during it is opened again once."""
        for attempt in (1, 2):
            conn = self._live()
            try:
                with conn.cursor(row_factory=row_factory) if row_factory else conn.cursor() as cur:
                    cur.execute(translated(sql), params)
                    return fetch(cur)
            except psycopg.OperationalError:
                if attempt == 2 or not (conn.closed or conn.broken):
                    raise

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [decode_row(row) for row in self._query(sql, params, lambda cur: cur.fetchall(), dict_row)]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Optional[dict[str, Any]]:
        row = self._query(sql, params, lambda cur: cur.fetchone(), dict_row)
        return None if row is None else decode_row(row)

    def _tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._query(sql, params, lambda cur: cur.fetchall())

    def _first(self, sql: str, params: Sequence[Any] = ()) -> Optional[tuple]:
        return self._query(sql, params, lambda cur: cur.fetchone())

    def _stream(self, sql: str, params: Sequence[Any] = (), size: int = 1000) -> Iterator[list[tuple]]:
        """Yield the result in lists of up to ``size`` tuples from a server-side cursor (flat memory)."""
        self._live()
        with self.conn.transaction():
            with self.conn.cursor(name=f"ml_persistence_{next(_cursor_names)}") as cur:
                cur.itersize = size
                cur.execute(translated(sql), params)
                while True:
                    rows = cur.fetchmany(size)
                    if not rows:
                        return
                    yield rows

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._live().cursor() as cur:
            cur.execute(translated(sql), params)
            return cur.rowcount

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run the reads inside in one consistent snapshot (REPEATABLE READ)."""
        with self._live().transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the writes inside as one transaction."""
        with self._live().transaction():
            yield

    def _is_param(self) -> str:
        return "IS NOT DISTINCT FROM ?"

    def _has_tag(self, column: str) -> str:
        return f"COALESCE(ml_persistence_jsonb({column}) @> jsonb_build_array(?::text), false)"

    def _in_list(self, column: str) -> str:
        return f"{column} = ANY(?)"

    def _list_param(self, values: Iterable[Any]) -> Any:
        return list(values)

    def _contains(self, column: str) -> str:
        return f"strpos({column}, ?) > 0"

    def _real(self, column: str, kind: str) -> str:
        # A cast PostgreSQL cannot make raises, so only text that is a number of the kind is cast.
        if kind == "int":
            return (f"CASE WHEN {column} ~ '^-{{0,1}}[0-9]+$' AND length(ltrim({column}, '-')) <= 308 "
                    f"THEN CAST({column} AS double precision) END")
        return (
            f"CASE WHEN {column} ~ '^-{{0,1}}([0-9]+(\\.[0-9]*){{0,1}}(e[-+][0-9]+){{0,1}}|inf|nan)$' "
            f"THEN NULLIF(CAST({column} AS double precision), 'NaN') END"
        )

    def _text(self, column: str) -> str:
        return column

    def _nulls_last(self, alias: str, direction: str) -> str:
        return f"{alias} {direction} NULLS LAST"  # an output column's alias must stand alone here

    def _mean(self, column: str) -> str:
        # NaN (the mean of inf and -inf) is no number; in numeric only while a float8 sum has overflowed.
        if self._wide:
            return f"NULLIF(AVG({column}::numeric)::double precision, 'NaN')"
        return f"NULLIF(AVG({column}), 'NaN')"

    def _like(self, column: str) -> str:
        return f"{column} LIKE ? ESCAPE '\\'"

    def _like_param(self, pattern: str) -> Any:
        return pattern

    def columns(self, table: str) -> list[str]:
        """Return the column names of ``table`` (a name from schema.TABLES)."""
        return schema.columns(self._live(), table)

    _aliases_seen = False  # model_aliases exists (once it does, it stays)

    def _has_aliases(self) -> bool:
        if not self._aliases_seen:
            self._aliases_seen = bool(self._first("SELECT to_regclass('model_aliases') IS NOT NULL")[0])
        return self._aliases_seen

    _wide = False  # average in numeric: set while a float8 sum has overflowed

    def _averaged(self) -> tuple[str, str]:
        return ("value::numeric", "?::numeric") if self._wide else ("value", "?")

    def filter_experiments(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """As on SQLite; a metric's mean whose float8 sum overflows (PostgreSQL raises) is taken in numeric."""
        try:
            return super().filter_experiments(*args, **kwargs)
        except psycopg.errors.NumericValueOutOfRange:
            self._wide = True
            try:
                return super().filter_experiments(*args, **kwargs)
            finally:
                self._wide = False

    def metric_stats(self, experiment_id: int, metric_name: str, split: Optional[str] = None) -> dict[str, Any]:
        """As on SQLite; a sum past float8's range (where PostgreSQL raises, not overflows) is taken in numeric."""
        try:
            return super().metric_stats(experiment_id, metric_name, split)
        except psycopg.errors.NumericValueOutOfRange:
            self._wide = True
            try:
                return super().metric_stats(experiment_id, metric_name, split)
            finally:
                self._wide = False


class Reader(*_mixins(), _Primitives):  # type: ignore[misc]
    """One read connection to a PostgreSQL database; not thread-safe (callers hold a lock)."""


def _check_readable(conn: Any, path: str) -> None:
    """Raise ReadError unless the database holds an ml_persistence schema this version can read."""
    shown = display(path)
    version = schema.version(conn)
    if version == 0:
        reason = schema.not_ours(conn, shown)
        if reason is not None:
            raise ReadError(reason)
        raise ReadError(f"no ml_persistence database at {shown} (create one with `ml-persistence init --db URL`)")
    if version > schema.SCHEMA_VERSION:
        raise ReadError(
            f"{shown} has schema version {version}, newer than this ml_persistence supports "
            f"({schema.SCHEMA_VERSION}); upgrade ml_persistence"
        )
