"""The sampler thread: every N seconds, one event of ``system/`` metrics for the run it was started for.

Thread affinity: the probes live on the sampler's own daemon thread; the only thing it shares
with the training loop is the backend's queue, which it appends to like any log call. It stops
when ``stop()`` is called (end_experiment, close, another start), when the run stops being this
process's running one (the exit hook or a signal handler ended it), at interpreter exit (an
atexit hook registered after ml_persistence's own, so it runs first), and it never runs in a
forked child.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Any, Optional

from ..errors import ClosedError
from ..events import MetricsLogged, encode
from .settings import warn_once

PREFIX = "system/"
THREAD_NAME = "ml-persistence-system-metrics"
STOP_TIMEOUT = 5.0  # seconds stop() waits for a sample in progress (an NVML call, say) to finish
EXIT_TIMEOUT = 1.0

_live: set["SystemSampler"] = set()
_live_lock = threading.Lock()
_exit_hook_installed = False


class SystemSampler:
    """Samples host and GPU figures into one experiment on a daemon thread, until stopped."""

    def __init__(self, backend: Any, experiment_id: int, interval: float) -> None:
        self.backend = backend
        self.experiment_id = experiment_id
        self.interval = interval
        self.samples = 0  # events appended so far
        self._pid = os.getpid()
        self._lock = threading.Lock()  # held around "still sampling? then append": after stop(), nothing is
        self._stopped = False
        self._wake = threading.Event()
        self._opened = threading.Event()  # set once the probes are open (or failed to)
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    def __repr__(self) -> str:
        state = "sampling" if self.alive else "stopped"
        return f"<SystemSampler experiment={self.experiment_id} every {self.interval:g} s {state} samples={self.samples}>"

    @classmethod
    def start(cls, backend: Any, experiment_id: int, interval: float) -> "SystemSampler":
        """Start sampling into ``experiment_id`` every ``interval`` seconds (the first sample one interval in)."""
        sampler = cls(backend, experiment_id, interval)
        _install_exit_hook()
        with _live_lock:
            _live.add(sampler)
        try:
            sampler._thread.start()
        except RuntimeError:  # the interpreter is shutting down and starts no threads
            sampler._opened.set()
            sampler.stop()
        return sampler

    @property
    def alive(self) -> bool:
        """True while the sampler thread runs."""
        return self._thread.is_alive()

    def wait_opened(self, timeout: Optional[float] = None) -> bool:
        """Wait until the thread has opened its probes (psutil, NVML); False if ``timeout`` passed first."""
        return self._opened.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop sampling: nothing is appended once this returns; wait up to ``timeout`` s for the thread to end."""
        with self._lock:
            self._stopped = True
        self._wake.set()
        with _live_lock:
            _live.discard(self)
        if self._thread is not threading.current_thread() and self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        probes: list[Any] = []
        try:
            probes = _open_probes()
            self._opened.set()
            due = time.monotonic() + self.interval
            while not self._wake.wait(max(0.0, due - time.monotonic())):
                values: dict[str, float] = {}
                for probe in list(probes):
                    try:
                        values.update(probe.sample())
                    except Exception as exc:  # a probe's own failures are handled inside; this is the unforeseen
                        probes.remove(probe)
                        warn_once(f"probe {type(probe).__name__}", f"system metrics: {type(probe).__name__} "
                                                                   f"stopped: {type(exc).__name__}: {exc}")
                if values and not self._append(values):
                    break
                due += self.interval
                now = time.monotonic()
                if due <= now:  # a slow sample or a suspended process: skip the missed ticks
                    due = now + self.interval
        except Exception as exc:
            warn_once("sampler", f"system metrics stopped: {type(exc).__name__}: {exc}")
        finally:
            self._opened.set()
            for probe in probes:
                close = getattr(probe, "close", None)
                if close is not None:
                    close()

    def _append(self, values: dict[str, float]) -> bool:
        """Queue one sample; False once the run is no longer this sampler's to record."""
        event = encode(MetricsLogged(self.experiment_id, [PREFIX + name for name in values], list(values.values()),
                                     None, None, None, None, time.time()))
        with self._lock:
            if self._stopped or self.backend.running.get(self.experiment_id) != self._pid:
                return False  # stopped, or the run was ended (by the exit hook, a signal, another thread)
            try:
                self.backend.append(event)
            except ClosedError:
                return False
            self.samples += 1
        return True


def _open_probes() -> list[Any]:
    from .gpu import open_gpus
    from .host import HostProbe

    probes: list[Any] = [HostProbe()]
    gpus = open_gpus()
    if gpus is not None:
        probes.append(gpus)
    return probes


def running() -> list[SystemSampler]:
    """Return this process's samplers that have not been stopped."""
    with _live_lock:
        return list(_live)


def stop_all(timeout: float = STOP_TIMEOUT) -> None:
    """Stop every sampler of this process, waiting at most ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    for sampler in running():
        sampler.stop(max(0.0, deadline - time.monotonic()))


def _at_exit() -> None:
    stop_all(EXIT_TIMEOUT)


def _install_exit_hook() -> None:
    # Registered at the first start, after ml_persistence's exit hook (installed when the tracker
    # was made): atexit runs hooks last-in first-out, so sampling stops before runs are ended.
    global _exit_hook_installed
    with _live_lock:
        if _exit_hook_installed:
            return
        _exit_hook_installed = True
    atexit.register(_at_exit)


def _forget_after_fork() -> None:
    """In a forked child: the parent's samplers have no thread here and must never append."""
    global _live_lock
    _live_lock = threading.Lock()
    for sampler in list(_live):
        sampler._lock = threading.Lock()
        sampler._wake = threading.Event()
        sampler._stopped = True
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
