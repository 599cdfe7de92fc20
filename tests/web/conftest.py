"""Fixtures of the dashboard tests: the ASGI app over a fresh database of each dialect,
an httpx client on it (in process), and a real uvicorn server for streaming."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

import taskdb
from taskdb.web import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def client_of(app: Any, **options: Any) -> httpx.AsyncClient:
    """An httpx client calling ``app`` in process (not for endless SSE responses: the
    ASGI transport collects a whole body)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", **options)


@pytest.fixture
async def app(db: taskdb.Database) -> AsyncIterator[Starlette]:
    app = create_app(db, poll_interval=0.05)
    yield app
    await app.state.dashboard.metrics.aclose()  # what the lifespan's end does
    await app.state.dashboard.broadcaster.aclose()


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(app) as c:
        yield c


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free loopback port in this loop; yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def live(app: Starlette) -> AsyncIterator[str]:
    async with serving(app) as url:
        yield url


async def sse_events(
    response: httpx.Response, count: int, predicate: Callable[[dict[str, str]], bool] = bool
) -> list[dict[str, str]]:
    """The next ``count`` SSE messages (``{"id", "event", "data"}``) of ``response``
    that satisfy ``predicate``; comments and ``retry:`` lines are skipped."""
    found: list[dict[str, str]] = []
    message: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in message and predicate(message):
                found.append(message)
                if len(found) == count:
                    return found
            message = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            message[field] = value.removeprefix(" ")
    raise AssertionError(f"the stream ended after {found}")
