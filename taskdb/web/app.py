"""``create_app``: the dashboard as one Starlette ASGI app (pages, ``/api``, ``/metrics``).

It can be served alone (``taskdb dashboard``, uvicorn) or mounted inside a
FastAPI/Starlette service (``app.mount("/taskdb", create_app(db))``: every
link honours the mount's ``root_path``). Requests pass :class:`_Guard` first
(token, ``Origin``, read-only; see :mod:`taskdb.web.security`); every error
becomes a short page or ``{"error": ...}`` with its status (400 bad input,
404 unknown id, 503 database unavailable) and never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from taskdb.admin import Admin
from taskdb.errors import (
    ConfigurationError,
    InvalidJobInput,
    JobNotFound,
    ScheduleNotFound,
    StorageError,
    TaskdbError,
)
from taskdb.store import Database
from taskdb.web import api, pages
from taskdb.web.broadcast import Broadcaster
from taskdb.web.context import Dashboard, wants_json
from taskdb.web.metrics import DashboardMetrics
from taskdb.web.security import authorized, same_origin

log = logging.getLogger("taskdb.web")

_PACKAGE = files("taskdb.web")
_OPEN = ("/login", "/static/")  # reachable without the token


class _Guard:
    """Token, ``Origin`` and read-only checks in front of every route."""

    def __init__(self, app: ASGIApp, token: str | None, read_only: bool) -> None:
        self.app = app
        self.token = token
        self.read_only = read_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = scope["path"][len(scope.get("root_path", "")) :] or "/"
        refusal = self._refusal(request, path)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, request: Request, path: str) -> Response | None:
        headers, method = request.headers, request.method
        if method not in ("GET", "HEAD", "POST"):
            return _error(path, 405, f"method {method} not allowed")
        if method == "POST" and not same_origin(headers):
            return _error(path, 403, "cross-origin request refused")
        if path.startswith(_OPEN):
            return None
        if not authorized(self.token, headers, request.cookies):
            if wants_json(path):
                return _error(path, 401, "a token is required (Authorization: Bearer ...)")
            root = request.scope.get("root_path", "")
            return RedirectResponse(f"{root}/login?next={quote(root + path)}", status_code=303)
        if method == "POST" and self.read_only:
            return _error(path, 403, "this dashboard is read-only")
        return None


def _error(path: str, status: int, message: str) -> Response:
    if wants_json(path):
        return JSONResponse({"error": message}, status_code=status)
    return PlainTextResponse(f"{status}: {message}", status_code=status)


def _status_of(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    if isinstance(exc, JobNotFound | ScheduleNotFound):
        return 404, str(exc)
    if isinstance(exc, ConfigurationError | InvalidJobInput):
        return 400, str(exc)
    if isinstance(exc, StorageError):
        return 503, str(exc)  # messages carry the URL without its password (safe_url)
    if isinstance(exc, TaskdbError):
        return 500, str(exc)
    return 500, "internal error (see the dashboard's log)"


async def _on_error(request: Request, exc: Exception) -> Response:
    status, message = _status_of(exc)
    if status >= 500:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    path = request.url.path[len(request.scope.get("root_path", "")) :]
    if wants_json(path):
        return JSONResponse({"error": message}, status_code=status)
    return pages.error_page(request, status, message)


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(_PACKAGE / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        auto_reload=False,
    )
    pages.register_filters(env)
    return env


def create_app(
    db: Database,
    *,
    token: str | None = None,
    read_only: bool = False,
    poll_interval: float = 0.5,
) -> Starlette:
    """The dashboard over ``db``: pages, the JSON API under ``/api``, SSE, blob
    downloads and ``/metrics``. With ``token``, every request must carry it
    (bearer header or the login form's cookie); ``read_only`` refuses every action.
    ``poll_interval``: seconds between the change-feed reads that feed every
    connected browser (one read for all of them)."""
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ConfigurationError("the dashboard token must be a non-empty string")
    admin = Admin(db)
    broadcaster = Broadcaster(admin, poll_interval=poll_interval)
    routes = [
        *pages.routes(),
        *api.routes(),
        Route("/metrics", api.metrics, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(_PACKAGE / "static")), name="static"),
    ]
    handlers: dict[Any, Any] = {
        TaskdbError: _on_error,
        HTTPException: _on_error,
        Exception: _on_error,  # answered by ServerErrorMiddleware, which logs and re-raises
    }

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await app.state.dashboard.metrics.aclose()
        await broadcaster.aclose()

    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.dashboard = Dashboard(
        admin=admin,
        broadcaster=broadcaster,
        templates=_templates(),
        metrics=DashboardMetrics(admin),
        token=token,
        read_only=read_only,
    )
    app.add_middleware(_Guard, token=token, read_only=read_only)
    return app
