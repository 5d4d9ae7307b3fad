"""Check and coerce user values on the caller's thread, before anything is queued."""

from __future__ import annotations

import numbers
import operator
import os
from typing import Any, Optional

import msgspec

from .errors import InvalidTypeError, InvalidValueError
from .events import alias_problem
from .storage import redact

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT_MAX = 1.7976931348623157e308
# Containers (dict, list, tuple, set) in metadata, hyperparameters and value_json nest at most this
# deep: deeper ones raise InvalidValueError (readers of the JSON, Python's included, recurse).
MAX_DEPTH = 100
# Integers kept exactly as JSON or hyperparameter text have fewer digits than this (Python's own
# int/str conversion limit, so that they read back as ints everywhere).
MAX_INT_DIGITS = 4300
_INT_TEXT_LIMIT = 10**MAX_INT_DIGITS
_NUL = "\x00"


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
        return value if INT64_MIN <= value <= INT64_MAX else _float(name, value)
    if isinstance(value, bool):
        return int(value)
    value = _item(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return real(name, int(value))
    if isinstance(value, numbers.Real):
        return _float(name, value)
    raise InvalidTypeError(
        f"{name!s}: expected a real number (int, float, bool, numpy/torch scalar), "
        f"got {type(value).__name__} {value!r:.60}"
    )


def _float(name: str, value: Any) -> float:
    """Return float(value), or raise naming ``name`` if it is beyond a float's range (about ±1.8e308)."""
    try:
        return float(value)
    except OverflowError:
        raise InvalidValueError(
            f"{name}: value {_shown(value)} is out of range: numbers are stored as 64-bit floats "
            f"(magnitude up to {FLOAT_MAX:.4g}) or 64-bit integers"
        ) from None


def _shown(value: Any) -> str:
    """Return a short text for a value in an error message (a huge int as its digit count)."""
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"{'-' if value < 0 else ''}<an integer of about {value.bit_length() * 0.30103:.0f} digits>"
    return f"{value!r:.60}"


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
        raise InvalidValueError(f"{name}: {_shown(value)} does not fit SQLite's 64-bit integers")
    return value


def encodable(name: str, value: str) -> str:
    """Return ``value`` if every engine can store it, else raise naming ``name`` (UTF-8 cannot hold a lone
    surrogate, PostgreSQL's text no NUL)."""
    if "\x00" in value:
        raise InvalidValueError(
            f"{name}: {value!r:.60} contains a NUL character (index {value.index(_NUL)}), which PostgreSQL "
            "cannot store and SQL tools cut text short at; remove it (or log the data as bytes, e.g. hex)"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidValueError(
                f"{name}: {value!r:.60} cannot be stored as UTF-8: {value[exc.start]!r} at index "
                f"{exc.start} is a lone surrogate (from bytes decoded with errors='surrogateescape'? "
                "decode them with errors='replace')"
            ) from None
    return redact(value) if "://" in value else value


def optional_str(name: str, value: Any) -> Optional[str]:
    """Return a str UTF-8 can store, or None, or raise naming ``name``."""
    if value is None:
        return value
    if type(value) is str:
        return encodable(name, value)
    if isinstance(value, str):
        return encodable(name, str(value))
    raise InvalidTypeError(f"{name}: expected a string, got {type(value).__name__}")


def name_text(name: str, value: Any) -> str:
    """Return a name (of an experiment, metric, tag, model, ...): a string without NUL that UTF-8 can store."""
    if not isinstance(value, str):
        raise InvalidTypeError(f"{name}: expected a string, got {type(value).__name__} {value!r:.60}")
    if "\x00" in value:
        raise InvalidValueError(
            f"{name}: {value!r:.60} contains a NUL character (index {value.index(_NUL)}), "
            "where SQL tools would cut the name short"
        )
    return encodable(name, str(value))


def optional_name(name: str, value: Any) -> Optional[str]:
    """Like name_text(), but None passes through."""
    return None if value is None else name_text(name, value)


def alias_name(value: Any, argument: str = "alias") -> str:
    """Return a model alias: printable text, 1 to 255 characters, no surrounding spaces, not all digits."""
    text = name_text(argument, value)
    problem = alias_problem(text)
    if problem is not None:
        raise InvalidValueError(f"{argument}: {problem}")
    return text


def metric_name(name: Any, argument: str = "metric_name") -> str:
    """Return a metric or hyperparameter name: a non-empty string without NUL."""
    if isinstance(name, str) and not name:
        raise InvalidValueError(f"{argument}: metric and parameter names must not be empty")
    return name_text(argument, name)


def path_text(name: str, value: Any) -> str:
    """Return a file path (str or os.PathLike) as text, or raise naming ``name``."""
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise InvalidTypeError(f"{name}: expected a path (str or os.PathLike), got {type(value).__name__}")
    path = os.fsdecode(value)
    if "\x00" in path:
        raise InvalidValueError(f"{name}: {path!r:.60} contains a NUL character, which no path can")
    return encodable(name, path)


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


def check_tree(name: str, value: Any, strings: bool = True) -> None:
    """Raise naming ``name`` if containers nest past MAX_DEPTH, an int is too long, or a string is not UTF-8."""
    stack = [(value, 0)]  # a loop, not recursion: the depth is what is being checked
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is float or item is None or kind is bool:
            continue
        if kind is str or isinstance(item, str):
            if strings:
                encodable(name, item)
        elif kind is int or isinstance(item, int):
            if not -_INT_TEXT_LIMIT < item < _INT_TEXT_LIMIT:
                raise InvalidValueError(
                    f"{name}: {_shown(item)} is out of range: integers are kept exactly, "
                    f"up to {MAX_INT_DIGITS - 1} digits"
                )
        elif isinstance(item, (dict, list, tuple, set, frozenset)):
            if depth >= MAX_DEPTH:
                raise InvalidValueError(
                    f"{name}: dicts and lists nest deeper than {MAX_DEPTH} levels (or contain themselves)"
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    if strings and isinstance(key, str):
                        encodable(name, key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def json_text(name: str, value: Any) -> Optional[str]:
    """Encode ``value`` as JSON text (None stays None), or raise naming ``name``.

    Containers may nest MAX_DEPTH (100) levels deep; integers are kept exactly up to 4299 digits.
    """
    if value is None:
        return None
    check_tree(name, value)
    try:
        text = _json_encoder.encode(value).decode()
        return redact(text) if "://" in text else text
    except UnicodeEncodeError as exc:  # in what an enc_hook made of an object (numpy strings, ...)
        raise InvalidValueError(f"{name}: a string cannot be stored as UTF-8 ({exc.reason})") from None
    except RecursionError:
        raise InvalidValueError(f"{name}: nested deeper than {MAX_DEPTH} levels") from None
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
        if isinstance(value, str):
            encodable("value_json", value)
        try:
            decoded = msgspec.json.decode(value)
        except msgspec.DecodeError as exc:
            raise InvalidValueError(f"value_json: not valid JSON text ({exc})") from None
        except RecursionError:
            raise InvalidValueError(f"value_json: nested deeper than {MAX_DEPTH} levels") from None
        check_tree("value_json", decoded, strings=False)  # escapes like \\udcff are text UTF-8 can store
        return value.decode() if isinstance(value, bytes) else value
    return json_text("value_json", value)


def tags(value: Any) -> list[str]:
    """Return tags as a list of strings without NUL."""
    if value is None:
        return []
    if isinstance(value, str):
        return [name_text("tags", value)]
    try:
        items = list(value)
    except TypeError:
        raise InvalidTypeError(f"tags: expected a list of strings, got {type(value).__name__}") from None
    for tag in items:
        if not isinstance(tag, str):
            raise InvalidTypeError(f"tags: expected strings, got {type(tag).__name__} {tag!r:.60}")
    return [name_text("tags", t) for t in items]


def hyperparameter(name: Any, value: Any) -> tuple[str, Optional[str], str]:
    """Return (name, text, type) for a hyperparameter, keeping its type for read-back."""
    name = metric_name(name, "hyperparameter name")
    if value is None:
        return name, "None", "NoneType"  # the original schema declares param_value NOT NULL
    if isinstance(value, bool):
        return name, str(value), "bool"
    value = _item(value)
    if isinstance(value, bool):
        return name, str(value), "bool"
    if isinstance(value, numbers.Integral):
        check_tree(name, int(value))
        return name, str(int(value)), "int"
    if isinstance(value, numbers.Real):
        return name, repr(_float(name, value)), "float"
    if isinstance(value, str):
        return name, encodable(name, value), "str"
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
    except (ValueError, msgspec.DecodeError, RecursionError):
        return text
    return text
