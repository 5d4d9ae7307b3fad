"""Recovery files: events a writer could not store by its deadline, kept for `ml-persistence recover`.

API (small on purpose; the embedded writer and the agent client both use it):

- ``save(db_path, payloads, keys=None) -> path or None``: write the encoded events (events.encode)
  to a new private recovery file on the first filesystem with room; None if none could take it.
- ``apply(path, db_path=None) -> Applied``: store a file's events in a database exactly once,
  then delete the file. ``apply_to(store, path)`` does the same on an open Store.
- ``pending(db_path) -> [path]``: this user's recovery files for that database, oldest first
  (the next writer on it applies them by itself).
- ``command(path, db_path) -> str``: the shell command that applies a file.

Exactly once: every event carries a (client id, seq) key, committed in the same transaction as
the event into ``agent_clients`` as that client's high-water mark, and events at or below the
stored mark are skipped. Events saved without a key get ('recovery:<file uuid>', 1, 2, ...); an
agent client passes its own (client id, seq) keys, so an event the agent did store after all is
not stored twice. Applying a file twice, or again after a crash half way, adds nothing twice.

A file is written whole under a temporary name, fsynced, then renamed; it is mode 0600 and its
directory is the database's own or a private (0700) one of this user. Format: MAGIC, one JSON
header line, then a zlib stream of records (client index u16, seq u64, length u32, payload).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import shlex
import stat
import struct
import tempfile
import time
import uuid
import zlib
from typing import Iterable, Iterator, Optional, Sequence

from . import storage
from .address import is_private
from .spool import free_bytes

MAGIC = b"ML-PERSISTENCE-RECOVERY 1\n"
SUFFIX = ".mlrecovery"
_RECORD = struct.Struct(">HQI")  # client index, seq, payload length
_CHUNK = 4096  # events per transaction when applying
_MARGIN = 1 << 20  # bytes a filesystem keeps free beyond the file, for the rest of the machine


@dataclasses.dataclass
class Applied:
    """What applying one recovery file did."""

    path: str
    stored: int = 0  # events committed now
    skipped: int = 0  # events already in the database (an earlier apply, or the agent stored them)
    refused: int = 0  # events the database rejects (each is also counted by the writer's rules)


def save(
    db_path: Optional[str], payloads: Iterable[bytes], keys: Optional[Iterable[Optional[tuple[str, int]]]] = None
) -> Optional[str]:
    """Write ``payloads`` (encoded events, in logging order) to a new recovery file; return its path.

    ``keys`` gives each event's (client id, seq), or None for 'this file's own numbering'.
    Returns None when no candidate directory could take the file.
    """
    return save_keyed(db_path, zip(payloads, keys) if keys is not None else ((p, None) for p in payloads))


def save_keyed(db_path: Optional[str], events: Iterable[tuple[bytes, Optional[tuple[str, int]]]]) -> Optional[str]:
    """Write ``events``, (encoded event, (client id, seq) or None) pairs in logging order, to a new
    recovery file; return its path, or None when there were none or no candidate directory could take it.

    ``events`` may be an iterator: only the compressed file is held in memory, never the events.
    """
    file_id = str(uuid.uuid4())
    own = f"recovery:{file_id}"
    clients: dict[str, int] = {own: 0}
    body = zlib.compressobj(6)
    chunks = []
    count = 0
    for count, (payload, key) in enumerate(events, 1):
        client, seq = key if key is not None else (own, count)
        index = clients.setdefault(client, len(clients))
        chunks.append(body.compress(_RECORD.pack(index, seq, len(payload)) + payload))
    if not count:
        return None
    chunks.append(body.flush())
    header = {
        "uuid": file_id,
        "db": storage.identity(db_path) if db_path else None,
        "created": time.time(),
        "events": count,
        "clients": list(clients),
    }
    chunks.insert(0, MAGIC + json.dumps(header).encode() + b"\n")
    size = sum(len(chunk) for chunk in chunks)
    name = _file_name(db_path, file_id)
    for directory in candidate_directories(db_path):
        path = os.path.join(directory, name if directory != _db_dir(db_path) else _local_name(db_path, file_id))
        if free_bytes(directory) < size + _MARGIN:
            continue
        with contextlib.suppress(OSError):
            _write_private(path, chunks)
            return path
    return None


def candidate_directories(db_path: Optional[str], create: bool = True) -> list[str]:
    """Return where save() tries to put a file, in order: the database's directory, then this user's
    private state, runtime, temporary and shared-memory directories (created 0700 if ``create``)."""
    uid = os.getuid()
    home = os.path.expanduser("~")
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    places = [os.path.join(state, "ml_persistence", "recovery")]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        places.append(os.path.join(runtime, "ml_persistence", "recovery"))
    places.append(os.path.join(tempfile.gettempdir(), f"ml_persistence-{uid}", "recovery"))
    if os.path.isdir("/dev/shm"):
        places.append(os.path.join("/dev/shm", f"ml_persistence-{uid}", "recovery"))
    private = [p for p in dict.fromkeys(places) if _private_dir(p, create)]
    local = _db_dir(db_path)
    return ([local] if local is not None else []) + private


def pending(db_path: str) -> list[str]:
    """Return this user's recovery files for ``db_path``, oldest first (only private files we own)."""
    real = storage.identity(db_path)
    found: list[tuple[float, str]] = []
    local = _db_dir(db_path)
    patterns = [os.path.join(local, glob.escape(os.path.basename(real)) + ".*" + SUFFIX)] if local else []
    for directory in candidate_directories(None, create=False):
        patterns.append(os.path.join(directory, _db_tag(real) + "-*" + SUFFIX))
    for pattern in patterns:
        for path in glob.glob(pattern):
            try:
                if not _ours_and_private(path):
                    continue
                header = read_header(path)
            except (OSError, ValueError):
                continue
            # A file next to the database belongs to it even if the two were moved together; the
            # name check keeps runs.db from taking runs.db.old's files, which match its pattern too.
            beside = os.path.dirname(path) == local and os.path.basename(str(header.get("db"))) == os.path.basename(real)
            if beside or header.get("db") == real:
                found.append((float(header.get("created") or 0), path))
    return [path for _, path in sorted(found)]


