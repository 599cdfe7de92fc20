"""Server-Sent Events: framing (pure) and a streaming response with keep-alives."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

from taskdb.json_views import dumps

KEEPALIVE_SECONDS = 15.0


def frame(data: object, *, event_id: str | None = None, event: str | None = None) -> str:
    """One SSE message: ``data`` as one line of JSON, with its id and event name."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append(f"data: {dumps(data)}")
    return "\n".join(lines) + "\n\n"


async def _with_keepalives(frames: AsyncIterator[str], every: float) -> AsyncIterator[str]:
    """``frames``, with a comment line whenever none came for ``every`` seconds (proxies
    drop silent connections); the next frame is awaited without ever cancelling it."""
    pending: asyncio.Task[str] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(frames))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield ": keep-alive\n\n"
                continue
            task, pending = pending, None
            try:
                yield task.result()
            except StopAsyncIteration:
                return
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()


def event_stream(
    frames: AsyncIterator[str], keepalive: float = KEEPALIVE_SECONDS
) -> StreamingResponse:
    """A ``text/event-stream`` response sending ``frames`` as they come."""
    return StreamingResponse(
        _with_keepalives(frames, keepalive),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
