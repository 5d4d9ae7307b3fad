"""The overflow of an event buffer: a FIFO of records in unlinked temporary files where there is room."""

from __future__ import annotations

import errno
import os
import struct
import tempfile
from collections import deque
from typing import Optional

_HEADER = struct.Struct(">BI")  # record kind, payload length
_WRITE_CHUNK = 256 * 1024  # records are gathered in memory and written in chunks this large
_READ_CHUNK = 1024 * 1024

EVENT = 0
BARRIER = 1

_ROOM = 64 << 20  # free bytes a directory needs to be chosen first for a new spool file
_FULL = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})


def spool_directories(configured: Optional[str]) -> list[str]:
    """Return where spool files may go, in order: ``configured``, the temp dir, the private runtime
    dir, shared memory."""
    places = [configured] if configured else []
    places.append(tempfile.gettempdir())
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        places.append(runtime)
    places.append("/dev/shm")
    return [p for p in dict.fromkeys(places) if os.path.isdir(p)]


def free_bytes(directory: str) -> int:
    """Return the bytes an unprivileged writer may still use on ``directory``'s filesystem (0 if unknown)."""
    try:
        info = os.statvfs(directory)
    except OSError:
        return 0
    return info.f_bavail * info.f_frsize


class _Segment:
    """One spool file: its records are at [read_at, written)."""

    __slots__ = ("fd", "directory", "read_at", "written")

    def __init__(self, directory: str) -> None:
        handle = tempfile.TemporaryFile(prefix="ml_persistence-spool-", dir=directory)
        self.fd = os.dup(handle.fileno())
        handle.close()
        self.directory = directory
        self.read_at = 0
        self.written = 0


class SpoolFullError(OSError):
    """The spool reached its size limit."""


