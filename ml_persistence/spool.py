"""The overflow of an event buffer: a FIFO of records in an unlinked temporary file."""

from __future__ import annotations

import errno
import os
import struct
import tempfile
from typing import Optional

_HEADER = struct.Struct(">BI")  # record kind, payload length
_WRITE_CHUNK = 256 * 1024  # records are gathered in memory and written in chunks this large
_READ_CHUNK = 1024 * 1024

EVENT = 0
BARRIER = 1


class SpoolFullError(OSError):
    """The spool reached its size limit."""


class Spool:
    """Append-only records on disk, read back in order; not thread-safe (the buffer locks it).

    The file is created lazily and unlinked at once, so it disappears with the process whatever
    way it ends. Once every record has been read back the file is truncated and reused.
    """

    def __init__(self, directory: Optional[str] = None, max_bytes: int = 4 << 30) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._fd: Optional[int] = None
        self._read_at = 0  # offset of the first unread record in the file
        self._written = 0  # bytes in the file
        self._pending = bytearray()  # records not yet written to the file
        self._records = 0  # records held (file and pending)
        self.total = 0  # records ever spilled

    def __len__(self) -> int:
        return self._records

    @property
    def size(self) -> int:
        """Bytes held: in the file and waiting to be written."""
        return self._written - self._read_at + len(self._pending)

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
        if self._written > self._read_at:
            try:
                self._write_pending()  # keep the file the single source of order
            except OSError:
                pass  # a full disk: read the file, then the pending records from memory
            while len(out) < limit and self._read_at < self._written:
                want = min(_READ_CHUNK, self._written - self._read_at)
                chunk = os.pread(self._fd, want, self._read_at)  # type: ignore[arg-type]
                used = _parse(chunk, out, limit)
                if used == 0:  # one record larger than the chunk
                    kind, length = _HEADER.unpack_from(chunk)
                    whole = os.pread(self._fd, _HEADER.size + length, self._read_at)  # type: ignore[arg-type]
                    out.append((kind, whole[_HEADER.size :]))
                    used = len(whole)
                self._read_at += used
        if len(out) < limit and self._read_at >= self._written and self._pending:
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
            self._read_at = self._written = 0
        return lost

    def close(self) -> None:
        """Release the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write_pending(self) -> None:
        if not self._pending:
            return
        if self._fd is None:
            handle = tempfile.TemporaryFile(prefix="ml_persistence-spool-", dir=self.directory)
            self._fd = os.dup(handle.fileno())
            handle.close()
        view = memoryview(self._pending)
        start = self._written
        try:
            while view:
                n = os.pwrite(self._fd, view, self._written)
                if n == 0:
                    raise OSError(errno.ENOSPC, "spool file takes no more bytes")
                self._written += n
                view = view[n:]
        finally:
            view.release()
            # Keep whole records only: a record cut by a short write stays pending, to be rewritten.
            done = _whole_records(self._pending, self._written - start)
            self._written = start + done
            del self._pending[:done]

    def _reset(self) -> None:
        self._pending.clear()
        if self._written:
            os.ftruncate(self._fd, 0)  # type: ignore[arg-type]
        self._read_at = self._written = 0


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
