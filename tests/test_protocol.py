"""The wire protocol in isolation: frame splitting, length limits, message round trips, addresses.

No agent process here; tests/test_agent_hostile.py sends the same bytes to a real agent.
"""

from __future__ import annotations

import tracemalloc
from typing import Optional

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_persistence import address, events as ev
from ml_persistence import protocol as p
from ml_persistence.errors import InvalidValueError

# -- helpers --------------------------------------------------------------------------------------


def metric(experiment_id: int = 1, names: Optional[list] = None, values: Optional[list] = None) -> ev.MetricsLogged:
    names = ["loss"] if names is None else names
    values = [0.5] if values is None else values
    return ev.MetricsLogged(experiment_id, names, values, None, 3, None, None, 1700000000.0)


def raw(event: ev.Event) -> msgspec.Raw:
    return msgspec.Raw(ev.encode(event))


CLIENT_MESSAGES = [
    p.Hello(p.PROTOCOL_VERSION, "c" * 32, 1234, "host-a"),
    p.Hello(p.PROTOCOL_VERSION, "c" * 32, 1234, "host-a", token="s3cret"),
    p.Events(1, [raw(metric()), raw(ev.DatasetLinked(1, 2, "train"))]),
    p.Events(7, []),
    p.Call(3, raw(ev.ExperimentEnded(1, "completed", None, 1700000000.0))),
    p.Flush(2**64 - 1),
    p.Read(9, "get_experiment", [1, "x", None, 2.5, [1, 2]]),
]

AGENT_MESSAGES = [
    p.Welcome(p.PROTOCOL_VERSION, 10, 8),
    p.Refused("wrong token"),
    p.Committed(5),
    p.Flushed(6),
    p.Answer(7, row_id=42),
    p.Answer(7, error="database refused ModelRegistered"),
    p.ReadAnswer(1),
    p.ReadAnswer(2, msgspec.Raw(p.encode_value({"id": 1, "value": float("inf")}))),
    p.ReadAnswer(3, error="LookupError: unknown query 'x'"),
]


def decode_stream(stream: bytes, cuts: list[int], max_frame: int = p.DEFAULT_MAX_FRAME) -> list[bytes]:
    """Feed ``stream`` to one FrameDecoder, split at ``cuts``; return every body it yields."""
    decoder = p.FrameDecoder(max_frame)
    bodies: list[bytes] = []
    start = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        bodies += decoder.feed(stream[start:cut])
        start = cut
    assert not decoder.partial
    return bodies


# -- FrameDecoder ---------------------------------------------------------------------------------


def test_frames_split_the_same_however_the_stream_is_chunked() -> None:
    frames = [p.frame(m) for m in CLIENT_MESSAGES]
    stream = b"".join(frames)
    expected = [f[4:] for f in frames]
    assert decode_stream(stream, []) == expected  # all at once
    assert decode_stream(stream, list(range(len(stream)))) == expected  # one byte at a time
    boundaries = [sum(len(f) for f in frames[:i]) for i in range(len(frames))]
    assert decode_stream(stream, [b + 2 for b in boundaries]) == expected  # cut inside every length prefix
    assert decode_stream(stream, [b + 5 for b in boundaries]) == expected  # cut inside every body


def test_an_empty_body_is_a_frame() -> None:
    decoder = p.FrameDecoder()
    assert decoder.feed(b"\x00\x00\x00\x00" * 3) == [b"", b"", b""]
    assert not decoder.partial


def test_partial_is_true_exactly_while_a_frame_is_incomplete() -> None:
    data = p.frame(p.Flush(1))
    decoder = p.FrameDecoder()
    assert not decoder.partial
    assert decoder.feed(data[:1]) == []
    assert decoder.partial  # inside the length prefix
    assert decoder.feed(data[1:5]) == []
    assert decoder.partial  # inside the body
    assert decoder.feed(data[5:]) == [data[4:]]
    assert not decoder.partial
    assert decoder.feed(data + data[:2]) == [data[4:]]
    assert decoder.partial  # a whole frame, then the start of the next
    assert decoder.feed(data[2:]) == [data[4:]]
    assert not decoder.partial


