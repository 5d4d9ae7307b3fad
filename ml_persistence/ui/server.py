"""The web UI's HTTP side: a Starlette app of JSON routes and static files over a read-only database."""

from __future__ import annotations

import hmac
import html
import os
from typing import Any, Callable, Optional, Sequence
from urllib.parse import quote

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import (FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response,
                                 StreamingResponse)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import storage
from ..errors import InvalidValueError, ReadError
from ..strictjson import json_safe
from . import data, params, queries, sweep
from .artifacts import ArtifactRoots

STATIC = os.path.join(os.path.dirname(__file__), "static")
TOKEN_COOKIE = "mlp_token"
SECURITY_HEADERS = {
    # Plotly sets inline styles; no inline or remote script is allowed anywhere.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",  # other sites cannot even embed an artifact image
}


# Plotly's "strict" bundle (npm: plotly.js-strict-dist-min 4.1.1, MIT, beside it with its LICENSE): the WebGL charts
# (parcoords) of the plotly package's own plotly.min.js compile shader code with new Function(), which the
# policy above refuses; the strict bundle carries that code precompiled. Same plotly.js version, otherwise alike.
PLOTLY_JS = os.path.join(STATIC, "plotly-strict.min.js")


class StrictJSON(JSONResponse):
    """JSON with NaN as null and ±inf as "Infinity"/"-Infinity" strings (never invalid JSON)."""

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(json_safe(content))


def _error(status: int, message: str) -> StrictJSON:
    return StrictJSON({"error": message}, status_code=status)


def _bad_request(request: Request, exc: Exception) -> Response:
    """The answer to a params.BadRequest raised by a route: a 400 with its message."""
    return _error(400, str(exc))


def _bad_filter(exc: InvalidValueError) -> StrictJSON:
    """A 400 for a filter or order the filter language refused: its message, where (``position``, 0-based, else
    null) and in which (``what``: "filter" or "order_by")."""
    position = getattr(exc, "position", None)
    return StrictJSON({"error": str(exc), "position": position if isinstance(position, int) else None,
                       "what": getattr(exc, "what", None)}, status_code=400)


def _selection(request: Request) -> data.Selection:
    """Return the runs a URL selects: filter=, order=, type=, status=, tag= (repeatable), q= (name contains)."""
    q = request.query_params
    experiment_type, status, name = (params.text(q.get(k), k) for k in ("type", "status", "q"))
    expression, order = (params.text(q.get(k), k, params.MAX_FILTER) for k in ("filter", "order"))
    return data.Selection(expression if expression and expression.strip() else None,
                          order if order and order.strip() else None,
                          experiment_type, status, params.tags(q.getlist("tag")), name)


_CONTINUE = ('<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={0}">'
             '<title>ml-persistence ui</title><p><a href="{0}">Continue to the ml-persistence UI</a></p>\n')


