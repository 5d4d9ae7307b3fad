"""Async twins of the public classes: log calls stay plain methods, anything that waits is awaitable.

Each async object wraps its sync twin and runs the waiting methods in a worker thread through
anyio, so it works under asyncio and trio and shares every line of logic with the sync API.
"""

from __future__ import annotations

import functools
from types import TracebackType
from typing import Any, Callable, Optional

import anyio.to_thread

from .datasets import DatasetManager
from .metrics import MetricsLogger
from .registry import ModelRegistry
from .tracker import ExperimentTracker


def _awaitable(name: str, sync_cls: type) -> Callable[..., Any]:
    sync_method = getattr(sync_cls, name)

    @functools.wraps(sync_method)
    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(getattr(self._sync, name), *args, **kwargs))

    return method


def _immediate(name: str, sync_cls: type) -> Callable[..., Any]:
    sync_method = getattr(sync_cls, name)

    @functools.wraps(sync_method)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._sync, name)(*args, **kwargs)

    return method


class _AsyncFacade:
    _sync_cls: type
    _awaitables: tuple[str, ...] = ()
    _immediates: tuple[str, ...] = ()

    def __init_subclass__(cls) -> None:
        for name in cls._awaitables:
            setattr(cls, name, _awaitable(name, cls._sync_cls))
        for name in cls._immediates:
            setattr(cls, name, _immediate(name, cls._sync_cls))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sync = self._sync_cls(*args, **kwargs)

    def __repr__(self) -> str:
        return "<Async" + repr(self._sync)[1:]

    @property
    def db_path(self) -> str:
        return self._sync.db_path

    @property
    def sync(self) -> Any:
        """The sync twin this object delegates to."""
        return self._sync

    async def aclose(self) -> None:
        """Flush and close (awaitable)."""
        await anyio.to_thread.run_sync(self._sync.close)

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(
        self,
        kind: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        exit_ = getattr(self._sync, "__exit__", None)
        if exit_ is not None:
            await anyio.to_thread.run_sync(exit_, kind, exc, tb)
        else:
            await self.aclose()


class AsyncExperimentTracker(_AsyncFacade):
    """ExperimentTracker for async code: ``await`` start/end/flush/reads; log_* are plain calls."""

    _sync_cls = ExperimentTracker
    _awaitables = (
        "start_experiment", "resume_experiment", "end_experiment", "log_artifact", "flush",
        "list_experiments", "get_experiment", "get_hyperparameters", "list_artifacts", "search_experiments",
    )
    _immediates = ("log_hyperparameter", "log_hyperparameters_batch", "log_metric", "log_metrics_batch", "status")

    @property
    def experiment_id(self) -> Optional[int]:
        return self._sync.experiment_id


class AsyncModelRegistry(_AsyncFacade):
    """ModelRegistry for async code."""

    _sync_cls = ModelRegistry
    _awaitables = (
        "register_model", "get_model", "get_best_model", "list_models", "set_alias", "delete_alias",
        "get_model_by_alias", "list_aliases", "flush",
    )


class AsyncDatasetManager(_AsyncFacade):
    """DatasetManager for async code; link_dataset_to_experiment is a plain (queued) call."""

    _sync_cls = DatasetManager
    _awaitables = (
        "register_dataset", "get_dataset", "find_dataset", "list_datasets",
        "get_experiment_datasets", "get_dataset_experiments", "flush",
    )
    _immediates = ("link_dataset_to_experiment",)


class AsyncMetricsLogger(_AsyncFacade):
    """MetricsLogger for async code."""

    _sync_cls = MetricsLogger
    _awaitables = (
        "get_metric_history", "compare_metrics_across_experiments", "get_metrics_summary",
        "list_metric_names", "flush",
    )
