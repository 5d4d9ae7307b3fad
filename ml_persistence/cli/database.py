"""Opening the database for a command: read-only for reads, never created by accident."""

from __future__ import annotations

from typing import Any

from .. import storage
from ..errors import ReadError
from ..liveness import with_liveness

NOT_FOUND = 1
USAGE = 2


class CLIError(Exception):
    """An expected failure: printed as one line on stderr, exit status ``code``."""

    def __init__(self, message: str, code: int = NOT_FOUND) -> None:
        super().__init__(message)
        self.code = code


def open_read(db: str) -> Any:
    """Return a read-only Reader of an existing database (never created or upgraded), errors as CLIError."""
    try:
        return storage.engine(db).reader(db, create=False)
    except ReadError as exc:
        raise CLIError(storage.redact(exc), exc.code) from None


def open_write(db: str) -> Any:
    """Return a Reader of an existing ml_persistence database for a maintenance write, schema ensured."""
    open_read(db).close()  # an existing ml_persistence database: never created here
    return storage.engine(db).reader(db, create=True)


def experiment(reader: Any, experiment_id: int) -> dict[str, Any]:
    """Return one experiment with its effective status, or raise CLIError (exit 1)."""
    found = reader.get_experiment(experiment_id)
    if found is None:
        raise CLIError(f"no experiment {experiment_id}")
    return with_liveness(reader, found)