def _host_name(header: str) -> str:
    """Return the host of a Host header without its port: 'a.b:80' -> 'a.b', '[::1]:80' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard(BaseHTTPMiddleware):
    """Token check (when the server has a token), Host check against DNS rebinding, security headers."""

    def __init__(self, app: Any, token: Optional[str], hosts: set[str], cookie: str) -> None:
        super().__init__(app)
        self.token = token
        self.hosts = hosts
        self.cookie = cookie

    async def dispatch(self, request: Request, call_next: Callable) -> Response:
        if self.hosts and _host_name(request.headers.get("host", "")) not in self.hosts:
            return self._secured(_error(400, "unexpected Host header"))
        if self.token is not None:
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
                # The token moves from the URL into a cookie, and out of the address bar.
                rest = request.url.remove_query_params("token")
                location = rest.path + (f"?{rest.query}" if rest.query else "")  # relative: no Host trusted
                response: Response = RedirectResponse(location, status_code=303)
                if request.headers.get("sec-fetch-site") == "cross-site":
                    # Opened from another site or a file (--open's page): a SameSite=Strict cookie would
                    # not go with the redirect, so the browser moves on from a page of ours instead.
                    response = HTMLResponse(_CONTINUE.format(html.escape(location, quote=True)))
                response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict")
                return self._secured(response)
            header = request.headers.get("authorization", "")
            presented = request.cookies.get(self.cookie) or (header[7:] if header.startswith("Bearer ") else "")
            if not hmac.compare_digest(presented.encode(), self.token.encode()):
                return self._secured(_error(401, "a token is required: open the URL the server printed"))
        return self._secured(await call_next(request))

    @staticmethod
    def _secured(response: Response) -> Response:
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response


def create_app(db_path: str, token: Optional[str] = None, hosts: Optional[set[str]] = None,
               cookie: str = TOKEN_COOKIE, artifact_roots: Sequence[str] = ()) -> Starlette:
    """Build the app for ``db_path`` (a file or a postgresql:// URL); ``token`` protects every route; ``hosts`` are
    the accepted Host names.

    Artifacts are served only from inside the database's directory and ``artifact_roots``.
    Cookies ignore ports: give each server on a host its own ``cookie`` name.
    """

    cache = data.SeriesCache()
    roots = ArtifactRoots(db_path, artifact_roots)

    engine = storage.engine(db_path)

    def read(work: Callable[[Any], Any]) -> Any:
        # A connection per request: a reader is not thread-safe, and the routes run in a thread pool.
        try:
            reader = engine.reader(db_path, create=False)
            try:
                return work(reader)
            finally:
                reader.close()
        except ReadError as exc:
            return _error(503, storage.redact(exc))
        except InvalidValueError as exc:  # the filter language's FilterError among them
            return _bad_filter(exc)
        except storage.database_errors() as exc:
            return _error(503, storage.redact(engine.describe(exc, storage.display(db_path)) or exc))

    def index(request: Request) -> Response:
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    def list_experiments(request: Request) -> Response:
        selection = _selection(request)
        return read(lambda reader: StrictJSON(data.experiments(reader, selection)))

    def experiment(request: Request) -> Response:
        exp_id = params.row_id(request.path_params["experiment_id"])
        if exp_id is None:
            return _error(404, "no such experiment")

        def work(reader: Any) -> Response:
            found = data.run(reader, exp_id, roots)
            return StrictJSON(found) if found is not None else _error(404, f"no experiment {exp_id}")

        return read(work)

    def metric(request: Request) -> Response:
        exp_id = params.row_id(request.path_params["experiment_id"])
        name = request.query_params.get("name")
        axis = request.query_params.get("x", "step")
        if not name or axis not in data.AXES:
            return _error(400, f"name and x ({', '.join(data.AXES)}) are required")
        points = params.points(request.query_params.get("points"))
        if exp_id is None:
            return _error(404, "no such experiment")

        def work(reader: Any) -> Response:
            if not reader.experiment_exists(exp_id):
                return _error(404, f"no experiment {exp_id}")
            return StrictJSON(cache.get(reader, (exp_id, name, axis, points), exp_id, name, axis, points))

        return read(work)

    def compare(request: Request) -> Response:
        ids = params.ids(request.query_params.get("ids"))
        if None in ids:
            return _error(404, "no such experiment")

        def work(reader: Any) -> Response:
            found = data.compare(reader, ids)
            return StrictJSON(found) if found is not None else _error(404, "no such experiment")

        return read(work)

    def sweep_runs(request: Request) -> Response:
        selection = _selection(request)
        q = request.query_params
        given = params.ids(q.get("ids"), sweep.MAX_SWEPT, "swept") if q.get("ids") else None
        metric = params.text(q.get("metric"), "metric")
        aggregate = params.choice(q.get("agg"), "agg", tuple(queries.AGGREGATES))

        def work(reader: Any) -> Response:
            runs = selection.runs(reader)
            missing: list[Any] = []
            if given is not None:
                found = {e["id"] for e in runs}
                runs = [e for e in runs if e["id"] in given]
                missing = [i for i in given if i is not None and i not in found]
            out = sweep.sweep(reader, runs, metric, aggregate)
            out.update(total=len(runs), truncated=len(runs) > sweep.MAX_SWEPT, missing=missing)
            return StrictJSON(out)

        return read(work)

    def artifact(request: Request) -> Response:
        exp_id, art_id = (params.row_id(request.path_params[k]) for k in ("experiment_id", "artifact_id"))
        missing = _error(404, "no such artifact file for this experiment, or outside the served directories")
        if exp_id is None or art_id is None:
            return missing
        registered = read(lambda reader: data.artifact_path(reader, exp_id, art_id))
        if isinstance(registered, Response):
            return registered
        opened = roots.open(registered)
        if opened is None:
            return missing
        media_type, inline = opened.media()
        response = StreamingResponse(opened.chunks(), media_type=media_type)
        response.headers["Content-Length"] = str(opened.info.st_size)
        response.headers["Content-Disposition"] = _disposition("inline" if inline else "attachment", opened.name)
        response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'; img-src 'self'"
        return response

    def plotly(request: Request) -> Response:
        return FileResponse(PLOTLY_JS, media_type="text/javascript")

    def no_icon(request: Request) -> Response:
        # A browser asks for one on pages without <link rel="icon"> (an error page): no content, not a 404.
        return Response(status_code=204)

    routes = [
        Route("/", index),
        Route("/api/experiments", list_experiments),
        Route("/api/experiments/{experiment_id}", experiment),
        Route("/api/experiments/{experiment_id}/metric", metric),
        Route("/api/experiments/{experiment_id}/artifacts/{artifact_id}", artifact),
        Route("/api/compare", compare),
        Route("/api/sweep", sweep_runs),
        Route("/static/plotly.min.js", plotly),
        Route("/favicon.ico", no_icon),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    middleware = [Middleware(Guard, token=token, hosts=hosts or set(), cookie=cookie)]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={params.BadRequest: _bad_request})
    app.state.series_cache = cache  # its hits and misses show whether clients share curves
    return app


def _disposition(kind: str, filename: str) -> str:
    """Return a Content-Disposition header for ``filename`` (RFC 5987 form when it is not plain ASCII)."""
    quoted = quote(filename)
    return f'{kind}; filename="{filename}"' if quoted == filename else f"{kind}; filename*=utf-8''{quoted}"
