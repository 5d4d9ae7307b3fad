"""Import runs from the older project's ``experiments.db`` into an ml_persistence database."""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterator, Optional, Sequence

import msgspec

from . import schema
from .. import timestamps, validate
from ..errors import InvalidValueError, MLPersistenceError

# The legacy schema as the older project wrote it; anything else found in a file is "unknown".
KNOWN_COLUMNS: dict[str, tuple[str, ...]] = {
    "experiments": (
        "id", "name", "description", "start_time", "end_time", "status", "state_dim", "action_dim",
        "learning_rate", "gamma", "train_start_date", "train_end_date", "test_start_date", "test_end_date",
        "best_test_sharpe", "best_test_return", "final_episode", "early_stopped", "notes", "created_at",
    ),
    "episodes": (
        "id", "experiment_id", "episode_num", "train_return", "train_reward", "episode_length", "test_return",
        "test_sharpe", "is_best_model", "avg_policy_loss", "avg_value_loss", "timestamp",
    ),
    "regime_analysis": (
        "id", "experiment_id", "analysis_date", "final_value", "total_return", "total_steps", "bull_steps",
        "bear_steps", "neutral_steps", "bull_buy_prob", "bear_buy_prob", "neutral_buy_prob", "buy_prob_difference",
    ),
    "hyperparameters": ("id", "experiment_id", "param_name", "param_value"),
}
# Without these a table's rows cannot be attached to anything.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "experiments": ("id",),
    "episodes": ("experiment_id",),
    "regime_analysis": ("experiment_id",),
    "hyperparameters": ("experiment_id", "param_name", "param_value"),
}
PARAMETER_COLUMNS = ("state_dim", "action_dim", "learning_rate", "gamma")
FINAL_RESULT_COLUMNS = ("best_test_sharpe", "best_test_return", "final_episode", "early_stopped")
DATE_RANGES = (("train", "train_start_date", "train_end_date"), ("test", "test_start_date", "test_end_date"))
EPISODE_NON_METRICS = frozenset({"id", "experiment_id", "episode_num", "timestamp"})
REGIME_NON_METRICS = frozenset({"id", "experiment_id", "analysis_date"})
# Metadata keys the importer writes itself; an unknown experiments column with one of these names is renamed.
RESERVED_METADATA_KEYS = frozenset({"legacy", "regime_analysis", "legacy_hyperparameter_columns"})

DATASET_NAME = "legacy-market-data"
DATASET_METADATA = '{"source":"experiments.db migration"}'
LEGACY_TAGS = '["legacy"]'

_INSERT_METRIC = (
    "INSERT INTO metrics (experiment_id, metric_name, metric_type, episode, value, value_json, split, "
    "timestamp, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_PARAMETER = (
    "INSERT INTO hyperparameters (experiment_id, param_name, param_value, param_type) VALUES (?, ?, ?, ?)"
)
_INT_TEXT = re.compile(r"[+-]?[0-9]+\Z")


class LegacyFormatError(MLPersistenceError):
    """The file is not a legacy ``experiments.db`` (not SQLite, no ``experiments`` table, ...)."""


