"""Agent addresses: unix:///path and tcp://host:port URLs, and the private default socket."""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from typing import Optional

from .errors import InvalidValueError

SOCKET_NAME = "agent.sock"


@dataclass(frozen=True)
class Address:
    """Where an agent listens: ``kind`` 'unix' with ``path``, or 'tcp' with ``host`` and ``port``."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def runtime_dir() -> str:
    """Return this user's private directory for the agent socket ($XDG_RUNTIME_DIR or the temp dir)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, "ml_persistence")
    return os.path.join(tempfile.gettempdir(), f"ml_persistence-{os.getuid()}")


def default_address() -> Address:
    """Return the default agent address: a Unix socket in the private runtime directory."""
    return Address("unix", path=os.path.join(runtime_dir(), SOCKET_NAME))


def parse(url: str, listen: bool = False) -> Address:
    """Parse ``unix:///path``, ``tcp://host:port`` or ``default``; port 0 (any free port) only to ``listen``."""
    text = url.strip()
    if text in ("", "default", "1", "unix", "unix://"):
        return default_address()
    if text.startswith("unix://"):
        return Address("unix", path=text[len("unix://") :])
    if text.startswith("tcp://"):
        rest = text[len("tcp://") :].rstrip("/")
        host, sep, port = rest.rpartition(":")
        lowest = 0 if listen else 1
        if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
            raise InvalidValueError(f"agent URL {url!r}: expected tcp://HOST:PORT")
        return Address("tcp", host=host.strip("[]"), port=int(port))
    raise InvalidValueError(f"agent URL {url!r}: expected unix:///path/to.sock or tcp://HOST:PORT")


def ensure_private_dir(path: str) -> None:
    """Create ``path`` as a 0700 directory, or check that an existing one is ours and private."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def read_token(path: Optional[str]) -> Optional[str]:
    """Return the token stored in the file at ``path`` (stripped), or None without a path."""
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        token = handle.read().strip()
    if not token:
        raise InvalidValueError(f"token file {path} is empty")
    return token