def test_a_frame_of_exactly_max_frame_is_accepted_one_byte_more_is_not() -> None:
    decoder = p.FrameDecoder(max_frame=10)
    assert decoder.feed(p.LENGTH.pack(10) + b"x" * 10) == [b"x" * 10]
    with pytest.raises(p.ProtocolError, match="exceeds the limit of 10"):
        decoder.feed(p.LENGTH.pack(11))


def test_a_huge_length_prefix_is_refused_before_its_body_and_costs_no_memory() -> None:
    decoder = p.FrameDecoder()  # the agent's limit after the handshake, 64 MiB
    header = p.LENGTH.pack(0xFFFFFFFF)  # claims a 4 GiB body
    assert decoder.feed(header[:3]) == []  # not yet a whole prefix: nothing to judge
    tracemalloc.start()
    try:
        with pytest.raises(p.ProtocolError, match="4294967295 bytes exceeds the limit"):
            decoder.feed(header[3:])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024  # nothing sized by the claim was allocated
    assert len(decoder._buf) <= len(header)


def test_a_large_but_allowed_claim_costs_only_the_bytes_that_arrived() -> None:
    decoder = p.FrameDecoder()
    tracemalloc.start()
    try:
        assert decoder.feed(p.LENGTH.pack(p.DEFAULT_MAX_FRAME) + b"abc") == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.partial
    assert peak < 64 * 1024
    assert len(decoder._buf) == 7


def test_the_pre_handshake_limit_refuses_what_the_later_limit_allows() -> None:
    header = p.LENGTH.pack(p.HELLO_MAX_BYTES + 1)
    with pytest.raises(p.ProtocolError):
        p.FrameDecoder(p.HELLO_MAX_BYTES).feed(header)
    assert p.FrameDecoder(p.DEFAULT_MAX_FRAME).feed(header) == []


# -- messages -------------------------------------------------------------------------------------


@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_client_message_round_trips(message: p.Message) -> None:
    (body,) = p.FrameDecoder().feed(p.frame(message))
    assert p.decode_client_message(body) == message
    with pytest.raises(msgspec.DecodeError):
        p.decode_agent_message(body)  # no client message is also an agent message


