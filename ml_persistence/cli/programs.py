"""Commands that run programs: init, demo, agent."""

from __future__ import annotations

import argparse
import os
import time

from .. import core, storage
from . import arguments


def init(args: argparse.Namespace) -> int:
    """Create or upgrade the database."""
    return core.run(args.db)


def demo(args: argparse.Namespace) -> int:
    """Run the synthetic training loop into the database and summarize it."""
    from ..demo import run_demo
    from ..metrics import MetricsLogger
    from ..tracker import ExperimentTracker

    started = time.perf_counter()
    exp_id = run_demo(args.db, episodes=args.episodes, steps_per_episode=args.steps, seed=args.seed)
    elapsed = time.perf_counter() - started
    exp = ExperimentTracker(args.db).get_experiment(exp_id)
    summary = MetricsLogger(args.db).get_metrics_summary(exp_id)
    points = sum(s["count"] for s in summary.values())
    shown = storage.display(args.db)
    print(f"Demo experiment {exp_id} '{exp['name']}' {exp['status']} in {elapsed:.2f} s -> {shown}")
    print(f"  {points} metric points, {exp['num_checkpoints']} checkpoints, best val_sharpe {exp['best_val_metric']:.3f}")
    for name in ("train_return", "val_sharpe", "policy_loss"):
        s = summary[name]
        print(f"  {name:<14} first {s['first']:+.4f}  last {s['last']:+.4f}  max {s['max']:+.4f}")
    print(f"  next: ml-persistence ls --db {shown}   |   ml-persistence show {exp_id} --db {shown}")
    return 0


def ui(args: argparse.Namespace) -> int:
    """Serve the read-only web UI."""
    from ..address import read_token
    from ..protocol import is_loopback
    from ..ui import missing_extra, serve
    from .database import USAGE, CLIError, open_read

    if args.no_token and args.token_file:
        raise CLIError("--no-token and --token-file contradict each other", USAGE)
    if args.no_token and not is_loopback(args.host):
        raise CLIError(f"--no-token is refused on {args.host}: beyond loopback the UI always needs a token", USAGE)
    for root in args.artifact_root:
        if not os.path.isdir(root):
            raise CLIError(f"--artifact-root {root} is not a directory", USAGE)
    problem = missing_extra()
    if problem:
        raise CLIError(problem)
    open_read(args.db).close()
    token = read_token(args.token_file)
    try:
        return serve(args.db, args.host, args.port, token, args.open, no_token=args.no_token,
                     artifact_roots=args.artifact_root)
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add init, demo and agent to the parser."""
    p = sub.add_parser("init", parents=[common], help="create or upgrade the database",
                       description="Create the database, or upgrade an older one in place "
                       "(same as `python -m ml_persistence.core`).")
    p.set_defaults(run=init)

    p = sub.add_parser("demo", parents=[common], help="run a demo training loop into the database",
                       description="A toy PPO-style agent trading a synthetic BTC-USD series, logged "
                       "through the whole API: experiment, hyperparameters, datasets, metrics, checkpoints.")
    p.add_argument("--episodes", type=arguments.positive, default=50, help="episodes (default: 50)")
    p.add_argument("--steps", type=arguments.positive, default=200, help="environment steps per episode (default: 200)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    p.set_defaults(run=demo)

    p = sub.add_parser("ui", parents=[common], help="a local web UI: runs, curves, comparisons",
                       description="Serve a read-only web UI over the database: the runs, each run's curves "
                       "(downsampled for large runs), comparisons, updating live. Binds 127.0.0.1 by default. "
                       "Every address requires a token (made for you unless --token-file gives one): open the "
                       "URL it prints. Artifact files are served only from inside the database's directory "
                       "and --artifact-root directories. Needs: pip install 'ml_persistence[ui]'.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=arguments.port, default=8765, help="port (default: 8765; 0 = any free port)")
    p.add_argument("--open", action="store_true", help="open it in the web browser")
    p.add_argument("--token-file", metavar="PATH", help="file holding the access token")
    p.add_argument("--no-token", action="store_true",
                   help="serve without a token (loopback only): every local user can then read the runs")
    p.add_argument("--artifact-root", metavar="DIR", action="append", default=[],
                   help="also serve artifact files from inside DIR (repeatable; the database's directory always)")
    p.set_defaults(run=ui)

    # Only listed here for --help: main() hands `agent ...` to the agent program before parsing.
    sub.add_parser("agent", help="run the sidecar agent (same as ml-persistence-agent; see `agent --help`)",
                   add_help=False)
