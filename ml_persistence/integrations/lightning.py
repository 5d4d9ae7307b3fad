"""PyTorch Lightning: a Logger that records a Trainer's runs as one experiment."""

from __future__ import annotations

import math
import os
import re
import sys
from argparse import Namespace
from typing import Any, Iterable, Mapping, Optional, Union

try:
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.loggers.logger import DummyExperiment
    from lightning.pytorch.utilities import rank_zero_only
except ImportError:
    try:
        from pytorch_lightning.loggers import Logger  # type: ignore[no-redef]
        from pytorch_lightning.loggers.logger import DummyExperiment  # type: ignore[no-redef]
        from pytorch_lightning.utilities import rank_zero_only  # type: ignore[no-redef]
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "ml_persistence.integrations.lightning needs PyTorch Lightning: pip install 'ml_persistence[lightning]'"
        ) from error

from ..tracker import ExperimentTracker
from .run import TrainingRun, plain, scalar

DEFAULT_NAME = "lightning"
SEED_ENV = "PL_GLOBAL_SEED"  # set by lightning's seed_everything()
_STEP_IN_NAME = re.compile(r"(?:^|[^A-Za-z0-9_])step=(\d+)")


class MLPersistenceLogger(Logger):
    """Record a Trainer's fit/validate/test calls as one experiment: hyperparameters, metrics, checkpoints, status.

    ``Trainer(logger=MLPersistenceLogger())`` starts an experiment when the Trainer sets up (or
    joins ``experiment_id`` / the current experiment of ``tracker``), records the LightningModule's
    saved hyperparameters, every metric Lightning logs at its step (with the ``epoch`` column),
    registers each checkpoint a ModelCheckpoint saves (its monitored score as ``val_metric``, the
    best one marked), and ends "completed", "failed" (traceback in notes) or "interrupted".
    A later ``trainer.test()`` logs into the same experiment and ends it again.
    """

    def __init__(
        self,
        name: Optional[str] = None,
        *,
        experiment_type: Optional[str] = "supervised",
        description: Optional[str] = None,
        tags: Optional[Iterable[str]] = None,
        experiment_id: Optional[int] = None,
        tracker: Optional[ExperimentTracker] = None,
        db_path: Optional[Union[str, os.PathLike[str]]] = None,
        agent: Union[str, bool, None] = None,
        token: Optional[str] = None,
        all_ranks: bool = False,
        log_checkpoints: bool = True,
    ) -> None:
        super().__init__()
        self.run = TrainingRun(
            "lightning",
            name=name,
            experiment_type=experiment_type,
            description=description,
            tags=tags,
            experiment_id=experiment_id,
            tracker=tracker,
            db_path=db_path,
            agent=agent,
            token=token,
            all_ranks=all_ranks,
        )
        self.log_checkpoints = log_checkpoints
        self._hyperparameters: Optional[dict[str, Any]] = None  # recorded ones, read back on first use
        self._registered: dict[str, Any] = {}  # checkpoint path -> _signature() of the file registered
        self._architecture: Optional[str] = None
        self._last_step: Optional[int] = None
        self._latest: dict[str, Any] = {}  # the latest value logged under each name

    # -- what Lightning reads -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The experiment name (also the checkpoint directory's name)."""
        return self.run.name or DEFAULT_NAME

    @property
    def version(self) -> Optional[int]:
        """The experiment id, None where this rank does not record; checkpoints go to ``<root>/<name>/version_<id>/``."""
        if not self.run.all_ranks:  # with all_ranks the start is collective: it waits for `experiment`
            self._open(reopen=False)
        return self.run.experiment_id

    @property
    def experiment(self) -> Any:
        """The ExperimentTracker recording the run (``self.logger.experiment.log_artifact(...)``); a no-op elsewhere."""
        if not self._open(claim=False):  # an artifact logged after fit leaves the run's status alone
            return DummyExperiment()
        return self.run.tracker

    @property
    def experiment_id(self) -> Optional[int]:
        """The experiment being recorded (None before the Trainer sets up, or on a rank that does not record)."""
        return self.run.experiment_id

    # -- what Lightning calls -------------------------------------------------------------------

    def log_hyperparams(self, params: Union[Mapping[str, Any], Namespace, None], *args: Any, **kwargs: Any) -> None:
        """Record hyperparameters (a dict, Namespace or AttributeDict); values already recorded are not repeated."""
        if params is None or not self._open():
            return
        items = vars(params) if isinstance(params, Namespace) else dict(params)
        if self._hyperparameters is None:  # what the experiment already has (a ddp_spawn worker of test())
            self._hyperparameters = dict(self.run.tracker.get_hyperparameters(self.run.experiment_id))
        changed = {}
        for key, value in items.items():
            value = plain(value)
            if self._hyperparameters.get(str(key), _UNSET) != value:
                changed[str(key)] = self._hyperparameters[str(key)] = value
        self.run.log_hyperparameters(changed)

    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        """Record the numeric metrics at ``step`` (else the last step seen); ``epoch`` also fills the epoch column."""
        if step is not None:
            self._last_step = int(step)
        if not self._open():
            return
        self._latest.update(metrics)
        self.run.log_metrics(metrics, step=self._last_step, epoch=_epoch(metrics.get("epoch")))

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Note the LightningModule's class, the checkpoints' architecture_type (no graph is recorded)."""
        self._architecture = type(model).__name__

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Register each checkpoint file the ModelCheckpoint saved since the last call (rank 0)."""
        if not self.log_checkpoints or not self._open():
            return
        monitor = getattr(checkpoint_callback, "monitor", None)
        mode = getattr(checkpoint_callback, "mode", None) if monitor else None
        best = getattr(checkpoint_callback, "best_model_path", "") or ""
        scores = dict(getattr(checkpoint_callback, "best_k_models", None) or {})
        candidates = [
            *scores,
            best,
            getattr(checkpoint_callback, "last_model_path", ""),
            getattr(checkpoint_callback, "_last_checkpoint_saved", ""),  # the only record of an on-exception save
        ]
        saved_at = getattr(checkpoint_callback, "_last_global_step_saved", None)  # trainer.global_step of this save
        if not isinstance(saved_at, int) or saved_at < 0:
            saved_at = self._last_step
        for path in dict.fromkeys(p for p in candidates if isinstance(p, str) and p):
            signature = _signature(path)
            if signature is None or self._registered.get(path) == signature:
                continue
            self._registered[path] = signature
            score = scores.get(path)
            if score is None and path == best:
                score = getattr(checkpoint_callback, "best_model_score", None)
            if score is None and monitor:  # not in the top k (last.ckpt, a fixed name): the latest value logged
                score = self._latest.get(monitor)
            score = scalar(score)
            self.run.register_checkpoint(
                path,
                architecture_type=self._architecture,
                step=_step_in_name(path, saved_at),
                val_metric=score,
                is_best=path == best,
                metadata={"monitor": monitor, "mode": mode, "score": score},
            )

    def finalize(self, status: str) -> None:
        """End the experiment: "success" -> completed, "failed" -> failed (traceback) or interrupted (Ctrl-C)."""
        if self.run.experiment_id is None:
            return
        if status == "success":
            self.run.end("completed")
        elif status == "failed":
            exc = sys.exc_info()[1]  # Lightning calls finalize("failed") inside its except block
            if exc is not None:
                self.run.end_with(exc)
            else:
                self.run.end("failed")
        else:  # "aborted", or "finished" when Lightning requeues a SLURM job: the training did not finish
            self.run.end("interrupted", f"Lightning ended the run with finalize({status!r})")

    def __getstate__(self) -> dict[str, Any]:
        state = {**self.__dict__, "_hyperparameters": None, "_registered": {}, "_latest": {}}
        if _pickled_for_spawned_workers():
            # Start the experiment here first: the workers join it (they never own it) and a
            # later test() in this process finds it again.
            self._open(reopen=False)
            state["run"] = self.run.joining_copy()
        return state  # any other copy (deepcopy, pickle) is a logger of its own, not started

    # -- helpers --------------------------------------------------------------------------------

    def _open(self, reopen: bool = True, claim: bool = True) -> bool:
        """Start the run (or log again into the one a finalize ended); return whether this rank records."""
        rank = rank_zero_only.rank
        if not self.run.records(rank):
            return False
        if self.run.experiment_id is None:
            self.run.start(DEFAULT_NAME, rank=rank, random_seed=_global_seed())
        elif reopen:
            self.run.reopen(claim)
        return self.run.experiment_id is not None

    def __repr__(self) -> str:
        return f"<MLPersistenceLogger name={self.name!r} experiment={self.run.experiment_id}>"


_UNSET = object()


def _pickled_for_spawned_workers() -> bool:
    """Whether Lightning's multiprocessing launcher (ddp_spawn) is pickling this for its workers."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").endswith("strategies.launchers.multiprocessing"):
            return True
        frame = frame.f_back
    return False


def _epoch(value: Any) -> Optional[int]:
    number = scalar(value)
    return int(number) if number is not None and math.isfinite(number) else None


def _global_seed() -> Optional[int]:
    try:
        return int(os.environ[SEED_ENV])
    except (KeyError, ValueError):
        return None


def _step_in_name(path: str, default: Optional[int]) -> Optional[int]:
    """The N of "step=N" in Lightning's default file name ("epoch=1-step=64.ckpt"), else ``default``."""
    found = _STEP_IN_NAME.search(os.path.basename(path))
    return int(found.group(1)) if found else default


def _signature(path: str) -> Optional[tuple[int, int, int]]:
    """What tells one save of ``path`` from the next (last.ckpt is rewritten in place); None if there is no file.

    A symlink (``save_last="link"``) is skipped: its target is registered on its own.
    """
    if "://" in path:
        return (0, 0, 0)  # remote storage: registered once per path
    try:
        if os.path.islink(path):
            return None
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size
