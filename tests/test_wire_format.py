"""Golden bytes of what outlives a call: events, agent messages, frames, recovery files, spool records.

Every literal here was produced by the code once and pasted in. A test failing here means the bytes
changed: a field was renamed, reordered or retyped, or a tag changed. Old recovery files, running
agents and spools then stop decoding. Restore the old bytes (give a renamed class its old ``tag=``,
put a new field last with a default) rather than updating a literal.
"""

from __future__ import annotations

import inspect
import os
import sys
import zlib
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest

from ml_persistence import events as ev
from ml_persistence import protocol as p
from ml_persistence import recovery
from ml_persistence.spool import BARRIER, EVENT, Spool

TS = 1700000000.25
TEXT = "Läufe 実験 🚀"
FULL_ENVIRONMENT = ev.Environment(
    git_commit="0123456789abcdef0123456789abcdef01234567",
    git_branch="feature/ü",
    git_dirty=True,
    git_diff="--- a\n+++ b\n",
    python_version="3.11.9",
    platform="Linux-6.8-x86_64",
    hostname="hôte",
    pid=4242,
    command="python train.py --lr 0.1",
    packages='{"numpy": "2.0.0"}',
)

# (instance, hex of its encoding): a fully populated one per class, and one with None where
# optional and defaults left out.
EVENTS: list[tuple[ev.Event, str]] = [
    (
        ev.ExperimentStarted(
            name=TEXT, experiment_type="rl", description="déjà vu", tags=["a", "β"], random_seed=42,
            metadata='{"k": "ü"}', environment=FULL_ENVIRONMENT, ts=TS,
        ),
        "99b14578706572696d656e7453746172746564b24cc3a475666520e5ae9fe9a89320f09f9a80a2726ca964c3a96ac3a0"
        "20767592a161a2ceb22aab7b226b223a2022c3bc227d8aaa6769745f636f6d6d6974d928303132333435363738396162"
        "63646566303132333435363738396162636465663031323334353637aa6769745f6272616e6368aa666561747572652f"
        "c3bca96769745f6469727479c3a86769745f64696666ac2d2d2d20610a2b2b2b20620aae707974686f6e5f7665727369"
        "6f6ea6332e31312e39a8706c6174666f726db04c696e75782d362e382d7838365f3634a8686f73746e616d65a568c3b4"
        "7465a3706964cd1092a7636f6d6d616e64b8707974686f6e20747261696e2e7079202d2d6c7220302e31a87061636b61"
        "676573b27b226e756d7079223a2022322e302e30227dcb41d954fc40100000",
    ),
    (
        ev.ExperimentStarted(
            name="run", experiment_type=None, description=None, tags=[], random_seed=None, metadata=None,
            environment=ev.Environment(), ts=TS,
        ),
        "99b14578706572696d656e7453746172746564a372756ec0c090c0c080cb41d954fc40100000",
    ),
    (
        ev.ExperimentEnded(experiment_id=7, status="completed", notes="notes ✓", ts=TS),
        "95af4578706572696d656e74456e64656407a9636f6d706c65746564a96e6f74657320e29c93cb41d954fc40100000",
    ),
    (
        ev.ExperimentEnded(experiment_id=7, status="failed", notes=None, ts=TS),
        "95af4578706572696d656e74456e64656407a66661696c6564c0cb41d954fc40100000",
    ),
    (
        ev.HyperparametersLogged(
            experiment_id=7, names=["lr", "γ"], values=["0.001", None], types=["float", "NoneType"], ts=TS,
            model_id=3,
        ),
        "97b54879706572706172616d65746572734c6f676765640792a26c72a2ceb392a5302e303031c092a5666c6f6174a84e"
        "6f6e6554797065cb41d954fc4010000003",
    ),
    (
        ev.HyperparametersLogged(experiment_id=7, names=["lr"], values=["0.1"], types=["float"], ts=TS),
        "97b54879706572706172616d65746572734c6f676765640791a26c7291a3302e3191a5666c6f6174cb41d954fc401000"
        "00c0",
    ),
    (
        ev.MetricsLogged(
            experiment_id=7, names=["loss", "précision"], values=[0.125, -2.5], episode=3, step=2**40,
            epoch=1, split="val", ts=TS, model_id=9, phase="warmup", value_json="[1, 2]",
            metadata='{"note": "ü"}',
        ),
        "9dad4d6574726963734c6f676765640792a46c6f7373aa7072c3a9636973696f6e92cb3fc0000000000000cbc0040000"
        "0000000003cf000001000000000001a376616ccb41d954fc4010000009a67761726d7570a65b312c20325dae7b226e6f"
        "7465223a2022c3bc227d",
    ),
    (
        ev.MetricsLogged(
            experiment_id=7, names=["loss"], values=[0.5], episode=None, step=None, epoch=None, split=None,
            ts=TS,
        ),
        "9dad4d6574726963734c6f676765640791a46c6f737391cb3fe0000000000000c0c0c0c0cb41d954fc40100000c0c0c0"
        "c0",
    ),
    (
        ev.MetricsLogged(
            experiment_id=7, names=["loss"], values=[0.5], episode=None, step=12, epoch=None, split=None,
            ts=TS, value_json='{"a": 1}',
        ),
        "9dad4d6574726963734c6f676765640791a46c6f737391cb3fe0000000000000c00cc0c0cb41d954fc40100000c0c0a8"
        "7b2261223a20317dc0",
    ),
    (
        ev.ModelRegistered(
            experiment_id=7, name=TEXT, version="1.0", architecture_type="mlp", state_dim=8, action_dim=2,
            checkpoint_path="/ckpt/modèle.pt", checkpoint_size_mb=12.5, episode_num=100, global_step=2**33,
            train_metric=0.25, val_metric=0.5, test_metric=0.75, is_best=True, hyperparameters='{"lr": 0.1}',
            metadata='{"m": "ü"}', ts=TS,
        ),
        "dc0012af4d6f64656c5265676973746572656407b24cc3a475666520e5ae9fe9a89320f09f9a80a3312e30a36d6c7008"
        "02b02f636b70742f6d6f64c3a86c652e7074cb402900000000000064cf0000000200000000cb3fd0000000000000cb3f"
        "e0000000000000cb3fe8000000000000c3ab7b226c72223a20302e317dab7b226d223a2022c3bc227dcb41d954fc4010"
        "0000",
    ),
    (
        ev.ModelRegistered(
            experiment_id=7, name=None, version=None, architecture_type=None, state_dim=None, action_dim=None,
            checkpoint_path="model.pt", checkpoint_size_mb=None, episode_num=None, global_step=None,
            train_metric=None, val_metric=None, test_metric=None, is_best=False, hyperparameters=None,
            metadata=None, ts=TS,
        ),
        "dc0012af4d6f64656c5265676973746572656407c0c0c0c0c0a86d6f64656c2e7074c0c0c0c0c0c0c2c0c0cb41d954fc"
        "40100000",
    ),
    (
        ev.DatasetRegistered(
            name=TEXT, version="v2", dataset_type="tabular", data_path="/data/d.parquet",
            data_hash="sha256:ab", split_type="time", num_samples=1000, start_date="2024-01-01",
            end_date="2024-12-31", feature_columns='["x", "ÿ"]', target_columns='["y"]',
            metadata='{"src": "ü"}', ts=TS,
        ),
        "9eb14461746173657452656769737465726564b24cc3a475666520e5ae9fe9a89320f09f9a80a27632a7746162756c61"
        "72af2f646174612f642e70617271756574a97368613235363a6162a474696d65cd03e8aa323032342d30312d3031aa32"
        "3032342d31322d3331ab5b2278222c2022c3bf225da55b2279225dad7b22737263223a2022c3bc227dcb41d954fc4010"
        "0000",
    ),
    (
        ev.DatasetRegistered(
            name="d", version="v1", dataset_type=None, data_path=None, data_hash=None, split_type=None,
            num_samples=None, start_date=None, end_date=None, feature_columns=None, target_columns=None,
            metadata=None, ts=TS,
        ),
        "9eb14461746173657452656769737465726564a164a27631c0c0c0c0c0c0c0c0c0c0cb41d954fc40100000",
    ),
    (
        ev.DatasetLinked(experiment_id=7, dataset_id=8, usage_type="train"),
        "94ad446174617365744c696e6b65640708a5747261696e",
    ),
    (
        ev.ArtifactLogged(
            experiment_id=7, model_id=9, artifact_type="plot", artifact_path="/out/courbe.png",
            artifact_name="courbe ü", file_size_mb=0.5, description="a plot", metadata='{"dpi": 100}', ts=TS,
        ),
        "9aae41727469666163744c6f676765640709a4706c6f74af2f6f75742f636f757262652e706e67a9636f7572626520c3"
        "bccb3fe0000000000000a66120706c6f74ac7b22647069223a203130307dcb41d954fc40100000",
    ),
    (
        ev.ArtifactLogged(
            experiment_id=7, model_id=None, artifact_type="plot", artifact_path="/out/p.png",
            artifact_name=None, file_size_mb=None, description=None, metadata=None, ts=TS,
        ),
        "9aae41727469666163744c6f6767656407c0a4706c6f74aa2f6f75742f702e706e67c0c0c0c0cb41d954fc40100000",
    ),
    (
        ev.ExperimentResumed(experiment_id=7, hostname="hôte", pid=4242, ts=TS),
        "95b14578706572696d656e74526573756d656407a568c3b47465cd1092cb41d954fc40100000",
    ),
    (
        ev.ExperimentResumed(experiment_id=7, hostname=None, pid=4242, ts=TS),
        "95b14578706572696d656e74526573756d656407c0cd1092cb41d954fc40100000",
    ),
    (
        ev.ExperimentReopened(experiment_id=7, hostname="hôte", pid=4242, ts=TS),
        "95b24578706572696d656e7452656f70656e656407a568c3b47465cd1092cb41d954fc40100000",
    ),
    (
        ev.ExperimentReopened(experiment_id=7, hostname=None, pid=4242, ts=TS),
        "95b24578706572696d656e7452656f70656e656407c0cd1092cb41d954fc40100000",
    ),
    (
        ev.AliasSet(alias="production", model_id=7, ts=TS),
        "94a8416c696173536574aa70726f64756374696f6e07cb41d954fc40100000",
    ),
    (
        ev.AliasDeleted(alias="champion"),
        "92ac416c69617344656c65746564a86368616d70696f6e",
    ),
]

