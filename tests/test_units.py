"""Unit tests of the leaf modules: validation, events, buffer, store helpers, import direction."""

from __future__ import annotations

import ast
import math
from fractions import Fraction
from pathlib import Path

import pytest

from ml_persistence import events as ev
from ml_persistence import validate as v
from ml_persistence.buffer import EventBuffer
from ml_persistence.spool import Spool
from ml_persistence.errors import InvalidTypeError, InvalidValueError
from ml_persistence.rows import local_text, split_of

PACKAGE = Path(__file__).resolve().parent.parent / "ml_persistence"


@pytest.mark.parametrize("value, expected", [(1, 1), (2.5, 2.5), (True, 1), (False, 0), (Fraction(1, 4), 0.25)])
def test_real_accepts_numbers(value, expected) -> None:
    assert v.real("x", value) == expected


@pytest.mark.parametrize("value", ["abc", "1.0", None, object(), [1.0], {"a": 1}, b"1", 1j])
def test_real_refuses_everything_else_with_the_name(value) -> None:
    with pytest.raises(InvalidTypeError, match="loss"):
        v.real("loss", value)


def test_real_unwraps_numpy_scalars_and_one_element_arrays() -> None:
    np = pytest.importorskip("numpy")
    assert v.real("x", np.float16(0.5)) == 0.5
    assert v.real("x", np.array([[3]])) == 3
    with pytest.raises(InvalidTypeError):
        v.real("x", np.array([1.0, 2.0]))


def test_hyperparameters_keep_their_type() -> None:
    for value in (3, 0.1, 1e-300, True, "adam", None, [1, "a"], {"k": [1.5]}):
        name, text, kind = v.hyperparameter("p", value)
        assert name == "p" and v.decode_hyperparameter(text, kind) == value
        assert type(v.decode_hyperparameter(text, kind)) is type(value)


def test_hyperparameter_with_unencodable_value_raises() -> None:
    with pytest.raises(InvalidTypeError, match="p"):
        v.hyperparameter("p", object())


def test_json_text_refuses_what_is_not_json() -> None:
    assert v.json_object_text("m", {"a": [1, 2.5, None, "x"]}) == '{"a":[1,2.5,null,"x"]}'
    with pytest.raises(InvalidTypeError):
        v.json_object_text("m", {"a": object()})
    with pytest.raises(InvalidTypeError):
        v.json_object_text("m", ["not", "a", "dict"])
    with pytest.raises(InvalidValueError):
        v.value_json("{bad")
    assert v.value_json({"hold": 0.5}) == '{"hold":0.5}'


def test_optional_int() -> None:
    assert v.optional_int("step", None) is None
    assert v.optional_int("step", 5.0) == 5
    with pytest.raises(InvalidTypeError):
        v.optional_int("step", 5.5)
    with pytest.raises(InvalidTypeError):
        v.optional_int("step", "5")


def test_events_roundtrip_including_nan_and_inf() -> None:
    event = ev.MetricsLogged(1, ["a", "b", "c"], [math.nan, math.inf, 2], 3, None, None, "val", 1.5)
    back = ev.decode(ev.encode(event))
    assert isinstance(back, ev.MetricsLogged) and back.names == ["a", "b", "c"] and back.split == "val"
    assert math.isnan(back.values[0]) and back.values[1:] == [math.inf, 2.0]
    started = ev.ExperimentStarted("n", None, None, ["t"], 1, None, ev.Environment(pid=4), 0.0)
    assert ev.decode(ev.encode(started)) == started


def test_unknown_or_garbage_events_fail_to_decode() -> None:
    import msgspec

    with pytest.raises(msgspec.DecodeError):
        ev.decode(b"\x92\xa7Unknown\x01")
    with pytest.raises(msgspec.DecodeError):
        ev.decode(b"\xff\x00garbage")


def test_buffer_spills_past_its_memory_bound_and_keeps_fifo_with_barriers() -> None:
    kicks = []
    buffer = EventBuffer(max_events=4, wake_threshold=2, kick=lambda: kicks.append(1))
    buffer.idle = False
    buffer.append(b"1")
    assert kicks == []
    buffer.append(b"2")
    assert kicks == [1]  # threshold reached
    first = buffer.barrier()
    buffer.append(b"3")
    with pytest.warns(RuntimeWarning, match="spilling to a temporary file"):
        buffer.append(b"4")  # memory holds 4 items: this one goes to the spool
    second = buffer.barrier()  # behind the spilled event, so spilled too
    buffer.append(b"5" * 300_000)  # larger than one write chunk
    assert len(buffer.items) == 4 and len(buffer.spool) == 3 and buffer.dropped == 0
    assert buffer.take(5) == [b"1", b"2", first, b"3", b"4"]
    items = buffer.take(10)
    assert items == [second, b"5" * 300_000] and buffer.spilling is False and len(buffer) == 0
    buffer.append(b"6")  # back to memory
    assert buffer.take(10) == [b"6"] and buffer.spilled == 3


