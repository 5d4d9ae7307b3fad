"""Strict JSON for what leaves the process (CLI output, the web UI): no NaN or Infinity tokens."""

from __future__ import annotations

import math
from typing import Any

import msgspec


def json_safe(value: Any) -> Any:
    """Make a value strict JSON: NaN becomes null, ±inf the strings 'Infinity' / '-Infinity'."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def decoded_json(text: Any) -> Any:
    """Return stored JSON text decoded, or the text itself if it is not JSON."""
    if not isinstance(text, str):
        return text
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text
