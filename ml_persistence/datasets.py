"""DatasetManager: versioned datasets and splits, linked to the experiments that use them."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Iterable, Mapping, Optional, Union

from . import queries
from . import validate as v
from .backend import backend_for
from .errors import InvalidTypeError, InvalidValueError
from .events import DatasetLinked, DatasetRegistered, encode


def content_hash(path: str) -> Optional[str]:
    """Return 'sha256:<hex>' of a file, or of a directory's relative paths and contents; None if missing."""
    digest = hashlib.sha256()
    if os.path.isfile(path):
        files = [(os.path.basename(path), path)]
    elif os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(root, name)
                files.append((os.path.relpath(full, path).replace(os.sep, "/"), full))
    else:
        return None
    for relative, full in files:
        if len(files) > 1 or os.path.isdir(path):
            digest.update(relative.encode() + b"\0")
        with open(full, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _columns_text(name: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return v.json_text(name, list(value))


class DatasetManager:
    """Datasets in ``db_path``; cheap to construct (no thread, no I/O)."""

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
        return f"<DatasetManager db={self.db_path!r}>"

    def register_dataset(
        self,
        name: str,
        version: str,
        split_type: Optional[str] = None,
        start_date: Optional[str] = None,
        end_date: Optional[str] = None,
        num_samples: Optional[int] = None,
        data_path: Optional[str | os.PathLike[str]] = None,
        dataset_type: Optional[str] = None,
        feature_columns: Optional[Iterable[str]] = None,
        target_columns: Optional[Iterable[str]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> int:
        """Record a dataset split and return its id; the same name+version+split returns the existing id."""
        if not isinstance(name, str) or not name:
            raise InvalidTypeError(f"name: expected a non-empty string, got {name!r:.60}")
        if version is None:
            raise InvalidValueError("version is required")
        path = os.fspath(data_path) if data_path is not None else None
        event = DatasetRegistered(
            name=name,
            version=str(version),
            dataset_type=v.optional_str("dataset_type", dataset_type),
            data_path=path,
            data_hash=content_hash(path) if path else None,
            split_type=v.optional_str("split_type", split_type),
            num_samples=v.optional_int("num_samples", num_samples),
            start_date=None if start_date is None else str(start_date),
            end_date=None if end_date is None else str(end_date),
            feature_columns=_columns_text("feature_columns", feature_columns),
            target_columns=_columns_text("target_columns", target_columns),
            metadata=v.json_object_text("metadata", metadata),
            ts=time.time(),
        )
        return self._backend.request(encode(event))

    def link_dataset_to_experiment(self, experiment_id: int, dataset_id: int, usage_type: str = "train") -> None:
        """Record that an experiment uses a dataset as ``usage_type`` (train/val/test/...); linking twice is harmless."""
        experiment_id = v.optional_int("experiment_id", experiment_id)  # type: ignore[assignment]
        dataset_id = v.optional_int("dataset_id", dataset_id)  # type: ignore[assignment]
        if experiment_id is None or dataset_id is None:
            raise InvalidTypeError("experiment_id and dataset_id are required")
        usage = v.optional_str("usage_type", usage_type) or "train"
        self._backend.append(encode(DatasetLinked(experiment_id, dataset_id, usage)))

    def get_dataset(self, dataset_id: int) -> Optional[dict[str, Any]]:
        """Return one dataset, or None."""
        return self._backend.read(queries.get_dataset, dataset_id)

    def find_dataset(self, name: str, version: str, split_type: Optional[str] = None) -> Optional[dict[str, Any]]:
        """Return the dataset with this name, version and split, or None."""
        return self._backend.read(queries.find_dataset, name, str(version), split_type)

    def list_datasets(
        self, name: Optional[str] = None, version: Optional[str] = None, split_type: Optional[str] = None
    ) -> list[dict[str, Any]]:
        """Return datasets newest first, optionally filtered."""
        return self._backend.read(queries.list_datasets, name, version, split_type)

    def get_experiment_datasets(self, experiment_id: int) -> list[dict[str, Any]]:
        """Return the datasets an experiment uses, each with its usage_type."""
        return self._backend.read(queries.experiment_datasets, experiment_id)

    def get_dataset_experiments(self, dataset_id: int) -> list[dict[str, Any]]:
        """Return the experiments that used a dataset, each with its usage_type."""
        return self._backend.read(queries.dataset_experiments, dataset_id)

    def flush(self, timeout: Optional[float] = None) -> None:
        """Block until everything logged so far to this database is committed."""
        self._backend.flush(timeout)

    def close(self) -> None:
        """Flush (the shared writer stays up for other objects on the same database)."""
        self._backend.flush()
