"""What the integrations share: one experiment per training run, recorded by rank 0 or by every rank."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import sys
from typing import Any, Iterable, Mapping, Optional, Union

from ..errors import MLPersistenceError
from ..lifecycle import status_for
from ..registry import ModelRegistry
from ..tracker import ExperimentTracker

EXPERIMENT_ID_ENV = "ML_PERSISTENCE_EXPERIMENT_ID"
_MAX_DEPTH = 8
_MAX_ITEMS = 10_000
_LEFT_OUT = "(left out)"


def torch_distributed() -> Any:
    """Return torch.distributed when this process is one of several in an initialized group, else None."""
    torch = sys.modules.get("torch")  # never import torch for this
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist if dist.get_world_size() > 1 else None


def process_rank() -> int:
    """This process's global rank: torch.distributed's, else torchrun's ``RANK`` of ``WORLD_SIZE`` > 1, else 0.

    SLURM_PROCID or a lone LOCAL_RANK are not taken as ranks: an ``srun -n4`` sweep of four
    independent runs would otherwise record only one of them.
    """
    dist = torch_distributed()
    if dist is not None:
        return int(dist.get_rank())
    rank, world = os.environ.get("RANK", "").strip(), os.environ.get("WORLD_SIZE", "").strip()
    if rank.isdigit() and world.isdigit() and int(world) > 1:
        return int(rank)
    return 0


def broadcast_from_rank_zero(value: Optional[int]) -> Optional[int]:
    """Give every rank rank 0's ``value`` (a collective call: every rank must make it)."""
    dist = torch_distributed()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def plain(value: Any) -> Any:
    """Return ``value`` as JSON-able data: numbers and text kept, containers converted, other objects named.

    At most 10,000 container items in all (nested ones included); past that a marker says how
    many were left out.
    """
    return _plain(value, 0, [_MAX_ITEMS])


def _plain(value: Any, depth: int, budget: list[int]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value, depth, budget)
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '') or ''}.{value.__qualname__}".lstrip(".")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    number = scalar(value)
    if number is not None:
        return number
    if depth >= _MAX_DEPTH:
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        items = list(value.items())
        taken = _take(budget, len(items))
        kept = {str(key): _plain(item, depth + 1, budget) for key, item in items[:taken]}
        if taken < len(items):
            kept[_LEFT_OUT] = f"{len(items) - taken} more entries not recorded"
        return kept
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value)
        taken = _take(budget, len(items))
        kept_items = [_plain(item, depth + 1, budget) for item in items[:taken]]
        if taken < len(items):
            kept_items.append(f"{_LEFT_OUT} {len(items) - taken} more items not recorded")
        return kept_items
    tolist = getattr(value, "tolist", None)  # small numpy arrays and tensors
    size = getattr(value, "size", None)
    if callable(tolist) and isinstance(size, int) and size <= budget[0]:
        return _plain(tolist(), depth + 1, budget)
    return str(value)


def _take(budget: list[int], wanted: int) -> int:
    taken = min(wanted, max(budget[0], 0))
    budget[0] -= taken
    return taken


