"""The filter language: ``params.lr < 1e-3 and metrics.val_sharpe > 1.5 and (tags.ppo or status = "running")``.

One parser for the Python API, the CLI and the UI. ``parse``/``parse_order`` check a filter without a
database; ``search`` runs one through a Reader (SQLite or PostgreSQL), compiled to SQL whose only
names come from a whitelist and whose values are all bound.
"""

from __future__ import annotations

from .errors import FilterError
from .nodes import key_text
from .parse import parse, parse_order
from .search import search

__all__ = ["FilterError", "parse", "parse_order", "search", "key_text"]
