"""Opt-in system metrics: CPU, memory, disk, network and GPU samples stored as ``system/`` metrics.

Imports nothing beyond the standard library until a sampler starts (psutil, pynvml load then).
"""

from .sampler import PREFIX, THREAD_NAME, SystemSampler, running, stop_all
from .settings import DEFAULT_INTERVAL, ENABLE_ENV, INSTALL_HINT, INTERVAL_ENV, MIN_INTERVAL, interval_for

__all__ = [
    "DEFAULT_INTERVAL",
    "ENABLE_ENV",
    "INSTALL_HINT",
    "INTERVAL_ENV",
    "MIN_INTERVAL",
    "PREFIX",
    "THREAD_NAME",
    "SystemSampler",
    "interval_for",
    "running",
    "stop_all",
]
