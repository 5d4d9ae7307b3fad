"""PostgreSQL spellings of the UI's and `tail`'s reads (sqlite/views.py): only what differs."""

from __future__ import annotations


class Views:
    """Overrides of sqlite.views.Views for PostgreSQL."""

    def _unplanned(self, column: str) -> str:
        # SQLite's unary + planner trick; PostgreSQL's planner picks the id range by itself.
        return column
