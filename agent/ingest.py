"""Events frames as the agent queues them: each frame's events stay encoded until the writer takes them."""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import msgspec

from ml_persistence import events as ev
from ml_persistence import protocol as p
from ml_persistence.buffer import Request

log = logging.getLogger("ml_persistence.agent")


class EventsFrame(p.Message, tag="Events"):
    """An Events message whose events are kept as one encoded array (the bytes p.Events carries)."""

    first_seq: int
    events: msgspec.Raw


ClientFrame = Union[p.Hello, EventsFrame, p.Call, p.Flush, p.Read]
decode_client_frame = msgspec.msgpack.Decoder(ClientFrame).decode
_raws = msgspec.msgpack.Decoder(list[msgspec.Raw]).decode
_events = msgspec.msgpack.Decoder(list[ev.AnyEvent]).decode
_encode = msgspec.msgpack.Encoder().encode


def array_length(data: Any) -> int:
    """Return how many items the msgpack array ``data`` holds; raise ProtocolError if it is not an array."""
    view = memoryview(data)
    first = view[0] if len(view) else 0
    if 0x90 <= first <= 0x9F:
        return first & 0x0F
    if first == 0xDC and len(view) >= 3:
        return int.from_bytes(view[1:3], "big")
    if first == 0xDD and len(view) >= 5:
        return int.from_bytes(view[1:5], "big")
    raise p.ProtocolError("Events.events is not an array")


class Batch:
    """Events the agent received from one client (a Frame, then decoded), ending at sequence number ``last_seq``.

    The writer commits them in one transaction together with the client's new high-water mark,
    then calls ``on_committed(batch)`` (from the writer thread; a callback that closed over its batch
    would make a reference cycle, which the agent's raised collector thresholds free only rarely).
    """

    __slots__ = ("client_id", "last_seq", "events", "on_committed", "seqs", "rejected")

    def __init__(
        self,
        client_id: str,
        last_seq: int,
        events: list[Any],
        on_committed: Callable[["Batch"], None],
        seqs: Optional[list[int]] = None,
    ) -> None:
        self.client_id = client_id
        self.last_seq = last_seq
        self.events = events
        self.on_committed = on_committed
        self.seqs = seqs  # each event's sequence number (default: consecutive, ending at last_seq)
        self.rejected = 0  # events of this batch the database refused

    def __len__(self) -> int:
        return len(self.events)



class KeyedRequest(Request):
    """A client's id-returning event, decoded, stored exactly once under its (client id, seq) ``key``."""

    __slots__ = ("key",)

    def __init__(self, event: Any, key: tuple[str, int]) -> None:
        super().__init__(event)
        self.key = key


class Frame:
    """The events of one Events frame, still encoded as one msgpack array; iterating yields each one's bytes."""

    __slots__ = ("data", "count")

    def __init__(self, data: Any, count: int) -> None:
        self.data = data  # a msgpack array of encoded events (msgspec.Raw or bytes)
        self.count = count

    @classmethod
    def after(cls, data: Any, count: int, skip: int) -> "Frame":
        """Return the frame of ``data``'s events but the first ``skip`` (already received)."""
        if not skip:
            return cls(data, count)
        return cls(_encode(_raws(data)[skip:]), count - skip)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[msgspec.Raw]:
        return iter(_raws(self.data))


def decode(batch: Batch) -> int:
    """Replace ``batch``'s Frame by its decoded, checked events and their sequence numbers; return how many
    it refused (each logged, none stored; the batch's mark still covers them)."""
    frame = batch.events
    if type(frame) is not Frame:
        return 0
    first = batch.last_seq - frame.count + 1
    try:
        events = _events(frame.data)
        refusals = [_refusal(event) for event in events]
    except msgspec.DecodeError:
        events, refusals = _decode_singly(frame)
    if any(refusals):
        kept: list[Any] = []
        seqs: list[int] = []
        for seq, (event, refusal) in enumerate(zip(events, refusals), first):
            if refusal is None:
                kept.append(event)
                seqs.append(seq)
            else:
                log.error("client %s: event refused, not stored: %s", batch.client_id[:8], refusal)
        batch.events, batch.seqs = kept, seqs
        refused = len(events) - len(kept)
        batch.rejected += refused
        return refused
    batch.events = events
    return 0


def _refusal(event: Any) -> Optional[str]:
    try:
        ev.check(event)
    except ValueError as exc:
        return str(exc)
    return None


def _decode_singly(frame: Frame) -> tuple[list[Any], list[Optional[str]]]:
    """Decode a frame's events one by one, for a frame holding undecodable ones: None stands for each."""
    events: list[Any] = []
    refusals: list[Optional[str]] = []
    for raw in frame:
        try:
            event = ev.decode(raw)
        except msgspec.DecodeError as exc:
            events.append(None)
            refusals.append(str(exc))
        else:
            events.append(event)
            refusals.append(_refusal(event))
    return events, refusals


def seqs_of(batch: Batch) -> Sequence[int]:
    """Return each decoded event's sequence number in ``batch``."""
    if batch.seqs is not None:
        return batch.seqs
    return range(batch.last_seq - len(batch.events) + 1, batch.last_seq + 1)
