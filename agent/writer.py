"""The agent's writer: the shared Writer, decoding each client's frames only when it commits them."""

from __future__ import annotations

import functools
from typing import Any, Sequence

from ml_persistence.buffer import Batch
from ml_persistence.storage import REFUSED
from ml_persistence.writer import Writer, _Abandoned

from . import ingest


class AgentWriter(Writer):
    """Commits Batches of encoded Frames: one decode per frame, one keyed transaction per batch."""

    async def _commit(self, store: Any, work: Sequence[Any]) -> bool:
        for batch in work:
            ingest.decode(batch)
        apply_batches = getattr(store, "apply_batches", None)
        if apply_batches is None or any(type(batch) is not Batch for batch in work):
            return await super()._commit(store, work)
        n = sum(len(batch.events) for batch in work)
        self.in_flight = n
        marks = {batch.client_id: batch.last_seq for batch in work}
        parts = [(batch.client_id, ingest.seqs_of(batch), batch.events) for batch in work]
        try:
            await self._retrying(functools.partial(apply_batches, marks=marks), parts)
        except _Abandoned:
            self._keep_unwritten(work, _events(work), [None] * n, 0)
            return False
        except Exception as exc:  # noqa: BLE001 - the shared path finds the event(s) the database refuses
            if self.classify(exc) != REFUSED:
                self._keep_unwritten(work, _events(work), [None] * n, 0)
                self._save_unwritten()
                raise
            return await super()._commit(store, work)
        self.written += n
        self.in_flight = 0
        with self.gate:
            await store.keep_wal_small()
        return True


def _events(work: Sequence[Batch]) -> list[Any]:
    return [event for batch in work for event in batch.events]
