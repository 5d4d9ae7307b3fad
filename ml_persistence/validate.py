"""Check and coerce user values on the caller's thread, before anything is queued."""

from __future__ import annotations

import numbers
import operator
from typing import Any, Optional

import msgspec

from .errors import InvalidTypeError, InvalidValueError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _item(value: Any) -> Any:
    """Unwrap a numpy/torch scalar (or one-element array/tensor) to a Python number."""
    item = getattr(value, "item", None)
    if item is None or isinstance(value, (str, bytes)):
        return value
    size = getattr(value, "size", None)
    if callable(size):  # torch.Tensor.size() is a method; numel() is the count
        size = value.numel()
    if size is not None and size != 1:
        return value
    try:
        return item()
    except (TypeError, ValueError):
        return value


def real(name: str, value: Any) -> float | int:
    """Return ``value`` as a real number, or raise naming ``name``."""
    if type(value) is float:
        return value
    if type(value) is int:
        return value if INT64_MIN <= value <= INT64_MAX else float(value)
    if isinstance(value, bool):
        return int(value)
    value = _item(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return real(name, int(value))
    if isinstance(value, numbers.Real):
        return float(value)
    raise InvalidTypeError(
        f"{name!s}: expected a real number (int, float, bool, numpy/torch scalar), "
        f"got {type(value).__name__} {value!r:.60}"
    )


def optional_real(name: str, value: Any) -> Optional[float]:
    """Like real(), but None passes through."""
    return None if value is None else float(real(name, value))


def optional_int(name: str, value: Any) -> Optional[int]:
    """Return an int (numpy ints accepted), None, or raise naming ``name``."""
    if value is None or (type(value) is int and INT64_MIN <= value <= INT64_MAX):
        return value
    value = _item(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        value = operator.index(value)
    except TypeError:
        raise InvalidTypeError(
            f"{name}: expected an integer, got {type(value).__name__} {value!r:.60}"
        ) from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidValueError(f"{name}: {value} does not fit SQLite's 64-bit integers")
    return value


def optional_str(name: str, value: Any) -> Optional[str]:
    """Return a str or None, or raise naming ``name``."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, str):
        return str(value)
    raise InvalidTypeError(f"{name}: expected a string, got {type(value).__name__}")


def metric_name(name: Any) -> str:
    """Return a metric or parameter name, which must be a non-empty string."""
    if type(name) is not str and not isinstance(name, str):
        raise InvalidTypeError(f"metric names must be strings, got {type(name).__name__} {name!r:.60}")
    if not name:
        raise InvalidValueError("metric names must not be empty")
    return str(name)


def _json_default(value: Any) -> Any:
    unwrapped = _item(value)
    if unwrapped is not value:
        return unwrapped
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise NotImplementedError


_json_encoder = msgspec.json.Encoder(enc_hook=_json_default)


def json_text(name: str, value: Any) -> Optional[str]:
    """Encode ``value`` as JSON text (None stays None), or raise naming ``name``."""
    if value is None:
        return None
    try:
        return _json_encoder.encode(value).decode()
    except (NotImplementedError, TypeError, msgspec.EncodeError, ValueError) as exc:
        raise InvalidTypeError(f"{name}: not JSON-serializable ({exc})") from None


def json_object_text(name: str, value: Any) -> Optional[str]:
    """Encode a mapping as JSON text; anything but a dict or None raises."""
    if value is not None and not isinstance(value, dict):
        raise InvalidTypeError(f"{name}: expected a dict, got {type(value).__name__}")
    return json_text(name, value)


def value_json(value: Any) -> Optional[str]:
    """Accept value_json as JSON text (validated) or as any JSON-serializable object."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        try:
            msgspec.json.decode(value)
        except msgspec.DecodeError as exc:
            raise InvalidValueError(f"value_json: not valid JSON text ({exc})") from None
        return value.decode() if isinstance(value, bytes) else value
    return json_text("value_json", value)


def tags(value: Any) -> list[str]:
    """Return tags as a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise InvalidTypeError(f"tags: expected a list of strings, got {type(value).__name__}") from None
    for tag in items:
        if not isinstance(tag, str):
            raise InvalidTypeError(f"tags: expected strings, got {type(tag).__name__} {tag!r:.60}")
    return [str(t) for t in items]


def hyperparameter(name: Any, value: Any) -> tuple[str, Optional[str], str]:
    """Return (name, text, type) for a hyperparameter, keeping its type for read-back."""
    name = metric_name(name)
    if value is None:
        return name, "None", "NoneType"  # the original schema declares param_value NOT NULL
    if isinstance(value, bool):
        return name, str(value), "bool"
    value = _item(value)
    if isinstance(value, bool):
        return name, str(value), "bool"
    if isinstance(value, numbers.Integral):
        return name, str(int(value)), "int"
    if isinstance(value, numbers.Real):
        return name, repr(float(value)), "float"
    if isinstance(value, str):
        return name, value, "str"
    if isinstance(value, (list, tuple, dict)):
        return name, json_text(name, value), "list" if not isinstance(value, dict) else "dict"
    text = json_text(name, value)
    return name, text, "json"


def decode_hyperparameter(text: Optional[str], kind: Optional[str]) -> Any:
    """Invert hyperparameter(): return the logged value with its type."""
    if text is None or kind == "NoneType":
        return None
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            return text == "True"
        if kind in ("list", "dict", "json", "tuple"):
            return msgspec.json.decode(text)
    except (ValueError, msgspec.DecodeError):
        return text
    return text