@dataclass
class LegacyReport:
    """What one migrate_legacy() run found and carried over."""

    source: str
    experiments_imported: int = 0
    experiments_updated: int = 0
    experiments_unchanged: int = 0
    metrics: int = 0
    hyperparameters: int = 0
    datasets_linked: int = 0
    regime_rows: int = 0
    carried_columns: dict[str, list[str]] = field(default_factory=dict)
    skipped_tables: list[str] = field(default_factory=list)
    orphan_rows: int = 0
    target: str = ""
    datasets_created: int = 0
    unnamed_parameters: int = 0
    missing_tables: list[str] = field(default_factory=list)
    missing_columns: dict[str, list[str]] = field(default_factory=dict)
    skip_reasons: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Return human-readable report lines, one fact per line."""
        out = [
            f"source: {self.source}",
            f"target: {self.target}",
            f"experiments imported: {self.experiments_imported}",
            f"experiments updated with new rows: {self.experiments_updated}",
            f"experiments already imported, unchanged: {self.experiments_unchanged}",
            f"metric rows inserted: {self.metrics}",
            f"hyperparameters inserted: {self.hyperparameters}",
            f"datasets created: {self.datasets_created}",
            f"dataset links inserted: {self.datasets_linked}",
            f"regime_analysis rows carried over: {self.regime_rows}",
        ]
        if self.orphan_rows:
            out.append(f"rows skipped, their experiment_id matches no legacy experiment: {self.orphan_rows}")
        if self.unnamed_parameters:
            out.append(f"hyperparameters rows skipped, no param_name: {self.unnamed_parameters}")
        out += [f"{t}: unknown columns carried over: {_names(c)}" for t, c in self.carried_columns.items()]
        out += [f"{t}: table absent, nothing to import" for t in self.missing_tables]
        out += [f"{t}: columns absent: {_names(c)}" for t, c in self.missing_columns.items()]
        out += [f"{_show(t)}: table not imported ({self.skip_reasons.get(t, 'unknown')})" for t in self.skipped_tables]
        return out


def migrate_legacy(legacy_path: str | os.PathLike[str], db_path: str | os.PathLike[str]) -> LegacyReport:
    """Import every run of a legacy ``experiments.db`` into ``db_path`` in one transaction; idempotent."""
    source = os.path.abspath(os.fspath(legacy_path))
    target = os.fspath(db_path)
    legacy = _open_legacy(source)
    try:
        legacy.execute("BEGIN")  # one consistent snapshot, should the old project still be writing
        report = LegacyReport(source=source, target=os.path.abspath(target))
        tables = _inspect(legacy, source, report)
        _check_target(source, target)
        conn = schema.connect(target)
        try:
            _in_transaction(conn, _Importer(legacy, conn, tables, report).run)
        finally:
            conn.close()
    finally:
        legacy.close()
    return report


# -- opening and checking both files ----------------------------------------------------------


def _open_legacy(path: str) -> sqlite3.Connection:
    """Open ``path`` strictly read-only, or raise FileNotFoundError / LegacyFormatError."""
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "legacy experiments database not found", path)
    if not os.path.isfile(path):
        raise LegacyFormatError(f"{path} is not a file, so not a legacy experiments.db")
    conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, isolation_level=None)
    conn.text_factory = lambda data: data.decode("utf-8", "replace")
    return conn


@dataclass
class _Table:
    """One legacy table this importer knows, with the columns this file actually has."""

    name: str  # as sqlite_master spells it
    columns: dict[str, str]  # canonical name (known: lower case) -> the file's own spelling
    unknown: list[str]
    key: str  # SQL for the row's id: its quoted id column, else rowid

    def ref(self, canonical: str) -> str:
        """Return the quoted identifier of a column this table is known to have."""
        return _quote(self.columns[canonical])

    def select(
        self, conn: sqlite3.Connection, where: str = "", params: Sequence[Any] = ()
    ) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Yield (row id, {canonical column: value}) in id order; ``where`` uses ref() names only."""
        names = list(self.columns)
        selected = ", ".join(self.ref(n) for n in names)
        sql = f"SELECT {self.key}, {selected} FROM {_quote(self.name)} {where} ORDER BY {self.key}"
        for key, *values in conn.execute(sql, params):
            yield key, dict(zip(names, values))


