"""ExperimentTracker: start an experiment, log hyperparameters, metrics and artifacts, end it."""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Iterable, Mapping, Optional, Union

import msgspec

from . import environment, lifecycle, upload
from . import validate as v
from .backend import Backend, backend_for
from .errors import ClosedError, InvalidTypeError, InvalidValueError, NoActiveExperimentError
from .system_metrics import SystemSampler, interval_for
from .events import (
    ArtifactLogged,
    Environment,
    ExperimentEnded,
    ExperimentReopened,
    ExperimentResumed,
    ExperimentStarted,
    HyperparametersLogged,
    MetricsLogged,
    encode,
)


_MIN, _MAX = v.INT64_MIN, v.INT64_MAX
_METRICS_TAG = MetricsLogged.__struct_config__.tag
_encode_tuple = msgspec.msgpack.Encoder().encode
_METRIC_NAMES: dict[tuple, list[str]] = {}  # a metrics dict's keys -> its checked names: most loops log the same keys
_METRIC_NAMES_MAX = 4096


def _checked_metric_names(keys: tuple) -> list[str]:
    """Return the metric names ``keys`` stand for, checked (raising at the call); remember them."""
    names = [
        name if type(name) is str and name and name.isascii() and "\x00" not in name else v.metric_name(name, "metrics")
        for name in keys
    ]
    if len(_METRIC_NAMES) >= _METRIC_NAMES_MAX:
        _METRIC_NAMES.clear()
    _METRIC_NAMES[keys] = names
    return names
_trackers: "weakref.WeakSet[ExperimentTracker]" = weakref.WeakSet()


def _new_locks_after_fork() -> None:
    # A lock another thread held at fork() stays held in the child, where that thread does not exist.
    for tracker in list(_trackers):
        tracker._lifecycle_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_after_fork)


def _storable(captured: Environment) -> Environment:
    """Replace what UTF-8 cannot store (undecodable bytes in argv, say) in captured text with U+FFFD."""
    fields = {}
    for field in captured.__struct_fields__:
        value = getattr(captured, field)
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                fields[field] = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return msgspec.structs.replace(captured, **fields) if fields else captured


def file_size_mb(path: str) -> Optional[float]:
    """Return a file's size in MiB, or None if it does not exist (yet)."""
    try:
        return os.stat(path).st_size / (1024 * 1024)
    except OSError:
        return None