@pytest.mark.parametrize("message", AGENT_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_agent_message_round_trips(message: p.Message) -> None:
    (body,) = p.FrameDecoder().feed(p.frame(message))
    decoded = p.decode_agent_message(body)
    assert decoded == message
    if isinstance(message, p.ReadAnswer):
        assert p.decode_value(decoded.result) == p.decode_value(message.result)
    with pytest.raises(msgspec.DecodeError):
        p.decode_client_message(body)


def test_a_hello_without_a_token_decodes_with_token_none() -> None:
    body = msgspec.msgpack.encode(["Hello", 1, "id", 5, "h"])
    assert p.decode_client_message(body) == p.Hello(1, "id", 5, "h", None)


@pytest.mark.parametrize(
    "body",
    [
        b"",  # nothing
        b"\xc1",  # a byte MessagePack never uses
        b"GET / HTTP/1.1\r\n",
        msgspec.msgpack.encode(["Gimme", 1]),  # unknown tag
        msgspec.msgpack.encode(["hello", 1, "id", 5, "h"]),  # tags are case sensitive
        msgspec.msgpack.encode(["Flush"]),  # a field missing
        msgspec.msgpack.encode(["Flush", "one"]),  # a field of the wrong type
        b"\x92\xa5Flush\xcf\x00",  # a uint64 cut short
        msgspec.msgpack.encode({"Flush": 1}),  # a map, not an array
        msgspec.msgpack.encode([1, 2, 3]),
        msgspec.msgpack.encode("Hello"),
        b"\x91" * 100_000,  # deeply nested arrays
    ],
)
def test_garbage_and_unknown_tags_raise_decode_error(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        p.decode_client_message(body)
    assert isinstance(info.value, ValueError)  # what the agent's session catches


# -- events ---------------------------------------------------------------------------------------


def test_check_accepts_consistent_events() -> None:
    ev.check(metric(names=["a", "b"], values=[1.0, 2.0]))
    ev.check(ev.HyperparametersLogged(1, ["lr"], ["0.1"], ["float"], 0.0))
    ev.check(ev.DatasetLinked(1, 2, "train"))


@pytest.mark.parametrize(
    "event",
    [
        metric(names=["a", "b"], values=[1.0]),
        metric(names=["a"], values=[1.0, 2.0]),
        metric(names=[], values=[1.0]),
        ev.HyperparametersLogged(1, ["lr", "gamma"], ["0.1"], ["float", "float"], 0.0),
        ev.HyperparametersLogged(1, ["lr"], ["0.1"], [], 0.0),
    ],
)
def test_check_refuses_names_and_values_of_different_lengths(event: ev.Event) -> None:
    with pytest.raises(ValueError):
        ev.check(event)
    ev.decode(ev.encode(event))  # its types are fine: only check() can catch it


def test_events_round_trip_and_unknown_events_do_not_decode() -> None:
    for event in (metric(), ev.DatasetLinked(1, 2, "train"), ev.ExperimentEnded(3, "failed", "oops", 1.0)):
        assert ev.decode(ev.encode(event)) == event
    for body in (msgspec.msgpack.encode(["Flush", 1]), msgspec.msgpack.encode("garbage"), b"\xc1"):
        with pytest.raises(msgspec.DecodeError):
            ev.decode(body)


# -- addresses ------------------------------------------------------------------------------------


def test_parse_unix_url() -> None:
    a = address.parse("unix:///run/user/1000/ml/agent.sock")
    assert (a.kind, a.path) == ("unix", "/run/user/1000/ml/agent.sock")
    assert str(a) == "unix:///run/user/1000/ml/agent.sock"


def test_parse_tcp_urls() -> None:
    a = address.parse("tcp://127.0.0.1:9")
    assert (a.kind, a.host, a.port) == ("tcp", "127.0.0.1", 9)
    b = address.parse("tcp://[::1]:9")
    assert (b.kind, b.host, b.port) == ("tcp", "::1", 9)
    assert str(b) == "tcp://[::1]:9"
    assert address.parse(str(b)) == b
    assert address.parse("  tcp://localhost:65535/ ") == address.Address("tcp", host="localhost", port=65535)


@pytest.mark.parametrize("url", ["default", "", "unix", "unix://", "  default "])
def test_default_means_the_private_socket(url: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    a = address.parse(url)
    assert a == address.default_address()
    assert a.kind == "unix"
    assert a.path == str(tmp_path / "ml_persistence" / address.SOCKET_NAME)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9",
        "127.0.0.1:9",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:",
        "tcp://:9",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:65536",
        "tcp://127.0.0.1:-1",
        "tcp://127.0.0.1:nine",
        "tcp://127.0.0.1:9/path",
        "tcp://[::1]",
        "udp://127.0.0.1:9",
    ],
)
def test_bad_urls_raise_invalid_value_error(url: str) -> None:
    with pytest.raises(InvalidValueError):
        address.parse(url)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"])
def test_loopback_hosts(host: str) -> None:
    assert p.is_loopback(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "", "10.0.0.1", "192.168.1.1", "example.com", "localhost.example.com", "2001:db8::1"]
)
def test_non_loopback_hosts(host: str) -> None:
    assert not p.is_loopback(host)


# -- fuzzing --------------------------------------------------------------------------------------

FUZZ_MAX_FRAME = 512
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
short_text = st.text(max_size=12)
non_nan_floats = st.floats(allow_nan=False)  # NaN != NaN would fail the equality checks
small_events = st.one_of(
    st.builds(ev.DatasetLinked, ints, ints, short_text),
    st.builds(
        lambda e, vals: metric(e, [f"m{i}" for i in range(len(vals))], vals),
        ints,
        st.lists(non_nan_floats, max_size=3),
    ),
).map(raw)
client_messages = st.one_of(
    st.builds(p.Hello, ints, short_text, ints, short_text, st.none() | short_text),
    st.builds(p.Events, ints, st.lists(small_events, max_size=3)),
    st.builds(p.Call, ints, small_events),
    st.builds(p.Flush, ints),
    st.builds(p.Read, ints, short_text, st.lists(st.none() | ints | short_text | non_nan_floats, max_size=3)),
)


