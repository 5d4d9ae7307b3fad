"""Stable-Baselines3: a callback that records a learn() call as an experiment."""

from __future__ import annotations

import functools
import math
import os
import shutil
import time
import warnings
import weakref
from typing import Any, Callable, Iterable, Iterator, Optional, Union

try:
    from stable_baselines3.common.callbacks import (
        BaseCallback,
        CallbackList,
        CheckpointCallback,
        EvalCallback,
    )
    from stable_baselines3.common.logger import KVWriter
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ml_persistence.integrations.sb3 needs Stable-Baselines3: pip install 'ml_persistence[sb3]'"
    ) from error

from ..tracker import ExperimentTracker
from .run import TrainingRun, plain, scalar, training_status

# Attributes of an algorithm that are state or objects, not settings.
_NOT_HYPERPARAMETERS = frozenset(
    {
        "num_timesteps", "start_time", "verbose", "env", "eval_env", "policy", "actor", "critic",
        "critic_target", "q_net", "q_net_target", "rollout_buffer", "replay_buffer",
        "ep_info_buffer", "ep_success_buffer", "lr_schedule", "exploration_schedule",
        "action_noise", "logger",
    }
)
# Schedules (callables of the remaining progress) are recorded at their starting value.
_SCHEDULES = frozenset({"learning_rate", "clip_range", "clip_range_vf", "exploration_rate"})
_GUARDED = ("learn", "collect_rollouts", "train", "dump_logs", "_dump_logs")


class MLPersistenceCallback(BaseCallback):
    """Record ``model.learn(...)``: hyperparameters, SB3's logged values, episodes, checkpoints, status.

    ``model.learn(total_timesteps, callback=MLPersistenceCallback())`` starts an experiment
    (or joins ``experiment_id`` / the current experiment of ``tracker``), records the
    algorithm's hyperparameters, environment id and seed, every numeric value SB3's logger
    dumps (``rollout/ep_rew_mean``, ``train/loss``, ``train/approx_kl``, ``time/fps`` ...) at
    SB3's step, each finished episode's reward and length, and registers the checkpoints of a
    ``CheckpointCallback`` and the improvements of an ``EvalCallback`` given to the same
    ``learn()``. The experiment ends "completed" when learn() returns and "failed" (or
    "interrupted" on Ctrl-C) when it raises.
    """

    def __init__(
        self,
        name: Optional[str] = None,
        *,
        experiment_type: Optional[str] = "rl",
        description: Optional[str] = None,
        tags: Optional[Iterable[str]] = None,
        experiment_id: Optional[int] = None,
        tracker: Optional[ExperimentTracker] = None,
        db_path: Optional[Union[str, os.PathLike[str]]] = None,
        agent: Union[str, bool, None] = None,
        token: Optional[str] = None,
        all_ranks: bool = False,
        log_episodes: bool = True,
        save_path: Optional[Union[str, os.PathLike[str]]] = None,
        save_freq: int = 0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if save_freq and save_path is None:
            raise ValueError("save_freq needs a save_path to save the checkpoints in")
        self.run = TrainingRun(
            "sb3",
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
        self.log_episodes = log_episodes
        self.save_path = None if save_path is None else os.fspath(save_path)
        self.save_freq = int(save_freq)
        self._writer: Optional[_LoggerTap] = None
        self._tapped: Any = None
        self._learning: Optional[Any] = None  # the model whose learn() is being recorded
        self._ending: tuple[str, Optional[str]] = ("completed", None)  # how the last learn() ended
        self._recorded: Optional[weakref.ref] = None  # the model the current experiment is about
        self._episodes = 0
        self._next_save = 0
        self._checkpoints: list[CheckpointCallback] = []
        self._evaluations: list[EvalCallback] = []
        self._seen_calls: dict[int, int] = {}
        self._seen_best: dict[int, float] = {}
        self._last_eval: Optional[float] = None

    @property
    def experiment_id(self) -> Optional[int]:
        """The experiment being recorded (None before learn() starts, or on a rank that does not record)."""
        return self.run.experiment_id

    @property
    def tracker(self) -> Optional[ExperimentTracker]:
        """The ExperimentTracker recording this run, for logging more of your own."""
        return self.run.tracker

    # -- SB3 hooks ------------------------------------------------------------------------------

    def _on_training_start(self) -> None:
        stale = self._learning is not None  # the last learn() raised where no guard could see it
        if stale:
            self._finish(None, ("failed", "learn() raised before it ended (outside what the callback can see)"))
        another_model = self._recorded is None or self._recorded() is not self.model
        if self.run.experiment_id is not None and (stale or another_model or self._ending[0] != "completed"):
            self.run = self.run.fresh()  # another model, or after a failure: a new experiment
            self._episodes, self._seen_calls, self._seen_best, self._last_eval = 0, {}, {}, None
        if self.run.experiment_id is None:
            self._start()
        else:
            self.run.reopen()  # a further learn() of the same model continues its experiment
        if self.run.experiment_id is None:
            return  # a rank that does not record
        self._recorded = weakref.ref(self.model)
        self._writer = _LoggerTap(self)
        self._tapped = self.logger  # the model may change before the tap comes off (a stale learn())
        self._tapped.output_formats.append(self._writer)
        self._checkpoints, self._evaluations = _siblings(self.locals.get("callback"))
        for evaluation in self._evaluations:
            self._seen_best.setdefault(id(evaluation), evaluation.best_mean_reward)
        self._next_save = self._following_save(self.num_timesteps)
        self._learning = self.model
        _guard_class(type(self.model))
        _recording[self.model] = self

    def _on_step(self) -> bool:
        if self.run.experiment_id is None:
            return True
        if self.log_episodes:
            self._record_episodes()
        self._register_new_checkpoints()
        if self.save_freq and self.num_timesteps >= self._next_save:
            self._save(f"model_{self.num_timesteps}_steps")
            self._next_save = self._following_save(self.num_timesteps)
        return True

    def _on_rollout_end(self) -> None:
        if self.run.experiment_id is not None:
            self._register_new_checkpoints()  # before train() changes the weights an evaluation saw

    def _on_training_end(self) -> None:
        if self.run.experiment_id is None:
            return
        self._register_new_checkpoints()
        if self.save_path is not None:
            self._save(f"model_{self.num_timesteps}_steps_final")
        self._finish(None)

    # -- what is recorded -----------------------------------------------------------------------

    def _start(self) -> None:
        model = self.model
        algorithm = type(model).__name__
        env_id = environment_id(model)
        total = self.locals.get("total_timesteps")
        experiment_id = self.run.start(
            f"{algorithm}_{env_id or 'env'}_{time.strftime('%Y%m%d_%H%M%S')}",
            random_seed=model.seed if isinstance(model.seed, int) else None,
            metadata={"framework": "stable-baselines3", "algorithm": algorithm, "env_id": env_id},
        )
        if experiment_id is not None:
            params = algorithm_hyperparameters(model)
            params.update(env_id=env_id, total_timesteps=total)
            self.run.log_hyperparameters(params)

    def _record_episodes(self) -> None:
        for info in self.locals.get("infos") or ():
            episode = info.get("episode") if isinstance(info, dict) else None
            if not isinstance(episode, dict) or "r" not in episode:
                continue  # only Monitor-wrapped environments report finished episodes
            self.run.log_metrics(
                {"episode_reward": episode["r"], "episode_length": episode.get("l")},
                step=self.num_timesteps,
                episode=self._episodes,
            )
            self._episodes += 1

    def _register_new_checkpoints(self) -> None:
        for evaluation in self._evaluations:
            self._last_eval = _finite(evaluation.last_mean_reward, self._last_eval)
            best = evaluation.best_mean_reward
            if best > self._seen_best.get(id(evaluation), -math.inf):
                self._seen_best[id(evaluation)] = best
                self._register_best(evaluation, best)
        for callback in self._checkpoints:
            calls = callback.n_calls
            if calls and callback.save_freq and calls % callback.save_freq == 0 and self._seen_calls.get(id(callback)) != calls:
                self._seen_calls[id(callback)] = calls
                path = os.path.join(callback.save_path, f"{callback.name_prefix}_{callback.num_timesteps}_steps.zip")
                if os.path.exists(path):
                    self._register(path, callback.num_timesteps, is_best=False)

    def _register_best(self, evaluation: EvalCallback, best: float) -> None:
        steps = evaluation.num_timesteps
        name = f"best_model_{steps}_steps.zip"
        if self.save_path is not None:
            self._save(name[: -len(".zip")], val_metric=best, is_best=True, steps=steps)
        elif evaluation.best_model_save_path is not None:
            # EvalCallback overwrites best_model.zip at each improvement: keep this one's weights.
            source = os.path.join(evaluation.best_model_save_path, "best_model.zip")
            if os.path.exists(source):
                target = os.path.join(evaluation.best_model_save_path, name)
                shutil.copyfile(source, target)
                self._register(target, steps, val_metric=best, is_best=True)

    def _save(self, stem: str, *, val_metric: Optional[float] = None, is_best: bool = False, steps: Optional[int] = None) -> None:
        assert self.save_path is not None
        os.makedirs(self.save_path, exist_ok=True)
        path = os.path.join(self.save_path, f"{stem}.zip")
        self.model.save(path)
        self._register(path, self.num_timesteps if steps is None else steps, val_metric=val_metric, is_best=is_best)

    def _register(self, path: str, steps: int, *, val_metric: Optional[float] = None, is_best: bool) -> None:
        self.run.register_checkpoint(
            path,
            architecture_type=type(self.model).__name__.lower(),
            step=steps,
            episode=self._episodes if self.log_episodes else None,
            val_metric=self._last_eval if val_metric is None else val_metric,
            is_best=is_best,
            metadata={"val_metric": "eval/mean_reward"} if (val_metric is not None or self._last_eval is not None) else None,
        )

    def _following_save(self, steps: int) -> float:
        if not self.save_freq:
            return math.inf
        return (steps // self.save_freq + 1) * self.save_freq

    # -- ending ---------------------------------------------------------------------------------

    def _training_raised(self, exc: BaseException) -> None:
        """Called by the guard around the model's training methods with what they raised."""
        try:
            self._finish(exc)
        except Exception as error:  # noqa: BLE001 - never hide the training error
            warnings.warn(f"ml_persistence could not end experiment {self.experiment_id}: {error}", stacklevel=3)

    def _finish(self, exc: Optional[BaseException], ending: Optional[tuple[str, Optional[str]]] = None) -> None:
        if self._learning is None:
            return  # already ended (an exception passes through nested guards)
        _recording.pop(self._learning, None)
        self._learning = None
        if self._writer is not None:
            if self._writer in self._tapped.output_formats:
                self._tapped.output_formats.remove(self._writer)
            self._writer = self._tapped = None
        self._ending = ending or training_status(exc)
        self.run.end(*self._ending)


# The model whose learn() each callback is recording; the guarded methods look their model up here.
_recording: "weakref.WeakKeyDictionary[Any, MLPersistenceCallback]" = weakref.WeakKeyDictionary()


def _guard_class(cls: type, names: Iterable[str] = _GUARDED) -> None:
    """Wrap the training methods of an algorithm class, once, so an exception in learn() reaches its callback.

    SB3 calls no callback when learn() raises. The wrapper is on the class, not the model, so
    model.save(), pickle and deepcopy see nothing; a call that returns costs one function call
    more, and only an exception looks up the callback recording the model.
    """
    for name in names:
        method = getattr(cls, name, None)
        if method is None or getattr(method, "__ml_persistence_guard__", False):
            continue
        setattr(cls, name, _guarded(method))


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def guarded(model: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(model, *args, **kwargs)
        except BaseException as exc:
            callback = _recording.get(model)  # looked up now: learn() registers its callback inside
            if callback is not None:
                callback._training_raised(exc)
            raise

    guarded.__ml_persistence_guard__ = True  # type: ignore[attr-defined]
    return guarded




class _LoggerTap(KVWriter):
    """An output format added to SB3's logger: each dump's numeric values become metrics at SB3's step."""

    def __init__(self, callback: Optional[MLPersistenceCallback]) -> None:
        self.callback = callback

    def __reduce__(self) -> tuple:
        return (_LoggerTap, (None,))  # a copied or pickled model's logger gets a tap that records nothing

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        if self.callback is not None and self.callback._writer is self:  # a tap left behind records nothing
            self.callback.run.log_metrics(key_values, step=int(step))

    def close(self) -> None:
        pass


def environment_id(model: Any) -> Optional[str]:
    """The gymnasium id of the model's environment (``CartPole-v1``), or None."""
    env = model.get_env()
    if env is None:
        return None
    try:
        spec = env.get_attr("spec", indices=[0])[0]
    except (AttributeError, IndexError, TypeError):
        return None
    return getattr(spec, "id", None)


def algorithm_hyperparameters(model: Any) -> dict[str, Any]:
    """The algorithm's settings: its class, the policy's, and every plain attribute of the model."""
    params: dict[str, Any] = {
        "algorithm": type(model).__name__,
        "policy": type(model.policy).__name__ if getattr(model, "policy", None) is not None else None,
        "n_envs": model.n_envs,
        "device": str(model.device),
    }
    for key, value in vars(model).items():
        if key.startswith("_") or key in _NOT_HYPERPARAMETERS or key in params:
            continue
        if key in _SCHEDULES and callable(value):
            value = _starting_value(value)
        if key.endswith("_class") or key.endswith("_space") or key == "policy_kwargs":
            params[key] = plain(value)
        elif value is None or isinstance(value, (bool, int, float, str)) or scalar(value) is not None:
            params[key] = plain(value)
        elif isinstance(value, (list, tuple, dict)):
            params[key] = plain(value)
    return params


def _starting_value(schedule: Callable[[float], Any]) -> Any:
    try:
        return plain(schedule(1.0))  # SB3 schedules take the remaining progress, 1.0 at the start
    except Exception:  # noqa: BLE001 - a schedule we cannot call is still named
        return plain(schedule)


def _finite(value: Any, default: Optional[float]) -> Optional[float]:
    number = scalar(value)
    return float(number) if number is not None and math.isfinite(number) else default


def _siblings(callback: Any) -> tuple[list[CheckpointCallback], list[EvalCallback]]:
    """The CheckpointCallbacks and EvalCallbacks among the callbacks given to learn()."""
    checkpoints, evaluations = [], []
    for item in _walk(callback):
        if isinstance(item, CheckpointCallback):
            checkpoints.append(item)
        elif isinstance(item, EvalCallback):
            evaluations.append(item)
    return checkpoints, evaluations


def _walk(callback: Any) -> Iterator[Any]:
    if callback is None:
        return
    yield callback
    if isinstance(callback, CallbackList):
        for child in callback.callbacks:
            yield from _walk(child)
    for attribute in ("callback", "callback_on_new_best"):  # an EventCallback's children
        yield from _walk(getattr(callback, attribute, None))


# learn() of every SB3 algorithm runs through one of these (PPO.learn calls super().learn()), so
# even the first learn() of a class, whose own methods are guarded only once it starts, is seen.
_guard_class(OnPolicyAlgorithm, ["learn"])
_guard_class(OffPolicyAlgorithm, ["learn"])
