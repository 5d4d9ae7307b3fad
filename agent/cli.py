"""The ``ml-persistence-agent`` command line."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sqlite3
import sys
from typing import Optional, Sequence

import anyio

from ml_persistence import address as addr
from ml_persistence.backend import default_db_path
from ml_persistence.errors import MLPersistenceError

from .server import Agent

log = logging.getLogger("ml_persistence.agent")


def parser() -> argparse.ArgumentParser:
    """Return the argument parser."""
    ap = argparse.ArgumentParser(
        prog="ml-persistence-agent",
        description="Own an ml_persistence database and write what trainer processes send over sockets.",
    )
    ap.add_argument("--db", default=None, help="database file (default: $ML_PERSISTENCE_DB or ml_experiments.db)")
    ap.add_argument(
        "--listen",
        action="append",
        metavar="URL",
        help="unix:///path/to.sock or tcp://HOST:PORT; repeatable "
        f"(default: {addr.default_address()})",
    )
    ap.add_argument("--token-file", help="file holding the token clients must present (required off loopback)")
    ap.add_argument("--max-frame-mb", type=int, default=64, help="largest frame accepted from a client")
    ap.add_argument("--hello-timeout", type=float, default=10.0, help="seconds a new connection has to say Hello")
    ap.add_argument(
        "--frame-timeout", type=float, default=30.0, help="seconds a client has to finish a frame it started"
    )
    ap.add_argument("--max-connections", type=int, default=1024, help="connections served at once; more are closed")
    ap.add_argument(
        "--max-unread-mb", type=int, default=16, help="answers a connection may leave unread; past this it is closed"
    )
    ap.add_argument(
        "--max-partial-mb",
        type=int,
        default=128,
        help="unfinished frames held across all connections; the connection that would pass this is closed",
    )
    ap.add_argument(
        "--stop-timeout",
        type=float,
        default=30.0,
        help="seconds to write what clients sent at shutdown; the rest stays unacknowledged and is replayed",
    )
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the agent until SIGTERM or SIGINT; return the exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s ml-persistence-agent %(levelname)s %(message)s"
    )
    try:
        addresses = [addr.parse(u, listen=True) for u in (args.listen or ["default"])]
        token = addr.read_token(args.token_file)
        agent = Agent(
            args.db or default_db_path(),
            addresses,
            token=token,
            max_frame=args.max_frame_mb << 20,
            hello_timeout=args.hello_timeout,
            frame_timeout=args.frame_timeout,
            max_connections=args.max_connections,
            max_unread_bytes=args.max_unread_mb << 20,
            max_partial_bytes=args.max_partial_mb << 20,
            stop_timeout=args.stop_timeout,
        )
    except (MLPersistenceError, OSError) as exc:
        print(f"ml-persistence-agent: {exc}", file=sys.stderr)
        return 2
    # Up to a million queued events are live container objects; the default collector thresholds
    # would spend about a quarter of the agent's CPU re-scanning them (bench_agent.py).
    gc.set_threshold(100_000, 50, 100)
    _raise_open_file_limit()
    try:
        anyio.run(_serve, agent, backend="asyncio")
    except (MLPersistenceError, OSError, sqlite3.Error) as exc:
        print(f"ml-persistence-agent: {exc}", file=sys.stderr)
        return 1
    return 0


def _raise_open_file_limit() -> None:
    """Allow as many connections as the hard limit does (the soft default is often 1024)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


async def _serve(agent: Agent) -> None:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_stop_on_signal, agent, tasks.cancel_scope)

        def ready(urls: list[str]) -> None:
            print(f"ml-persistence-agent: ready, listening on {' '.join(urls)} (database {agent.db_path})", flush=True)

        await agent.run(ready)
        tasks.cancel_scope.cancel()


async def _stop_on_signal(agent: Agent, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            agent.stop()
            return
