"""Hugging Face Transformers: a TrainerCallback that records each Trainer.train() call as an experiment."""

from __future__ import annotations

import functools
import inspect
import os
import time
import warnings
from typing import Any, Callable, Iterable, Mapping, Optional, Union

try:
    import transformers
    from transformers import Trainer, TrainerCallback
    from transformers.integrations import integration_utils
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ml_persistence.integrations.transformers needs Hugging Face Transformers: "
        "pip install 'ml_persistence[transformers]'"
    ) from error

from ml_persistence import ExperimentTracker
from ml_persistence.integrations.run import TrainingRun, running_epoch, scalar, training_status

REPORT_TO = "ml_persistence"
_STACK_DEPTH = 8  # on_init_end <- call_event <- CallbackHandler.on_init_end <- Trainer.__init__ (+ subclasses)


class MLPersistenceCallback(TrainerCallback):
    """Record ``trainer.train()``: hyperparameters, Trainer's logs, checkpoints and the outcome.

    ``Trainer(..., callbacks=[MLPersistenceCallback()])``, or ``TrainingArguments(report_to=
    ["ml_persistence"])`` once this module is imported. Each train() starts an experiment (or
    joins ``experiment_id`` / the current experiment of ``tracker``), records the model config
    merged with the TrainingArguments and the parameter count, every numeric value Trainer logs
    (``loss``, ``learning_rate``, ``grad_norm``, ``eval_loss``, ``train_runtime`` ...) at its
    global step, and registers each saved checkpoint, the best one by ``metric_for_best_model``
    marked. The experiment ends "completed" when train() returns and "failed" (traceback in the
    notes) or "interrupted" (Ctrl-C) when it raises. That needs the callback given to the
    Trainer's constructor (``callbacks=`` or ``report_to``): one added later with
    ``trainer.add_callback`` cannot see train() raise; its run then stays "running" until
    ml_persistence's exit hook ends it (as the process ends) or the next train() ends it "failed".

    Logs after train() returned (``trainer.evaluate()``, ``trainer.predict()``) go into the
    experiment just recorded, which keeps its status; before any train() nothing is recorded.
    Only rank 0 records unless ``all_ranks``.
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
        self.run = TrainingRun(
            "transformers",
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
        self._training = False
        self._architecture: Optional[str] = None

    @property
    def experiment_id(self) -> Optional[int]:
        """The experiment being recorded (None before train() starts, or on a rank that does not record)."""
        return self.run.experiment_id

    @property
    def tracker(self) -> Optional[ExperimentTracker]:
        """The ExperimentTracker recording this run, for logging more of your own."""
        return self.run.tracker

    # -- Trainer events -----------------------------------------------------------------------

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = _trainer_being_built(self)
        if trainer is not None:
            self._guard(trainer)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self._training:  # the last train() raised past an unguarded trainer (add_callback)
            self._training = False
            self.run.end("failed", "train() raised before it ended (the callback was not given to Trainer())")
        if self.run.experiment_id is not None:
            self.run = self.run.fresh()  # a further train(): a new experiment
        model_class = type(model).__name__ if model is not None else "model"
        # Transformers 4.x defaulted run_name to output_dir: that is no name the user chose.
        user_named = args.run_name and args.run_name != args.output_dir
        experiment_id = self.run.start(
            args.run_name if user_named else f"{model_class}_{time.strftime('%Y%m%d_%H%M%S')}",
            rank=args.process_index,
            random_seed=args.seed,
            metadata={
                "framework": "transformers",
                "transformers_version": transformers.__version__,
                "model_class": f"{type(model).__module__}.{type(model).__qualname__}" if model is not None else None,
                "world_size": args.world_size,
            },
        )
        if experiment_id is None:
            return
        self._training = True
        self._architecture = model_class
        self.run.log_hyperparameters(hyperparameters(args, model))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: Optional[Mapping[str, Any]] = None, **kwargs: Any
    ) -> None:
        if self.run.experiment_id is None or not logs:
            return
        epoch = running_epoch(state.epoch) if state.epoch is not None else None
        if not self.run.ended:
            self.run.log_metrics(logs, step=state.global_step, epoch=epoch)
            return
        self.run.reopen()  # e.g. trainer.evaluate() after train(): into the ended run, status unchanged
        try:
            self.run.log_metrics(logs, step=state.global_step, epoch=epoch)
        finally:
            self.run.end()  # "completed" never replaces the status train() ended with

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.log_checkpoints or not self._training:
            return
        path = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        metric = best_metric_name(args)
        # Trainer evaluates and updates best_model_checkpoint before it calls on_save.
        self.run.register_checkpoint(
            path,
            architecture_type=self._architecture,
            step=state.global_step,
            val_metric=evaluated_at(state, metric, state.global_step) if metric else None,
            is_best=state.best_model_checkpoint is not None and _same_path(state.best_model_checkpoint, path),
            metadata={"val_metric": metric, "epoch": state.epoch},
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._finish(None)

    # -- ending -------------------------------------------------------------------------------

    def _finish(self, exc: Optional[BaseException]) -> None:
        if not self._training:
            return
        self._training = False
        self.run.end(*training_status(exc))

    def _guard(self, trainer: Trainer) -> None:
        """Wrap this trainer's train() (an instance attribute) so an exception from it ends the run."""
        # Trainer calls no callback when train() raises: without this, an exception caught by the
        # caller (a notebook, a sweep) would leave the run "running" for as long as the process lives.
        if getattr(trainer.train, "__ml_persistence_guard__", None) is self:
            return
        trainer.train = self._guarded(trainer.train)

    def _guarded(self, train: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(train)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return train(*args, **kwargs)
            except BaseException as exc:
                try:
                    self._finish(exc)
                except Exception as error:  # noqa: BLE001 - never hide the training error
                    warnings.warn(
                        f"ml_persistence could not end experiment {self.experiment_id}: {error}", stacklevel=2
                    )
                raise

        guarded.__ml_persistence_guard__ = self  # type: ignore[attr-defined]
        return guarded


def hyperparameters(args: Any, model: Any) -> dict[str, Any]:
    """The model config merged with the TrainingArguments (which win on a clash), and the parameter count."""
    params: dict[str, Any] = {}
    config = getattr(model, "config", None)
    if isinstance(config, Mapping):
        params.update(config)
    elif callable(getattr(config, "to_dict", None)):
        params.update(config.to_dict())
    params.update(args.to_dict())
    count = parameter_count(model)
    if count is not None:
        params["num_parameters"] = count
    return params


def parameter_count(model: Any) -> Optional[int]:
    """The number of parameters of a model, or None."""
    if callable(getattr(model, "num_parameters", None)):
        return int(model.num_parameters())
    if callable(getattr(model, "parameters", None)):
        return sum(int(p.numel()) for p in model.parameters())
    return None


def best_metric_name(args: Any) -> Optional[str]:
    """The logged name of ``metric_for_best_model`` ("loss" is logged as "eval_loss"), or None."""
    metric = args.metric_for_best_model
    if not metric:
        return None
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def evaluated_at(state: Any, metric: str, step: int) -> Optional[float]:
    """The value ``metric`` was logged with by an evaluation at global step ``step``, or None."""
    for entry in reversed(state.log_history):
        if metric in entry:
            number = scalar(entry[metric])
            return float(number) if number is not None and entry.get("step") == step else None
    return None


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def _trainer_being_built(callback: MLPersistenceCallback) -> Optional[Trainer]:
    """The Trainer whose __init__ is calling ``callback.on_init_end``, found up the stack, or None."""
    frame = inspect.currentframe()
    try:
        for _ in range(_STACK_DEPTH):
            if frame is None:
                return None
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Trainer) and any(cb is callback for cb in candidate.callback_handler.callbacks):
                return candidate
            frame = frame.f_back
        return None
    finally:
        del frame


integration_utils.INTEGRATION_TO_CALLBACK[REPORT_TO] = MLPersistenceCallback
