"""Agent addresses: unix:///path and tcp://host:port URLs, and the private default socket."""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
import string
import tempfile
from dataclasses import dataclass
from typing import Optional

from .errors import InvalidValueError
from .protocol import is_loopback

SOCKET_NAME = "agent.sock"
# A token must carry 128 bits: 16 random bytes are 22 characters of URL-safe base64
# (secrets.token_urlsafe(16)) or 32 hex digits (openssl rand -hex 16). A string's randomness
# cannot be measured, so this is a floor on its length: 22 characters, 32 if all are hex digits.
MIN_TOKEN_CHARS = 22
MIN_HEX_TOKEN_CHARS = 32
_HEX = frozenset(string.hexdigits)


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


def is_private(info: os.stat_result, is_type=stat.S_ISDIR) -> bool:  # type: ignore[no-untyped-def]
    """True if ``info`` (an lstat) is of the given type, this user's own, and closed to everyone else."""
    return bool(is_type(info.st_mode)) and info.st_uid == os.geteuid() and not info.st_mode & 0o077


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
    """Return the token stored in the file at ``path`` (stripped), or None without a path.

    Like ssh with private keys, refuse a file another user owns or could read or write, and a
    token too short to hold 128 bits (check_token).
    """
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:  # the same errno, naming what the file is for
        raise OSError(exc.errno, f"cannot read token file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidValueError(f"token file {path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise PermissionError(f"token file {path} belongs to uid {info.st_uid}, not to this user: refusing it")
        if info.st_mode & 0o077:
            raise PermissionError(
                f"token file {path} is accessible by other users (mode {stat.S_IMODE(info.st_mode):04o}): "
                f"refusing it; run chmod 600 {path}"
            )
        with os.fdopen(os.dup(fd), encoding="utf-8") as handle:
            token = handle.read(4096).strip()
    finally:
        os.close(fd)
    if not token:
        raise InvalidValueError(f"token file {path} is empty")
    check_token(token, f"the token in {path}")
    return token


def check_token(token: str, origin: str = "the token") -> None:
    """Raise InvalidValueError unless ``token`` is long enough to hold 128 bits (MIN_TOKEN_CHARS)."""
    need = MIN_HEX_TOKEN_CHARS if set(token) <= _HEX else MIN_TOKEN_CHARS
    if len(token) < need or any(c.isspace() or not c.isprintable() for c in token):
        raise InvalidValueError(
            f"{origin} is too weak: a token needs at least {MIN_TOKEN_CHARS} printable characters without "
            f"spaces ({MIN_HEX_TOKEN_CHARS} if hex), 128 bits; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )


def new_token() -> str:
    """Return a fresh random token of 256 bits."""
    return secrets.token_urlsafe(32)


def token_path(port: int, host: str = "127.0.0.1") -> str:
    """Return where an agent bound to TCP ``host``:``port`` (a numeric IP) publishes its generated token.

    The file names the exact address: a client reads it only for a connection that reached that
    address, so another user listening on the other loopback family (``[::1]`` beside ``127.0.0.1``)
    never receives it.
    """
    return os.path.join(runtime_dir(), f"agent-tcp-{_ip_text(host)}-{port}.token")


def _ip_text(host: str) -> str:
    """Return ``host`` (a numeric IP, maybe with an IPv6 zone) in one canonical spelling; ValueError otherwise."""
    return ipaddress.ip_address(host.split("%", 1)[0].strip("[]")).compressed


def publish_token(host: str, port: int, token: str) -> str:
    """Write ``token`` for clients of TCP ``host``:``port``: mode 0600 in the private runtime directory; return the path."""
    directory = runtime_dir()
    ensure_private_dir(directory)
    path = token_path(port, host)
    partial = f"{path}.{os.getpid()}.tmp"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    os.replace(partial, path)  # atomic: a client reads the old token or the new one, never half
    return path


def unpublish_token(host: str, port: int, token: str) -> None:
    """Remove the token file of ``host``:``port`` if it still holds ``token`` (a newer agent may have replaced it)."""
    path = token_path(port, host)
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read().strip() != token:
                return
        os.unlink(path)
    except OSError:
        pass


def published_token(address: Address, peer_ip: Optional[str] = None) -> Optional[str]:
    """Return the token a local agent published for the loopback TCP ``address``, or None.

    ``peer_ip`` is the numeric address the connection actually reached (``localhost`` may resolve
    to either family); without it, ``address.host`` must be numeric. A token is looked up only for
    loopback: it must never be sent to another machine.
    """
    if address.kind != "tcp" or not is_loopback(address.host):
        return None
    try:
        ip = _ip_text(peer_ip or address.host)
    except ValueError:
        return None  # a name, not yet resolved: connect first, then ask with the address reached
    if not ipaddress.ip_address(ip).is_loopback:
        return None
    directory = runtime_dir()
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return None
    if not is_private(info):
        raise PermissionError(f"{directory} is not a private directory of this user: not reading tokens from it")
    try:
        return read_token(token_path(address.port, ip))
    except FileNotFoundError:
        return None
