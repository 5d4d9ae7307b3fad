"""Database schema: the original tables, our additions, and forward migrations by PRAGMA user_version."""

from __future__ import annotations

import sqlite3
import time
from typing import Optional

from ..errors import SchemaError

SCHEMA_VERSION = 5

# The tables as the seed's original implementation wrote them (user_version 0), constraints included.
# Local-time text timestamps, as the original wrote them with datetime.now().
_NOW = "(strftime('%Y-%m-%d %H:%M:%f', 'now', 'localtime') || '000')"

ORIGINAL_TABLES = f"""
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    description TEXT,
    experiment_type TEXT,
    status TEXT DEFAULT 'running',
    git_commit TEXT,
    git_branch TEXT,
    python_version TEXT,
    random_seed INTEGER,
    start_time TIMESTAMP NOT NULL DEFAULT {_NOW},
    end_time TIMESTAMP,
    duration_seconds REAL,
    tags TEXT,
    notes TEXT,
    metadata TEXT,
    created_at TIMESTAMP DEFAULT {_NOW},
    updated_at TIMESTAMP DEFAULT {_NOW}
);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    name TEXT NOT NULL,
    version TEXT,
    architecture_type TEXT,
    state_dim INTEGER,
    action_dim INTEGER,
    checkpoint_path TEXT NOT NULL,
    checkpoint_size_mb REAL,
    episode_num INTEGER,
    global_step INTEGER,
    train_metric REAL,
    val_metric REAL,
    test_metric REAL,
    is_best INTEGER DEFAULT 0,
    hyperparameters TEXT,
    metadata TEXT,
    created_at TIMESTAMP DEFAULT {_NOW}
);
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT,
    dataset_type TEXT,
    data_path TEXT,
    data_hash TEXT,
    split_type TEXT,
    num_samples INTEGER,
    start_date TEXT,
    end_date TEXT,
    feature_columns TEXT,
    target_columns TEXT,
    metadata TEXT,
    created_at TIMESTAMP DEFAULT {_NOW},
    UNIQUE(name, version, split_type)
);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    model_id INTEGER REFERENCES models(id),
    metric_name TEXT NOT NULL,
    metric_type TEXT,
    episode INTEGER,
    step INTEGER,
    epoch INTEGER,
    value REAL,
    value_json TEXT,
    split TEXT,
    phase TEXT,
    timestamp TIMESTAMP DEFAULT {_NOW}
);
CREATE TABLE IF NOT EXISTS hyperparameters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    model_id INTEGER REFERENCES models(id),
    param_name TEXT NOT NULL,
    param_value TEXT NOT NULL,
    param_type TEXT,
    created_at TIMESTAMP DEFAULT {_NOW}
);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    model_id INTEGER REFERENCES models(id),
    artifact_type TEXT NOT NULL,
    artifact_path TEXT NOT NULL,
    artifact_name TEXT,
    file_size_mb REAL,
    description TEXT,
    metadata TEXT,
    created_at TIMESTAMP DEFAULT {_NOW}
);
CREATE TABLE IF NOT EXISTS experiment_datasets (
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    dataset_id INTEGER NOT NULL REFERENCES datasets(id),
    usage_type TEXT,
    PRIMARY KEY (experiment_id, dataset_id, usage_type)
);
"""

# Columns version 1 adds to the original tables: (table, column, type).
ADDED_COLUMNS_V1 = [
    ("experiments", "git_dirty", "INTEGER"),
    ("experiments", "git_diff", "TEXT"),
    ("experiments", "platform", "TEXT"),
    ("experiments", "hostname", "TEXT"),
    ("experiments", "pid", "INTEGER"),
    ("experiments", "command", "TEXT"),
    ("experiments", "packages", "TEXT"),
    ("metrics", "metadata", "TEXT"),
]

INDEXES_V1 = """
CREATE INDEX IF NOT EXISTS idx_metrics_experiment_name ON metrics(experiment_id, metric_name);
CREATE INDEX IF NOT EXISTS idx_models_experiment ON models(experiment_id);
CREATE INDEX IF NOT EXISTS idx_hyperparameters_experiment ON hyperparameters(experiment_id);
CREATE INDEX IF NOT EXISTS idx_artifacts_experiment ON artifacts(experiment_id);
CREATE INDEX IF NOT EXISTS idx_experiment_datasets_dataset ON experiment_datasets(dataset_id);
CREATE INDEX IF NOT EXISTS idx_experiments_type_status ON experiments(experiment_type, status);
"""

