"""Capture what is needed to reproduce a run: git state, interpreter, host, command, packages, seeds."""

from __future__ import annotations

import os
import platform
import random
import shlex
import socket
import subprocess
import sys
from typing import Optional

import msgspec

from .events import Environment
from .storage import redact

MAX_DIFF_BYTES = 1_000_000
_packages_cache: list[Optional[str]] = [None]


def _git(*args: str, cwd: Optional[str] = None) -> Optional[str]:
    try:
        done = subprocess.run(
            ("git", *args), cwd=cwd, capture_output=True, timeout=5, check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace")


def git_state(cwd: Optional[str] = None) -> dict[str, object]:
    """Return commit, branch, dirty flag and (if dirty) the diff against HEAD; empty outside git."""
    status = _git("status", "--porcelain=v2", "--branch", "--untracked-files=no", cwd=cwd)
    if status is None:
        return {}
    state: dict[str, object] = {"git_dirty": False}
    for line in status.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split(" ", 2)[2]
            state["git_commit"] = None if oid == "(initial)" else oid
        elif line.startswith("# branch.head "):
            head = line.split(" ", 2)[2]
            state["git_branch"] = None if head == "(detached)" else head
        elif not line.startswith("#"):
            state["git_dirty"] = True
    if state["git_dirty"] and state.get("git_commit"):
        diff = _git("diff", "HEAD", cwd=cwd) or ""
        if len(diff) > MAX_DIFF_BYTES:
            diff = diff[:MAX_DIFF_BYTES] + "\n... [diff truncated by ml_persistence]\n"
        state["git_diff"] = diff
    return state


def installed_packages() -> str:
    """Return {distribution: version} on sys.path as JSON text, read from dist-info folder names (cached)."""
    if _packages_cache[0] is None:
        found: dict[str, str] = {}
        for entry in sys.path:
            try:
                names = os.listdir(entry or ".")
            except OSError:
                continue
            for name in names:
                for suffix in (".dist-info", ".egg-info"):
                    if name.endswith(suffix) and "-" in name:
                        dist, _, version = name[: -len(suffix)].partition("-")
                        found.setdefault(dist, version.split("-")[0])
        _packages_cache[0] = msgspec.json.encode(dict(sorted(found.items()))).decode()
    return _packages_cache[0]


def capture(include_git: bool = True, include_packages: bool = True) -> Environment:
    """Return the Environment of this process, never failing for lack of git."""
    state = git_state() if include_git else {}
    return Environment(
        git_commit=state.get("git_commit"),  # type: ignore[arg-type]
        git_branch=state.get("git_branch"),  # type: ignore[arg-type]
        git_dirty=state.get("git_dirty"),  # type: ignore[arg-type]
        git_diff=state.get("git_diff"),  # type: ignore[arg-type]
        python_version=platform.python_version(),
        platform=platform.platform(),
        hostname=socket.gethostname(),
        pid=os.getpid(),
        command=redact(shlex.join([sys.executable, *sys.argv])),  # a database URL on the command line keeps no password
        packages=installed_packages() if include_packages else None,
    )


def seed_everything(seed: int) -> list[str]:
    """Seed random, and numpy/torch if they are already imported; return what was seeded."""
    seeded = ["random"]
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)
        seeded.append("numpy")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
        seeded.append("torch")
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    return seeded
