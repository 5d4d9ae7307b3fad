"""ml_persistence: an experiment tracker whose log calls never stall training; everything lands in SQLite."""

from .aio import AsyncDatasetManager, AsyncExperimentTracker, AsyncMetricsLogger, AsyncModelRegistry
from .backend import configure, shutdown
from .datasets import DatasetManager
from .errors import (
    AgentError,
    AgentRefusedError,
    ClosedError,
    EventsDroppedError,
    FlushTimeoutError,
    InvalidTypeError,
    InvalidValueError,
    MissingDependencyError,
    MLPersistenceError,
    ModelNotFoundError,
    NoActiveExperimentError,
    SchemaError,
    WriterError,
)
from .filtering import FilterError
from .metrics import MetricsLogger
from .registry import ModelRegistry
from .tracker import ExperimentTracker

__version__ = "0.1.0"

__all__ = [
    "AgentError",
    "AgentRefusedError",
    "AsyncDatasetManager",
    "AsyncExperimentTracker",
    "AsyncMetricsLogger",
    "AsyncModelRegistry",
    "ClosedError",
    "DatasetManager",
    "EventsDroppedError",
    "ExperimentTracker",
    "FilterError",
    "FlushTimeoutError",
    "InvalidTypeError",
    "InvalidValueError",
    "MLPersistenceError",
    "MetricsLogger",
    "MissingDependencyError",
    "ModelNotFoundError",
    "ModelRegistry",
    "NoActiveExperimentError",
    "SchemaError",
    "WriterError",
    "configure",
    "shutdown",
]