LINKED = ev.encode(ev.DatasetLinked(experiment_id=7, dataset_id=8, usage_type="train"))
ENDED = ev.encode(ev.ExperimentEnded(experiment_id=7, status="failed", notes=None, ts=TS))

MESSAGES: list[tuple[p.Message, str]] = [
    (
        p.Hello(version=1, client_id="c" * 32, pid=4242, host="hôte", token="s3cret"),
        "96a548656c6c6f01d9206363636363636363636363636363636363636363636363636363636363636363cd1092a568c3"
        "b47465a6733363726574",
    ),
    (
        p.Hello(version=1, client_id="c" * 32, pid=4242, host="host"),
        "96a548656c6c6f01d9206363636363636363636363636363636363636363636363636363636363636363cd1092a4686f"
        "7374c0",
    ),
    (
        p.Events(first_seq=2**33, events=[msgspec.Raw(LINKED), msgspec.Raw(ENDED)]),
        "93a64576656e7473cf00000002000000009294ad446174617365744c696e6b65640708a5747261696e95af4578706572"
        "696d656e74456e64656407a66661696c6564c0cb41d954fc40100000",
    ),
    (
        p.Events(first_seq=0, events=[]),
        "93a64576656e74730090",
    ),
    (
        p.Call(seq=9, event=msgspec.Raw(ENDED)),
        "93a443616c6c0995af4578706572696d656e74456e64656407a66661696c6564c0cb41d954fc40100000",
    ),
    (
        p.Flush(seq=2**64 - 1),
        "92a5466c757368cfffffffffffffffff",
    ),
    (
        p.Read(read_id=3, query="get_experiment", args=[1, TEXT, None, 2.5, True, [1, 2]]),
        "94a45265616403ae6765745f6578706572696d656e749601b24cc3a475666520e5ae9fe9a89320f09f9a80c0cb400400"
        "0000000000c3920102",
    ),
    (
        p.Welcome(
            version=1, received_seq=10, committed_seq=8, max_frame=1 << 20, rejected=2,
            database="/data/expériences.db",
        ),
        "97a757656c636f6d65010a08ce0010000002b52f646174612f657870c3a97269656e6365732e6462",
    ),
    (
        p.Welcome(version=1, received_seq=10, committed_seq=8),
        "97a757656c636f6d65010a08ce0400000000c0",
    ),
    (
        p.Refused(reason=TEXT),
        "92a752656675736564b24cc3a475666520e5ae9fe9a89320f09f9a80",
    ),
    (
        p.Committed(seq=5, rejected=2),
        "93a9436f6d6d69747465640502",
    ),
    (
        p.Committed(seq=5),
        "93a9436f6d6d69747465640500",
    ),
    (
        p.Flushed(seq=6, rejected=1),
        "93a7466c75736865640601",
    ),
    (
        p.Flushed(seq=6),
        "93a7466c75736865640600",
    ),
    (
        p.Answer(seq=7, row_id=42),
        "94a6416e73776572072ac0",
    ),
    (
        p.Answer(seq=7, error="database refused ModelRegistered: ü"),
        "94a6416e7377657207c0d92464617461626173652072656675736564204d6f64656c526567697374657265643a20c3bc",
    ),
    (
        p.Answer(seq=7),
        "94a6416e7377657207c0c0",
    ),
    (
        p.ReadAnswer(read_id=2, result=msgspec.Raw(p.encode_value({"id": 1, "name": TEXT, "value": 0.5}))),
        "94aa52656164416e737765720283a2696401a46e616d65b24cc3a475666520e5ae9fe9a89320f09f9a80a576616c7565"
        "cb3fe0000000000000c0",
    ),
    (
        p.ReadAnswer(read_id=3, error="LookupError: unknown query 'x'"),
        "94aa52656164416e7377657203c0be4c6f6f6b75704572726f723a20756e6b6e6f776e20717565727920277827",
    ),
    (
        p.ReadAnswer(read_id=1),
        "94aa52656164416e7377657201c0c0",
    ),
]

