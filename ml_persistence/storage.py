"""The storage seam: which engine a database name means, and how to name it without its password.

A database is named by a file path (SQLite) or a ``postgresql://`` URL (PostgreSQL). Each engine is
a package (``ml_persistence.sqlite``, ``ml_persistence.postgres``) with the same small API: a write
``store_for()``, a read ``reader()``, ``ensure()``, ``check()``, ``end_experiments_now()``,
``describe()`` and its driver's ``ERRORS``. Only those packages hold SQL or import a database driver.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from types import ModuleType
from typing import Any, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# What a failed write means, and so what the writer does about it (each engine's Store.classify):
BUSY = "busy"  # another connection holds the lock: wait, silently
ENVIRONMENT = "environment"  # the disk, the file, the server or the network: wait, saying so once
REFUSED = "refused"  # the database rejects this event itself: retry the batch one event at a time
FATAL = "fatal"  # the database cannot be written at all (damaged, not a database, a bug): stop

_SCHEMES = ("postgresql://", "postgres://")
# user:password@ in a URL's authority. As libpq reads it, the user part ends at the first '@' before
# any '/'; quotes end it too, so the text of a JSON string or a message never runs into the next.
_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/?#@\s\"']*:)([^@/\s\"']*)@", re.IGNORECASE)
_PASSWORD_PARAM = re.compile(r"([?&](?:ssl)?password=)[^&#\s\"')]*", re.IGNORECASE)
_SECRET_PARAMS = ("password", "sslpassword")


def is_url(db: Union[str, "os.PathLike[str]", None]) -> bool:
    """Return True if ``db`` names a PostgreSQL database by URL rather than an SQLite file."""
    return isinstance(db, str) and db.lower().startswith(_SCHEMES)


def redact(text: Any) -> str:
    """Return ``text`` with every PostgreSQL URL's password replaced by ``***``."""
    text = str(text)
    if "postgres" not in text.lower():
        return text
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1***@", text))


def display(db: Union[str, "os.PathLike[str]"]) -> str:
    """Return how to show ``db`` to a person: a file path, or a URL without its password."""
    return redact(os.fspath(db))


def identity(db: Union[str, "os.PathLike[str]"]) -> str:
    """Return a stable, password-free name for ``db`` that still opens it: a file's real path, or the
    URL without its password (libpq then takes it from $PGPASSWORD or ~/.pgpass)."""
    db = os.fspath(db)
    if not is_url(db):
        return os.path.realpath(db)
    parts = urlsplit(db)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}@{hosts}" if at and userinfo.partition(":")[0] else hosts
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in _SECRET_PARAMS]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))


def engine(db: Union[str, "os.PathLike[str]"]) -> ModuleType:
    """Return the engine package for ``db`` (imported on first use)."""
    if is_url(os.fspath(db)):
        try:
            return importlib.import_module("ml_persistence.postgres")
        except ImportError as exc:
            if "psycopg" not in str(exc):
                raise
            from .errors import InvalidValueError

            raise InvalidValueError(
                f"{display(db)} is a PostgreSQL database, which needs psycopg: "
                "pip install 'ml_persistence[postgres]'"
            ) from None
    return importlib.import_module("ml_persistence.sqlite")


def database_errors() -> tuple[type[BaseException], ...]:
    """Return the base error classes of every database driver loaded in this process."""
    found: list[type[BaseException]] = []
    for name in ("ml_persistence.sqlite", "ml_persistence.postgres"):
        module = sys.modules.get(name)
        if module is not None:
            found.extend(module.ERRORS)
    return tuple(found)


# What `ml-persistence best --by` ranks models by (Reader.rank_models checks it again).
RANKABLE = ("val_metric", "test_metric", "train_metric")

# The reads an agent answers for its clients, by Reader method name; nothing else is callable over the socket.
REMOTE_READS = frozenset({
    "list_experiments", "get_experiment", "experiment_exists", "get_hyperparameters", "get_model",
    "get_best_model", "list_models", "get_dataset", "find_dataset", "list_datasets", "experiment_datasets",
    "dataset_experiments", "list_artifacts", "metric_history", "metric_stats", "metric_names",
    "compare_metrics", "metrics_summary", "get_model_by_alias", "list_aliases",
    "filter_experiments", "last_activity_texts",
})


class Database:
    """A database as named (a file path or a URL), with its engine: what the writer and agent are handed."""

    def __init__(self, db: Union[str, "os.PathLike[str]"]) -> None:
        db = os.fspath(db)
        self.db = db if is_url(db) else os.path.abspath(db)  # to connect; a URL may carry a password
        self.engine = engine(db)
        self.path = display(self.db)  # to show

    def __repr__(self) -> str:
        return f"<Database {self.path}>"

    def store(self, busy_timeout_ms: int) -> Any:
        """Return an unopened write Store."""
        return self.engine.store_for(self.db, busy_timeout_ms)

    def reader(self, create: bool = True) -> Any:
        """Return a read connection (``create``: create or upgrade the schema first)."""
        return self.engine.reader(self.db, create)