def test_buffer_drops_and_counts_only_when_the_spool_is_full() -> None:
    buffer = EventBuffer(max_events=1, wake_threshold=1, kick=lambda: None, spool=Spool(max_bytes=100))
    with pytest.warns(RuntimeWarning, match="spilling"):
        for i in range(10):
            buffer.append(b"x" * 30)
    assert buffer.dropped == 7  # one in memory, two in the spool
    assert [len(i) for i in buffer.take(100)] == [30, 30, 30]


def test_spool_reads_back_what_it_wrote_in_order_across_chunks(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    payloads = [bytes([i % 251]) * (i * 97 % 5000) for i in range(2000)]
    for i, payload in enumerate(payloads):
        spool.put(i % 2, payload)
    got = []
    while len(spool):
        got.extend(spool.get(333))
    assert got == [(i % 2, p) for i, p in enumerate(payloads)]
    assert list(tmp_path.iterdir()) == []  # unlinked: nothing is left behind whatever happens
    spool.close()


def test_local_text_and_split_prefixes() -> None:
    text = local_text(1_700_000_000.25)
    assert len(text) == 26 and text.endswith(".250000")
    assert [split_of(n) for n in ("train_loss", "val_x", "test_y", "trainloss", "entropy")] == ["train", "val", "test", None, None]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(node.module.split(".")[0] if node.module else "")
            found.update(a.name for a in node.names if not node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_imports_flow_one_way() -> None:
    leaves = {"events", "errors", "rows", "storage"}
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py")}
    for module, imported in graph.items():
        assert "agent" not in imported, f"{module} imports the agent"
    for leaf in leaves:
        assert not (graph[leaf] & (set(graph) - {"errors", "events", "sqlite", "postgres"})), f"{leaf} must stay a leaf"
    assert not graph["buffer"] & (set(graph) - {"spool"}), "buffer.py uses only spool"
    assert not graph["spool"] & set(graph), "spool.py is stdlib only"
    for low in ("writer", "backend", "buffer", "storage"):
        assert not graph[low] & {"tracker", "registry", "datasets", "metrics", "aio", "cli"}, low


def test_a_full_disk_drops_and_counts_only_the_events_it_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    from ml_persistence import spool as spool_module

    real_pwrite = os.pwrite
    budget = {"bytes": 600_000}  # the "disk" takes this much, then is full

    def small_disk(fd: int, data: bytes, offset: int) -> int:
        room = budget["bytes"]
        if room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_pwrite(fd, bytes(data)[:room], offset)  # a short write at the edge
        budget["bytes"] -= n
        return n

    monkeypatch.setattr(spool_module.os, "pwrite", small_disk)
    buffer = EventBuffer(max_events=10, wake_threshold=10, kick=lambda: None)
    payloads = [i.to_bytes(4, "big") * 250 for i in range(3000)]  # 1000 bytes each
    with pytest.warns(RuntimeWarning):
        for payload in payloads:
            buffer.append(payload)
    delivered = []
    while len(buffer):
        delivered.extend(buffer.take(500))
    assert buffer.dropped > 0
    assert len(delivered) + buffer.dropped == len(payloads)
    assert delivered == [p for p in payloads if p in set(delivered)]  # in order, no duplicates


def test_json_written_by_something_else_too_deep_to_read_stays_text() -> None:
    """A reader never recurses into JSON deeper than ml_persistence stores (another writer's, or a hostile client's)."""
    from ml_persistence.strictjson import TOO_DEEP, decoded_json, json_safe

    deep_text = "[" * 10_000 + "]" * 10_000
    assert decoded_json(deep_text) == deep_text
    assert decoded_json("[" * 150 + "]" * 150) == "[" * 150 + "]" * 150  # past MAX_DEPTH: not ours
    assert decoded_json('{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    assert v.decode_hyperparameter(deep_text, "list") == deep_text
    deep: list = []
    for _ in range(5_000):
        deep = [deep]
    shown = json_safe({"x": deep})
    for _ in range(201):
        shown = shown[0] if isinstance(shown, list) else shown["x"]
    assert shown == TOO_DEEP


def test_names_refuse_nul_and_text_refuses_lone_surrogates() -> None:
    assert v.name_text("tags", "ok é") == "ok é"
    with pytest.raises(InvalidValueError, match="tags.*NUL"):
        v.name_text("tags", "a\x00b")
    with pytest.raises(InvalidValueError, match="notes.*lone surrogate"):
        v.optional_str("notes", "caf\udce9")
    with pytest.raises(InvalidValueError, match="notes.*NUL.*PostgreSQL"):  # the same on both engines
        v.optional_str("notes", "a\x00b")
    with pytest.raises(InvalidValueError, match="metric_name.*must not be empty"):
        v.metric_name("")
    with pytest.raises(InvalidTypeError, match="path"):
        v.path_text("path", 3)