EVENT_TAGS = [
    "ExperimentStarted",
    "ExperimentEnded",
    "HyperparametersLogged",
    "MetricsLogged",
    "ModelRegistered",
    "DatasetRegistered",
    "DatasetLinked",
    "ArtifactLogged",
    "ExperimentResumed",
    "ExperimentReopened",
    "AliasSet",
    "AliasDeleted",
]
CLIENT_TAGS = ["Hello", "Events", "Call", "Flush", "Read"]
AGENT_TAGS = ["Welcome", "Refused", "Committed", "Flushed", "Answer", "ReadAnswer"]


def tag(cls: type) -> Any:
    return cls.__struct_config__.tag  # type: ignore[attr-defined]


def subclasses(cls: type) -> list[type]:
    """Return the subclasses of ``cls`` defined where it is (the agent's own decoding views are not wire classes)."""
    found = []
    for sub in cls.__subclasses__():
        if sub.__module__ == cls.__module__:
            found += [sub, *subclasses(sub)]
    return found


def case_id(case: tuple[msgspec.Struct, str]) -> str:
    return type(case[0]).__name__


def is_client_message(message: p.Message) -> bool:
    return type(message) in get_args(p.ClientMessage)


# -- events ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", EVENTS, ids=case_id)
def test_an_event_encodes_to_its_golden_bytes(case: tuple[ev.Event, str]) -> None:
    event, golden = case
    assert ev.encode(event).hex() == golden


