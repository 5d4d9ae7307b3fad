"""This process's and the machine's CPU, memory, disk and network, read with psutil."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from .settings import warn_once

MB = float(1 << 20)


class HostProbe:
    """Reads host figures; CPU and I/O rates cover the time since the previous reading (or since creation)."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only sets the starting point
        psutil.cpu_percent(None)
        self._at = time.monotonic()
        self._disk = _disk_bytes(psutil)
        self._net = _net_bytes(psutil)
        self._readers: list[Callable[[float], dict[str, float]]] = [self._cpu, self._memory, self._disk_rates,
                                                                    self._net_rates]

    def sample(self) -> dict[str, float]:
        """Return {name: value} without the ``system/`` prefix; a reader that fails is dropped with a warning."""
        now = time.monotonic()
        elapsed, self._at = now - self._at, now
        values: dict[str, float] = {}
        for reader in list(self._readers):
            try:
                values.update(reader(elapsed))
            except Exception as exc:  # psutil.AccessDenied in a sandbox, an OS without the counter, ...
                self._readers.remove(reader)
                warn_once(f"host {reader.__name__}", f"system metrics: {reader.__name__.strip('_')} readings "
                                                     f"stopped: {type(exc).__name__}: {exc}")
        return values

    def _cpu(self, elapsed: float) -> dict[str, float]:
        return {
            "cpu_percent": float(self._psutil.cpu_percent(None)),
            "process_cpu_percent": float(self._process.cpu_percent(None)),
        }

    def _memory(self, elapsed: float) -> dict[str, float]:
        memory = self._psutil.virtual_memory()
        return {
            "memory_percent": float(memory.percent),
            "memory_available_mb": memory.available / MB,
            "process_rss_mb": self._process.memory_info().rss / MB,
        }

    def _disk_rates(self, elapsed: float) -> dict[str, float]:
        before, self._disk = self._disk, _disk_bytes(self._psutil)
        return _rates(("disk_read_mb_s", "disk_write_mb_s"), before, self._disk, elapsed)

    def _net_rates(self, elapsed: float) -> dict[str, float]:
        before, self._net = self._net, _net_bytes(self._psutil)
        return _rates(("network_sent_mb_s", "network_recv_mb_s"), before, self._net, elapsed)


def _disk_bytes(psutil: Any) -> Optional[tuple[int, int]]:
    counters = psutil.disk_io_counters()
    return None if counters is None else (counters.read_bytes, counters.write_bytes)


def _net_bytes(psutil: Any) -> Optional[tuple[int, int]]:
    counters = psutil.net_io_counters()
    return None if counters is None else (counters.bytes_sent, counters.bytes_recv)


def _rates(names: tuple[str, str], before: Optional[tuple[int, int]], after: Optional[tuple[int, int]],
           elapsed: float) -> dict[str, float]:
    """Return MiB/s per name; nothing when a counter is missing, and 0 when one went backwards (a device left)."""
    if before is None or after is None or elapsed <= 0:
        return {}
    return {name: max(0, b - a) / MB / elapsed for name, a, b in zip(names, before, after)}
