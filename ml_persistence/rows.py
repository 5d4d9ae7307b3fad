"""How events become row values on every engine: the original's local-time text, a metric's split."""

from __future__ import annotations

import time
from typing import Optional

_SPLIT_PREFIXES = (("train_", "train"), ("val_", "val"), ("test_", "test"))
_last_second: tuple[int, str] = (-1, "")  # replaced whole, so writer threads never see half an update


def local_text(ts: float) -> str:
    """Format an epoch time as the original's local-time text, 'YYYY-MM-DD HH:MM:SS.ffffff'."""
    global _last_second
    second = int(ts)
    cached = _last_second
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
    return f"{cached[1]}.{int((ts - second) * 1e6):06d}"


def split_of(name: str) -> Optional[str]:
    """Infer a metric's split from a train_/val_/test_ name prefix."""
    try:
        return _split_cache[name]
    except KeyError:
        pass
    found = next((split for prefix, split in _SPLIT_PREFIXES if name.startswith(prefix)), None)
    if len(_split_cache) < 4096:  # metric names are few; a run inventing names must not grow this
        _split_cache[name] = found
    return found


_split_cache: dict[str, Optional[str]] = {}
