"""The closed union of events a trainer emits; each is one fact, encoded as msgpack."""

from __future__ import annotations

from typing import Optional, Union

import msgspec


class Event(msgspec.Struct, array_like=True, tag=True, omit_defaults=True):
    """Base of every event: an array of its tag, then every field in order (defaults too).

    Each subclass names its tag explicitly, so the class name is free to change; the tag, the field
    order and the field types are the wire format of agent frames, spools and recovery files on disk.
    A new field goes last, with a default. tests/test_wire_format.py holds the golden bytes.
    """


class Environment(msgspec.Struct, omit_defaults=True):
    """Reproducibility facts captured when an experiment starts; a map, so its field names are wire format."""

    git_commit: Optional[str] = None
    git_branch: Optional[str] = None
    git_dirty: Optional[bool] = None
    git_diff: Optional[str] = None
    python_version: Optional[str] = None
    platform: Optional[str] = None
    hostname: Optional[str] = None
    pid: Optional[int] = None
    command: Optional[str] = None
    packages: Optional[str] = None  # JSON object {distribution: version}


class ExperimentStarted(Event, tag="ExperimentStarted"):
    name: str
    experiment_type: Optional[str]
    description: Optional[str]
    tags: list[str]
    random_seed: Optional[int]
    metadata: Optional[str]  # JSON text
    environment: Environment
    ts: float


class ExperimentEnded(Event, tag="ExperimentEnded"):
    experiment_id: int
    status: str
    notes: Optional[str]
    ts: float


class HyperparametersLogged(Event, tag="HyperparametersLogged"):
    experiment_id: int
    names: list[str]
    values: list[Optional[str]]
    types: list[str]
    ts: float
    model_id: Optional[int] = None


class MetricsLogged(Event, tag="MetricsLogged"):
    experiment_id: int
    names: list[str]
    values: list[float]
    episode: Optional[int]
    step: Optional[int]
    epoch: Optional[int]
    split: Optional[str]
    ts: float
    model_id: Optional[int] = None
    phase: Optional[str] = None
    value_json: Optional[str] = None
    metadata: Optional[str] = None


class ModelRegistered(Event, tag="ModelRegistered"):
    experiment_id: int
    name: Optional[str]
    version: Optional[str]
    architecture_type: Optional[str]
    state_dim: Optional[int]
    action_dim: Optional[int]
    checkpoint_path: str
    checkpoint_size_mb: Optional[float]
    episode_num: Optional[int]
    global_step: Optional[int]
    train_metric: Optional[float]
    val_metric: Optional[float]
    test_metric: Optional[float]
    is_best: bool
    hyperparameters: Optional[str]
    metadata: Optional[str]
    ts: float


class DatasetRegistered(Event, tag="DatasetRegistered"):
    name: str
    version: str
    dataset_type: Optional[str]
    data_path: Optional[str]
    data_hash: Optional[str]
    split_type: Optional[str]
    num_samples: Optional[int]
    start_date: Optional[str]
    end_date: Optional[str]
    feature_columns: Optional[str]
    target_columns: Optional[str]
    metadata: Optional[str]
    ts: float


class DatasetLinked(Event, tag="DatasetLinked"):
    experiment_id: int
    dataset_id: int
    usage_type: str


class ArtifactLogged(Event, tag="ArtifactLogged"):
    experiment_id: int
    model_id: Optional[int]
    artifact_type: str
    artifact_path: str
    artifact_name: Optional[str]
    file_size_mb: Optional[float]
    description: Optional[str]
    metadata: Optional[str]
    ts: float


class ExperimentResumed(Event, tag="ExperimentResumed"):
    """A process took over a 'running' experiment (after a restart): it now owns the run."""

    experiment_id: int
    hostname: Optional[str]
    pid: int
    ts: float


class ExperimentReopened(Event, tag="ExperimentReopened"):
    """A process reopened an ended experiment to log to it again: it is running, and this process's."""

    experiment_id: int
    hostname: Optional[str]
    pid: int
    ts: float


class AliasSet(Event, tag="AliasSet"):
    """An alias now names this model, moved from any model it named before.

    Answered with the model's id, or None (nothing changed) if the database holds no such model.
    """

    alias: str
    model_id: int
    ts: float


class AliasDeleted(Event, tag="AliasDeleted"):
    """An alias names no model any more; answered with 1 if it named one, else 0."""

    alias: str


MAX_ALIAS_LENGTH = 255


def alias_problem(alias: str) -> Optional[str]:
    """Return why ``alias`` cannot name a model, or None: it must be printable text, 1 to 255 characters,
    without surrounding spaces, and not all digits (those read as a model id)."""
    if not alias:
        return "an alias must not be empty"
    if len(alias) > MAX_ALIAS_LENGTH:
        return f"an alias has at most {MAX_ALIAS_LENGTH} characters, got {len(alias)}"
    if not alias.isprintable():
        bad = next(c for c in alias if not c.isprintable())
        return f"{alias!r:.60} contains {bad!r}, a control, format or non-space separator character"
    if alias != alias.strip():
        return f"{alias!r:.60} starts or ends with a space"
    if alias.isascii() and alias.isdigit():
        return f"{alias!r:.60} is all digits, which reads as a model id; give it a name (e.g. 'v{alias}')"
    return None


AnyEvent = Union[
    ExperimentStarted,
    ExperimentEnded,
    HyperparametersLogged,
    MetricsLogged,
    ModelRegistered,
    DatasetRegistered,
    DatasetLinked,
    ArtifactLogged,
    ExperimentResumed,
    ExperimentReopened,
    AliasSet,
    AliasDeleted,
]

def check(event: Event) -> None:
    """Raise ValueError if a decoded event is inconsistent in a way its types cannot express."""
    if type(event) is MetricsLogged:
        if len(event.names) != len(event.values):
            raise ValueError(f"{len(event.names)} metric names but {len(event.values)} values")
    elif type(event) is HyperparametersLogged:
        if not len(event.names) == len(event.values) == len(event.types):
            raise ValueError("hyperparameter names, values and types differ in length")
    elif type(event) is AliasSet or type(event) is AliasDeleted:
        problem = alias_problem(event.alias)
        if problem is not None:
            raise ValueError(problem)


encode = msgspec.msgpack.Encoder().encode
_decoder = msgspec.msgpack.Decoder(AnyEvent)
decode = _decoder.decode
_run_decoder = msgspec.msgpack.Decoder(list[AnyEvent])


def decode_run(payloads: list[bytes]) -> list[Event]:
    """Decode consecutive encoded events in one call; raise msgspec.DecodeError if any is not an event."""
    return _run_decoder.decode(array_header(len(payloads)) + b"".join(payloads))


def array_header(n: int) -> bytes:
    """Return the msgpack header of an array of ``n`` items (the shortest form, as msgspec writes it)."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 65536:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")
