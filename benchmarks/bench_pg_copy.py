"""PostgreSQL metric throughput: raw binary COPY (the ceiling) vs Store.apply, points/s, one process.

    python benchmarks/bench_pg_copy.py [--url postgresql://...] [--points 500000]

The URL (default $ML_PERSISTENCE_TEST_POSTGRES) needs CREATEDB: each run uses a fresh database
mlp_bench_<hex>, dropped at the end. Batches are 8192 MetricsLogged events of 1 point, one
transaction each, into the indexed metrics table of the real schema.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from ml_persistence.events import MetricsLogged  # noqa: E402
from ml_persistence.postgres import connect, schema, store as pg_store  # noqa: E402
from ml_persistence.rows import local_text  # noqa: E402
from ml_persistence.storage import display  # noqa: E402

BATCH = 8192


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Create a scratch database through ``admin_url``; yield its URL; drop it."""
    name = "mlp_bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def events(points: int) -> list[MetricsLogged]:
    """One point per event, as a training loop logging a loss each step would send."""
    t = time.time()
    return [MetricsLogged(1, ["train_loss"], [1.0 / (i + 1)], None, i, None, None, t + i * 1e-4) for i in range(points)]


def raw_copy(url: str, batch: list[MetricsLogged]) -> float:
    """Binary COPY of the same rows with no Store around it: the ceiling. Return seconds."""
    with connect.connect(url) as conn:
        start = time.perf_counter()
        for offset in range(0, len(batch), BATCH):
            with conn.transaction(), conn.cursor() as cursor:
                with cursor.copy(pg_store._COPY_METRICS) as copy:
                    copy.set_types(pg_store._METRIC_TYPES)
                    for e in batch[offset : offset + BATCH]:
                        copy.write_row((e.experiment_id, "scalar", local_text(e.ts), e.names[0], e.values[0],
                                        "train", None, None, e.step, None, None, None, None))
        return time.perf_counter() - start


async def store_apply(url: str, batch: list[MetricsLogged]) -> float:
    """Store.apply over batches of BATCH events. Return seconds."""
    store = pg_store.Store(url, 5000)
    await store.open()
    try:
        start = time.perf_counter()
        for offset in range(0, len(batch), BATCH):
            await store.apply(batch[offset : offset + BATCH])
        return time.perf_counter() - start
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("ML_PERSISTENCE_TEST_POSTGRES"))
    parser.add_argument("--points", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not args.url:
        parser.error("give --url or set ML_PERSISTENCE_TEST_POSTGRES")
    batch = events(args.points)
    print(f"server: {display(args.url)}; {args.points} points, {BATCH} events x 1 point per transaction")
    for name, run in (("raw binary COPY", raw_copy), ("Store.apply", lambda u, b: asyncio.run(store_apply(u, b)))):
        rates = []
        for _ in range(args.repeat):
            with fresh_database(args.url) as url:
                with connect.connect(url) as conn:
                    schema.ensure(conn)
                rates.append(args.points / run(url, batch))
        print(f"{name:16s} best {max(rates):>9,.0f} points/s   (runs: {', '.join(f'{r:,.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
