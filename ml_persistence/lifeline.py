"""Start a helper program tied to this process: it reads end-of-file on a pipe when we exit or die.

The child gets the pipe's read end (``--exit-with-fd``) and a fresh 0700 directory of its own; we
keep the write end. Closing it, exiting, or being killed (even by SIGKILL) all reach the child as
end-of-file, so a helper never outlives its owner by more than its own final work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import IO, Callable, Optional, Union

# Run as `python -c`, from this installation's directory, never `-m`: that would first look in the
# working directory, where a project may have a module of the same name.
_BOOTSTRAP = (
    "import sys; root = sys.argv.pop(1); sys.path[:] = [root] + [p for p in sys.path if p not in ('', '.')]; "
    "from {module} import main; sys.exit(main(sys.argv[1:]))"
)


def library_root() -> str:
    """Return the directory that holds this installation's ml_persistence (and agent) packages."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def program(module: str) -> list[str]:
    """Return the command that runs ``module``'s main() from this installation, with arguments to follow."""
    return [sys.executable, "-c", _BOOTSTRAP.format(module=module), library_root()]


@dataclass
class Child:
    """A started helper: its process, our end of its lifeline, its private directory."""

    process: subprocess.Popen
    lifeline: int
    directory: str


def spawn(
    arguments: Callable[[int, str], list[str]],
    environment: Optional[dict[str, str]] | Callable[[str], dict[str, str]],
    prefix: str,
    stdout: Union[int, IO[bytes], None] = subprocess.DEVNULL,
) -> Child:
    """Start ``arguments(read_fd, directory)`` in a session of its own; raise OSError if it cannot start.

    ``environment`` is the child's environment, or a function of its directory that returns it.
    """
    directory = tempfile.mkdtemp(prefix=prefix)  # mode 0700
    read_end, write_end = os.pipe()  # both close on exec; the child is handed the read end only
    try:
        env = environment(directory) if callable(environment) else environment
        process = subprocess.Popen(
            arguments(read_end, directory),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            pass_fds=(read_end,),
            start_new_session=True,  # a Ctrl-C in the terminal is the owner's to handle
        )
    except BaseException:
        os.close(write_end)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        os.close(read_end)
    return Child(process, write_end, directory)
