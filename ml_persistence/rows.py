"""How events become row values on every engine: the original's local-time text, a metric's split."""

from __future__ import annotations

import operator
import time
from itertools import chain, repeat
from typing import Any, Optional, Sequence

import msgspec

_SPLIT_PREFIXES = (("train_", "train"), ("val_", "val"), ("test_", "test"))
_last_second: tuple[int, str] = (-1, "")  # replaced whole, so writer threads never see half an update


def local_text(ts: float) -> str:
    """Format an epoch time as the original's local-time text, 'YYYY-MM-DD HH:MM:SS.ffffff'."""
    global _last_second
    second = int(ts)
    cached = _last_second
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
    return f"{cached[1]}.{int((ts - second) * 1e6):06d}"


def split_of(name: str) -> Optional[str]:
    """Infer a metric's split from a train_/val_/test_ name prefix."""
    try:
        return _split_cache[name]
    except KeyError:
        pass
    found = next((split for prefix, split in _SPLIT_PREFIXES if name.startswith(prefix)), None)
    if len(_split_cache) < 4096:  # metric names are few; a run inventing names must not grow this
        _split_cache[name] = found
    return found


_split_cache: dict[str, Optional[str]] = {}


class _SplitText(dict):
    """A metric name's split as bound to the split column: its prefix's split, or '' (stored as NULL)."""

    def __missing__(self, name: str) -> str:
        text = split_of(name) or ""
        if len(self) < 4096:  # metric names are few; a run inventing names must not grow this
            self[name] = text
        return text


_split_text = _SplitText()
_names = operator.attrgetter("names")
_values = operator.attrgetter("values")


def metric_rows(events: Sequence[Any], optional: Sequence[str]) -> tuple[tuple[bool, ...], list[Any]]:
    """Return which ``optional`` columns are set in any of the MetricsLogged ``events``, and their rows' values.

    The values are flat, row after row in logging order: experiment_id, metric_type, timestamp,
    metric_name, value, split ('' for none), then the optional columns present. Rows are assembled
    by C iterators over whole columns; Python runs once per event, never once per row.
    """
    names = list(map(_names, events))
    values = list(map(_values, events))
    counts = list(map(len, names))
    if counts != list(map(len, values)):  # names and values of an event pair up, never across events
        return _metric_rows_singly(events, optional)
    tails = list(zip(*map(operator.attrgetter(*optional), events)))  # one tuple per optional column
    present = tuple(column.count(None) != len(column) for column in tails)
    json_column = tails[optional.index("value_json")]
    if json_column.count(None) == len(json_column):
        kinds: Any = repeat("scalar")
    else:
        kinds = _per_row(["scalar" if j is None else "json" for j in json_column], counts)
    stamps = _per_row(list(map(local_text, map(operator.attrgetter("ts"), events))), counts)
    all_names = list(chain.from_iterable(names))
    splits_given = list(map(operator.attrgetter("split"), events))
    if not any(splits_given):
        splits: Any = map(_split_text.__getitem__, all_names)
    else:
        splits = chain.from_iterable(
            repeat(split, n) if split else map(_split_text.__getitem__, event_names)
            for split, n, event_names in zip(splits_given, counts, names)
        )
    columns = [
        _per_row(list(map(operator.attrgetter("experiment_id"), events)), counts),
        kinds,
        stamps,
        all_names,
        chain.from_iterable(values),
        splits,
        *(_per_row(column, counts) for column, here in zip(tails, present) if here),
    ]
    return present, list(chain.from_iterable(zip(*columns)))


def _per_row(per_event: Sequence[Any], counts: Sequence[int]) -> Any:
    """Repeat each event's value once per row of that event."""
    return chain.from_iterable(map(repeat, per_event, counts))


