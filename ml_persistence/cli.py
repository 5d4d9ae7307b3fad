"""The `ml-persistence` command line (init, demo; more to come)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from . import core
from .backend import default_db_path


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .metrics import MetricsLogger
    from .tracker import ExperimentTracker

    db = args.db or default_db_path()
    started = time.perf_counter()
    exp_id = run_demo(db, episodes=args.episodes, steps_per_episode=args.steps, seed=args.seed)
    elapsed = time.perf_counter() - started
    exp = ExperimentTracker(db).get_experiment(exp_id)
    summary = MetricsLogger(db).get_metrics_summary(exp_id)
    points = sum(s["count"] for s in summary.values())
    print(f"Demo experiment {exp_id} '{exp['name']}' {exp['status']} in {elapsed:.2f} s -> {db}")
    print(f"  {points} metric points, {exp['num_checkpoints']} checkpoints, best val_sharpe {exp['best_val_metric']:.3f}")
    for name in ("train_return", "val_sharpe", "policy_loss"):
        s = summary[name]
        print(f"  {name:<14} first {s['first']:+.4f}  last {s['last']:+.4f}  max {s['max']:+.4f}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `ml-persistence` console script."""
    parser = argparse.ArgumentParser(prog="ml-persistence", description="ml_persistence experiment tracker")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create or upgrade the database")
    init.add_argument("--db", help="database file (default: $ML_PERSISTENCE_DB or ml_experiments.db)")
    demo = sub.add_parser("demo", help="run a demo training loop into the database")
    demo.add_argument("--db", help="database file (default: $ML_PERSISTENCE_DB or ml_experiments.db)")
    demo.add_argument("--episodes", type=int, default=50)
    demo.add_argument("--steps", type=int, default=200, help="environment steps per episode")
    demo.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.command == "init":
        return core.run(args.db or default_db_path())
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())