def command(path: str, db_path: Optional[str]) -> str:
    """Return the shell command that applies ``path`` to ``db_path``."""
    db = f" --db {shlex.quote(storage.identity(db_path))}" if db_path else ""
    return f"ml-persistence recover {shlex.quote(path)}{db}"


def read_header(path: str) -> dict:
    """Return a recovery file's header (uuid, db, created, events, clients); ValueError if it is not one."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError(f"{path} is not an ml_persistence recovery file")
        line = f.readline(1 << 20)
    try:
        header = json.loads(line)
    except ValueError:
        raise ValueError(f"{path}: unreadable recovery file header") from None
    if not isinstance(header, dict) or not isinstance(header.get("clients"), list):
        raise ValueError(f"{path}: unreadable recovery file header")
    return header


def records(path: str) -> Iterator[tuple[bytes, tuple[str, int]]]:
    """Yield a recovery file's (encoded event, (client id, seq)) in order; ValueError if it is damaged."""
    header = read_header(path)
    clients = header["clients"]
    with open(path, "rb") as f:
        f.read(len(MAGIC))
        f.readline(1 << 20)
        stream = zlib.decompressobj()
        pending_bytes = b""
        while True:
            chunk = f.read(1 << 20)
            try:
                pending_bytes += stream.decompress(chunk) if chunk else stream.flush()
            except zlib.error as exc:
                raise ValueError(f"{path}: damaged recovery file ({exc})") from None
            pos = 0
            while pos + _RECORD.size <= len(pending_bytes):
                index, seq, length = _RECORD.unpack_from(pending_bytes, pos)
                end = pos + _RECORD.size + length
                if end > len(pending_bytes):
                    break
                if index >= len(clients):
                    raise ValueError(f"{path}: damaged recovery file (unknown client {index})")
                yield pending_bytes[pos + _RECORD.size : end], (clients[index], seq)
                pos = end
            pending_bytes = pending_bytes[pos:]
            if not chunk:
                if pending_bytes or not stream.eof:
                    raise ValueError(f"{path}: recovery file is cut short")
                return


