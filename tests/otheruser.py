"""Run Python as a second local user (nobody), with this checkout's ml_persistence importable.

CI runs as root; `setpriv` drops to uid/gid 65534. The test interpreter lives where nobody cannot
enter (pyenv under /root), so the other user runs Debian's own python3 with a world-readable copy
of the packages the library needs.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
# The core's runtime dependencies and theirs, importable by name.
_PACKAGES = ("msgspec", "anyio", "aiosqlite", "sniffio", "idna", "typing_extensions", "exceptiongroup")


def _system_python() -> str | None:
    """Return the python3 on the default PATH (Debian's), if it can import this interpreter's builds."""
    found = shutil.which("python3", path=os.defpath)
    if found is None or found.startswith(str(Path.home())):
        return None
    probe = subprocess.run([found, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    import sys

    return found if probe.stdout.strip() == str(tuple(sys.version_info[:2])) else None


class OtherUser:
    """Another local user (nobody) who can run Python with ml_persistence importable."""

    uid = NOBODY
    gid = NOBODY

    def __init__(self, python: str, site: str) -> None:
        self.python = python
        self.site = site
        self.prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

    def env(self, **extra: str) -> dict[str, str]:
        """Return an environment for the other user's processes (no root paths, its own HOME)."""
        env = {
            "PATH": os.defpath,
            "PYTHONPATH": self.site,
            "HOME": tempfile.gettempdir(),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.update(extra)
        return env

    def command(self, *args: str) -> list[str]:
        """Return argv that runs ``python args...`` as the other user."""
        return [*self.prefix, self.python, *args]

    def run(self, code: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``python -c code`` as the other user; return the finished process (text output)."""
        env = kwargs.pop("env", None) or self.env()
        kwargs.setdefault("cwd", self.site)  # not the checkout, which that user may not read
        return subprocess.run(
            self.command("-c", code), env=env, capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen:
        """Start ``python args...`` as the other user."""
        kwargs.setdefault("env", self.env())
        kwargs.setdefault("cwd", self.site)
        return subprocess.Popen(self.command(*args), **kwargs)

    def private_dir(self) -> str:
        """Return a new directory owned by the other user, mode 0700, that root can still reach."""
        path = tempfile.mkdtemp(prefix="mlp-other-")
        os.chown(path, NOBODY, NOBODY)
        os.chmod(path, 0o700)
        return path


def _copy_site(target: Path) -> None:
    for name in ("ml_persistence", "agent"):
        shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in _PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue  # not needed on this Python (exceptiongroup before 3.11)
        source = Path(module.__file__)  # type: ignore[arg-type]
        if source.name == "__init__.py":
            shutil.copytree(source.parent, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / source.name)
    for root, dirs, files in os.walk(target):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


@pytest.fixture(scope="session")
def other_user() -> Any:
    """An OtherUser; skipped unless this runs as root with setpriv and a usable system python3."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as a second local user")
    python = _system_python()
    if python is None:
        pytest.skip("needs a system python3 of this interpreter's version for the second user")
    site = tempfile.mkdtemp(prefix="mlp-other-site-")
    os.chmod(site, 0o755)
    _copy_site(Path(site))
    user = OtherUser(python, site)
    check = user.run("import ml_persistence, agent.server; print('ok')")
    if check.stdout.strip() != "ok":
        raise RuntimeError(f"the second user cannot import ml_persistence: {check.stderr}")
    try:
        yield user
    finally:
        shutil.rmtree(site, ignore_errors=True)