@pytest.mark.parametrize("case", EVENTS, ids=case_id)
def test_an_events_golden_bytes_decode_to_it(case: tuple[ev.Event, str]) -> None:
    event, golden = case
    assert ev.decode(bytes.fromhex(golden)) == event


def test_every_event_class_has_golden_bytes_and_the_tags_are_the_expected_ones() -> None:
    tags = [tag(cls) for cls in subclasses(ev.Event)]
    golden = {tag(type(event)) for event, _ in EVENTS}
    missing = set(tags) - golden
    assert not missing, f"add golden bytes for {sorted(missing)} to EVENTS in tests/test_wire_format.py"
    assert sorted(tags) == sorted(EVENT_TAGS), "a tag changed: old recovery files and spools stop decoding"
    assert sorted(tag(cls) for cls in get_args(ev.AnyEvent)) == sorted(tags), "ev.AnyEvent must list them all"


@pytest.mark.parametrize("cls", subclasses(ev.Event) + subclasses(p.Message), ids=lambda cls: cls.__name__)
def test_every_tag_is_written_in_its_class_so_the_class_name_is_free_to_change(cls: type) -> None:
    assert f'tag="{tag(cls)}"' in inspect.getsource(cls).splitlines()[0]


# -- messages -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", MESSAGES, ids=case_id)
def test_a_message_encodes_to_its_golden_bytes(case: tuple[p.Message, str]) -> None:
    message, golden = case
    assert p.encode_value(message).hex() == golden