class ExperimentTracker:
    """Records one experiment at a time into ``db_path``; every log_* call only queues an event."""

    def __init__(
        self,
        db_path: Optional[str | os.PathLike[str]] = None,
        *,
        capture_environment: bool = True,
        agent: Union[str, bool, None] = None,
        token: Optional[str] = None,
        sync_to: Optional[str | os.PathLike[str]] = None,
    ) -> None:
        self._backend: Backend = backend_for(db_path, agent, token)
        self.db_path = self._backend.path
        self._sync_to = self._upload_target(sync_to)
        self.capture_environment = capture_environment
        self._experiment_id: Optional[int] = None
        self._closed = False
        self._sampler: Optional[SystemSampler] = None  # system metrics of the current experiment, if asked for
        self._lifecycle_lock = threading.Lock()  # start/resume/end change the current experiment atomically
        _trackers.add(self)

    def __repr__(self) -> str:
        return (
            f"<ExperimentTracker db={self.db_path!r} experiment={self._experiment_id} "
            f"{self._backend.counters()}>"
        )

    @property
    def experiment_id(self) -> Optional[int]:
        """The id of the experiment log calls go to, or None."""
        return self._experiment_id

    current_experiment_id = experiment_id

    # -- lifecycle ---------------------------------------------------------------------------

    def start_experiment(
        self,
        name: str,
        experiment_type: Optional[str] = None,
        description: Optional[str] = None,
        tags: Optional[Iterable[str]] = None,
        random_seed: Optional[int] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        *,
        seed_everything: bool = False,
        system_metrics: Union[bool, float, None] = None,
    ) -> int:
        """Create an experiment (capturing git, Python, host, command, packages) and return its id.

        A tracker logs to one experiment at a time: starting another ends the current one
        "completed", also when threads start at once (one run stays open, the others end).
        With ``seed_everything=True`` and a ``random_seed``, random/numpy/torch are seeded.
        Names and tags must not contain NUL; metadata nests at most 100 levels deep.
        ``system_metrics`` (True, or seconds between samples; None: $ML_PERSISTENCE_SYSTEM_METRICS)
        samples CPU, memory, disk, network and GPUs into ``system/`` metrics until the run ends.
        """
        self._check_open()
        sampling = interval_for(system_metrics)
        if not isinstance(name, str) or not name:
            raise InvalidTypeError(f"name: expected a non-empty string, got {name!r:.60}")
        event = ExperimentStarted(
            name=v.name_text("name", name),
            experiment_type=v.optional_name("experiment_type", experiment_type),
            description=v.optional_str("description", description),
            tags=v.tags(tags),
            random_seed=v.optional_int("random_seed", random_seed),
            metadata=v.json_object_text("metadata", metadata),
            # Without the capture, the process is still named: liveness and sync_to's selection need it.
            environment=_storable(environment.capture()) if self.capture_environment
            else Environment(hostname=socket.gethostname(), pid=os.getpid()),
            ts=time.time(),
        )
        with self._lifecycle_lock:
            self._stop_sampler()
            previous = self._experiment_id
            if previous is not None and self._backend.running.pop(previous, None) == os.getpid():
                # Ours to end (a forked child leaves its parent's run alone); queued, not waited for.
                self._backend.append(encode(ExperimentEnded(previous, "completed", None, time.time())))
            self._experiment_id = None
            if seed_everything and event.random_seed is not None:
                environment.seed_everything(event.random_seed)
            experiment_id = self._backend.request(encode(event))
            self._backend.running[experiment_id] = os.getpid()
            self._experiment_id = experiment_id
            if sampling is not None:
                self._sampler = SystemSampler.start(self._backend, experiment_id, sampling)
        if self._sync_to is not None:
            upload.start(self._backend.db, self._sync_to, experiment_id, self)
        return experiment_id

    def resume_experiment(
        self, experiment_id: int, *, claim: bool = True, system_metrics: Union[bool, float, None] = None
    ) -> int:
        """Make an existing experiment the one log calls go to (e.g. after a restart).

        The experiment becomes this process's: it is running (an ended one is reopened), shows
        this pid, and is ended at this process's exit unless ended before. ``claim=False`` only
        joins it, leaving its status and owner as they are (another rank or process ends it).
        ``system_metrics`` is as for start_experiment; a run joined with ``claim=False`` is not sampled.
        """
        self._check_open()
        if not claim and system_metrics not in (None, False):
            raise InvalidValueError("system_metrics: a run joined with claim=False is its owner's to sample")
        sampling = interval_for(system_metrics) if claim else None
        experiment_id = v.optional_int("experiment_id", experiment_id)  # type: ignore[assignment]
        found = None if experiment_id is None else self._backend.read("get_experiment", experiment_id)
        if found is None:
            raise InvalidValueError(f"no experiment with id {experiment_id} in {self.db_path}")
        with self._lifecycle_lock:
            self._stop_sampler()
            if claim:
                # This process now owns the run: it shows as alive, and is ended at exit like a started one.
                # An ended run is reopened by its own event, which an agent too old to know refuses visibly.
                event = ExperimentResumed if found["status"] == "running" else ExperimentReopened
                self._backend.append(encode(event(experiment_id, socket.gethostname(), os.getpid(), time.time())))
                self._backend.running[experiment_id] = os.getpid()
            self._experiment_id = experiment_id
            if sampling is not None:
                self._sampler = SystemSampler.start(self._backend, experiment_id, sampling)
        if self._sync_to is not None:
            upload.start(self._backend.db, self._sync_to, experiment_id, self)
        return experiment_id

    def end_experiment(self, status: str = "completed", notes: Optional[str] = None) -> None:
        """Mark the current experiment ended with ``status`` and wait until that is committed."""
        self._require_experiment()
        if not isinstance(status, str) or not status:
            raise InvalidTypeError(f"status: expected a non-empty string, got {status!r:.60}")
        status = v.name_text("status", status)
        notes = v.optional_str("notes", notes)
        with self._lifecycle_lock:
            experiment_id = self._require_experiment()  # another thread may have ended it meanwhile
            self._stop_sampler()  # its last sample lands before the end
            self._backend.append(encode(ExperimentEnded(experiment_id, status, notes, time.time())))
            self._backend.running.pop(experiment_id, None)
            self._experiment_id = None
        self._backend.flush()

    def flush(self, timeout: Optional[float] = None) -> None:
        """Block until everything logged so far is committed; raise if any of it was lost."""
        self._backend.flush(timeout)

    def close(self) -> None:
        """Flush and stop accepting log calls (the experiment stays as it is; idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._experiment_id = None
        with self._lifecycle_lock:
            self._stop_sampler()
        self._backend.flush()
        if self._sync_to is not None:
            busy = os.getpid() in self._backend.running.values()
            upload.release(self._backend.db, self._sync_to, self, busy)

    def status(self) -> dict[str, Any]:
        """Return the writer's counters: queued, written, dropped, rejected, lost, ...

        ``upload`` is None, or with ``sync_to`` the uploader's {"target", "pid", "state", "pending", "error"}.
        """
        status = self._backend.status()
        status["upload"] = upload.status(self._backend.db, self._sync_to) if self._sync_to is not None else None
        return status

    def __enter__(self) -> "ExperimentTracker":
        return self

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._experiment_id is not None:
            status, notes = lifecycle.status_for(exc)
            self.end_experiment(status, notes)
        self.close()

    # -- logging (validate, encode, append) --------------------------------------------------

    def log_hyperparameter(self, name: str, value: Any) -> None:
        """Record one hyperparameter; its Python type is kept for read-back."""
        self.log_hyperparameters_batch({name: value})

    def log_hyperparameters_batch(self, params: Mapping[str, Any]) -> None:
        """Record several hyperparameters at once."""
        experiment_id = self._require_experiment()
        if not isinstance(params, Mapping):
            raise InvalidTypeError(f"expected a dict of hyperparameters, got {type(params).__name__}")
        names, values, types = [], [], []
        for name, value in params.items():
            name, text, kind = v.hyperparameter(name, value)
            names.append(name)
            values.append(text)
            types.append(kind)
        if names:
            self._backend.append(encode(HyperparametersLogged(experiment_id, names, values, types, time.time())))

    def log_metric(
        self,
        metric_name: str,
        value: Any,
        episode: Optional[int] = None,
        step: Optional[int] = None,
        epoch: Optional[int] = None,
        split: Optional[str] = None,
        value_json: Any = None,
        metadata: Optional[Mapping[str, Any]] = None,
        *,
        model_id: Optional[int] = None,
        phase: Optional[str] = None,
    ) -> None:
        """Record one metric value; ``value_json`` carries structured data (text or any JSON value)."""
        experiment_id = self._require_experiment()
        name = v.metric_name(metric_name)
        self._backend.append(
            encode(
                MetricsLogged(
                    experiment_id,
                    [name],
                    [v.real(name, value)],
                    v.optional_int("episode", episode),
                    v.optional_int("step", step),
                    v.optional_int("epoch", epoch),
                    v.optional_name("split", split),
                    time.time(),
                    v.optional_int("model_id", model_id),
                    v.optional_name("phase", phase),
                    v.value_json(value_json),
                    v.json_object_text("metadata", metadata),
                )
            )
        )

    def log_metrics_batch(
        self,
        metrics: Mapping[str, Any],
        episode: Optional[int] = None,
        step: Optional[int] = None,
        epoch: Optional[int] = None,
        split: Optional[str] = None,
    ) -> None:
        """Record several metrics at the same episode/step/epoch (the training loop's hot call)."""
        experiment_id = self._experiment_id
        if experiment_id is None:
            experiment_id = self._require_experiment()
        try:
            keys = tuple(metrics)
            values = list(metrics.values())
        except (AttributeError, TypeError):
            raise InvalidTypeError(f"expected a dict of metrics, got {type(metrics).__name__}") from None
        names = _METRIC_NAMES.get(keys)
        if names is None:
            names = _checked_metric_names(keys)
        for value in values:
            if type(value) is not float:
                values = [v.real(name, value) for name, value in zip(names, values)]
                break
        if episode is not None and (type(episode) is not int or not _MIN <= episode <= _MAX):
            episode = v.optional_int("episode", episode)
        if step is not None and (type(step) is not int or not _MIN <= step <= _MAX):
            step = v.optional_int("step", step)
        if epoch is not None and (type(epoch) is not int or not _MIN <= epoch <= _MAX):
            epoch = v.optional_int("epoch", epoch)
        if split is not None and (type(split) is not str or not split.isascii() or "\x00" in split):
            split = v.optional_name("split", split)
        if names:
            # The bytes of encode(MetricsLogged(...)), without building the struct (tests/test_wire_format.py).
            self._backend.append(
                _encode_tuple(
                    (_METRICS_TAG, experiment_id, names, values, episode, step, epoch, split, time.time(), None, None, None, None)
                )
            )

    def log_artifact(
        self,
        path: Optional[str | os.PathLike[str]] = None,
        artifact_type: Optional[str] = None,
        artifact_name: Optional[str] = None,
        description: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        model_id: Optional[int] = None,
        *,
        artifact_path: Optional[str | os.PathLike[str]] = None,
    ) -> int:
        """Record a file (plot, log, config, report) and return the artifact's id."""
        experiment_id = self._require_experiment()
        path = path if path is not None else artifact_path
        if path is None:
            raise InvalidTypeError("log_artifact() needs the artifact's path")
        path = v.path_text("path", path)
        if artifact_type is None:
            artifact_type = os.path.splitext(path)[1].lstrip(".") or "file"
        event = ArtifactLogged(
            experiment_id=experiment_id,
            model_id=v.optional_int("model_id", model_id),
            artifact_type=str(v.optional_name("artifact_type", artifact_type)),
            artifact_path=path,
            artifact_name=v.optional_name("artifact_name", artifact_name) or os.path.basename(path),
            file_size_mb=file_size_mb(path),
            description=v.optional_str("description", description),
            metadata=v.json_object_text("metadata", metadata),
            ts=time.time(),
        )
        return self._backend.request(encode(event))

    # -- reads (each waits for this process's earlier writes) --------------------------------

    def list_experiments(
        self,
        experiment_type: Optional[str] = None,
        status: Optional[str] = None,
        tags: Optional[Iterable[str]] = None,
        limit: Optional[int] = None,
        name: Optional[str] = None,
    ) -> list[dict[str, Any]]:
        """Return experiments newest first, with num_checkpoints and best_val_metric."""
        tags = v.tags(tags) if tags is not None else None  # as logged: no NUL (which no engine could match)
        return self._backend.read(
            "list_experiments", v.optional_name("experiment_type", experiment_type),
            v.optional_name("status", status), tags, limit, v.optional_name("name", name),
        )

    def get_experiment(self, experiment_id: Optional[int] = None) -> Optional[dict[str, Any]]:
        """Return everything about one experiment (default: the current one), or None."""
        if experiment_id is None:
            experiment_id = self._require_experiment()
        return self._backend.read("get_experiment", experiment_id)

    def get_hyperparameters(self, experiment_id: Optional[int] = None) -> dict[str, Any]:
        """Return {name: value} for an experiment (default: the current one)."""
        if experiment_id is None:
            experiment_id = self._require_experiment()
        return self._backend.read("get_hyperparameters", experiment_id)

    def list_artifacts(
        self, experiment_id: Optional[int] = None, artifact_type: Optional[str] = None
    ) -> list[dict[str, Any]]:
        """Return an experiment's artifacts (default: the current one)."""
        if experiment_id is None:
            experiment_id = self._require_experiment()
        return self._backend.read("list_artifacts", experiment_id, artifact_type)

    def search_experiments(
        self,
        filter: Optional[str] = None,
        order_by: Union[str, Iterable[str], None] = None,
        limit: Optional[int] = None,
    ) -> list[dict[str, Any]]:
        """Return experiments matching ``filter`` (the filter language) in ``order_by`` order, effective status.

        E.g. ``search_experiments('params.lr < 1e-3 and metrics.val_sharpe > 1.5', ["metrics.val_sharpe desc"])``.
        A filter that does not parse raises FilterError here, before any read.
        """
        from .filtering.search import BackendReads, search

        return search(BackendReads(self._backend), filter, order_by, limit)

    # -- helpers -------------------------------------------------------------------------------

    def _upload_target(self, sync_to: Optional[str | os.PathLike[str]]) -> Optional[str]:
        """Return where this tracker's runs are uploaded (``sync_to``, else $ML_PERSISTENCE_SYNC_TO), or None."""
        if self._backend.mode == "agent":
            if sync_to is not None and os.fspath(sync_to):
                raise InvalidValueError("sync_to: an agent writes this tracker's runs; start the agent with --sync-to instead")
            return None  # $ML_PERSISTENCE_SYNC_TO is the agent's business too
        return upload.target_for(sync_to, self._backend.db)

    def _stop_sampler(self) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.stop()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this ExperimentTracker is closed")

    def _require_experiment(self) -> int:
        if self._experiment_id is None:
            self._check_open()
            raise NoActiveExperimentError("no experiment is running on this tracker: call start_experiment() first")
        return self._experiment_id
