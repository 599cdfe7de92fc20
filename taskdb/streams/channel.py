"""``Channel``: a bounded single-producer, single-consumer async pipe.

The producer's ``send`` only suspends when ``maxsize`` items are waiting (a
slow consumer slows the producer; memory stays bounded); the consumer takes
items in order until the producer closes the channel, and sees the
producer's failure raised if it ended with one. ``abandon`` (consumer side)
makes further sends no-ops, so a producer never blocks on a consumer that
went away. The fast path allocates no future: items sit in a deque and an
``asyncio.Event`` is only awaited when the consumer has drained it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Channel(Generic[T]):
    """Bounded, ordered, closable. Iterate it (once) to consume."""

    __slots__ = ("_abandoned", "_closed", "_error", "_items", "_maxsize", "_readable", "_writable")

    def __init__(self, maxsize: int = 64) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._closed = False
        self._abandoned = False
        self._error: BaseException | None = None

    async def send(self, item: T) -> None:
        """Append ``item``; waits while the channel is full."""
        if self._closed:
            raise RuntimeError("send on a closed channel")
        while len(self._items) >= self._maxsize and not self._abandoned:
            self._writable.clear()
            await self._writable.wait()
        if self._abandoned:
            return
        self._items.append(item)
        self._readable.set()

    def close(self, error: BaseException | None = None) -> None:
        """End the stream; the consumer raises ``error`` after the queued items."""
        if not self._closed:
            self._closed, self._error = True, error
            self._readable.set()

    def abandon(self) -> None:
        """The consumer stops reading: drop queued items, never block the producer again."""
        self._abandoned = True
        self._items.clear()
        self._writable.set()

    async def __aiter__(self) -> AsyncIterator[T]:
        items = self._items
        while True:
            while items:
                item = items.popleft()
                if len(items) < self._maxsize:
                    self._writable.set()
                yield item
            if self._closed:
                if self._error is not None:
                    raise self._error
                return
            self._readable.clear()
            await self._readable.wait()
