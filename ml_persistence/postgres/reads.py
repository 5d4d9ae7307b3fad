"""The read side on PostgreSQL: the SQLite Reader's queries, run through psycopg with PostgreSQL's spellings."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Iterable, Iterator, Optional, Sequence

from psycopg.rows import dict_row

from ..errors import ReadError
from ..sqlite.reads import Reader as SqliteReader
from ..sqlite.reads import decode_row
from ..storage import display
from . import connect, schema

_cursor_names = itertools.count(1)


def _translated(sql: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 - a deliberate cache
    """Return ``sql`` with psycopg's placeholders: ``?`` -> ``%s``, a literal ``%`` -> ``%%``."""
    found = cache.get(sql)
    if found is None:
        found = sql.replace("%", "%%").replace("?", "%s")
        if len(cache) < 512:
            cache[sql] = found
    return found


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
        return cls(conn, display(path))  # type: ignore[return-value]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.conn.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(_translated(sql), params)
            return [decode_row(row) for row in cur.fetchall()]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Optional[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(_translated(sql), params)
            row = cur.fetchone()
        return None if row is None else decode_row(row)

    def _tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(_translated(sql), params)
            return cur.fetchall()

    def _first(self, sql: str, params: Sequence[Any] = ()) -> Optional[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(_translated(sql), params)
            return cur.fetchone()

    def _stream(self, sql: str, params: Sequence[Any] = (), size: int = 1000) -> Iterator[list[tuple]]:
        """Yield the result in lists of up to ``size`` tuples from a server-side cursor (flat memory)."""
        with self.conn.transaction():
            with self.conn.cursor(name=f"ml_persistence_{next(_cursor_names)}") as cur:
                cur.itersize = size
                cur.execute(_translated(sql), params)
                while True:
                    rows = cur.fetchmany(size)
                    if not rows:
                        return
                    yield rows

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.conn.cursor() as cur:
            cur.execute(_translated(sql), params)
            return cur.rowcount

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run the reads inside in one consistent snapshot (REPEATABLE READ)."""
        with self.conn.transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the writes inside as one transaction."""
        with self.conn.transaction():
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

    def columns(self, table: str) -> list[str]:
        """Return the column names of ``table`` (a name from schema.TABLES)."""
        return schema.columns(self.conn, table)


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