def apply(path: str, db_path: Optional[str] = None) -> Applied:
    """Store ``path``'s events in ``db_path`` (default: the database the file was saved for) exactly
    once, then delete the file."""
    import anyio

    if db_path is None:
        db_path = read_header(path).get("db")
        if not db_path:
            raise ValueError(f"{path} does not say which database it belongs to; pass one")

    async def run() -> Applied:
        store = storage.engine(db_path).store_for(db_path, 5000)
        await store.open()
        try:
            return await apply_to(store, path)
        finally:
            await store.close()

    return anyio.run(run)


async def apply_to(store, path: str) -> Applied:  # type: ignore[no-untyped-def]
    """Store ``path``'s events through an open Store exactly once, then delete the file.

    Errors other than an event's own refusal (a full disk, a locked database) propagate, and the
    file stays for a later try.
    """
    import msgspec

    from . import events as ev
    from .storage import REFUSED

    result = Applied(path)
    batch: list = []
    batch_keys: list[tuple[str, int]] = []

    async def commit() -> None:
        try:
            stored = await store.apply_keyed(batch, batch_keys)
            result.stored += stored
            result.skipped += len(batch) - stored
            await store.keep_wal_small()
            return
        except Exception as exc:  # noqa: BLE001 - only an event's own refusal is handled here
            if store.classify(exc) != REFUSED:
                raise
        for event, key in zip(batch, batch_keys):  # find the event(s) the database refuses
            try:
                stored = await store.apply_keyed([event], [key])
            except Exception as exc:  # noqa: BLE001
                if store.classify(exc) != REFUSED:
                    raise
                result.refused += 1
                await store.apply_keyed([], [key])  # past it, so the next try does not refuse it again
            else:
                result.stored += stored
                result.skipped += 1 - stored

    for payload, key in records(path):
        try:
            batch.append(ev.decode(payload))
        except msgspec.DecodeError:
            result.refused += 1
            continue
        batch_keys.append(key)
        if len(batch) >= _CHUNK:
            await commit()
            batch, batch_keys = [], []
    if batch:
        await commit()
    await store.checkpoint()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return result


def _db_dir(db_path: Optional[str]) -> Optional[str]:
    if not db_path or storage.is_url(db_path):
        return None  # a server's database: recovery files go to this user's private directories
    return os.path.dirname(os.path.realpath(db_path))


def _db_tag(real: str) -> str:
    return hashlib.sha256(real.encode(errors="surrogateescape")).hexdigest()[:16]


def _local_name(db_path: Optional[str], file_id: str) -> str:
    return f"{os.path.basename(os.path.realpath(db_path or 'events'))}.{_stamp()}.{file_id}{SUFFIX}"


def _file_name(db_path: Optional[str], file_id: str) -> str:
    if not db_path:
        return f"events.{_stamp()}.{file_id}{SUFFIX}"
    real = storage.identity(db_path)
    base = "postgresql" if storage.is_url(db_path) else os.path.basename(real)
    return f"{_db_tag(real)}-{base}.{_stamp()}.{file_id}{SUFFIX}"


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime())


def _private_dir(path: str, create: bool) -> bool:
    """True if ``path`` is a directory of ours that no one else can enter (created 0700 if ``create``)."""
    try:
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return False
    return is_private(info)


def _ours_and_private(path: str) -> bool:
    return is_private(os.lstat(path), stat.S_ISREG)


def _write_private(path: str, chunks: Sequence[bytes]) -> None:
    """Write ``chunks`` to ``path`` (mode 0600) whole: a temporary name, fsync, then rename."""
    partial = f"{path}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
