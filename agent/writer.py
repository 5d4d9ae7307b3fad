"""The agent's writer: the shared Writer over clients' Batches, each committed with its client's mark."""

from __future__ import annotations

import functools
from typing import Any, Iterator, Optional, Sequence

from ml_persistence import events as ev
from ml_persistence.storage import REFUSED
from ml_persistence.writer import Writer, _Abandoned

from . import ingest
from .ingest import Batch


class AgentWriter(Writer):
    """Commits Batches of encoded Frames: one decode per frame, one keyed transaction per batch.

    The client marks and (client, seq) keys that make replays exactly once live here, in the
    hooks the shared Writer leaves for work other than a trainer's encoded events.
    """

    def _decode(self, work: Sequence[Any]) -> tuple[list[Any], dict[str, int], list[Optional[bytes]]]:
        decoded: list[Any] = []
        marks: dict[str, int] = {}
        for batch in work:
            decoded.extend(batch.events)
            marks[batch.client_id] = batch.last_seq
        return decoded, marks, [None] * len(decoded)

    def _request_key(self, request: Any) -> Optional[tuple[str, int]]:
        return request.key

    def _committed(self, work: Sequence[Any]) -> None:
        for batch in work:
            batch.on_committed(batch)

    def _marks_per_event(self, work: Sequence[Any], n: int) -> list[tuple[Optional[dict[str, int]], Any]]:
        marks: list[tuple[Optional[dict[str, int]], Any]] = []
        for batch in work:
            marks.extend(({batch.client_id: seq}, batch) for seq in ingest.seqs_of(batch))
        return marks

    def _unwritten_of(self, batch: Any) -> tuple[int, Iterator[tuple[bytes, Optional[tuple[str, int]]]]]:
        ingest.decode(batch)
        pairs = zip(batch.events, ingest.seqs_of(batch))
        return len(batch), ((ev.encode(event), (batch.client_id, seq)) for event, seq in pairs)

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
