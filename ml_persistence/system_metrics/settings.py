"""When and how often system metrics are sampled: the ``system_metrics`` argument and the environment."""

from __future__ import annotations

import logging
import math
import numbers
import os
import threading
from typing import Optional, Union

from ..errors import InvalidTypeError, InvalidValueError, MissingDependencyError

ENABLE_ENV = "ML_PERSISTENCE_SYSTEM_METRICS"
INTERVAL_ENV = "ML_PERSISTENCE_SYSTEM_METRICS_INTERVAL"
DEFAULT_INTERVAL = 10.0
MIN_INTERVAL = 0.1
INSTALL_HINT = "pip install 'ml_persistence[system]'"
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off"})

log = logging.getLogger("ml_persistence")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``key`` comes up in this process."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning("ml_persistence: %s", message)


def interval_for(requested: Union[bool, float, None]) -> Optional[float]:
    """Return the seconds between samples that ``system_metrics=requested`` asks for, or None (no sampling).

    None defers to $ML_PERSISTENCE_SYSTEM_METRICS, where a missing psutil is a warning; True or a
    number of seconds asks outright, where it raises MissingDependencyError.
    """
    if requested is None:
        if not _enabled_by_environment():
            return None
        if not _psutil_importable():
            warn_once("psutil", f"{ENABLE_ENV} is set but psutil is not installed, so no system metrics "
                                f"are recorded: {INSTALL_HINT}")
            return None
        return environment_interval()
    if requested is False:
        return None
    if requested is True:
        interval = environment_interval()
    elif isinstance(requested, numbers.Real) and not isinstance(requested, bool):
        interval = float(requested)
        if not (math.isfinite(interval) and interval >= MIN_INTERVAL):
            raise InvalidValueError(
                f"system_metrics: expected True, False or seconds between samples (at least {MIN_INTERVAL}), "
                f"got {requested!r}"
            )
    else:
        raise InvalidTypeError(
            f"system_metrics: expected True, False or seconds between samples, got {type(requested).__name__} "
            f"{requested!r:.60}"
        )
    if not _psutil_importable():
        raise MissingDependencyError(f"system_metrics needs psutil: {INSTALL_HINT}")
    return interval


def environment_interval() -> float:
    """Return $ML_PERSISTENCE_SYSTEM_METRICS_INTERVAL in seconds, or the default 10 (warning once if unusable)."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        interval = float(text)
    except ValueError:
        interval = math.nan
    if math.isfinite(interval) and interval >= MIN_INTERVAL:
        return interval
    warn_once(f"interval {text}", f"{INTERVAL_ENV}={text!r} is not a number of seconds of at least "
                                  f"{MIN_INTERVAL}: sampling every {DEFAULT_INTERVAL:g} s")
    return DEFAULT_INTERVAL


def _enabled_by_environment() -> bool:
    text = os.environ.get(ENABLE_ENV, "").strip().lower()
    if text in _ON:
        return True
    if text not in _OFF:
        warn_once(f"enable {text}", f"{ENABLE_ENV}={text!r} is neither 1 nor 0: no system metrics")
    return False


def _psutil_importable() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True