def scalar(value: Any) -> Union[int, float, None]:
    """Return a real number from a Python, numpy or torch scalar (or one-element tensor), else None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    item = getattr(value, "item", None)
    if not callable(item) or type(value).__module__.split(".")[0] not in ("numpy", "torch"):
        return None
    try:
        value = item()
    except (ValueError, RuntimeError):  # more than one element
        return None
    if isinstance(value, bool):
        return int(value)
    return value if isinstance(value, (int, float)) else None


def training_status(exc: Optional[BaseException]) -> tuple[str, Optional[str]]:
    """The (status, notes) of a run whose training call returned (None) or raised ``exc``.

    As lifecycle.status_for, except that ``sys.exit(0)`` inside training (the usual "checkpoint
    and exit for a requeue") is "interrupted": the training did not finish.
    """
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return "interrupted", f"SystemExit({exc.code!r}) raised during training"
    return status_for(exc)


def running_epoch(epoch: Any) -> Optional[int]:
    """The 0-based epoch a fractional epoch counter (0.25, 1.0, 1.5 ...) falls in."""
    number = scalar(epoch)
    if number is None or not math.isfinite(number):
        return None
    return max(math.ceil(number) - 1, 0)


class TrainingRun:
    """One experiment recorded on a framework's behalf: started or joined, ended only if started here.

    By default only rank 0 records (every call is a no-op elsewhere). With ``all_ranks=True``
    every rank logs into rank 0's experiment, its metrics named ``rank{N}/...``.
    """

    def __init__(
        self,
        framework: str,
        *,
        name: Optional[str] = None,
        experiment_type: Optional[str] = None,
        description: Optional[str] = None,
        tags: Optional[Iterable[str]] = None,
        experiment_id: Optional[int] = None,
        tracker: Optional[ExperimentTracker] = None,
        db_path: Optional[Union[str, os.PathLike[str]]] = None,
        agent: Union[str, bool, None] = None,
        token: Optional[str] = None,
        all_ranks: bool = False,
    ) -> None:
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        self._options = dict(
            name=name, experiment_type=experiment_type, description=description, tags=tags,
            experiment_id=experiment_id, tracker=tracker, db_path=db_path, agent=agent, token=token,
            all_ranks=all_ranks,
        )
        self.framework = framework
        self.name = name
        self.experiment_type = experiment_type
        self.description = description
        self.tags = tags if framework in tags else [*tags, framework]
        self.all_ranks = all_ranks
        self._join_id = experiment_id
        self._tracker = tracker
        self._users_tracker = tracker is not None
        self._db_path, self._agent, self._token = db_path, agent, token
        self._registry: Optional[ModelRegistry] = None
        self._experiment_id: Optional[int] = None
        self._claim = True  # whether joining an experiment makes it this process's
        self._owner = False
        self._ended = False
        self._status: Optional[str] = None  # how this run last ended its experiment
        self._loggable = False  # an ended run reopened without claiming it
        self.rank = 0

    def __getstate__(self) -> dict[str, Any]:
        """A copy (deepcopy, pickle) is a run of its own, not started; it joins only what it was told to."""
        state = self.__dict__.copy()
        if self._tracker is not None:
            state["_db_path"] = self._db_path if self._db_path is not None else self._tracker.db_path
            if self._users_tracker and self._tracker.experiment_id is not None:
                state.update(_join_id=self._tracker.experiment_id, _claim=False)  # the caller's, to end
        state.update(_tracker=None, _registry=None, _owner=False, _ended=False, _status=None, _loggable=False,
                     _experiment_id=None, _options={**self._options, "tracker": None, "db_path": state["_db_path"]})
        return state

    def fresh(self) -> "TrainingRun":
        """A new run with this one's options, not started (the next training call's experiment)."""
        return TrainingRun(self.framework, **self._options)

    def joining_copy(self) -> "TrainingRun":
        """A copy for a worker process (ddp_spawn) that joins this run's experiment and never ends it."""
        copy = TrainingRun.__new__(TrainingRun)
        copy.__dict__.update(self.__getstate__())
        if self._experiment_id is not None:
            copy._join_id, copy._claim = self._experiment_id, False
        return copy

    def __repr__(self) -> str:
        return f"<TrainingRun {self.framework} experiment={self._experiment_id} rank={self.rank}>"

    @property
    def experiment_id(self) -> Optional[int]:
        """The experiment being recorded, or None (not started yet, or a rank that does not record)."""
        return self._experiment_id

    @property
    def tracker(self) -> Optional[ExperimentTracker]:
        """The ExperimentTracker logging this run (None on a rank that does not record)."""
        return self._tracker if self._experiment_id is not None else None

    def records(self, rank: int) -> bool:
        """Whether a process of this rank records anything."""
        return rank == 0 or self.all_ranks

    def start(
        self,
        default_name: str,
        *,
        rank: Optional[int] = None,
        random_seed: Optional[int] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> Optional[int]:
        """Start or join the experiment once; return its id, or None on a rank that does not record.

        With ``all_ranks`` under torch.distributed this is a collective call.
        """
        if self._experiment_id is not None:
            return self._experiment_id
        self.rank = process_rank() if rank is None else rank
        if not self.records(self.rank):
            return None
        join_id = self._join_id if self._join_id is not None else _env_experiment_id()
        experiment_id: Optional[int] = None
        if self.rank == 0:
            experiment_id = self._start_or_join(default_name, join_id, random_seed, metadata)
        if self.all_ranks:
            shared = broadcast_from_rank_zero(experiment_id)
            experiment_id = shared if shared is not None else join_id
        if self.rank != 0:
            if experiment_id is None:
                raise MLPersistenceError(
                    f"all_ranks=True: rank {self.rank} cannot learn rank 0's experiment; initialize "
                    f"torch.distributed first or set {EXPERIMENT_ID_ENV}"
                )
            self._tracker = self._tracker or self._new_tracker()
            self._tracker.resume_experiment(experiment_id, claim=False)
        self._experiment_id = experiment_id
        return experiment_id

    def _start_or_join(
        self,
        default_name: str,
        join_id: Optional[int],
        random_seed: Optional[int],
        metadata: Optional[Mapping[str, Any]],
    ) -> int:
        if self._tracker is not None and self._tracker.experiment_id is not None:
            return self._tracker.experiment_id  # the caller's experiment: the caller ends it
        self._tracker = self._tracker or self._new_tracker()
        self._owner = self._claim
        if join_id is not None:
            return self._tracker.resume_experiment(join_id, claim=self._claim)
        return self._tracker.start_experiment(
            self.name or default_name,
            experiment_type=self.experiment_type,
            description=self.description,
            tags=self.tags,
            random_seed=random_seed,
            metadata=plain(dict(metadata or {})),
        )

    def _new_tracker(self) -> ExperimentTracker:
        return ExperimentTracker(self._db_path, agent=self._agent, token=self._token)

    def log_hyperparameters(self, params: Mapping[str, Any]) -> None:
        """Record hyperparameters (from rank 0 only), each converted to JSON-able data."""
        if self._experiment_id is None or self.rank != 0 or not params:
            return
        self._tracker.log_hyperparameters_batch({str(key): plain(value) for key, value in params.items()})

    def log_metrics(
        self,
        metrics: Mapping[str, Any],
        *,
        step: Optional[int] = None,
        epoch: Optional[int] = None,
        episode: Optional[int] = None,
    ) -> None:
        """Record the real-valued entries of ``metrics``; text, images and arrays are skipped."""
        if self._experiment_id is None:
            return
        prefix = f"rank{self.rank}/" if self.all_ranks else ""
        values = {}
        for key, value in metrics.items():
            number = scalar(value)
            if number is not None:
                values[f"{prefix}{key}"] = number
        if values:
            self._tracker.log_metrics_batch(values, step=step, epoch=epoch, episode=episode)

    def register_checkpoint(
        self,
        path: Union[str, os.PathLike[str]],
        *,
        architecture_type: Optional[str] = None,
        step: Optional[int] = None,
        episode: Optional[int] = None,
        train_metric: Any = None,
        val_metric: Any = None,
        is_best: bool = False,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> Optional[int]:
        """Register a saved checkpoint with the model registry (rank 0 only); return the model id."""
        if self._experiment_id is None or self.rank != 0:
            return None
        if self._registry is None:
            self._registry = ModelRegistry(self._db_path, agent=self._agent, token=self._token)
        return self._registry.register_model(
            experiment_id=self._experiment_id,
            checkpoint_path=path,
            architecture_type=architecture_type,
            global_step=step,
            episode_num=episode,
            train_metric=_real_or_none(train_metric),
            val_metric=_real_or_none(val_metric),
            is_best=is_best,
            metadata=plain(dict(metadata or {})),
        )

    def end(self, status: str = "completed", notes: Optional[str] = None) -> None:
        """End the experiment if this run started (or resumed) it; otherwise just flush."""
        if self._experiment_id is None or self._tracker is None:
            return
        if self._owner and not self._ended:
            if status == "completed" and self._status not in (None, "completed"):
                status, notes = self._status, None  # a test pass after a failed fit leaves it failed
            self._ended, self._status, self._loggable = True, status, False
            self._tracker.end_experiment(status, notes)
        else:
            self._tracker.flush()

    def end_with(self, exc: Optional[BaseException]) -> None:
        """End as training that raised ``exc`` (or returned, for None) should: completed, failed or interrupted."""
        self.end(*training_status(exc))

    def reopen(self, claim: bool = True) -> None:
        """Log again into an experiment this run ended (e.g. a test pass after fit).

        It is running again until ended again (never "completed" over an earlier failure);
        ``claim=False`` only makes it loggable, status untouched, and ending it again a no-op.
        """
        if not self._ended or self._tracker is None or self._experiment_id is None:
            return
        if claim:
            self._tracker.resume_experiment(self._experiment_id)
            self._ended = False
        elif not self._loggable:
            self._tracker.resume_experiment(self._experiment_id, claim=False)
            self._loggable = True

    @property
    def ended(self) -> bool:
        """Whether this run ended its experiment."""
        return self._ended


def _env_experiment_id() -> Optional[int]:
    text = os.environ.get(EXPERIMENT_ID_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise MLPersistenceError(f"{EXPERIMENT_ID_ENV} must be an experiment id, got {text!r:.40}")
    return int(text)


def _real_or_none(value: Any) -> Optional[float]:
    number = scalar(value)
    if number is None:
        return None
    return float(number)