@pytest.mark.parametrize("case", MESSAGES, ids=case_id)
def test_a_messages_golden_bytes_decode_to_it(case: tuple[p.Message, str]) -> None:
    message, golden = case
    decode = p.decode_client_message if is_client_message(message) else p.decode_agent_message
    assert decode(bytes.fromhex(golden)) == message


def test_every_message_class_has_golden_bytes_and_the_tags_are_the_expected_ones() -> None:
    tags = [tag(cls) for cls in subclasses(p.Message)]
    golden = {tag(type(message)) for message, _ in MESSAGES}
    missing = set(tags) - golden
    assert not missing, f"add golden bytes for {sorted(missing)} to MESSAGES in tests/test_wire_format.py"
    assert sorted(tag(cls) for cls in get_args(p.ClientMessage)) == sorted(CLIENT_TAGS)
    assert sorted(tag(cls) for cls in get_args(p.AgentMessage)) == sorted(AGENT_TAGS)
    assert sorted(tags) == sorted(CLIENT_TAGS + AGENT_TAGS)


# -- frames ---------------------------------------------------------------------------------------


def test_a_frame_is_a_big_endian_length_then_the_body() -> None:
    assert p.frame(p.Flush(seq=7)).hex() == "0000000892a5466c75736807"
    body = bytes.fromhex(MESSAGES[2][1])
    assert p.frame(MESSAGES[2][0]) == len(body).to_bytes(4, "big") + body


