"""Stable-Baselines3 PPO on CartPole-v1, recorded by ml_persistence (runs in seconds on a CPU).

    pip install 'ml_persistence[sb3]'
    python examples/sb3_example.py          # then: ml-persistence ls / show ID / ui
"""

import argparse

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env

from ml_persistence.integrations.sb3 import MLPersistenceCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=10_000)
    args = parser.parse_args()

    model = PPO("MlpPolicy", "CartPole-v1", n_steps=512, batch_size=64, seed=42, device="cpu")
    callbacks = [
        MLPersistenceCallback(tags=["example", "cartpole"]),  # the one line that records the run
        CheckpointCallback(save_freq=2048, save_path="sb3_checkpoints"),  # registered as models
        EvalCallback(  # each improvement is registered as the new best model
            make_vec_env("CartPole-v1", n_envs=1, seed=0),
            eval_freq=1024, n_eval_episodes=5, best_model_save_path="sb3_best", verbose=0,
        ),
    ]
    model.learn(args.timesteps, callback=callbacks)
    experiment_id = callbacks[0].experiment_id
    print(f"recorded experiment {experiment_id} in ml_experiments.db; look at it with:")
    print(f"  ml-persistence show {experiment_id}")
    print(f"  ml-persistence metrics {experiment_id} rollout/ep_rew_mean")


if __name__ == "__main__":
    main()