def _inspect(legacy: sqlite3.Connection, path: str, report: LegacyReport) -> dict[str, _Table]:
    """Return the known tables this file has, recording unknown, missing and unusable ones in ``report``."""
    try:
        entries = legacy.execute("SELECT type, name FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError as exc:
        raise LegacyFormatError(f"{path} is not an SQLite database ({exc})") from None
    present = {name.lower(): name for kind, name in entries if kind == "table"}
    if "experiments" not in present:
        raise LegacyFormatError(f"{path} has no experiments table, so it is not a legacy experiments.db")
    tables: dict[str, _Table] = {}
    for known in KNOWN_COLUMNS:
        if known not in present:
            report.missing_tables.append(known)
        elif (table := _describe(legacy, known, present[known], report)) is not None:
            tables[known] = table
    if "experiments" not in tables:
        raise LegacyFormatError(f"{path}: its experiments table has no id column")
    if "experiment_type" in tables["experiments"].unknown and "metrics" in present:
        raise LegacyFormatError(f"{path} is an ml_persistence database, not a legacy experiments.db")
    for low, name in sorted(present.items()):
        if low not in KNOWN_COLUMNS and not low.startswith("sqlite_"):
            report.skipped_tables.append(name)
            report.skip_reasons[name] = "unknown to the legacy importer"
    return tables


def _describe(legacy: sqlite3.Connection, known: str, name: str, report: LegacyReport) -> Optional[_Table]:
    """Return a _Table for ``name`` from its PRAGMA table_info, or None (recorded) if it is unusable."""
    actual = [row[0] for row in legacy.execute("SELECT name FROM pragma_table_info(?) ORDER BY cid", (name,))]
    known_names = KNOWN_COLUMNS[known]
    columns = {a.lower() if a.lower() in known_names else a: a for a in actual}
    unknown = [a for a in actual if a.lower() not in known_names]
    missing = [c for c in known_names if c not in columns]
    if missing:
        report.missing_columns[known] = missing
    if unknown:
        report.carried_columns[known] = unknown
    lacking = [c for c in REQUIRED_COLUMNS[known] if c not in columns]
    if lacking:
        report.carried_columns.pop(known, None)
        report.skipped_tables.append(name)
        report.skip_reasons[name] = f"no {', '.join(lacking)} column"
        return None
    key = _quote(columns["id"]) if "id" in columns else "rowid"
    return _Table(name, columns, unknown, key)


def _check_target(source: str, target: str) -> None:
    """Refuse a target that is the legacy file itself or looks like one (its upgrade would alter it)."""
    if target == ":memory:" or target.startswith("file:"):
        raise InvalidValueError("migrate_legacy needs a database file path, not an in-memory or URI database")
    if not os.path.exists(target) or os.path.getsize(target) == 0:
        return
    if os.path.samefile(source, target):
        raise InvalidValueError(f"{target} is the legacy file itself; give a different target database")
    conn = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(target))}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM pragma_table_info('experiments')")]
    except sqlite3.DatabaseError as exc:
        raise schema.SchemaError(f"{target} is not an SQLite database ({exc})") from None
    finally:
        conn.close()
    if names and "experiment_type" not in names:
        raise schema.SchemaError(
            f"{target} looks like a legacy experiments.db, not an ml_persistence database; "
            "it is the source, give another target"
        )


