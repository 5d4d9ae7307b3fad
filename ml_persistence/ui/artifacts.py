"""Which artifact files the web UI may serve: regular files inside its allowed roots, judged after realpath."""

from __future__ import annotations

import mimetypes
import os
import stat
from typing import IO, Iterator, Optional, Sequence

from .. import storage

# Served inline; anything else is a download. SVG is left out on purpose: it can carry script.
INLINE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                ".webp": "image/webp", ".txt": "text/plain", ".log": "text/plain", ".json": "text/plain",
                ".csv": "text/plain", ".yaml": "text/plain", ".yml": "text/plain", ".md": "text/plain"}
CHUNK = 64 * 1024
_PROC_FD = "/proc/self/fd"


class ArtifactRoots:
    """The directories artifacts are served from: the database file's directory and any given ones, as real paths.

    A PostgreSQL database has no directory: only the given ones, and relative paths are looked up
    from the working directory.
    """

    def __init__(self, db_path: str, extra: Sequence[str] = ()) -> None:
        url = storage.is_url(db_path)
        self.db_dir = os.getcwd() if url else os.path.dirname(os.path.abspath(db_path))
        own = () if url else (self.db_dir,)
        self.paths = tuple(dict.fromkeys(os.path.realpath(p) for p in (*own, *extra)))

    def contain(self, real: str) -> bool:
        """True if the real (symlink-free, absolute) path ``real`` is inside one of the roots."""
        return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.paths)

    def locate(self, registered: Optional[str]) -> Optional[str]:
        """Return the real path of a registered artifact's file if it is a regular file inside the roots, else None.

        A relative path is looked up beside the database, then from the working directory.
        """
        if not isinstance(registered, str) or not registered or "\0" in registered:
            return None
        candidates = [registered] if os.path.isabs(registered) else [
            os.path.join(self.db_dir, registered), os.path.abspath(registered)]
        for candidate in candidates:
            try:
                real = os.path.realpath(candidate)
                if self.contain(real) and stat.S_ISREG(os.stat(real).st_mode):
                    return real
            except (OSError, ValueError):
                continue
        return None

    def open(self, registered: Optional[str]) -> Optional["OpenArtifact"]:
        """Open a registered artifact's file for reading if it is servable, else None.

        The file actually opened is judged again (through /proc/self/fd where there is one), so a
        directory swapped for a symlink between the check and the open cannot lead outside the roots.
        """
        real = self.locate(registered)
        if real is None:
            return None
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(real, flags)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            opened = os.readlink(f"{_PROC_FD}/{fd}") if os.path.isdir(_PROC_FD) else real
            if not stat.S_ISREG(info.st_mode) or not self.contain(opened):
                os.close(fd)
                return None
        except OSError:
            os.close(fd)
            return None
        return OpenArtifact(os.fdopen(fd, "rb"), real, info)


class OpenArtifact:
    """An artifact file opened for serving: its real path, its stat, and how a browser should get it."""

    def __init__(self, handle: IO[bytes], real: str, info: os.stat_result) -> None:
        self.handle, self.real, self.info = handle, real, info

    @property
    def name(self) -> str:
        return os.path.basename(self.real)

    def media(self) -> tuple[str, bool]:
        """Return (media type, inline): decided by the real file's suffix, not the registered name's."""
        suffix = os.path.splitext(self.real)[1].lower()
        if suffix in INLINE_TYPES:
            return INLINE_TYPES[suffix], True
        return mimetypes.guess_type(self.real)[0] or "application/octet-stream", False

    def chunks(self) -> Iterator[bytes]:
        """Yield the file's bytes (at most its size when opened), closing it at the end."""
        left = self.info.st_size
        try:
            while left > 0:
                chunk = self.handle.read(min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk
        finally:
            self.handle.close()