# Raw junk for the stream: random bytes, and prefixes at the limit and just past it.
junk = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            p.LENGTH.pack(FUZZ_MAX_FRAME + 1),
            p.LENGTH.pack(0xFFFFFFFF),
            p.LENGTH.pack(FUZZ_MAX_FRAME) + b"\x00" * FUZZ_MAX_FRAME,
            p.LENGTH.pack(0),
        ]
    ),
)


def reference_split(stream: bytes, max_frame: int) -> tuple[list[bytes], bool]:
    """The frames of ``stream`` read front to back, and whether an oversized prefix stops it."""
    bodies, pos = [], 0
    while len(stream) - pos >= 4:
        (length,) = p.LENGTH.unpack_from(stream, pos)
        if length > max_frame:
            return bodies, True
        if pos + 4 + length > len(stream):
            break
        bodies.append(stream[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return bodies, False


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts}) if stream else []
    pieces, start = [], 0
    for point in points + [len(stream)]:
        pieces.append(stream[start:point])
        start = point
    return pieces


def decode_all_or_reject(bodies: list[bytes]) -> list[Optional[p.Message]]:
    """Decode each body; a body that is not a client message must raise DecodeError (None here)."""
    out: list[Optional[p.Message]] = []
    for body in bodies:
        try:
            out.append(p.decode_client_message(body))
        except msgspec.DecodeError as exc:
            assert isinstance(exc, ValueError)
            out.append(None)
    return out


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(st.one_of(client_messages, junk), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_fuzz_arbitrary_bytes_in_arbitrary_chunks(items: list, cuts: list[int]) -> None:
    """Valid frames with raw junk between them: the decoder agrees with a front-to-back reading,
    fails only with ProtocolError, and every body either decodes or raises DecodeError."""
    stream = b"".join(p.frame(i) if isinstance(i, p.Message) else i for i in items)
    expected, oversized = reference_split(stream, FUZZ_MAX_FRAME)
    decoder = p.FrameDecoder(FUZZ_MAX_FRAME)
    got: list[bytes] = []
    refused = False
    for piece in chunked(stream, cuts):
        try:
            got += decoder.feed(piece)
        except p.ProtocolError:
            refused = True
            break
    assert refused == oversized
    if refused:
        assert got == expected[: len(got)]  # never a body the stream does not hold
    else:
        assert got == expected
    decode_all_or_reject(got)
    # Up to the first junk, the valid frames are exactly what was sent.
    leading = []
    for item in items:
        if not isinstance(item, p.Message):
            break
        leading.append(item)
    n = min(len(leading), len(got))
    assert decode_all_or_reject(got[:n]) == leading[:n]
    if not refused:
        assert n == len(leading)


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(st.one_of(client_messages, st.binary(max_size=60)), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_fuzz_valid_frames_between_framed_garbage_are_decoded_exactly(items: list, cuts: list[int]) -> None:
    """Garbage bodies inside well-formed frames never disturb the valid frames around them."""
    bodies = [msgspec.msgpack.encode(i) if isinstance(i, p.Message) else i for i in items]
    if any(len(b) > FUZZ_MAX_FRAME for b in bodies):
        return
    stream = b"".join(p.LENGTH.pack(len(b)) + b for b in bodies)
    decoder = p.FrameDecoder(FUZZ_MAX_FRAME)
    got: list[bytes] = []
    for piece in chunked(stream, cuts):
        got += decoder.feed(piece)
    assert not decoder.partial
    assert got == bodies
    decoded = decode_all_or_reject(got)
    for item, message in zip(items, decoded):
        if isinstance(item, p.Message):
            assert message == item


def test_port_zero_is_only_for_listening() -> None:
    assert address.parse("tcp://127.0.0.1:0", listen=True).port == 0
    with pytest.raises(InvalidValueError):
        address.parse("tcp://127.0.0.1:0")