def _in_transaction(conn: sqlite3.Connection, work: Callable[[], None]) -> None:
    """Run ``work()`` inside BEGIN IMMEDIATE ... COMMIT; roll everything back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        work()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# -- the import ---------------------------------------------------------------------------------


class _Importer:
    """Carries every legacy experiment over, or only the rows added since its last import."""

    def __init__(
        self, legacy: sqlite3.Connection, conn: sqlite3.Connection, tables: dict[str, _Table], report: LegacyReport
    ) -> None:
        self.legacy = legacy
        self.conn = conn
        self.tables = tables
        self.report = report

    def run(self) -> None:
        """Import or update every legacy experiment, in legacy id order."""
        self.report.orphan_rows = sum(self._orphans(t) for t in ("episodes", "regime_analysis", "hyperparameters"))
        for _, exp in self.tables["experiments"].select(self.legacy):
            key = _legacy_key(exp)
            state = self.conn.execute(
                "SELECT li.experiment_id, li.last_episode_id, li.last_regime_id FROM legacy_imports li "
                "JOIN experiments e ON e.id = li.experiment_id WHERE li.legacy_key = ?",
                (key,),
            ).fetchone()
            if state is None:
                self._first_import(key, exp)
            else:
                self._update(key, exp, *state)

    def _orphans(self, name: str) -> int:
        """Count the rows of a child table whose experiment_id matches no legacy experiment."""
        table = self.tables.get(name)
        if table is None:
            return 0
        experiments = self.tables["experiments"]
        sql = (
            f"SELECT COUNT(*) FROM {_quote(table.name)} AS c WHERE NOT EXISTS (SELECT 1 FROM "
            f"{_quote(experiments.name)} AS e WHERE e.{experiments.ref('id')} = c.{table.ref('experiment_id')})"
        )
        return self.legacy.execute(sql).fetchone()[0]

    def _first_import(self, key: str, exp: dict[str, Any]) -> None:
        """Create the experiment with its parameters, datasets, episodes and regime rows."""
        regime_last, regime = self._regime_rows(exp, after=None)
        parameters = self._parameter_rows(exp)
        metadata = _metadata(exp, self.tables, self.report.source, parameters, regime)
        experiment_id = self._insert_experiment(exp, metadata)
        self._insert_parameters(experiment_id, exp, parameters)
        for usage, start_column, end_column in DATE_RANGES:
            self._link_dataset(experiment_id, usage, exp.get(start_column), exp.get(end_column))
        episode_last, _ = self._episodes(experiment_id, exp, after=None)
        self._regime_metrics(experiment_id, exp, regime)
        self.conn.execute(
            "INSERT OR REPLACE INTO legacy_imports (legacy_key, experiment_id, source_path, last_episode_id, "
            "last_regime_id) VALUES (?, ?, ?, ?, ?)",
            (key, experiment_id, self.report.source, _or_zero(episode_last), _or_zero(regime_last)),
        )
        self.report.experiments_imported += 1

    def _update(self, key: str, exp: dict[str, Any], experiment_id: int, last_episode: Any, last_regime: Any) -> None:
        """Import only the episodes and regime rows whose legacy ids are above those recorded."""
        episode_last, episodes = self._episodes(experiment_id, exp, after=last_episode)
        regime_last, regime = self._regime_rows(exp, after=last_regime)
        if not episodes and not regime:
            self.report.experiments_unchanged += 1
            return
        self._regime_metrics(experiment_id, exp, regime)
        if regime:
            self._append_regime_metadata(experiment_id, regime)
        self.conn.execute(
            "UPDATE legacy_imports SET last_episode_id = ?, last_regime_id = ?, source_path = ?, "
            "imported_at = CURRENT_TIMESTAMP WHERE legacy_key = ?",
            (episode_last, regime_last, self.report.source, key),
        )
        self.report.experiments_updated += 1

    def _children(self, name: str, exp: dict[str, Any], after: Any) -> tuple[Any, list[tuple[Any, dict[str, Any]]]]:
        """Return (highest row id, rows) of a child table for ``exp``, only ids above ``after`` if given."""
        table = self.tables.get(name)
        if table is None:
            return after, []
        where, params = f"WHERE {table.ref('experiment_id')} = ?", [exp["id"]]
        if after is not None:
            where += f" AND {table.key} > ?"
            params.append(after)
        rows = list(table.select(self.legacy, where, params))
        ids = [k for k, _ in rows if k is not None]
        return (ids[-1] if ids else after), rows

    # -- experiments, parameters, datasets ------------------------------------------------------

    def _insert_experiment(self, exp: dict[str, Any], metadata: dict[str, Any]) -> int:
        """Insert the experiments row and return its new id."""
        start, end, created = exp.get("start_time"), exp.get("end_time"), exp.get("created_at")
        name = exp.get("name")
        status = exp.get("status")
        if status is None:
            status = "completed" if end is not None else "running"
        start_time = start if start is not None else created if created is not None else _now()
        created_at = created if created is not None else start_time
        cursor = self.conn.execute(
            "INSERT INTO experiments (name, description, experiment_type, status, start_time, end_time, "
            "duration_seconds, tags, notes, metadata, created_at, updated_at) "
            "VALUES (?, ?, 'rl', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name if name is not None else f"legacy experiment {exp['id']}",
                exp.get("description"), status, start_time, end, _duration(start, end), LEGACY_TAGS,
                exp.get("notes"), _json(metadata), created_at, created_at,
            ),
        )
        return cursor.lastrowid

    def _parameter_rows(self, exp: dict[str, Any]) -> list[dict[str, Any]]:
        """Return the legacy hyperparameters rows of ``exp`` in id order."""
        return [row for _, row in self._children("hyperparameters", exp, None)[1]]

    def _insert_parameters(self, experiment_id: int, exp: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        """Insert column-derived parameters, then the legacy table's rows (which win for the same name)."""
        params = [(c, exp[c]) for c in PARAMETER_COLUMNS if exp.get(c) is not None]
        for row in rows:
            name = row["param_name"]
            if name is None or name == "":
                self.report.unnamed_parameters += 1
            else:
                params.append((name if isinstance(name, str) else str(_plain(name)), row["param_value"]))
        encoded = [(experiment_id, *validate.hyperparameter(n, _infer(v))) for n, v in params]
        self.conn.executemany(_INSERT_PARAMETER, encoded)
        self.report.hyperparameters += len(encoded)

    def _link_dataset(self, experiment_id: int, usage: str, start: Any, end: Any) -> None:
        """Link the experiment to the legacy-market-data split covering start..end, creating it if new."""
        if start is None and end is None:
            return
        identity = (DATASET_NAME, f"{_plain(start)}_{_plain(end)}", usage)
        row = self.conn.execute(
            "SELECT id FROM datasets WHERE name = ? AND version = ? AND split_type = ? ORDER BY id LIMIT 1", identity
        ).fetchone()
        if row is None:
            cursor = self.conn.execute(
                "INSERT INTO datasets (name, version, split_type, start_date, end_date, dataset_type, metadata) "
                "VALUES (?, ?, ?, ?, ?, 'time_series', ?)",
                (*identity, start, end, DATASET_METADATA),
            )
            dataset_id = cursor.lastrowid
            self.report.datasets_created += 1
        else:
            dataset_id = row[0]
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO experiment_datasets (experiment_id, dataset_id, usage_type) VALUES (?, ?, ?)",
            (experiment_id, dataset_id, usage),
        )
        self.report.datasets_linked += cursor.rowcount

    # -- episodes and regime analysis -------------------------------------------------------------

    def _episodes(self, experiment_id: int, exp: dict[str, Any], after: Any) -> tuple[Any, int]:
        """Insert one metric per non-NULL value of each episode above ``after``; return (last id, episodes)."""
        last, rows = self._children("episodes", exp, after)
        metrics = [m for _, row in rows for m in _episode_metrics(experiment_id, row)]
        self.conn.executemany(_INSERT_METRIC, metrics)
        self.report.metrics += len(metrics)
        return last, len(rows)

    def _regime_rows(self, exp: dict[str, Any], after: Any) -> tuple[Any, list[tuple[Any, dict[str, Any]]]]:
        """Return (last id, rows) of the regime_analysis rows of ``exp`` above ``after``."""
        return self._children("regime_analysis", exp, after)

    def _regime_metrics(self, experiment_id: int, exp: dict[str, Any], rows: list[tuple[Any, dict[str, Any]]]) -> None:
        """Insert a regime_<column> metric for every numeric value of the regime rows."""
        episode = _episode_number(exp.get("final_episode"))
        metrics = []
        for key, row in rows:
            meta = _json({"legacy_regime_id": key})
            for column, value in row.items():
                if column not in REGIME_NON_METRICS and _is_number(value):
                    metrics.append((
                        experiment_id, f"regime_{column}", "regime_analysis", episode, _number(value), None,
                        None, row.get("analysis_date"), meta,
                    ))
        self.conn.executemany(_INSERT_METRIC, metrics)
        self.report.metrics += len(metrics)
        self.report.regime_rows += len(rows)

    def _append_regime_metadata(self, experiment_id: int, rows: list[tuple[Any, dict[str, Any]]]) -> None:
        """Extend the experiment's metadata "regime_analysis" list with newly imported rows."""
        (text,) = self.conn.execute("SELECT metadata FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
        metadata = _object(text)
        existing = metadata.get("regime_analysis")
        existing = [] if existing is None else existing if isinstance(existing, list) else [existing]
        metadata["regime_analysis"] = existing + [_regime_entry(row) for _, row in rows]
        self.conn.execute("UPDATE experiments SET metadata = ? WHERE id = ?", (_json(metadata), experiment_id))


# -- row conversion -------------------------------------------------------------------------------


def _metadata(
    exp: dict[str, Any],
    tables: dict[str, _Table],
    source: str,
    parameters: list[dict[str, Any]],
    regime: list[tuple[Any, dict[str, Any]]],
) -> dict[str, Any]:
    """Build the experiment's metadata: final results, provenance, unknown columns, regime rows."""
    metadata = {c: _plain(exp[c]) for c in FINAL_RESULT_COLUMNS if exp.get(c) is not None}
    metadata["legacy"] = {"source": source, "experiment_id": _plain(exp["id"])}
    for column in tables["experiments"].unknown:
        if exp[column] is not None:
            key = f"legacy_column:{column}" if column in RESERVED_METADATA_KEYS else column
            metadata[key] = _plain(exp[column])
    extra = tables["hyperparameters"].unknown if "hyperparameters" in tables else []
    carried = [
        {"param_name": _plain(row["param_name"]), **{c: _plain(row[c]) for c in extra if row[c] is not None}}
        for row in parameters
        if any(row[c] is not None for c in extra)
    ]
    if carried:
        metadata["legacy_hyperparameter_columns"] = carried
    if regime:
        metadata["regime_analysis"] = [_regime_entry(row) for _, row in regime]
    return metadata


def _episode_metrics(experiment_id: int, row: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """Yield one metrics row per non-NULL measurement column of a legacy episode."""
    for column, value in row.items():
        if column in EPISODE_NON_METRICS or value is None:
            continue
        numeric = _is_number(value)
        yield (
            experiment_id, column, "legacy_episode", row.get("episode_num"),
            _number(value) if numeric else None, None if numeric else _json(_plain(value)),
            _split(column), row.get("timestamp"), None,
        )


def _regime_entry(row: dict[str, Any]) -> dict[str, Any]:
    """Return a regime_analysis row for the metadata list: every column but experiment_id."""
    return {c: _plain(v) for c, v in row.items() if c != "experiment_id"}


def _legacy_key(exp: dict[str, Any]) -> str:
    """Return the stable identity of a legacy experiment: JSON [id, name, start_time]."""
    return _json([_plain(exp["id"]), _plain(exp.get("name")), _plain(exp.get("start_time"))])


def _split(column: str) -> Optional[str]:
    """Return 'train' / 'test' from a column's prefix, else None."""
    low = column.lower()
    return "train" if low.startswith("train_") else "test" if low.startswith("test_") else None


def _is_number(value: Any) -> bool:
    """True for the values SQLite hands back as numbers (bool included)."""
    return isinstance(value, (int, float))


def _number(value: Any) -> int | float:
    """Return a stored number, bools as ints."""
    return int(value) if isinstance(value, bool) else value


def _plain(value: Any) -> Any:
    """Return a JSON-friendly legacy value: blobs become hex strings."""
    return value.hex() if isinstance(value, (bytes, bytearray, memoryview)) else value


def _infer(value: Any) -> Any:
    """Return a legacy parameter value typed: int text as int, float text as float, else unchanged."""
    value = _plain(value)
    if not isinstance(value, str) or not value.isascii() or value != value.strip() or "_" in value:
        return value  # int()/float() would also accept padding, digit underscores and non-ASCII digits
    if _INT_TEXT.match(value):
        return int(value)
    try:
        return float(value)
    except ValueError:
        return value


def _episode_number(value: Any) -> Optional[int]:
    """Return the legacy final_episode as an int, or None when absent or not a whole number."""
    value = _infer(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def _duration(start: Any, end: Any) -> Optional[float]:
    """Return end - start in seconds when both are ISO timestamps, else None."""
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    began, ended = timestamps.parse(start), timestamps.parse(end)
    if began is None or ended is None:
        return None
    try:
        return (ended - began).total_seconds()
    except TypeError:  # one has a UTC offset, the other not
        return None


def _object(text: Any) -> dict[str, Any]:
    """Decode experiment metadata to a dict, keeping anything else under "previous_metadata"."""
    if text is None:
        return {}
    try:
        value = msgspec.json.decode(text)
    except (msgspec.DecodeError, TypeError):
        value = text
    return value if isinstance(value, dict) else {"previous_metadata": value}


def _json(value: Any) -> str:
    """Encode ``value`` as compact JSON text (non-finite floats become null)."""
    return msgspec.json.encode(value).decode()


def _quote(identifier: str) -> str:
    """Return an SQL identifier in double quotes, embedded quotes doubled."""
    return '"' + identifier.replace('"', '""') + '"'


def _or_zero(value: Any) -> Any:
    """Return ``value``, or 0 where nothing was imported (the column is NOT NULL)."""
    return 0 if value is None else value


def _now() -> str:
    """Return local time as the library writes timestamps."""
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")


def _show(name: str) -> str:
    """Return a name for a report line: as is if a plain identifier, else quoted and escaped."""
    return name if name.isidentifier() else repr(name)


def _names(names: list[str]) -> str:
    """Return names for a report line."""
    return ", ".join(_show(n) for n in names)