def _metric_rows_singly(events: Sequence[Any], optional: Sequence[str]) -> tuple[tuple[bool, ...], list[Any]]:
    """metric_rows for events whose names and values may differ in length: each pairs up to the shorter."""
    trimmed = []
    for event in events:
        n = min(len(event.names), len(event.values))
        if n != len(event.names) or n != len(event.values):
            event = msgspec.structs.replace(event, names=event.names[:n], values=event.values[:n])
        trimmed.append(event)
    return metric_rows(trimmed, optional)


def real(value: Optional[float]) -> Optional[float]:
    """Return ``value`` as SQLite stores it, on every engine: NaN as None (NULL), -0.0 as 0.0."""
    return None if value is None or value != value else value + 0.0


def experiment_values(event: Any) -> tuple:
    """Bind values of an ExperimentStarted row, in the column order both engines' INSERT names."""
    stamp = local_text(event.ts)
    env = event.environment
    dirty = int(env.git_dirty) if isinstance(env.git_dirty, bool) else env.git_dirty
    return (
        event.name, event.description, event.experiment_type, env.git_commit, env.git_branch,
        env.python_version, event.random_seed, stamp, msgspec.json.encode(event.tags).decode(),
        event.metadata, stamp, stamp, dirty, env.git_diff, env.platform, env.hostname, env.pid,
        env.command, env.packages,
    )


def model_values(event: Any) -> tuple:
    """Bind values of a ModelRegistered row (experiment id and name twice: the version counts by them)."""
    return (
        event.experiment_id, event.name, event.version, event.experiment_id, event.name,
        event.architecture_type, event.state_dim, event.action_dim, event.checkpoint_path,
        real(event.checkpoint_size_mb), event.episode_num, event.global_step, real(event.train_metric),
        real(event.val_metric), real(event.test_metric), int(event.is_best), event.hyperparameters,
        event.metadata, local_text(event.ts),
    )


def dataset_values(event: Any) -> tuple:
    """Bind values of a DatasetRegistered row."""
    return (
        event.name, event.version, event.dataset_type, event.data_path, event.data_hash, event.split_type,
        event.num_samples, event.start_date, event.end_date, event.feature_columns, event.target_columns,
        event.metadata, local_text(event.ts),
    )


def artifact_values(event: Any) -> tuple:
    """Bind values of an ArtifactLogged row."""
    return (
        event.experiment_id, event.model_id, event.artifact_type, event.artifact_path, event.artifact_name,
        real(event.file_size_mb), event.description, event.metadata, local_text(event.ts),
    )


def resume_values(event: Any) -> tuple:
    """Bind values of the resume and reopen UPDATEs: the new owner (host, pid) as of the event."""
    return (event.hostname, event.pid, local_text(event.ts), event.experiment_id)


def end_values(event: Any) -> tuple:
    """Bind values of the end UPDATE: status, end time (three times), notes (three times), id."""
    stamp = local_text(event.ts)
    return (event.status, stamp, stamp, stamp, event.notes, event.notes, event.notes, event.experiment_id)


class SortedBatch:
    """A batch's events as the stores apply them: single rows in logging order, then the bulk rows."""

    __slots__ = ("singles", "metrics", "hyperparameters", "links")

    def __init__(self, events: Any) -> None:
        from .events import DatasetLinked, HyperparametersLogged, MetricsLogged

        self.singles: list[Any] = []  # experiments started, ended, resumed; models, datasets, artifacts
        self.metrics: list[Any] = []  # MetricsLogged events, in order
        self.hyperparameters: list[tuple] = []  # (experiment_id, model_id, name, value text, type, created_at)
        self.links: list[tuple] = []  # (experiment_id, dataset_id, usage_type)
        for event in events:
            kind = type(event)
            if kind is MetricsLogged:
                self.metrics.append(event)
            elif kind is HyperparametersLogged:
                stamp = local_text(event.ts)
                self.hyperparameters.extend(
                    (event.experiment_id, event.model_id, n, v, t, stamp)
                    for n, v, t in zip(event.names, event.values, event.types)
                )
            elif kind is DatasetLinked:
                self.links.append((event.experiment_id, event.dataset_id, event.usage_type))
            else:
                self.singles.append(event)
