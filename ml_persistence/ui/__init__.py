"""The local, read-only web UI (`ml-persistence ui`); needs the `ui` extra: pip install 'ml_persistence[ui]'."""

from __future__ import annotations

import os
import secrets
import socket
import sys
from typing import Optional, Sequence

from .. import storage
from ..errors import InvalidValueError
from ..protocol import is_loopback

LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
TOKEN_BYTES = 32  # a made token: 256 random bits, URL-safe


def missing_extra() -> Optional[str]:
    """Return a message naming what is missing when the `ui` extra is not installed, else None."""
    missing = []
    for module in ("starlette", "uvicorn"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if not missing:
        return None
    return (f"the web UI needs {', '.join(missing)}: install it with "
            "pip install 'ml_persistence[ui]'")


def bind(host: str, port: int) -> socket.socket:
    """Return a listening socket on host:port (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def serve(db_path: str, host: str, port: int, token: Optional[str] = None, open_browser: bool = False,
          no_token: bool = False, artifact_roots: Sequence[str] = ()) -> int:
    """Serve the UI until SIGINT/SIGTERM; a token is required on every address (one is made if none is given).

    ``no_token`` serves without one, on loopback only: then every local user can read the runs.
    """
    import uvicorn

    from .artifacts import ArtifactRoots
    from .browser import open_ui, remove_redirect
    from .server import create_app

    _Server = _server_class()

    storage.engine(db_path).reader(db_path, create=False).close()  # a clear error now rather than on every request
    loopback = is_loopback(host)
    if no_token and (token is not None or not loopback):
        raise InvalidValueError("--no-token is only allowed on a loopback address, without a token")
    if token is None and not no_token:
        token = secrets.token_urlsafe(TOKEN_BYTES)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
    hosts = (LOOPBACK_NAMES | {host}) if loopback else set()
    app = create_app(db_path, token=token, hosts=hosts, cookie=f"mlp_token_{bound}", artifact_roots=artifact_roots)
    print(f"ml-persistence ui: serving {storage.display(db_path)} (read-only) at {url}", flush=True)
    allowed = ArtifactRoots(db_path, artifact_roots).paths
    print("ml-persistence ui: artifact files are served only from inside: "
          + (", ".join(allowed) or "no directory (a PostgreSQL database has none of its own; pass --artifact-root)"),
          flush=True)
    broad = [root for root in allowed if root in (os.sep, os.path.realpath(os.path.expanduser("~")))]
    if broad:
        print(f"ml-persistence ui: warning: {', '.join(broad)} is an artifact root, so any file under it can be "
              "served to whoever has the token; keep the database in a directory of its own",
              file=sys.stderr, flush=True)
    if no_token:
        print("ml-persistence ui: warning: --no-token: every user of this machine can read the runs "
              "(and the artifacts above) at this URL", file=sys.stderr, flush=True)
    elif not loopback:
        print("ml-persistence ui: listening beyond this machine: the runs are readable by whoever has the "
              "URL above (its token)", file=sys.stderr, flush=True)
    opened = open_ui(url, bound, token is not None) if open_browser else None
    try:
        server = _Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
        server.run(sockets=[sock])
    finally:
        remove_redirect(opened)
    return 0


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, minus re-raising SIGINT/SIGTERM after its clean shutdown: exit status 0."""

        def handle_exit(self, sig: int, frame: object) -> None:
            super().handle_exit(sig, frame)  # type: ignore[arg-type]
            captured = getattr(self, "_captured_signals", None)
            if captured is not None:
                captured.clear()

    return Server
