"""The Stable-Baselines3 callback against real SB3: PPO on CartPole-v1, CPU, a few thousand steps."""

from __future__ import annotations

import json
import numbers
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent_process import AgentProcess, short_socket
from conftest import PYTHON, require_framework, rows, subprocess_env

sb3 = require_framework("stable_baselines3")

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.logger import KVWriter  # noqa: E402

from ml_persistence import ExperimentTracker, MLPersistenceError, ModelRegistry  # noqa: E402
from ml_persistence.integrations.sb3 import MLPersistenceCallback  # noqa: E402

N_STEPS = 256


def ppo(**kwargs: Any) -> PPO:
    return PPO("MlpPolicy", "CartPole-v1", n_steps=N_STEPS, batch_size=64, n_epochs=2, seed=7, device="cpu", **kwargs)


class Recorder(KVWriter):
    """What SB3's own logger dumps, as (name, step, value), to compare the database with."""

    def __init__(self) -> None:
        self.dumps: list[tuple[str, int, float]] = []

    def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
        for key, value in key_values.items():
            if isinstance(value, numbers.Real):
                self.dumps.append((key, step, float(value)))

    def close(self) -> None:
        pass


class RecordSB3Logger(BaseCallback):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def _on_training_start(self) -> None:
        self.logger.output_formats.append(self.recorder)

    def _on_step(self) -> bool:
        return True


class RaiseAt(BaseCallback):
    def __init__(self, step: int, error: BaseException) -> None:
        super().__init__()
        self.step, self.error = step, error

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.step:
            raise self.error
        return True


def test_learn_is_recorded_with_sb3s_own_values_at_sb3s_steps(db_path: str, tmp_path: Path) -> None:
    model = ppo()
    recorder = Recorder()
    tracking = MLPersistenceCallback(tags=["cartpole"])
    model.learn(2048, callback=[RecordSB3Logger(recorder), tracking])

    exp = tracking.experiment_id
    (name, kind, status, tags, seed), = rows(
        db_path, "SELECT name, experiment_type, status, tags, random_seed FROM experiments"
    )
    assert name.startswith("PPO_CartPole-v1_")
    assert (kind, status, seed) == ("rl", "completed", 7)
    assert set(json.loads(tags)) == {"cartpole", "sb3"}

    params = ExperimentTracker().get_hyperparameters(exp)
    assert params["algorithm"] == "PPO" and params["env_id"] == "CartPole-v1"
    assert params["learning_rate"] == 3e-4 and params["clip_range"] == 0.2  # schedules at their start
    assert (params["n_steps"], params["batch_size"], params["n_epochs"]) == (N_STEPS, 64, 2)
    assert params["gamma"] == 0.99 and params["total_timesteps"] == 2048 and params["seed"] == 7

    stored = rows(
        db_path,
        "SELECT metric_name, step, value FROM metrics WHERE experiment_id = ? AND episode IS NULL ORDER BY id",
        (exp,),
    )
    assert sorted(stored) == sorted(recorder.dumps)  # every numeric value SB3 dumped, at SB3's step
    names = {name for name, _, _ in stored}
    assert {"rollout/ep_rew_mean", "train/loss", "train/entropy_loss", "train/approx_kl",
            "train/explained_variance", "time/fps"} <= names
    assert {step for name, step, _ in stored if name == "rollout/ep_rew_mean"} == set(range(N_STEPS, 2049, N_STEPS))


def test_each_finished_episode_is_a_metric_at_its_episode_number(db_path: str) -> None:
    model = ppo()
    tracking = MLPersistenceCallback()
    model.learn(1024, callback=tracking)

    episodes = rows(
        db_path,
        "SELECT episode, step, value FROM metrics WHERE metric_name = 'episode_length' ORDER BY episode",
    )
    assert [e for e, _, _ in episodes] == list(range(len(episodes))) and len(episodes) > 5
    lengths = [int(v) for _, _, v in episodes]
    ends = [s for _, s, _ in episodes]
    # With one environment, episode k ends at the step that is the sum of the first k+1 lengths.
    assert ends == [sum(lengths[: i + 1]) for i in range(len(lengths))]
    rewards = [v for _, _, v in rows(db_path, "SELECT episode, step, value FROM metrics WHERE metric_name = 'episode_reward' ORDER BY episode")]
    assert rewards == [float(n) for n in lengths]  # CartPole pays 1 per step


def test_checkpoint_and_eval_callbacks_register_models_and_the_best(db_path: str, tmp_path: Path) -> None:
    model = ppo()
    evaluation = EvalCallback(
        make_vec_env("CartPole-v1", n_envs=1, seed=11), eval_freq=512, n_eval_episodes=3,
        best_model_save_path=str(tmp_path / "best"), verbose=0,
    )
    checkpoints = CheckpointCallback(1024, str(tmp_path / "ckpt"))
    tracking = MLPersistenceCallback()
    model.learn(3072, callback=[tracking, checkpoints, evaluation])

    registry = ModelRegistry()
    models = registry.list_models(tracking.experiment_id, order_by="id", ascending=True)
    periodic = [m for m in models if not m["is_best"]]
    assert [(m["global_step"], Path(m["checkpoint_path"]).name) for m in periodic] == [
        (s, f"rl_model_{s}_steps.zip") for s in (1024, 2048, 3072)
    ]
    best = [m for m in models if m["is_best"]]
    assert best, "the first evaluation is always an improvement"
    assert [m["val_metric"] for m in best] == sorted(m["val_metric"] for m in best)
    assert best[-1]["val_metric"] == pytest.approx(evaluation.best_mean_reward)
    assert registry.get_best_model(tracking.experiment_id)["id"] == best[-1]["id"]
    for m in models:
        assert os.path.exists(m["checkpoint_path"])
        assert m["architecture_type"] == "ppo"
    # Each best keeps its own weights, though EvalCallback overwrites best_model.zip.
    assert len({Path(m["checkpoint_path"]).name for m in best}) == len(best)
    PPO.load(best[-1]["checkpoint_path"], device="cpu")


def test_own_checkpoints_with_save_path_and_a_clean_model_afterwards(db_path: str, tmp_path: Path) -> None:
    model = ppo()
    tracking = MLPersistenceCallback(save_path=tmp_path / "models", save_freq=512)
    model.learn(1024, callback=tracking)

    saved = rows(db_path, "SELECT global_step, checkpoint_path FROM models ORDER BY id")
    assert [s for s, _ in saved] == [512, 1024, 1024]
    assert saved[-1][1].endswith("model_1024_steps_final.zip")
    # learn() is over: nothing of the callback stays on the model, which saves and loads as usual.
    assert not {"collect_rollouts", "train", "dump_logs"} & set(vars(model))
    assert not [f for f in model.logger.output_formats if type(f).__module__.startswith("ml_persistence")]
    model.save(tmp_path / "after.zip")
    PPO.load(tmp_path / "after.zip", device="cpu")


def test_a_second_learn_continues_the_same_experiment(db_path: str) -> None:
    class StatusAt(BaseCallback):
        seen: list = []

        def _on_step(self) -> bool:
            if self.num_timesteps == 700:
                self.seen.append(ExperimentTracker().get_experiment(tracking.experiment_id)["status"])
            return True

    model = ppo()
    tracking = MLPersistenceCallback()
    model.learn(512, callback=tracking)
    model.learn(512, callback=[tracking, StatusAt()], reset_num_timesteps=False)

    assert StatusAt.seen == ["running"]  # reopened while the second learn() runs
    assert rows(db_path, "SELECT COUNT(*), MAX(status) FROM experiments") == [(1, "completed")]
    steps = [s for (s,) in rows(db_path, "SELECT DISTINCT step FROM metrics WHERE metric_name = 'time/fps' ORDER BY step")]
    assert steps == [256, 512, 768, 1024]


