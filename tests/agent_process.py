"""Run a real agent in a subprocess for tests: start it, wait for its ready line, stop or kill it."""

from __future__ import annotations

import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

from conftest import PYTHON, subprocess_env

READY_TIMEOUT = 60.0


class AgentProcess:
    """``python -m agent`` on ``db`` listening on ``listen`` URLs; ``url`` is the first one it reports."""

    def __init__(self, db: str, listen: Sequence[str], workdir: Path, extra: Sequence[str] = (), **env: str) -> None:
        self.db = db
        self.listen = list(listen)
        self.extra = list(extra)
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"agent-{id(self)}.log"
        self.proc: Optional[subprocess.Popen] = None
        self.urls: list[str] = []
        self.starts = 0

    @property
    def url(self) -> str:
        return self.urls[0]

    def start(self) -> "AgentProcess":
        """Start the agent and return once it says it is listening (raises if it exits instead)."""
        self.starts += 1
        args = [PYTHON, "-m", "agent", "--db", self.db, *self.extra]
        for url in self.listen:
            args += ["--listen", url]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=log, env=subprocess_env(**self.env), cwd=self.workdir
        )
        log.close()
        line = self._ready_line()
        self.urls = line.split("listening on ", 1)[1].split(" (database")[0].split()
        return self

    def _ready_line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            if not readable:
                break
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"agent exited ({self.proc.wait()}) before it was ready:\n{self.log()}")
            if "ready, listening on" in line:
                return line.strip()
        raise RuntimeError(f"agent not ready within {READY_TIMEOUT} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and return the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def kill(self) -> int:
        """SIGKILL the agent and wait for it."""
        return self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "AgentProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def short_socket(tmp_path: Path, name: str = "a.sock") -> str:
    """A unix:// URL for a socket under tmp_path, or under /tmp when tmp_path is too long for AF_UNIX."""
    path = tmp_path / name
    if len(str(path)) > 100:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="mlp-")) / name
    return f"unix://{path}"
