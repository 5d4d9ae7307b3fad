"""Reading stored timestamp text back, as written by this library, the original one, or others."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Optional

_FRACTION = re.compile(r"\.(\d+)")


def parse(text: Any) -> Optional[dt.datetime]:
    """Return the datetime of ISO-like text ('2024-05-01 10:30:00.5', '...T...Z', '+05:45'), or None."""
    if not isinstance(text, str) or not text.strip():
        return None
    # Python 3.10 takes only 3 or 6 fraction digits and no 'Z': normalize both.
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text.strip(), count=1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None