class Spool:
    """Append-only records on disk, read back in order; not thread-safe (the buffer locks it).

    Files are created lazily, in the first directory with room, and unlinked at once, so they
    disappear with the process whatever way it ends. When a file's disk fills (or it reaches a
    file-size limit), the records go on in a new file, in the next directory with room. Once
    every record has been read back the last file is truncated and reused.
    """

    def __init__(self, directory: Optional[str] = None, max_bytes: int = 4 << 30) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._segments: deque[_Segment] = deque()  # read from the first, written to the last
        self._pending = bytearray()  # records not yet written to a file
        self._records = 0  # records held (file and pending)
        self.total = 0  # records ever spilled

    def __len__(self) -> int:
        return self._records

    @property
    def size(self) -> int:
        """Bytes held: in the files and waiting to be written."""
        return sum(s.written - s.read_at for s in self._segments) + len(self._pending)

    def where(self) -> str:
        """Return the directory spilled events go to (or would go to)."""
        try:
            return self._segments[-1].directory
        except IndexError:  # none, or another thread dropped the last one since
            pass
        return next(iter(self._directories()), self.directory or tempfile.gettempdir())

    def put(self, kind: int, payload: bytes) -> None:
        """Append one record; raise OSError (SpoolFullError at the size limit) if it cannot be kept."""
        if self.size + len(payload) + _HEADER.size > self.max_bytes:
            raise SpoolFullError(f"spool reached its limit of {self.max_bytes} bytes")
        record = _HEADER.size + len(payload)
        self._pending += _HEADER.pack(kind, len(payload))
        self._pending += payload
        if len(self._pending) >= _WRITE_CHUNK:
            try:
                self._write_pending()
            except OSError:
                del self._pending[-record:]  # this record is refused; the earlier ones wait for the next write
                raise
        self._records += 1
        self.total += 1

    def get(self, limit: int) -> list[tuple[int, bytes]]:
        """Remove and return up to ``limit`` records, oldest first."""
        out: list[tuple[int, bytes]] = []
        if self._unread():
            try:
                self._write_pending()  # keep the files the single source of order
            except OSError:
                pass  # a full disk: read the files, then the pending records from memory
            while len(out) < limit and self._unread():
                segment = self._segments[0]
                if segment.read_at >= segment.written:
                    self._drop_first()  # a filled file, read to its end: its space goes back
                    continue
                want = min(_READ_CHUNK, segment.written - segment.read_at)
                chunk = os.pread(segment.fd, want, segment.read_at)
                used = _parse(chunk, out, limit)
                if used == 0:  # one record larger than the chunk
                    kind, length = _HEADER.unpack_from(chunk)
                    whole = os.pread(segment.fd, _HEADER.size + length, segment.read_at)
                    out.append((kind, whole[_HEADER.size :]))
                    used = len(whole)
                segment.read_at += used
        if len(out) < limit and not self._unread() and self._pending:
            used = _parse(self._pending, out, limit)
            del self._pending[:used]
        self._records -= len(out)
        if self._records == 0:
            self._reset()
        return out

    def discard(self) -> int:
        """Forget every record (after the file failed us); return how many there were."""
        lost = self._records
        self._records = 0
        self._pending.clear()
        try:
            self._reset()
        except OSError:
            for segment in self._segments:
                segment.read_at = segment.written = 0
        return lost

    def close(self) -> None:
        """Release the files."""
        while self._segments:
            os.close(self._segments.popleft().fd)

    def _unread(self) -> bool:
        return any(s.written > s.read_at for s in self._segments)

    def _drop_first(self) -> None:
        os.close(self._segments.popleft().fd)

    def _directories(self) -> list[str]:
        """Return the candidate directories, those with room first."""
        places = spool_directories(self.directory)
        return [p for p in places if free_bytes(p) >= _ROOM] + [p for p in places if free_bytes(p) < _ROOM]

    def _new_segment(self, full: Optional[_Segment]) -> _Segment:
        """Open a spool file in the first directory with room (after ``full``'s, if its disk is full)."""
        places = self._directories()
        if full is not None:  # last, as a file-size limit is per file: a new file there helps
            places = [p for p in places if p != full.directory] + [full.directory]
        error: Optional[OSError] = None
        for place in places:
            try:
                segment = _Segment(place)
            except OSError as exc:
                error = exc
                continue
            self._segments.append(segment)
            return segment
        raise error or OSError(errno.ENOSPC, "no directory can take a spool file")

    def _write_pending(self) -> None:
        if not self._pending:
            return
        segment = self._segments[-1] if self._segments else self._new_segment(None)
        try:
            self._write_to(segment)
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            if segment.written == 0:  # it took nothing: another place may
                self._segments.remove(segment)
                os.close(segment.fd)
            self._write_to(self._new_segment(segment))  # the rest goes on in a new file

    def _write_to(self, segment: _Segment) -> None:
        view = memoryview(self._pending)
        start = segment.written
        try:
            while view:
                n = os.pwrite(segment.fd, view, segment.written)
                if n == 0:
                    raise OSError(errno.ENOSPC, "spool file takes no more bytes")
                segment.written += n
                view = view[n:]
        finally:
            view.release()
            # Keep whole records only: a record cut by a short write stays pending, to be rewritten.
            done = _whole_records(self._pending, segment.written - start)
            segment.written = start + done
            del self._pending[:done]

    def _reset(self) -> None:
        self._pending.clear()
        while len(self._segments) > 1:
            self._drop_first()
        if self._segments:
            segment = self._segments[0]
            if segment.written:
                os.ftruncate(segment.fd, 0)
            segment.read_at = segment.written = 0


def _whole_records(data: bytearray, limit: int) -> int:
    """Return the length of the longest run of whole records at the start of ``data`` within ``limit`` bytes."""
    pos = 0
    while pos + _HEADER.size <= limit:
        _, length = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if end > limit:
            break
        pos = end
    return pos


def _parse(data: bytes | bytearray, out: list[tuple[int, bytes]], limit: int) -> int:
    """Append whole records from ``data`` to ``out`` (at most ``limit`` in all); return bytes used."""
    pos = 0
    end = len(data)
    view = memoryview(data)
    while len(out) < limit and pos + _HEADER.size <= end:
        kind, length = _HEADER.unpack_from(data, pos)
        stop = pos + _HEADER.size + length
        if stop > end:
            break
        out.append((kind, bytes(view[pos + _HEADER.size : stop])))
        pos = stop
    view.release()
    return pos
