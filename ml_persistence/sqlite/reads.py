"""The read side: every query the library, the CLI, the UI and export run, written once.

SQL here uses ``?`` placeholders and only what SQLite and PostgreSQL both understand, except
where a dialect hook (``_LIMIT_ALL``, ``_is_param``, ``_has_tag``, ``_in_list``, ``_contains``, and
the filter language's ``_real``, ``_text``, ``_mean``, ``_like``, ``_nulls_last``) says it differently; the PostgreSQL Reader
subclasses this one and overrides only those.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from typing import Any, Iterable, Iterator, Optional, Sequence

import msgspec

from . import schema
from ..storage import RANKABLE
from .readonly import open_read_only
from .export import Exports
from .filters import Filters
from .maintenance import Maintenance
from .views import Views

_JSON_COLUMNS = frozenset({"tags", "metadata", "hyperparameters", "packages"})


def decode_row(out: dict[str, Any]) -> dict[str, Any]:
    """Decode a row's JSON text columns and flag columns in place; return it."""
    for key in _JSON_COLUMNS.intersection(out):
        text = out[key]
        if isinstance(text, str) and text:
            try:
                out[key] = msgspec.json.decode(text)
            except (msgspec.DecodeError, RecursionError):
                pass  # legacy free text, or nesting no writer of ours makes, stays text
    if out.get("tags") is None and "tags" in out:
        out["tags"] = []
    if "is_best" in out and out["is_best"] is not None:
        out["is_best"] = bool(out["is_best"])
    if "git_dirty" in out and out["git_dirty"] is not None:
        out["git_dirty"] = bool(out["git_dirty"])
    return out


def _value(value: Any) -> float:
    # NaN is stored as NULL; every metric row has a value, so NULL reads back as NaN.
    return math.nan if value is None else value


_BEST = (
    "COALESCE((SELECT m.{0} FROM models m WHERE m.experiment_id = e.id AND m.is_best = 1 "
    "ORDER BY m.id DESC LIMIT 1), (SELECT MAX(m.{0}) FROM models m WHERE m.experiment_id = e.id))"
)
# As get_best_model: the newest best-marked model's figure (a loss falls as bests come), else the highest.
FIGURES = {
    "num_checkpoints": "(SELECT COUNT(*) FROM models m WHERE m.experiment_id = e.id)",
    "best_val_metric": _BEST.format("val_metric"),
    "best_test_metric": _BEST.format("test_metric"),
}
SUMMARY_FIGURES = ", ".join(f"{sql} AS {name}" for name, sql in FIGURES.items())

_SUMMARY_COLUMNS = f"""
SELECT e.id, e.name, e.description, e.experiment_type, e.status, e.start_time, e.end_time,
       e.duration_seconds, e.tags, e.notes, e.random_seed, e.git_commit, e.git_branch,
       e.hostname, e.pid, e.metadata, e.updated_at, {SUMMARY_FIGURES}"""
_SUMMARY = _SUMMARY_COLUMNS + """
FROM experiments e
"""


_STATS = """
SELECT COUNT(*), AVG({value}), MIN(value), MAX(value), COUNT(value),
       (SELECT value FROM metrics WHERE {scope} ORDER BY id ASC LIMIT 1),
       (SELECT value FROM metrics WHERE {scope} ORDER BY id DESC LIMIT 1)
FROM metrics WHERE {scope}
"""

_HISTORY_COLUMNS = (
    "id, metric_name, value, value_json, episode, step, epoch, split, phase, model_id, timestamp, metadata"
)