VIEWS = """
DROP VIEW IF EXISTS experiment_summary;
CREATE VIEW experiment_summary AS
SELECT
    e.id, e.name, e.experiment_type, e.status, e.start_time, e.end_time, e.duration_seconds,
    COUNT(DISTINCT m.id) AS num_checkpoints,
    COALESCE(MAX(CASE WHEN m.is_best = 1 THEN m.val_metric END), MAX(m.val_metric)) AS best_val_metric,
    COALESCE(MAX(CASE WHEN m.is_best = 1 THEN m.test_metric END), MAX(m.test_metric)) AS best_test_metric,
    e.tags, e.notes, e.description, e.random_seed, e.git_commit, e.git_branch, e.hostname, e.pid
FROM experiments e LEFT JOIN models m ON m.experiment_id = e.id
GROUP BY e.id
ORDER BY e.start_time DESC;
DROP VIEW IF EXISTS best_models;
CREATE VIEW best_models AS
SELECT m.*, e.name AS experiment_name, e.experiment_type AS experiment_type
FROM models m JOIN experiments e ON e.id = m.experiment_id
WHERE m.is_best = 1
ORDER BY m.val_metric DESC, m.id DESC;
"""

TABLES = ("experiments", "models", "datasets", "metrics", "hyperparameters", "artifacts", "experiment_datasets")


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """Return the column names of ``table`` (a name from TABLES)."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}")
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def _migrate_to_1(conn: sqlite3.Connection) -> list[str]:
    done = []
    existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = [t for t in TABLES if t not in existing]
    for statement in ORIGINAL_TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)
    if missing:
        done.append("created tables " + ", ".join(missing))
    for table, column, kind in ADDED_COLUMNS_V1:
        if column not in columns(conn, table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            if table not in missing:
                done.append(f"added column {table}.{column}")
    for statement in INDEXES_V1.split(";"):
        if statement.strip():
            conn.execute(statement)
    return done


# The agent's replay guard: per trainer client, the last event sequence number committed, and the
# row id each id-returning request produced (so a replayed request answers instead of inserting).
AGENT_TABLES_V2 = """
CREATE TABLE IF NOT EXISTS agent_clients (
    client_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    pid INTEGER,
    hostname TEXT,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS agent_requests (
    client_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    row_id INTEGER,
    PRIMARY KEY (client_id, seq)
) WITHOUT ROWID
"""


def _migrate_to_2(conn: sqlite3.Connection) -> list[str]:
    for statement in AGENT_TABLES_V2.split(";"):
        if statement.strip():
            conn.execute(statement)
    return ["created tables agent_clients, agent_requests"]


# What `migrate-legacy` imported from older `experiments.db` files, so a second run imports nothing twice:
# one row per legacy experiment (keyed by its id, name and start time in that file), with the
# highest legacy episode and regime row ids already carried over.
LEGACY_TABLES_V3 = """
CREATE TABLE IF NOT EXISTS legacy_imports (
    legacy_key TEXT PRIMARY KEY,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    source_path TEXT,
    last_episode_id INTEGER NOT NULL DEFAULT 0,
    last_regime_id INTEGER NOT NULL DEFAULT 0,
    imported_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)
"""


def _migrate_to_3(conn: sqlite3.Connection) -> list[str]:
    conn.execute(LEGACY_TABLES_V3)
    return ["created table legacy_imports"]


# A random version-4 UUID as text, lower case with dashes, in SQLite's own SQL.
UUID_SQL = (
    "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))"
)

# Version 4 gives every experiment a global identity (``uuid``) and the database one of its own, and
# keeps sync's bookkeeping: in a target, how far each table of each experiment was copied (by source
# row id, from which source database, with the last row copied as it read then), and which target
# model each source model became.
ADDED_COLUMNS_V4 = [("experiments", "uuid", "TEXT")]

SYNC_TABLES_V4 = f"""
CREATE UNIQUE INDEX IF NOT EXISTS idx_experiments_uuid ON experiments(uuid);
CREATE TABLE IF NOT EXISTS database_identity (database_uuid TEXT NOT NULL);
INSERT INTO database_identity (database_uuid)
    SELECT {UUID_SQL} WHERE NOT EXISTS (SELECT 1 FROM database_identity);
CREATE TABLE IF NOT EXISTS sync_marks (
    experiment_uuid TEXT NOT NULL,
    table_name TEXT NOT NULL,
    source_uuid TEXT NOT NULL,
    last_id INTEGER NOT NULL,
    last_row_id INTEGER,
    last_row TEXT,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (experiment_uuid, table_name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sync_ids (
    experiment_uuid TEXT NOT NULL,
    table_name TEXT NOT NULL,
    source_id INTEGER NOT NULL,
    target_id INTEGER NOT NULL,
    PRIMARY KEY (experiment_uuid, table_name, source_id)
) WITHOUT ROWID
"""

# Every insert, by this library or anyone else, gets a UUID unless it brings one (sync does).
UUID_TRIGGER = f"""
CREATE TRIGGER IF NOT EXISTS experiments_uuid AFTER INSERT ON experiments
FOR EACH ROW WHEN NEW.uuid IS NULL
BEGIN
    UPDATE experiments SET uuid = {UUID_SQL} WHERE id = NEW.id;
END
"""


def _migrate_to_4(conn: sqlite3.Connection) -> list[str]:
    done = []
    for table, column, kind in ADDED_COLUMNS_V4:
        if column not in columns(conn, table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            done.append(f"added column {table}.{column}")
    filled = conn.execute(f"UPDATE experiments SET uuid = {UUID_SQL} WHERE uuid IS NULL").rowcount
    if filled:
        done.append(f"gave {filled} experiments a uuid")
    for statement in SYNC_TABLES_V4.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(UUID_TRIGGER)
    return done + ["created tables database_identity, sync_marks, sync_ids"]


# Version 5: model aliases. An alias names one model of the whole database at a time; moving it is
# one upsert on the key. experiment_id is the model's, kept with it so deleting an experiment
# deletes its models' aliases like its other rows. Nothing enforces the references (as elsewhere).
ALIAS_TABLES_V5 = """
CREATE TABLE IF NOT EXISTS model_aliases (
    alias TEXT PRIMARY KEY,
    model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    created_at TIMESTAMP,
    updated_at TIMESTAMP
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_model_aliases_model ON model_aliases(model_id)
"""


def _migrate_to_5(conn: sqlite3.Connection) -> list[str]:
    for statement in ALIAS_TABLES_V5.split(";"):
        if statement.strip():
            conn.execute(statement)
    return ["created table model_aliases"]


MIGRATIONS = {1: _migrate_to_1, 2: _migrate_to_2, 3: _migrate_to_3, 4: _migrate_to_4, 5: _migrate_to_5}


def user_version(conn: sqlite3.Connection) -> int:
    """Return the schema version recorded in the file."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def configure(conn: sqlite3.Connection, busy_timeout_ms: int = 5000) -> None:
    """Apply the connection settings every ml_persistence connection uses."""
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA synchronous = NORMAL")


# Every table some version of ml_persistence creates: a file holding one of them is ours.
OUR_TABLES = frozenset(TABLES) | {
    "agent_clients", "agent_requests", "legacy_imports", "database_identity", "sync_marks", "sync_ids",
    "model_aliases",
}


def not_ours(conn: sqlite3.Connection, path: str) -> Optional[str]:
    """Return why the file at ``path`` belongs to something else (and how to proceed), or None.

    Something else's: a legacy experiments.db, or a file with tables and none of ours. A new or
    empty file, or one with our tables of any schema version, is ours. The library (at open) and
    the CLI (reading) refuse the same files through this one check.
    """
    tables = sorted(
        row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not row[0].startswith("sqlite_")
    )
    if "experiments" in tables:
        names = set(columns(conn, "experiments"))
        if "experiment_type" not in names and "state_dim" in names:
            return (
                f"{path} looks like a legacy experiments.db, not an ml_persistence database; "
                f"import it with `ml-persistence migrate-legacy {path}`"
            )
    if tables and OUR_TABLES.isdisjoint(tables):
        shown = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
        return (
            f"{path} is not an ml_persistence database: it holds other tables ({shown}) and none of "
            "ml_persistence's; give ml_persistence a file of its own (a new path, or an empty file)"
        )
    return None


def _file_of(conn: sqlite3.Connection) -> str:
    """Return the path of the connection's main database file, for messages."""
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return file or "this database"
    return "this database"


WAL_SWITCH_WAIT = 10.0  # seconds to keep asking for WAL mode while another connection holds the file


def _switch_to_wal(conn: sqlite3.Connection, required: bool) -> None:
    """Put the file in WAL mode; raise if that fails and is ``required``.

    SQLite refuses the switch at once, without waiting in its busy handler, while another
    connection is mid-transaction on the file (two inits racing on a new file), so a locked
    file is asked again until WAL_SWITCH_WAIT has passed.
    """
    deadline = time.monotonic() + WAL_SWITCH_WAIT
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            locked = "locked" in str(exc) or "busy" in str(exc)
            if not locked or time.monotonic() > deadline:
                if required:
                    raise
                return
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def ensure(conn: sqlite3.Connection) -> list[str]:
    """Create or upgrade the schema in place; return what was done (empty if nothing).

    Raises SchemaError for a file that is not ours (see not_ours()), leaving it untouched.
    """
    current = user_version(conn) == SCHEMA_VERSION
    reason = not_ours(conn, _file_of(conn))
    if reason is not None:
        raise SchemaError(reason)
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        _switch_to_wal(conn, required=not current)  # also for a restored backup, which is single-file
    if current:
        return []
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = user_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"database schema version {version} is newer than this ml_persistence "
                f"supports ({SCHEMA_VERSION}); upgrade ml_persistence"
            )
        done = []
        for target in range(version + 1, SCHEMA_VERSION + 1):
            done += MIGRATIONS[target](conn)
            done.append(f"schema version {target - 1} -> {target}")
        for statement in VIEWS.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return done


def connect(path: str, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with the schema ensured."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    configure(conn, busy_timeout_ms)
    ensure(conn)
    return conn
