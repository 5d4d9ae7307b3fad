#!/usr/bin/env python3
"""Time filter-language searches (ml_persistence.filtering.search) on a database of many runs.

    PYTHONPATH=. python benchmarks/bench_filter.py                       # a fresh SQLite file in a temp dir
    PYTHONPATH=. python benchmarks/bench_filter.py --db postgresql://USER@HOST/EMPTY_DB
    PYTHONPATH=. python benchmarks/bench_filter.py --runs 100 --steps 500  # smaller

Logs --runs experiments, each with three hyperparameters (lr, gamma, opt) and --steps steps of two
metrics (loss, val_sharpe), into --db (which should be empty), then prints the best of --repeat
timings of each search in SEARCHES with the number of rows it returned. The aggregates (min, max,
mean) read every point of a metric: runs x steps rows each.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

from ml_persistence import ExperimentTracker, shutdown, storage
from ml_persistence.filtering import search

SEARCHES = [
    ("params.lr < 1e-3 and metrics.val_sharpe > 1.5", ["metrics.val_sharpe desc"]),
    ('status = "completed" and params.opt = "adam"', None),
    ("metrics.loss.min < 0.0005 or tags.ppo", None),
    (None, ["metrics.val_sharpe.max desc"]),
    ("metrics.loss.min < 0.0005 or tags.ppo", ["metrics.val_sharpe.max desc"]),
    ("metrics.val_sharpe.mean > 1.02", ["params.lr"]),
]


def log_runs(db: str, runs: int, steps: int) -> float:
    """Log the runs; return the seconds it took."""
    rng = random.Random(1)
    tracker = ExperimentTracker(db, capture_environment=False)
    start = time.perf_counter()
    for r in range(runs):
        tracker.start_experiment(f"run{r}", tags=["ppo" if r % 2 else "dqn"])
        tracker.log_hyperparameters_batch(
            {"lr": 10 ** rng.uniform(-5, -2), "gamma": rng.choice([0.9, 0.99]), "opt": rng.choice(["adam", "sgd"])})
        for step in range(steps):
            tracker.log_metrics_batch({"loss": rng.random(), "val_sharpe": rng.gauss(1, 1)}, step=step)
        tracker.end_experiment()
    tracker.close()
    shutdown()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="an empty database (default: a fresh SQLite file in a temp dir)")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    db = args.db or os.path.join(tempfile.mkdtemp(prefix="bench-filter-"), "runs.db")
    seconds = log_runs(db, args.runs, args.steps)
    print(f"{storage.display(db)}: {args.runs} runs x {args.steps} steps x 2 metrics logged in {seconds:.1f} s")
    reader = storage.engine(db).reader(db)
    try:
        for text, order in SEARCHES:
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                found = search(reader, text, order)
                times.append(time.perf_counter() - start)
            print(f"{min(times) * 1000:9.1f} ms  {len(found):5d} rows  filter {text!r}  order_by {order}")
    finally:
        reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
