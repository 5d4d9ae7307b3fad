"""The trainer ⇄ agent wire protocol: length-prefixed msgpack frames carrying tagged messages.

A frame is a 4-byte big-endian unsigned body length followed by the body, one msgspec-encoded
message. The first frame from a client is a Hello, the agent's first answer a Welcome or a
Refused. PROTOCOL.md at the repository root describes every message.
"""

from __future__ import annotations

import struct
from typing import Any, Optional, Union

import msgspec

from .errors import MLPersistenceError
from .events import array_header

PROTOCOL_VERSION = 1
LENGTH = struct.Struct(">I")
HELLO_MAX_BYTES = 64 * 1024  # the most a client may send before it is authenticated
DEFAULT_MAX_FRAME = 64 * 1024 * 1024


class ProtocolError(MLPersistenceError):
    """A peer sent bytes that are not a valid frame or message."""


class Message(msgspec.Struct, array_like=True, tag=True):
    """Base of every message: an array of its tag, then its fields in order.

    Each subclass names its tag explicitly, so the class name is free to change; the tag, the field
    order and the field types are the wire format. tests/test_wire_format.py holds the golden bytes.
    """


# -- client to agent ----------------------------------------------------------------------------


class Hello(Message, tag="Hello"):
    version: int
    client_id: str
    pid: int
    host: str
    token: Optional[str] = None


class Events(Message, tag="Events"):
    """Encoded events with sequence numbers first_seq, first_seq + 1, ..."""

    first_seq: int
    events: list[msgspec.Raw]


class Call(Message, tag="Call"):
    """One id-returning event (start_experiment, register_model, ...) at sequence number ``seq``."""

    seq: int
    event: msgspec.Raw


class Flush(Message, tag="Flush"):
    """Ask for a Flushed once everything up to ``seq`` is committed."""

    seq: int


class Read(Message, tag="Read"):
    """Run the named read query with ``args`` after this client's earlier events are committed."""

    read_id: int
    query: str
    args: list[Any]


# -- agent to client ----------------------------------------------------------------------------


class Welcome(Message, tag="Welcome"):
    version: int
    received_seq: int  # the client may resume sending after this one
    committed_seq: int  # everything up to here is in the database
    max_frame: int = DEFAULT_MAX_FRAME  # the largest frame the agent accepts from this client
    rejected: int = 0  # this client's events refused so far (malformed, or refused by the database)
    database: Optional[str] = None  # the agent's database file, named in a client's recovery message


class Refused(Message, tag="Refused"):
    reason: str


class Committed(Message, tag="Committed"):
    seq: int
    rejected: int = 0  # as in Welcome: a growing count, so the client can raise the difference


class Flushed(Message, tag="Flushed"):
    seq: int
    rejected: int = 0


class Answer(Message, tag="Answer"):
    seq: int
    row_id: Optional[int] = None
    error: Optional[str] = None


class ReadAnswer(Message, tag="ReadAnswer"):
    read_id: int
    result: msgspec.Raw = msgspec.Raw(b"\xc0")
    error: Optional[str] = None


ClientMessage = Union[Hello, Events, Call, Flush, Read]
AgentMessage = Union[Welcome, Refused, Committed, Flushed, Answer, ReadAnswer]

_encoder = msgspec.msgpack.Encoder()
decode_client_message = msgspec.msgpack.Decoder(ClientMessage).decode
decode_agent_message = msgspec.msgpack.Decoder(AgentMessage).decode
encode_value = _encoder.encode
decode_value = msgspec.msgpack.Decoder().decode


def frame(message: Message) -> bytes:
    """Encode ``message`` as one frame."""
    body = _encoder.encode(message)
    return LENGTH.pack(len(body)) + body


_EVENTS_HEAD = _encoder.encode(Events(0, []))[:-2]  # [tag, first_seq, events]: up to first_seq


def events_frame(first_seq: int, count: int, data: bytes) -> bytes:
    """Return the frame of Events(first_seq, ...) for ``count`` encoded events joined in ``data``.

    The same bytes as frame(Events(first_seq, [Raw(e) for e in events])), without an object per event.
    """
    body = b"".join((_EVENTS_HEAD, _encoder.encode(first_seq), array_header(count), data))
    return LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Split a byte stream into frame bodies; never trusts a length prefix beyond ``max_frame``.

    Bytes are kept only as they arrive, so a claimed length costs nothing until its bytes come.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def partial(self) -> bool:
        """True while part of a frame has been received."""
        return bool(self._buf)

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held, as received (never the length it announces)."""
        return len(self._buf)

    def clear(self) -> None:
        """Release the bytes of an unfinished frame (the connection is gone)."""
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the bodies of every frame now complete."""
        buf = self._buf
        buf += data
        bodies = []
        pos = 0
        while len(buf) - pos >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buf, pos)
            if length > self.max_frame:
                raise ProtocolError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
            end = pos + LENGTH.size + length
            if end > len(buf):
                break
            with memoryview(buf) as view:  # one copy of the body, not two
                bodies.append(bytes(view[pos + LENGTH.size : end]))
            pos = end
        if pos == len(buf):
            self._buf = bytearray()  # give a large frame's memory back now
        elif pos:
            del buf[:pos]
        return bodies


def is_loopback(host: str) -> bool:
    """True if ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
