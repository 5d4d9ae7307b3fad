"""Typed errors raised by ml_persistence; all derive from MLPersistenceError."""

from __future__ import annotations


class MLPersistenceError(Exception):
    """Root of every error ml_persistence raises."""


class InvalidValueError(MLPersistenceError, ValueError):
    """A logged value has the right type but an unusable value."""


class ModelNotFoundError(InvalidValueError, LookupError):
    """A model id names no model in the database (set_alias); nothing was changed."""


class InvalidTypeError(MLPersistenceError, TypeError):
    """A logged value has a type that cannot be stored."""


class NoActiveExperimentError(MLPersistenceError, RuntimeError):
    """A log call was made with no experiment started on this tracker."""


class ClosedError(MLPersistenceError, RuntimeError):
    """The object was used after close()."""


class WriterError(MLPersistenceError):
    """The background writer failed to store some events."""


class EventsDroppedError(WriterError):
    """Events were dropped because the in-memory buffer was full."""


class FlushTimeoutError(MLPersistenceError, TimeoutError):
    """flush() did not finish within its timeout."""


class AgentError(MLPersistenceError):
    """The agent could not be reached or did not answer in time."""


class AgentRefusedError(AgentError, PermissionError):
    """The agent refused this client (wrong or missing token, unsupported protocol version)."""


class EventsSavedError(WriterError):
    """Events could not be written by a deadline and were saved to recovery files (``paths``) instead."""

    def __init__(self, message: str, paths: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.paths = paths


class SchemaError(WriterError):
    """The database cannot be used with this version of ml_persistence (so the writer stores nothing)."""


class ReadError(MLPersistenceError):
    """The database cannot be read as an ml_persistence database; ``code`` 1 (missing, foreign) or 2 (misuse)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class MissingDependencyError(MLPersistenceError, ImportError):
    """A feature was asked for whose optional dependency is not installed (the message names the extra)."""
