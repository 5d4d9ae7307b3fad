"""DatasetManager: versioned datasets and splits, linked to the experiments that use them."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from typing import Any, Iterable, Mapping, Optional, Union

from . import validate as v
from .backend import backend_for
from .errors import InvalidTypeError, InvalidValueError
from .events import DatasetLinked, DatasetRegistered, encode


def content_hash(path: str) -> Optional[str]:
    """Return 'sha256:<hex>' of a file, or of a directory's relative paths and contents; None if missing.

    Only regular files are read: a FIFO, socket or device (given, or inside a directory) is never
    opened, and hashes as missing. Anything that exists but cannot be read raises
    InvalidValueError naming ``data_path``.
    """
    try:
        kind = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise _unreadable(path, exc) from None
    digest = hashlib.sha256()
    if stat.S_ISREG(kind):
        _hash_file(digest, path)
    elif stat.S_ISDIR(kind):
        for relative, full in _regular_files(path):
            digest.update(os.fsencode(relative) + b"\0")
            _hash_file(digest, full)
    else:
        return None
    return "sha256:" + digest.hexdigest()


def _regular_files(directory: str) -> list[tuple[str, str]]:
    """Return (relative path with '/', full path) of the regular files under ``directory``, sorted as walked."""
    def refuse(exc: OSError) -> None:
        raise _unreadable(exc.filename or directory, exc)

    found = []
    for root, dirs, names in os.walk(directory, onerror=refuse):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            try:
                regular = stat.S_ISREG(os.stat(full).st_mode)
            except (FileNotFoundError, NotADirectoryError):
                continue  # a dangling symlink, or removed meanwhile
            except OSError as exc:
                raise _unreadable(full, exc) from None
            if regular:
                found.append((os.path.relpath(full, directory).replace(os.sep, "/"), full))
    return found


def _hash_file(digest: Any, path: str) -> None:
    # O_NONBLOCK: should the path become a FIFO after it was checked, opening it does not wait for a writer.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise _unreadable(path, exc) from None
    with open(fd, "rb", closefd=True) as handle:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InvalidValueError(f"data_path: {path} is no longer a regular file")
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        except OSError as exc:
            raise _unreadable(path, exc) from None


def _unreadable(path: str, exc: OSError) -> InvalidValueError:
    return InvalidValueError(f"data_path: cannot read {path!r} to hash it ({exc.strerror or exc})")


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
        path = v.path_text("data_path", data_path) if data_path is not None else None
        event = DatasetRegistered(
            name=v.name_text("name", name),
            version=v.name_text("version", str(version)),
            dataset_type=v.optional_name("dataset_type", dataset_type),
            data_path=path,
            data_hash=content_hash(path) if path else None,
            split_type=v.optional_name("split_type", split_type),
            num_samples=v.optional_int("num_samples", num_samples),
            start_date=None if start_date is None else v.optional_str("start_date", str(start_date)),
            end_date=None if end_date is None else v.optional_str("end_date", str(end_date)),
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
        usage = v.optional_name("usage_type", usage_type) or "train"
        self._backend.append(encode(DatasetLinked(experiment_id, dataset_id, usage)))

    def get_dataset(self, dataset_id: int) -> Optional[dict[str, Any]]:
        """Return one dataset, or None."""
        return self._backend.read("get_dataset", dataset_id)

    def find_dataset(self, name: str, version: str, split_type: Optional[str] = None) -> Optional[dict[str, Any]]:
        """Return the dataset with this name, version and split, or None."""
        return self._backend.read("find_dataset", name, str(version), split_type)

    def list_datasets(
        self, name: Optional[str] = None, version: Optional[str] = None, split_type: Optional[str] = None
    ) -> list[dict[str, Any]]:
        """Return datasets newest first, optionally filtered."""
        return self._backend.read("list_datasets", name, version, split_type)

    def get_experiment_datasets(self, experiment_id: int) -> list[dict[str, Any]]:
        """Return the datasets an experiment uses, each with its usage_type."""
        return self._backend.read("experiment_datasets", experiment_id)

    def get_dataset_experiments(self, dataset_id: int) -> list[dict[str, Any]]:
        """Return the experiments that used a dataset, each with its usage_type."""
        return self._backend.read("dataset_experiments", dataset_id)

    def flush(self, timeout: Optional[float] = None) -> None:
        """Block until everything logged so far to this database is committed."""
        self._backend.flush(timeout)

    def close(self) -> None:
        """Flush (the shared writer stays up for other objects on the same database)."""
        self._backend.flush()
