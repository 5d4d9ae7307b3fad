"""Argument types: numbers checked by argparse, so a bad one is a usage error (exit 2), not a traceback."""

from __future__ import annotations

import argparse
import math

INT64_MAX = 2**63 - 1


def _integer(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not low <= value <= INT64_MAX:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def row_id(text: str) -> int:
    """An experiment (row) id: an integer SQLite can hold."""
    return _integer(text, 0, "an id (a non-negative integer)")


def count(text: str) -> int:
    """A count or limit: a non-negative integer."""
    return _integer(text, 0, "a non-negative integer")


def positive(text: str) -> int:
    """A positive integer."""
    return _integer(text, 1, "a positive integer")


def port(text: str) -> int:
    """A TCP port, 0 for any free one."""
    value = _integer(text, 0, "a port (0-65535)")
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port (0-65535), got {text}")
    return value


def seconds(text: str) -> float:
    """A finite, positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0 or value > 86400 * 365:
        raise argparse.ArgumentTypeError(f"expected a positive, finite number of seconds, got {text}")
    return value