def msgpack_array_header(n: int) -> bytes:
    """The MessagePack array header for ``n`` items, from the specification."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


@pytest.mark.parametrize("count", [0, 1, 2, 15, 16, 65535, 65536])
def test_an_events_message_is_its_header_then_the_payloads_concatenated(count: int) -> None:
    payloads = [ev.encode(ev.DatasetLinked(i, i + 1, "train")) for i in range(count)]
    header = bytes.fromhex("93a64576656e7473cf0000000200000000")  # ["Events", 2**33, then the array
    expected = header + msgpack_array_header(count) + b"".join(payloads)
    message = p.Events(first_seq=2**33, events=[msgspec.Raw(x) for x in payloads])
    assert p.encode_value(message) == expected
    assert p.frame(message) == len(expected).to_bytes(4, "big") + expected


# -- recovery files -------------------------------------------------------------------------------

# save() writes [(ENDED, None), (LINKED, ("client-ü", 2**40))] as these records before zlib:
# client index u16, seq u64, length u32, payload (clients[0] is the file's own numbering).
RECOVERY_RECORDS = (
    "000000000000000000010000002395af4578706572696d656e74456e64656407a66661696c6564c0cb41d954fc401000"
    "00000100000100000000000000001794ad446174617365744c696e6b65640708a5747261696e"
)

# A whole file in the format: MAGIC, a JSON header line, zlib of RECOVERY_RECORDS.
RECOVERY_FILE = (
    "4d4c2d50455253495354454e43452d5245434f5645525920310a7b2275756964223a202230303030303030302d303030"
    "302d343030302d383030302d303030303030303030303030222c20226462223a20222f646174612f72756e732e646222"
    "2c202263726561746564223a20313730303030303030302e32352c20226576656e7473223a20322c2022636c69656e74"
    "73223a205b227265636f766572793a30303030303030302d303030302d343030302d383030302d303030303030303030"
    "303030222c2022636c69656e742d5c7530306663225d7d0a789c636080024620569ebadeb5a220b528333735afc4352f"
    "2535857d595a62664e6aca81d38e3743fe3808401432c234894f59eb925892589c5ae29399970d54ceb1b4a42831330f"
    "00af0f180a"
)


def test_a_recovery_file_is_magic_a_header_line_and_the_zlib_of_its_golden_records(tmp_path: Path) -> None:
    db = str(tmp_path / "runs.db")
    path = recovery.save(db, [ENDED, LINKED], [None, ("client-ü", 2**40)])
    assert path is not None and os.path.dirname(path) == str(tmp_path)
    data = Path(path).read_bytes()
    assert data.startswith(b"ML-PERSISTENCE-RECOVERY 1\n")
    line, _, body = data[len(recovery.MAGIC) :].partition(b"\n")
    header = msgspec.json.decode(line)
    assert sorted(header) == ["clients", "created", "db", "events", "uuid"]
    assert header["db"] == os.path.realpath(db) and header["events"] == 2
    assert header["clients"] == [f"recovery:{header['uuid']}", "client-ü"]
    assert zlib.decompress(body).hex() == RECOVERY_RECORDS  # not the zlib bytes: zlib builds differ


def test_a_golden_recovery_file_reads_back_as_its_events(tmp_path: Path) -> None:
    path = tmp_path / "runs.db.golden.mlrecovery"
    path.write_bytes(bytes.fromhex(RECOVERY_FILE))
    header = recovery.read_header(str(path))
    assert header["db"] == "/data/runs.db" and header["events"] == 2
    got = list(recovery.records(str(path)))
    own = "recovery:00000000-0000-4000-8000-000000000000"
    assert got == [(ENDED, (own, 1)), (LINKED, ("client-ü", 2**40))]
    assert [ev.decode(payload) for payload, _ in got] == [ev.decode(ENDED), ev.DatasetLinked(
                                                                                experiment_id=7, dataset_id=8,
                                                                                usage_type="train",
                                                                            )]


# -- spool records --------------------------------------------------------------------------------

# kind u8, length u32, payload: an event, then a barrier.
SPOOL_RECORDS = "000000001794ad446174617365744c696e6b65640708a5747261696e01000000080000000000000005"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the unlinked spool file in /proc")
def test_spool_records_are_kind_length_payload(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    try:
        spool.put(EVENT, LINKED)
        spool.put(BARRIER, (5).to_bytes(8, "big"))
        filler = b"x" * (256 * 1024)  # a spool writes its file in chunks this large
        spool.put(EVENT, filler)
        fd = spool_file(tmp_path)
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0)
    finally:
        spool.close()
    golden = bytes.fromhex(SPOOL_RECORDS)
    assert data[: len(golden)].hex() == SPOOL_RECORDS
    assert data[len(golden) :] == b"\x00" + len(filler).to_bytes(4, "big") + filler


def spool_file(directory: Path) -> int:
    """Return this process's descriptor of the (unlinked) spool file in ``directory``."""
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(directory) + os.sep):
            return int(name)
    raise AssertionError(f"no spool file open in {directory}")


def test_log_metrics_batch_writes_the_bytes_of_a_metrics_event_without_building_one(db_path: str, monkeypatch) -> None:
    from ml_persistence import ExperimentTracker

    tracker = ExperimentTracker(db_path)
    eid = tracker.start_experiment("wire", "ppo")
    sent: list[bytes] = []
    monkeypatch.setattr(tracker._backend, "append", sent.append)
    tracker.log_metrics_batch({"loss": 0.5, "val/acc": 1, "é": float("nan")}, episode=3, step=7, epoch=None, split="val")
    tracker.log_metrics_batch({"loss": 0.25})
    first, second = (ev.decode(payload) for payload in sent)
    assert (first.experiment_id, first.names, first.values[:2]) == (eid, ["loss", "val/acc", "é"], [0.5, 1])
    assert (first.episode, first.step, first.epoch, first.split) == (3, 7, None, "val")
    assert (second.names, second.values, second.step, second.split) == (["loss"], [0.25], None, None)
    assert ev.encode(second) == sent[1]  # the struct's own bytes, field for field
    as_logged = msgspec.structs.replace(first, values=[0.5, 1, first.values[2]])  # an int goes on the wire as an int
    assert ev.encode(as_logged) == sent[0]
    monkeypatch.undo()
    tracker.end_experiment()
