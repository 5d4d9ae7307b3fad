"""MetricsLogger: read metric histories and compare them across experiments."""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Union

from .backend import backend_for


class MetricsLogger:
    """Metric queries over ``db_path``; each waits until this process's earlier logs are committed."""

    def __init__(
        self,
        db_path: Optional[str | os.PathLike[str]] = None,
        *,
        agent: Union[str, bool, None] = None,
        token: Optional[str] = None,
    ) -> None:
        self._backend = backend_for(db_path, agent, token)
        self.db_path = self._backend.path

    def __repr__(self) -> str:
        return f"<MetricsLogger db={self.db_path!r}>"

    def get_metric_history(
        self, experiment_id: int, metric_name: str, split: Optional[str] = None
    ) -> list[dict[str, Any]]:
        """Return one metric's rows (value, episode, step, epoch, split, timestamp, ...) in logging order."""
        return self._backend.read("metric_history", experiment_id, metric_name, split)

    def compare_metrics_across_experiments(
        self, experiment_ids: Iterable[int], metric_name: str, split: Optional[str] = None
    ) -> dict[int, dict[str, Any]]:
        """Return {experiment_id: {count, mean, std, min, max, first, last}} (NaN where nothing was logged)."""
        return self._backend.read("compare_metrics", list(experiment_ids), metric_name, split)

    def get_metrics_summary(self, experiment_id: int, split: Optional[str] = None) -> dict[str, dict[str, Any]]:
        """Return {metric_name: {count, mean, std, min, max, first, last}} for every metric of an experiment."""
        return self._backend.read("metrics_summary", experiment_id, split)

    def list_metric_names(self, experiment_id: int) -> list[str]:
        """Return the names of every metric an experiment logged."""
        return self._backend.read("metric_names", experiment_id)

    def flush(self, timeout: Optional[float] = None) -> None:
        """Block until everything logged so far to this database is committed."""
        self._backend.flush(timeout)

    def close(self) -> None:
        """Flush (the shared writer stays up for other objects on the same database)."""
        self._backend.flush()