@pytest.mark.parametrize(
    "error, status, words",
    [(RuntimeError("env exploded"), "failed", "RuntimeError: env exploded"), (KeyboardInterrupt(), "interrupted", "KeyboardInterrupt")],
)
def test_learn_raising_ends_the_experiment(db_path: str, error: BaseException, status: str, words: str) -> None:
    model = ppo()
    tracking = MLPersistenceCallback()
    with pytest.raises(type(error)):
        model.learn(2048, callback=[tracking, RaiseAt(600, error)])

    (stored_status, notes), = rows(db_path, "SELECT status, notes FROM experiments")
    assert stored_status == status
    assert words in notes
    assert rows(db_path, "SELECT COUNT(*) FROM metrics WHERE metric_name = 'time/fps'") == [(2,)]  # 256, 512
    assert not {"collect_rollouts", "train", "dump_logs"} & set(vars(model))


class FailingOutput(KVWriter):
    """An output format that breaks at SB3's n-th log dump, which learn() makes outside rollouts and training."""

    def __init__(self, at: int) -> None:
        self.left = at

    def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
        self.left -= 1
        if self.left == 0:
            raise OSError("log disk full")

    def close(self) -> None:
        pass


def test_learn_raising_while_dumping_logs_fails_the_experiment(db_path: str) -> None:
    model = ppo()
    tracking = MLPersistenceCallback()
    failing = FailingOutput(at=3)

    class AddFailingOutput(BaseCallback):
        def _on_training_start(self) -> None:
            self.logger.output_formats.append(failing)

        def _on_step(self) -> bool:
            return True

    with pytest.raises(OSError):
        model.learn(2048, callback=[tracking, AddFailingOutput()])
    (status, notes), = rows(db_path, "SELECT status, notes FROM experiments")
    assert status == "failed" and "OSError: log disk full" in notes


def test_sys_exit_0_inside_training_is_an_interruption_not_a_completion(db_path: str) -> None:
    with pytest.raises(SystemExit):
        ppo().learn(2048, callback=[MLPersistenceCallback(), RaiseAt(300, SystemExit(0))])
    (status, notes), = rows(db_path, "SELECT status, notes FROM experiments")
    assert status == "interrupted" and "SystemExit(0)" in notes


def test_another_callback_raising_as_learn_starts_fails_the_run_and_the_next_learn_is_a_new_one(db_path: str) -> None:
    class BrokenStart(BaseCallback):
        def _on_training_start(self) -> None:
            raise RuntimeError("misconfigured callback")

        def _on_step(self) -> bool:
            return True

    model = ppo()
    tracking = MLPersistenceCallback()
    with pytest.raises(RuntimeError):
        model.learn(512, callback=[tracking, BrokenStart()])  # after ours started, before any rollout
    (status, notes), = rows(db_path, "SELECT status, notes FROM experiments")
    assert status == "failed" and "RuntimeError: misconfigured callback" in notes
    assert not [f for f in model.logger.output_formats if type(f).__module__.startswith("ml_persistence")]
    model.learn(256, callback=tracking)  # the failed run stays failed; this one is recorded anew
    assert rows(db_path, "SELECT id, status FROM experiments ORDER BY id") == [(1, "failed"), (2, "completed")]


def test_the_same_callback_on_another_model_records_another_experiment(db_path: str) -> None:
    from stable_baselines3 import A2C

    tracking = MLPersistenceCallback()
    ppo().learn(256, callback=tracking)
    first = tracking.experiment_id
    A2C("MlpPolicy", "Pendulum-v1", n_steps=16, seed=1, device="cpu").learn(256, callback=tracking)
    assert tracking.experiment_id != first
    tracker = ExperimentTracker()
    assert tracker.get_hyperparameters(first)["algorithm"] == "PPO"
    assert tracker.get_hyperparameters(tracking.experiment_id)["env_id"] == "Pendulum-v1"
    assert rows(db_path, "SELECT COUNT(*) FROM experiments WHERE status = 'completed'") == [(2,)]


