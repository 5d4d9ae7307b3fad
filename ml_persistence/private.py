"""A database's private writer process: the agent program, started by the library for this process alone.

It listens on a Unix socket in a directory only this user can enter, and holds the read end of a
pipe whose write end only this process has: when this process exits or dies, even by SIGKILL,
the pipe reads end-of-file and the writer commits what it received and exits. It never outlives
its trainer by more than that drain.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from typing import Optional

try:
    import resource as _resource
except ImportError:  # not on Windows
    _resource = None  # type: ignore[assignment]

from . import lifeline
from .address import Address
from .errors import MLPersistenceError

START_TIMEOUT = 60.0  # seconds for the writer process to say it is ready (a cold start takes ~0.3 s)
MAX_FRAME_MB = 2048  # only this process talks to it: take any event the writer thread would store
_released: list[subprocess.Popen] = []  # let go, maybe still draining: reaped when next looked at


class SpawnError(MLPersistenceError):
    """The private writer process could not be started here."""


class PrivateWriter:
    """Starts, restarts and releases the writer process of one database for this process."""

    def __init__(self, db: str) -> None:
        self.db = db
        self._process: Optional[subprocess.Popen] = None
        self._lifeline: Optional[int] = None  # our end of the pipe the process watches
        self._directory: Optional[str] = None
        self._limits: Optional[tuple[int, int]] = None  # the file-size limit last given to the process
        self.address: Optional[Address] = None
        self.starts = 0

    @property
    def pid(self) -> Optional[int]:
        """The running writer process's pid, if any."""
        process = self._process
        return process.pid if process is not None else None

    def ensure(self) -> Address:
        """Return the process's address, starting it if it is not running (sender thread)."""
        process = self._process
        if process is not None and process.poll() is None and self.address is not None:
            return self.address
        self._release(remove=True)  # it is gone (killed?): its directory is ours to remove
        return self._start()

    def _start(self) -> Address:
        if not sys.executable or getattr(sys, "frozen", False):
            raise SpawnError("no Python interpreter to start a writer process with (a frozen application)")
        root = lifeline.library_root()
        if not os.path.isfile(os.path.join(root, "agent", "cli.py")):
            raise SpawnError(f"the agent program is not installed next to ml_persistence (in {root})")
        try:
            child = lifeline.spawn(
                lambda fd, directory: [
                    *lifeline.program("agent.cli"), "--listen", f"unix://{os.path.join(directory, 'writer.sock')}",
                    "--exit-with-fd", str(fd), "--status-file", os.path.join(directory, "status.json"),
                    "--private-dir", directory, "--stop-timeout", str(_exit_timeout()),
                    "--max-frame-mb", str(MAX_FRAME_MB), "--log-level", "WARNING",
                ],
                _child_environment(self.db), "ml_persistence-writer-", stdout=subprocess.PIPE,
            )
        except OSError as exc:
            raise SpawnError(f"cannot start a writer process ({exc})") from exc
        self._process, self._lifeline, self._directory = child.process, child.lifeline, child.directory
        path = os.path.join(child.directory, "writer.sock")
        self._limits = None
        self._await_ready()
        self.starts += 1
        self.address = Address("unix", path=path)
        return self.address

    def _await_ready(self) -> None:
        """Wait for the process's ready line; raise SpawnError if it exits or stays silent."""
        process = self._process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        out = process.stdout
        while True:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([out], [], [], max(0.0, left))
            if not readable:
                process.kill()
                process.wait()
                self._release(remove=True)
                raise SpawnError(f"the writer process did not start within {START_TIMEOUT:.0f} s")
            line = out.readline()
            if b"ready" in line:
                out.close()
                return
            if not line:
                code = process.wait()
                self._release(remove=True)
                raise SpawnError(f"the writer process exited with status {code} before it was ready")

    def follow_limits(self) -> None:
        """Give the process this process's file-size limit whenever it changes: it writes on our behalf."""
        process = self._process
        if process is None or _resource is None or not hasattr(_resource, "prlimit"):
            return
        limits = _resource.getrlimit(_resource.RLIMIT_FSIZE)
        if limits != self._limits:
            try:
                _resource.prlimit(process.pid, _resource.RLIMIT_FSIZE, limits)
            except (OSError, ValueError):
                return
            self._limits = limits

    def state(self) -> dict:
        """Return what the process last said of its writer: {"condition": ..., "busy_retries": ...}."""
        if self._directory is None:
            return {}
        try:
            with open(os.path.join(self._directory, "status.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def close(self) -> None:
        """Let the process go: it commits what it has (all acknowledged by now) and exits by itself."""
        process = self._process
        self._release()
        if process is not None:
            _released.append(process)
        _released[:] = [p for p in _released if p.poll() is None]

    def forget(self) -> None:
        """In a forked child: drop this process's copy of the lifeline, so the parent's exit still ends the writer."""
        if self._lifeline is not None:
            os.close(self._lifeline)
        self._lifeline = None
        self._process = None
        self._directory = None
        self.address = None

    def _release(self, remove: bool = False) -> None:
        """Let the process go; ``remove`` its directory too when it is not running (it removes it itself as it exits)."""
        if self._lifeline is not None:
            os.close(self._lifeline)  # end-of-file for the process: it drains and exits
            self._lifeline = None
        if self._directory is not None and remove:
            shutil.rmtree(self._directory, ignore_errors=True)
        self._directory = None
        self._process = None
        self.address = None


def _exit_timeout() -> float:
    """Return the seconds the writer keeps trying at its trainer's exit: the trainer's own exit deadline."""
    from .lifecycle import exit_timeout

    return exit_timeout()


def _child_environment(db: str) -> dict[str, str]:
    """Return the writer process's environment: the database named there (a URL's password stays off
    the command line)."""
    env = dict(os.environ)
    env["ML_PERSISTENCE_DB"] = db
    for name in ("ML_PERSISTENCE_AGENT", "ML_PERSISTENCE_WRITER"):
        env.pop(name, None)
    return env
