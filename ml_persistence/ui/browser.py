"""Opening the UI in a web browser without putting its token on a command line other users can read."""

from __future__ import annotations

import html
import os
import sys
import webbrowser
from pathlib import Path
from typing import Optional

from ..address import ensure_private_dir, runtime_dir


def redirect_file(port: int) -> str:
    """Return where the page that forwards a browser to the UI on ``port`` is written."""
    return os.path.join(runtime_dir(), f"ui-{port}-open.html")


def write_redirect(url: str, port: int) -> str:
    """Write a page that forwards to ``url``, mode 0600 in this user's private runtime directory; return its path."""
    ensure_private_dir(runtime_dir())
    path = redirect_file(port)
    target = html.escape(url, quote=True)
    page = (f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={target}">'
            f'<title>ml-persistence ui</title><p><a href="{target}">Open the ml-persistence UI</a></p>\n')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, page.encode())
    finally:
        os.close(fd)
    return path


def open_ui(url: str, port: int, has_token: bool) -> Optional[str]:
    """Open the UI in the default browser; return the forwarding page's path when one was written.

    A URL given to the browser lands on its command line, which every local user can read in
    /proc: with a token, the browser is given a private file that forwards to the URL instead
    (as Jupyter does).
    """
    if not has_token:
        webbrowser.open(url)
        return None
    try:
        path = write_redirect(url, port)
    except OSError as exc:  # e.g. a runtime directory another user made: never hand it the token
        print(f"ml-persistence ui: not opening a browser ({exc}): open the URL above", file=sys.stderr, flush=True)
        return None
    webbrowser.open(Path(path).as_uri())
    return path


def remove_redirect(path: Optional[str]) -> None:
    """Remove a forwarding page written by open_ui (it holds the token)."""
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass
