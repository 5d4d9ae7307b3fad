"""A demo training run: a toy PPO-style agent trading a synthetic BTC-USD price series.

It exercises the whole API the way a real training script would: experiment, hyperparameters,
datasets, per-step and per-episode metrics, checkpoints with the best one marked, an artifact.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from typing import Optional

from .datasets import DatasetManager
from .registry import ModelRegistry
from .tracker import ExperimentTracker


def _prices(days: int, rng: random.Random) -> list[float]:
    price, out = 30_000.0, []
    for _ in range(days):
        price *= math.exp(rng.gauss(0.0005, 0.03))
        out.append(price)
    return out


def run_demo(
    db_path: Optional[str] = None,
    episodes: int = 50,
    steps_per_episode: int = 200,
    seed: int = 42,
    checkpoint_dir: str = "demo_checkpoints",
) -> int:
    """Run the demo training loop into ``db_path``; return the experiment id."""
    rng = random.Random(seed)
    prices = _prices(730, rng)
    train, test = prices[:365], prices[365:]
    tracker = ExperimentTracker(db_path)
    registry = ModelRegistry(db_path)
    datasets = DatasetManager(db_path)
    hyper = {"learning_rate": 3e-4, "gamma": 0.99, "eps_clip": 0.2, "k_epochs": 4, "hidden_dim": 256}
    with tracker:
        exp_id = tracker.start_experiment(
            name=f"PPO_BTC-USD_demo_{time.strftime('%Y%m%d_%H%M%S')}",
            experiment_type="rl",
            description="Demo: toy PPO agent on a synthetic BTC-USD daily series",
            tags=["rl", "ppo", "btc-usd", "demo"],
            random_seed=seed,
            metadata={"asset": "BTC-USD", "episodes": episodes},
        )
        tracker.log_hyperparameters_batch(hyper)
        for split, series, start, end in (
            ("train", train, "2023-01-01", "2023-12-31"),
            ("test", test, "2024-01-01", "2024-12-31"),
        ):
            dataset_id = datasets.register_dataset(
                name="BTC-USD-Daily-synthetic", version=f"seed{seed}", split_type=split,
                start_date=start, end_date=end, num_samples=len(series),
            )
            datasets.link_dataset_to_experiment(exp_id, dataset_id, split)
        os.makedirs(checkpoint_dir, exist_ok=True)
        best_sharpe, global_step, skill = -math.inf, 0, 0.0
        for episode in range(episodes):
            skill += (1.0 - skill) * 0.05
            position, value, rewards = 0, 1.0, []
            for t in range(steps_per_episode):
                day = rng.randrange(1, len(train))
                ret = train[day] / train[day - 1] - 1.0
                position = 1 if rng.random() < 0.5 + 0.3 * skill * (1 if ret > 0 else -1) else 0
                reward = position * ret
                value *= 1.0 + reward
                rewards.append(reward)
                global_step += 1
                if t % 10 == 0:
                    tracker.log_metrics_batch(
                        {
                            "policy_loss": 0.5 * math.exp(-3 * skill) + rng.gauss(0, 0.01),
                            "value_loss": 1.0 * math.exp(-2 * skill) + abs(rng.gauss(0, 0.02)),
                            "entropy": 1.1 - 0.6 * skill + rng.gauss(0, 0.01),
                            "approx_kl": abs(rng.gauss(0.01, 0.003)),
                        },
                        episode=episode,
                        step=global_step,
                    )
            mean = sum(rewards) / len(rewards)
            std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)) or 1e-9
            val_sharpe = mean / std * math.sqrt(365) + rng.gauss(0, 0.1)
            tracker.log_metrics_batch(
                {
                    "train_return": value - 1.0,
                    "train_reward": sum(rewards),
                    "episode_length": steps_per_episode,
                    "val_sharpe": val_sharpe,
                },
                episode=episode,
                step=global_step,
            )
            if episode % 10 == 0 or episode == episodes - 1:
                path = os.path.join(checkpoint_dir, f"checkpoint_ep{episode}.json")
                with open(path, "w") as handle:
                    json.dump({"episode": episode, "skill": skill}, handle)
                registry.register_model(
                    experiment_id=exp_id, checkpoint_path=path, architecture_type="ppo",
                    state_dim=43, action_dim=3, episode_num=episode, global_step=global_step,
                    train_metric=value - 1.0, val_metric=val_sharpe, is_best=val_sharpe > best_sharpe,
                )
                best_sharpe = max(best_sharpe, val_sharpe)
        tracker.log_metric(
            "action_distribution", 0.0, episode=episodes - 1,
            value_json=json.dumps({"hold": 0.5, "buy": 0.3, "sell": 0.2}),
        )
    return exp_id
