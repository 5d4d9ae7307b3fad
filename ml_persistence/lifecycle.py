"""Process lifecycle: at exit, on SIGTERM/SIGINT and after fork, nothing logged is lost.

SIGINT arrives as KeyboardInterrupt and is seen as an unhandled exception; SIGTERM gets a handler.

At exit every running experiment this process started is ended ("completed", "failed" or
"interrupted"), every queue is committed within a deadline, and every connection is closed.
The writer thread is a daemon, and so is aiosqlite's worker thread (a thread inherits its
creator's daemon flag, and the writer creates it), so neither blocks interpreter exit and the
atexit hook runs after the user's own non-daemon threads have finished logging, while ours
still run. Multiprocessing children leave through os._exit, skipping atexit; there the hook
runs from threading's shutdown instead.
"""

from __future__ import annotations

import atexit
import builtins
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Optional

from . import backend as backends
from . import storage, upload
from .errors import MLPersistenceError
from .events import ExperimentEnded, encode

EXIT_TIMEOUT_ENV = "ML_PERSISTENCE_EXIT_TIMEOUT"
DEFAULT_EXIT_TIMEOUT = 10.0

_lock = threading.RLock()
_installed = False
_signals_installed = False
_finalized = False
_previous: dict[int, Any] = {}


class _ExitState:
    """What this process is dying of, as far as we have seen."""

    exception: Optional[BaseException] = None
    signal: Optional[int] = None
    exit_code: Any = None


_state = _ExitState()


def exit_timeout() -> float:
    """Return the exit flush deadline in seconds ($ML_PERSISTENCE_EXIT_TIMEOUT, default 10)."""
    try:
        return float(os.environ.get(EXIT_TIMEOUT_ENV, DEFAULT_EXIT_TIMEOUT))
    except ValueError:
        return DEFAULT_EXIT_TIMEOUT


def install() -> None:
    """Install the exit, exception, signal and fork hooks once per process (cheap if done)."""
    global _installed
    if _installed and _signals_installed:
        return
    if not _installed:
        with _lock:
            if not _installed:
                _install_hooks()
                _installed = True
    _install_signal_handlers()


def _install_hooks() -> None:
    atexit.register(_at_exit)
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(_at_threading_exit)
        except RuntimeError:
            pass  # already shutting down
    previous_hook = sys.excepthook

    def excepthook(kind: type, value: BaseException, tb: Any) -> None:
        _state.exception = value
        previous_hook(kind, value, tb)

    sys.excepthook = excepthook
    sys.exit = _RecordingQuitter(sys.exit)  # type: ignore[assignment]
    for name in ("exit", "quit"):  # the site builtins, as used by scripts too
        quitter = getattr(builtins, name, None)
        if quitter is not None and callable(quitter):
            setattr(builtins, name, _RecordingQuitter(quitter))
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(
            before=backends._quiesce_before_fork,
            after_in_parent=backends._resume_after_fork_in_parent,
            after_in_child=_after_fork_in_child,
        )


class _RecordingQuitter:
    """Wraps sys.exit and site's exit()/quit() to see the exit status; otherwise the original."""

    def __init__(self, quitter: Any) -> None:
        self._quitter = quitter
        self.__doc__ = quitter.__doc__

    def __repr__(self) -> str:
        return repr(self._quitter)

    def __call__(self, code: Any = None) -> None:
        _state.exit_code = code
        self._quitter(code)


def _install_signal_handlers() -> None:
    # SIGINT needs nothing of ours: its KeyboardInterrupt reaches the exit hook as an exception,
    # and leaving it alone keeps asyncio's and trio's own Ctrl-C handling intact.
    global _signals_installed
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return
    _signals_installed = True
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_signal or current in (signal.SIG_IGN, None):
        return
    _previous[signal.SIGTERM] = current
    try:
        signal.signal(signal.SIGTERM, _on_signal)
    except (ValueError, OSError):
        pass


def _on_signal(signum: int, frame: Any) -> None:
    _state.signal = signum
    if _finalized:
        return  # already committing and closing on the way out
    previous = _previous.get(signum, signal.SIG_DFL)
    if previous is signal.SIG_DFL:
        # The default action would kill us outright: commit first, then die of the same signal.
        finalize("interrupted", f"terminated by {signal.Signals(signum).name}")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if callable(previous):
        previous(signum, frame)  # e.g. Python's SIGINT handler raises KeyboardInterrupt


def status_for(exc: Optional[BaseException]) -> tuple[str, Optional[str]]:
    """Return the (status, notes) an experiment ends with when its code exits with ``exc``."""
    if exc is None:
        return "completed", None
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "KeyboardInterrupt"
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return "completed", None
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return "failed", text.strip()


def _exit_status() -> tuple[str, Optional[str]]:
    # Python sets sys.last_value before calling whatever excepthook is installed (rich, IPython...).
    exception = _state.exception or getattr(sys, "last_value", None)
    if exception is not None:
        return status_for(exception)
    if _state.signal is not None:
        return "interrupted", f"received {signal.Signals(_state.signal).name}"
    code = _state.exit_code
    if code not in (None, 0):
        return "failed", f"exited with status {code}"
    return "completed", None


def _at_threading_exit() -> None:
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is not None and multiprocessing.parent_process() is not None:
        _at_exit()  # a multiprocessing child: atexit will not run


def _at_exit() -> None:
    status, notes = _exit_status()
    finalize(status, notes)


def finalize(status: str, notes: Optional[str], timeout: Optional[float] = None) -> None:
    """End this process's running experiments with ``status`` and close every backend, within a deadline."""
    global _finalized
    with _lock:
        if _finalized:
            return
        _finalized = True
    deadline = time.monotonic() + (exit_timeout() if timeout is None else timeout)
    pid = os.getpid()
    now = time.time()
    for backend in backends.all_backends():
        ended = [ExperimentEnded(i, status, notes, now) for i, owner in list(backend.running.items()) if owner == pid]
        backend.running.clear()
        try:
            if backend.writer_alive:
                for event in ended:
                    backend.append(encode(event))
                ended = []
            backend.close(max(0.0, deadline - time.monotonic()), final=True)
            if ended:  # no writer left (say, after shutdown()), and none may start now
                backend.end_now(ended, max(0.1, deadline - time.monotonic()))
        except (MLPersistenceError, *storage.database_errors()) as exc:
            print(f"ml_persistence: at exit, {backend.path}: {storage.redact(exc)}", file=sys.stderr)
    upload.finish_all()  # the local writes are committed: uploaders make their final pass now


def _after_fork_in_child() -> None:
    global _lock, _finalized
    _lock = threading.RLock()
    _finalized = False
    _state.exception = None
    _state.signal = None
    _state.exit_code = None
    backends._forget_after_fork()