def test_the_model_can_be_copied_and_pickled_while_it_learns(db_path: str, tmp_path: Path) -> None:
    import copy
    import pickle

    class Snapshot(BaseCallback):
        copies: list = []

        def _on_step(self) -> bool:
            if self.num_timesteps == 300:
                snapshot = copy.deepcopy(self.model)
                pickle.loads(pickle.dumps(self.model.policy))
                snapshot.save(tmp_path / "snapshot.zip")
                self.copies.append(snapshot)
            return True

    model = ppo()
    model.learn(512, callback=[MLPersistenceCallback(), Snapshot()])
    assert PPO.load(tmp_path / "snapshot.zip", device="cpu").n_steps == N_STEPS
    # The copy's logger records nothing into the run it was copied from.
    Snapshot.copies[0].learn(256, reset_num_timesteps=False)
    assert rows(db_path, "SELECT COUNT(DISTINCT step) FROM metrics WHERE metric_name = 'time/fps'") == [(2,)]


def test_an_exception_that_ends_the_process_leaves_a_failed_experiment(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(
        """
        import gymnasium as gym
        from stable_baselines3 import PPO
        from ml_persistence.integrations.sb3 import MLPersistenceCallback

        class Broken(gym.Wrapper):
            def __init__(self, env):
                super().__init__(env)
                self.steps = 0
            def step(self, action):
                self.steps += 1
                if self.steps == 700:
                    raise ValueError("market data feed lost")
                return self.env.step(action)

        model = PPO("MlpPolicy", Broken(gym.make("CartPole-v1")), n_steps=256, batch_size=64, device="cpu", seed=1)
        model.learn(4096, callback=MLPersistenceCallback("broken-run"))
        """
    ))
    done = subprocess.run([PYTHON, str(script)], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "market data feed lost" in done.stderr
    (name, status, notes), = rows(str(tmp_path / "ml_experiments.db"), "SELECT name, status, notes FROM experiments")
    assert (name, status) == ("broken-run", "failed")
    assert "ValueError: market data feed lost" in notes


def test_join_an_experiment_started_by_the_user(db_path: str) -> None:
    tracker = ExperimentTracker()
    exp = tracker.start_experiment("my own run", tags=["manual"])
    tracker.log_hyperparameter("note", "set by hand")
    model = ppo()
    model.learn(512, callback=MLPersistenceCallback(tracker=tracker))

    assert rows(db_path, "SELECT id, status FROM experiments") == [(exp, "running")]  # the user ends it
    assert tracker.get_hyperparameters()["note"] == "set by hand"
    assert tracker.get_hyperparameters()["algorithm"] == "PPO"
    tracker.end_experiment()
    assert rows(db_path, "SELECT COUNT(*) FROM metrics WHERE metric_name = 'train/loss'") == [(1,)]


def test_resume_by_experiment_id_ends_it_again(db_path: str) -> None:
    first = MLPersistenceCallback("resumable")
    ppo().learn(256, callback=first)
    again = MLPersistenceCallback(experiment_id=first.experiment_id)
    ppo().learn(256, callback=again)
    assert rows(db_path, "SELECT COUNT(*), MAX(status) FROM experiments") == [(1, "completed")]
    assert rows(db_path, "SELECT COUNT(*) FROM metrics WHERE metric_name = 'time/fps'") == [(2,)]


def test_a_rank_other_than_zero_records_nothing(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    tracking = MLPersistenceCallback()
    ppo().learn(512, callback=tracking)
    assert tracking.experiment_id is None
    assert not os.path.exists(db_path)


@pytest.mark.parametrize("variable", ["SLURM_PROCID", "LOCAL_RANK", "RANK"])
def test_a_rank_variable_without_a_world_of_several_processes_still_records(
    db_path: str, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "3")  # e.g. one task of an `srun -n4` sweep of independent seeds
    tracking = MLPersistenceCallback()
    ppo().learn(256, callback=tracking)
    assert rows(db_path, "SELECT id, status FROM experiments") == [(tracking.experiment_id, "completed")]


def test_all_ranks_join_rank_zeros_experiment_with_their_rank_in_the_names(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = ppo()
    tracker = ExperimentTracker()
    exp = tracker.start_experiment("ddp-like")
    monkeypatch.setenv("ML_PERSISTENCE_EXPERIMENT_ID", str(exp))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    one = MLPersistenceCallback(all_ranks=True)
    model.learn(512, callback=one)
    assert one.experiment_id == exp
    names = {n for (n,) in rows(db_path, "SELECT DISTINCT metric_name FROM metrics")}
    assert "rank1/train/loss" in names and "rank1/episode_length" in names
    assert not [n for n in names if not n.startswith("rank1/")]
    # Rank 1 only joined: the run is still rank 0's, running, with rank 0's pid.
    assert rows(db_path, "SELECT status, pid FROM experiments") == [("running", os.getpid())]
    assert rows(db_path, "SELECT COUNT(*) FROM hyperparameters") == [(0,)]  # hyperparameters come from rank 0
    tracker.end_experiment()


def test_all_ranks_without_a_way_to_share_the_experiment_is_a_clear_error(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MLPersistenceError, match="ML_PERSISTENCE_EXPERIMENT_ID"):
        ppo().learn(256, callback=MLPersistenceCallback(all_ranks=True))


def test_through_the_agent(tmp_path: Path) -> None:
    db = str(tmp_path / "agent.db")
    with AgentProcess(db, [short_socket(tmp_path)], tmp_path) as agent:
        script = tmp_path / "train.py"
        script.write_text(textwrap.dedent(
            """
            from stable_baselines3 import PPO
            from ml_persistence.integrations.sb3 import MLPersistenceCallback
            model = PPO("MlpPolicy", "CartPole-v1", n_steps=256, batch_size=64, device="cpu", seed=2)
            tracking = MLPersistenceCallback("via-agent")
            model.learn(1024, callback=tracking)
            print(tracking.experiment_id)
            """
        ))
        done = subprocess.run(
            [PYTHON, str(script)], cwd=tmp_path, env=subprocess_env(ML_PERSISTENCE_AGENT=agent.url),
            capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert agent.stop() == 0
    assert not (tmp_path / "ml_experiments.db").exists()
    assert rows(db, "SELECT id, name, status FROM experiments") == [(int(done.stdout), "via-agent", "completed")]
    assert rows(db, "SELECT DISTINCT step FROM metrics WHERE metric_name = 'train/loss' ORDER BY step") == [(512,), (768,), (1024,)]


def test_an_off_policy_algorithm_is_recorded_too(db_path: str) -> None:
    from stable_baselines3 import DQN

    model = DQN("MlpPolicy", "CartPole-v1", learning_starts=200, train_freq=4, seed=3, device="cpu")
    tracking = MLPersistenceCallback()
    model.learn(1000, callback=[tracking, RaiseAt(10_000, RuntimeError("never"))], log_interval=2)

    params = ExperimentTracker().get_hyperparameters(tracking.experiment_id)
    assert params["algorithm"] == "DQN" and params["learning_starts"] == 200 and params["train_freq"] is not None
    assert rows(db_path, "SELECT status FROM experiments") == [("completed",)]
    assert rows(db_path, "SELECT COUNT(*) > 0 FROM metrics WHERE metric_name = 'train/loss'") == [(1,)]
    assert not {"collect_rollouts", "train", "dump_logs"} & set(vars(model))
