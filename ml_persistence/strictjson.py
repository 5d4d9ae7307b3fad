"""Strict JSON for what leaves the process (CLI output, the web UI): no NaN or Infinity tokens."""

from __future__ import annotations

import math
from typing import Any

import msgspec

from .validate import MAX_DEPTH, check_tree

# Deeper than any value ml_persistence stores (validate.MAX_DEPTH), yet far from Python's recursion limit.
_SHOWN_DEPTH = 2 * MAX_DEPTH
TOO_DEEP = "[nested too deep to show]"


def json_safe(value: Any, _depth: int = 0) -> Any:
    """Make a value strict JSON: NaN becomes null, ±inf the strings 'Infinity' / '-Infinity'.

    What nests deeper than any value ml_persistence stores (written by something else) shows as TOO_DEEP.
    """
    if _depth > _SHOWN_DEPTH:
        return TOO_DEEP
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, _depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def decoded_json(text: Any) -> Any:
    """Return stored JSON text decoded, or the text itself if it is not JSON that ml_persistence would store.

    JSON nested deeper than validate.MAX_DEPTH, or with integers too long to print, stays text.
    """
    if not isinstance(text, str):
        return text
    try:
        value = msgspec.json.decode(text)
        check_tree("stored JSON", value, strings=False)
    except (msgspec.DecodeError, RecursionError, ValueError):
        return text
    return value