class Reader(Views, Exports, Filters, Maintenance):
    """One read connection to an SQLite file; not thread-safe (callers hold a lock)."""

    engine = "sqlite"
    _LIMIT_ALL: Any = -1  # what LIMIT ? takes to mean no limit

    def __init__(self, conn: Any, path: str) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str, create: bool = True) -> "Reader":
        """Open ``path``; with ``create``, create or upgrade its schema, else read it as it is, never written."""
        if create:
            conn = schema.connect(path)
        else:
            conn = open_read_only(path)
        conn.row_factory = sqlite3.Row
        return cls(conn, path)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.conn.close()

    # -- primitives ----------------------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [decode_row(dict(r)) for r in self.conn.execute(sql, params)]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Optional[dict[str, Any]]:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else decode_row(dict(row))

    def _tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return [tuple(r) for r in self.conn.execute(sql, params)]

    def _first(self, sql: str, params: Sequence[Any] = ()) -> Optional[tuple]:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else tuple(row)

    def _stream(self, sql: str, params: Sequence[Any] = (), size: int = 1000) -> Iterator[list[tuple]]:
        """Yield the result in lists of up to ``size`` plain tuples, never holding it all."""
        cursor = self.conn.cursor()
        cursor.row_factory = None
        cursor.execute(sql, params)
        while True:
            rows = cursor.fetchmany(size)
            if not rows:
                return
            yield rows

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a write statement; return the rows it changed."""
        return self.conn.execute(sql, params).rowcount

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run the reads inside in one consistent snapshot."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the writes inside as one transaction."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- dialect hooks ---------------------------------------------------------------------------

    def _is_param(self) -> str:
        """SQL for 'column equals the bound value, NULL equal to NULL'."""
        return "IS ?"

    def _has_tag(self, column: str) -> str:
        """SQL true when the bound value is one of the JSON array of tags in ``column``."""
        return (
            f"EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid({column}) THEN {column} ELSE '[]' END) "
            "WHERE value = ?)"
        )

    def _in_list(self, column: str) -> str:
        """SQL true when ``column`` is one of the bound list (bind _list_param(values))."""
        return f"{column} IN (SELECT value FROM json_each(?))"

    def _list_param(self, values: Iterable[Any]) -> Any:
        return msgspec.json.encode(list(values)).decode()

    def _contains(self, column: str) -> str:
        """SQL true when the bound text occurs in ``column``."""
        return f"instr({column}, ?) > 0"

    def _averaged(self) -> tuple[str, str]:
        """SQL for a metric value and a bound number inside AVG(); SQLite's sum overflows to inf by itself."""
        return "value", "?"

    def _real(self, column: str, kind: str) -> str:
        """SQL for a hyperparameter's stored text of type ``kind`` ('int' or 'float') as a number, NULL for NaN."""
        if kind == "int":  # beyond a float's range: no number (PostgreSQL would raise)
            return f"CASE WHEN length(ltrim({column}, '-')) <= 308 THEN CAST({column} AS REAL) END"
        # repr() spells the special floats inf, -inf and nan, which CAST reads as 0.0.
        return (f"CASE {column} WHEN 'inf' THEN 9e999 WHEN '-inf' THEN -9e999 WHEN 'nan' THEN NULL "
                f"ELSE CAST({column} AS REAL) END")

    def _text(self, column: str) -> str:
        """SQL for a text column compared as text (a unary + drops a TIMESTAMP column's numeric affinity,
        which would turn a bound '2024' into a number that sorts before every text)."""
        return f"+{column}"

    def _nulls_last(self, alias: str, direction: str) -> str:
        """SQL ordering by the select column ``alias`` in ``direction`` (ASC/DESC), NULLs last either way."""
        return f"{alias} IS NULL, {alias} {direction}"  # NULLS LAST needs SQLite 3.30

    def _mean(self, column: str) -> str:
        """SQL for the mean of a metric's values (NULLs, i.e. NaNs, skipped)."""
        return f"AVG({column})"

    def _like(self, column: str) -> str:
        """SQL true when ``column`` matches the bound _like_param(pattern), case-sensitively."""
        return f"{column} GLOB ?"

    def _like_param(self, pattern: str) -> Any:
        """Bind a LIKE pattern (% and _ wildcards, backslash before a literal %, _ or backslash) as a GLOB."""
        out, i = [], 0
        while i < len(pattern):
            ch = pattern[i]
            if ch == "\\":
                ch, i = pattern[i + 1], i + 1
                out.append({"*": "[*]", "?": "[?]", "[": "[[]"}.get(ch, ch))
            else:
                out.append({"%": "*", "_": "?", "*": "[*]", "?": "[?]", "[": "[[]"}.get(ch, ch))
            i += 1
        return "".join(out)

    def _limit(self, limit: Optional[int]) -> Any:
        return self._LIMIT_ALL if limit is None else int(limit)

    def columns(self, table: str) -> list[str]:
        """Return the column names of ``table`` (a name from schema.TABLES)."""
        return schema.columns(self.conn, table)

    # -- experiments -----------------------------------------------------------------------------

    def list_experiments(
        self,
        experiment_type: Optional[str] = None,
        status: Optional[str] = None,
        tags: Optional[Iterable[str]] = None,
        limit: Optional[int] = None,
        name: Optional[str] = None,
    ) -> list[dict[str, Any]]:
        """Return experiments newest first, filtered by type, status, all of ``tags``, name substring."""
        where, params = [], []
        if experiment_type is not None:
            where.append("e.experiment_type = ?")
            params.append(experiment_type)
        if status is not None:
            where.append("e.status = ?")
            params.append(status)
        for tag in tags or ():
            where.append(self._has_tag("e.tags"))
            params.append(tag)
        if name is not None:
            where.append(self._contains("e.name"))
            params.append(name)
        sql = (
            _SUMMARY + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY e.start_time DESC, e.id DESC LIMIT ?"
        )
        return self._rows(sql, [*params, self._limit(limit)])

    def select_experiments(
        self, columns: str, where: str, order: str, params: Sequence[Any], limit: Optional[int]
    ) -> list[dict[str, Any]]:
        """Return experiment summaries plus ``columns`` WHERE ``where`` ORDER BY ``order``: SQL that
        filters.py built from whitelisted names, every value bound in ``params``."""
        sql = (
            _SUMMARY_COLUMNS + (", " + columns if columns else "") + " FROM experiments e"
            + (" WHERE " + where if where else "") + " ORDER BY " + order + " LIMIT ?"
        )
        return self._rows(sql, [*params, self._limit(limit)])

    def get_experiment(self, experiment_id: int) -> Optional[dict[str, Any]]:
        """Return every column of one experiment plus its summary figures, or None."""
        exp = self._one(f"SELECT e.*, {SUMMARY_FIGURES} FROM experiments e WHERE e.id = ?", (experiment_id,))
        if exp is not None:
            exp["hyperparameters"] = self.get_hyperparameters(experiment_id)
        return exp

    def experiment_exists(self, experiment_id: int) -> bool:
        """Return True if the experiment row exists."""
        return self._first("SELECT 1 FROM experiments WHERE id = ?", (experiment_id,)) is not None

    def get_hyperparameters(self, experiment_id: int) -> dict[str, Any]:
        """Return {name: value} with each value's logged type restored; the last logged value wins."""
        from ..validate import decode_hyperparameter

        rows = self._tuples(
            "SELECT param_name, param_value, param_type FROM hyperparameters WHERE experiment_id = ? ORDER BY id",
            (experiment_id,),
        )
        return {name: decode_hyperparameter(text, kind) for name, text, kind in rows}

    def facets(self) -> dict[str, list[str]]:
        """Return the experiment types, statuses and tags in use, for filter menus."""
        types = [r[0] for r in self._tuples(
            "SELECT DISTINCT experiment_type FROM experiments WHERE experiment_type IS NOT NULL ORDER BY 1")]
        statuses = [r[0] for r in self._tuples("SELECT DISTINCT status FROM experiments WHERE status IS NOT NULL")]
        tags: set[str] = set()
        for (text,) in self._tuples("SELECT DISTINCT tags FROM experiments WHERE tags IS NOT NULL"):
            found = decode_row({"tags": text})["tags"]
            if isinstance(found, list):
                tags.update(str(t) for t in found)
        return {"types": types, "statuses": sorted(statuses), "tags": sorted(tags)}

    def last_activity_texts(self, experiment_id: int) -> list[Any]:
        """Return the stored time text of the experiment's newest metric, model and artifact rows."""
        times = []
        for table, column in (("metrics", "timestamp"), ("models", "created_at"), ("artifacts", "created_at")):
            row = self._first(
                f"SELECT {column} FROM {table} WHERE id = (SELECT MAX(id) FROM {table} WHERE experiment_id = ?)",
                (experiment_id,),
            )
            if row is not None:
                times.append(row[0])
        return times

    def client_mark(self, client_id: str) -> int:
        """Return the last sequence number stored for an agent client (0 if none)."""
        row = self._first("SELECT last_seq FROM agent_clients WHERE client_id = ?", (client_id,))
        return row[0] if row is not None else 0

    # -- models ----------------------------------------------------------------------------------

    def _has_aliases(self) -> bool:
        """True if the database has the model_aliases table (an older one read as it is may not)."""
        return True

    def _with_aliases(self, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add each model's alias names, sorted, as "aliases" (one query for all of them); return ``models``."""
        by_id = {m["id"]: m for m in models}
        for m in models:
            m["aliases"] = []
        if by_id and self._has_aliases():
            for model_id, alias in self._tuples(
                f"SELECT model_id, alias FROM model_aliases WHERE {self._in_list('model_id')} ORDER BY alias",
                [self._list_param(by_id)],
            ):
                by_id[model_id]["aliases"].append(alias)
        return models

    def _model(self, sql: str, params: Sequence[Any]) -> Optional[dict[str, Any]]:
        """Return the one model row ``sql`` finds, with its aliases, or None."""
        found = self._one(sql, params)
        return None if found is None else self._with_aliases([found])[0]

    def get_model(self, model_id: int) -> Optional[dict[str, Any]]:
        """Return one model row, or None."""
        return self._model("SELECT * FROM models WHERE id = ?", (model_id,))

    def get_model_by_alias(self, alias: str, experiment_id: Optional[int] = None) -> Optional[dict[str, Any]]:
        """Return the model ``alias`` names (if it is one of ``experiment_id``'s, when given), or None."""
        if not self._has_aliases():
            return None
        scope, params = ("AND m.experiment_id = ?", [alias, experiment_id]) if experiment_id is not None else ("", [alias])
        return self._model(
            f"SELECT m.* FROM model_aliases a JOIN models m ON m.id = a.model_id WHERE a.alias = ? {scope}", params
        )

    def list_aliases(self, experiment_id: Optional[int] = None) -> list[dict[str, Any]]:
        """Return every alias by name, with its model's experiment, name, version and checkpoint."""
        if not self._has_aliases():
            return []
        scope, params = ("WHERE m.experiment_id = ?", [experiment_id]) if experiment_id is not None else ("", [])
        return self._rows(
            "SELECT a.alias, a.model_id, m.experiment_id, e.name AS experiment_name, m.name AS model_name, "
            "m.version AS model_version, m.checkpoint_path, a.created_at, a.updated_at FROM model_aliases a "
            f"LEFT JOIN models m ON m.id = a.model_id LEFT JOIN experiments e ON e.id = m.experiment_id {scope} "
            "ORDER BY a.alias",
            params,
        )

    def get_best_model(self, experiment_id: Optional[int]) -> Optional[dict[str, Any]]:
        """Return the newest model marked best; failing that, the highest val_metric; else None."""
        scope, params = ("WHERE experiment_id = ?", [experiment_id]) if experiment_id is not None else ("", [])
        joiner = "AND" if scope else "WHERE"
        marked = self._model(
            f"SELECT * FROM models {scope} {joiner} is_best = 1 ORDER BY created_at DESC, id DESC LIMIT 1", params
        )
        if marked is not None:
            return marked
        return self._model(
            f"SELECT * FROM models {scope} {joiner} val_metric IS NOT NULL ORDER BY val_metric DESC, id DESC LIMIT 1",
            params,
        )

    def list_models(
        self,
        experiment_id: Optional[int] = None,
        is_best: Optional[bool] = None,
        order_by: str = "created_at",
        ascending: bool = False,
        limit: Optional[int] = None,
    ) -> list[dict[str, Any]]:
        """Return models filtered and ordered by a column of ``models`` (whitelisted)."""
        allowed = self.columns("models")
        if order_by not in allowed:
            raise ValueError(f"order_by must be a column of models, one of: {', '.join(allowed)}; got {order_by!r}")
        where, params = [], []
        if experiment_id is not None:
            where.append("experiment_id = ?")
            params.append(experiment_id)
        if is_best is not None:
            where.append("is_best = ?")
            params.append(1 if is_best else 0)
        direction = "ASC" if ascending else "DESC"
        sql = (
            "SELECT * FROM models" + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY {order_by} IS NULL, {order_by} {direction}, id {direction} LIMIT ?"
        )
        return self._with_aliases(self._rows(sql, [*params, self._limit(limit)]))

    def rank_models(
        self,
        experiment_ids: Sequence[int] = (),
        by: str = "val_metric",
        marked_only: bool = False,
        limit: Optional[int] = None,
    ) -> list[dict[str, Any]]:
        """Return models best first by ``by`` (highest first, unscored last), with their experiment's name."""
        if by not in RANKABLE:
            raise ValueError(f"by must be one of {', '.join(RANKABLE)}; got {by!r}")
        where, params = [], []
        if experiment_ids:
            where.append(self._in_list("m.experiment_id"))
            params.append(self._list_param(int(i) for i in experiment_ids))
        if marked_only:
            where.append("m.is_best = 1")
        sql = (
            "SELECT m.*, e.name AS experiment_name FROM models m JOIN experiments e ON e.id = m.experiment_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY m.{by} IS NULL, m.{by} DESC, m.id DESC LIMIT ?"
        )
        return self._with_aliases(self._rows(sql, [*params, self._limit(limit)]))

    # -- datasets --------------------------------------------------------------------------------

    def get_dataset(self, dataset_id: int) -> Optional[dict[str, Any]]:
        """Return one dataset row, or None."""
        return self._one("SELECT * FROM datasets WHERE id = ?", (dataset_id,))

    def find_dataset(self, name: str, version: str, split_type: Optional[str]) -> Optional[dict[str, Any]]:
        """Return the dataset with this name, version and split, or None."""
        return self._one(
            f"SELECT * FROM datasets WHERE name = ? AND version = ? AND split_type {self._is_param()} "
            "ORDER BY id LIMIT 1",
            (name, version, split_type),
        )

    def list_datasets(
        self, name: Optional[str] = None, version: Optional[str] = None, split_type: Optional[str] = None
    ) -> list[dict[str, Any]]:
        """Return datasets, newest first, optionally filtered."""
        where, params = [], []
        for column, value in (("name", name), ("version", version), ("split_type", split_type)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT * FROM datasets" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
        return self._rows(sql, params)

    def experiment_datasets(self, experiment_id: int) -> list[dict[str, Any]]:
        """Return the datasets linked to an experiment, each with its usage_type."""
        return self._rows(
            "SELECT d.*, ed.usage_type FROM experiment_datasets ed JOIN datasets d ON d.id = ed.dataset_id "
            "WHERE ed.experiment_id = ? ORDER BY d.id, ed.usage_type",
            (experiment_id,),
        )

    def dataset_experiments(self, dataset_id: int) -> list[dict[str, Any]]:
        """Return the experiments that used a dataset, each with its usage_type."""
        return self._rows(
            "SELECT e.id, e.name, e.experiment_type, e.status, e.start_time, ed.usage_type "
            "FROM experiment_datasets ed JOIN experiments e ON e.id = ed.experiment_id "
            "WHERE ed.dataset_id = ? ORDER BY e.id",
            (dataset_id,),
        )

    # -- artifacts -------------------------------------------------------------------------------

    def list_artifacts(
        self, experiment_id: Optional[int] = None, artifact_type: Optional[str] = None
    ) -> list[dict[str, Any]]:
        """Return artifacts in logging order, optionally filtered."""
        where, params = [], []
        if experiment_id is not None:
            where.append("experiment_id = ?")
            params.append(experiment_id)
        if artifact_type is not None:
            where.append("artifact_type = ?")
            params.append(artifact_type)
        sql = "SELECT * FROM artifacts" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return self._rows(sql, params)

    def artifact_path(self, experiment_id: int, artifact_id: int) -> Optional[str]:
        """Return the stored path of one of an experiment's artifacts, or None."""
        row = self._first(
            "SELECT artifact_path FROM artifacts WHERE id = ? AND experiment_id = ?", (artifact_id, experiment_id)
        )
        return None if row is None else row[0]

    # -- metrics ---------------------------------------------------------------------------------

    def iter_metric_history(
        self,
        experiment_id: int,
        metric_name: str,
        split: Optional[str] = None,
        after_id: int = 0,
        size: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """Yield one metric's rows in logging order (ids above ``after_id``), never holding them all."""
        sql = f"SELECT {_HISTORY_COLUMNS} FROM metrics WHERE experiment_id = ? AND metric_name = ? AND id > ?"
        params: list[Any] = [experiment_id, metric_name, after_id]
        if split is not None:
            sql += " AND split = ?"
            params.append(split)
        names = [c.strip() for c in _HISTORY_COLUMNS.split(",")]
        for rows in self._stream(sql + " ORDER BY id", params, size):
            for row in rows:
                out = decode_row(dict(zip(names, row)))
                out["value"] = _value(out["value"])
                yield out

    def metric_history(
        self, experiment_id: int, metric_name: str, split: Optional[str] = None
    ) -> list[dict[str, Any]]:
        """Return one metric's rows in logging order."""
        return list(self.iter_metric_history(experiment_id, metric_name, split))

    def metric_stats(self, experiment_id: int, metric_name: str, split: Optional[str] = None) -> dict[str, Any]:
        """Return count, mean, std (population), min, max, first, last; NaN values are skipped by the aggregates."""
        scope = "experiment_id = ? AND metric_name = ?" + (" AND split = ?" if split is not None else "")
        one = [experiment_id, metric_name] + ([split] if split is not None else [])
        value, param = self._averaged()
        found = self._first(_STATS.format(scope=scope, value=value), one * 3)
        assert found is not None
        count, mean, lo, hi, valued, first, last = found
        mean = None if mean is None else float(mean)
        if count == 0:
            nan = math.nan
            return {"count": 0, "mean": nan, "std": nan, "min": nan, "max": nan, "first": nan, "last": nan}
        std = math.nan
        if valued and mean is not None and math.isfinite(mean):
            row = self._first(
                f"SELECT AVG(({value} - {param}) * ({value} - {param})) FROM metrics WHERE {scope}", [mean, mean, *one]
            )
            variance = float(row[0]) if row is not None and row[0] is not None else None
            std = math.sqrt(variance) if variance is not None else math.nan
        return {
            "count": count, "mean": _value(mean), "std": std, "min": _value(lo), "max": _value(hi),
            "first": _value(first), "last": _value(last),
        }

    def metric_names(self, experiment_id: int) -> list[str]:
        """Return the names of every metric an experiment logged, sorted (an index skip-scan, not a full read)."""
        names: list[str] = []
        last: Optional[str] = None
        while True:
            if last is None:
                row = self._first("SELECT MIN(metric_name) FROM metrics WHERE experiment_id = ?", (experiment_id,))
            else:
                row = self._first(
                    "SELECT MIN(metric_name) FROM metrics WHERE experiment_id = ? AND metric_name > ?",
                    (experiment_id, last),
                )
            if row is None or row[0] is None:
                return names
            last = row[0]
            names.append(last)

    def compare_metrics(
        self, experiment_ids: list[int], metric_name: str, split: Optional[str] = None
    ) -> dict[int, dict[str, Any]]:
        """Return {experiment_id: metric_stats} for each id."""
        return {i: self.metric_stats(i, metric_name, split) for i in experiment_ids}

    def metrics_summary(self, experiment_id: int, split: Optional[str] = None) -> dict[str, dict[str, Any]]:
        """Return {metric_name: metric_stats} for every metric an experiment logged (with rows in ``split``)."""
        stats = {n: self.metric_stats(experiment_id, n, split) for n in self.metric_names(experiment_id)}
        return {n: s for n, s in stats.items() if s["count"]}

