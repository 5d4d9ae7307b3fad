"""Metric rows assembled column by column equal the rows built one event at a time."""

from __future__ import annotations

import math

import msgspec

from agent import ingest
from agent.ingest import Batch
from ml_persistence import events as ev
from ml_persistence.rows import local_text, metric_rows, split_of
from ml_persistence.sqlite.store import _METRIC_OPTIONAL


def one_by_one(events: list[ev.MetricsLogged]) -> tuple[tuple[bool, ...], list]:
    present = tuple(any(getattr(e, c) is not None for e in events) for c in _METRIC_OPTIONAL)
    out: list = []
    for e in events:
        head = [e.experiment_id, "json" if e.value_json is not None else "scalar", local_text(e.ts)]
        tail = [getattr(e, c) for c, here in zip(_METRIC_OPTIONAL, present) if here]
        for name, value in zip(e.names, e.values):
            out += [*head, name, value, e.split or split_of(name) or "", *tail]
    return present, out


def metric(names: list[str], values: list[float], **fields) -> ev.MetricsLogged:  # type: ignore[no-untyped-def]
    base = dict(episode=None, step=None, epoch=None, split=None, ts=1_700_000_000.123456)
    base.update(fields)
    return ev.MetricsLogged(7, names, values, base["episode"], base["step"], base["epoch"], base["split"], base["ts"],
                            **{k: v for k, v in fields.items() if k not in base})


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))


def test_rows_match_the_event_by_event_rows_for_mixed_events() -> None:
    events = [
        metric(["train_loss", "val_acc", "lr"], [0.5, float("nan"), float("inf")], step=1),
        metric(["test_x"], [1.0], split="", epoch=2),
        metric(["loss", "acc"], [2.0, -0.0], split="holdout", ts=1_700_000_001.5),
        metric(["q"], [0.0], value_json='{"a": 1}', model_id=3, phase="eval", metadata='{"k": 2}'),
        metric([], []),
    ]
    present, values = metric_rows(events, _METRIC_OPTIONAL)
    expected_present, expected = one_by_one(events)
    assert present == expected_present
    assert same(values, expected)


def test_names_and_values_of_unequal_length_pair_up_within_their_event() -> None:
    events = [metric(["a", "b"], [1.0]), metric(["c"], [2.0, 3.0]), metric(["d"], [4.0])]
    _, values = metric_rows(events, _METRIC_OPTIONAL)
    assert values[3::6] == ["a", "c", "d"] and values[4::6] == [1.0, 2.0, 4.0]


def test_a_frame_is_decoded_with_its_bad_events_refused_and_its_sequence_numbers_kept() -> None:
    good = [ev.encode(metric(["x"], [float(i)], step=i)) for i in range(3)]
    bad = [msgspec.msgpack.encode("garbage"), ev.encode(metric(["a", "b"], [1.0]))]
    payloads = [good[0], bad[0], good[1], bad[1], good[2]]
    data = ev.array_header(len(payloads)) + b"".join(payloads)
    batch = Batch("client", 15, ingest.Frame(data, len(payloads)), lambda batch: None)  # type: ignore[arg-type]
    assert [bytes(raw) for raw in batch.events] == payloads  # what a recovery file would get
    assert ingest.decode(batch) == 2
    assert [e.step for e in batch.events] == [0, 1, 2]
    assert list(ingest.seqs_of(batch)) == [11, 13, 15] and batch.rejected == 2


def test_a_replayed_frame_keeps_only_the_events_after_those_received() -> None:
    payloads = [ev.encode(metric(["x"], [float(i)], step=i)) for i in range(5)]
    data = ev.array_header(5) + b"".join(payloads)
    frame = ingest.Frame.after(data, 5, 2)
    assert len(frame) == 3 and [bytes(raw) for raw in frame] == payloads[2:]
    assert ingest.array_length(frame.data) == 3
