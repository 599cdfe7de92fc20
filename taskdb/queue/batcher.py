"""Group commit: many callers' writes go to the database in one statement."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Collects items while a flush is in flight and flushes them together.

    ``flush(items)`` returns one shared result that every submitter of the
    batch receives (or the exception it raised). No timer: under load batches
    grow by themselves; an idle system flushes a lone item at once.
    """

    def __init__(self, flush: Callable[[Sequence[Item]], Awaitable[Result]]) -> None:
        self._flush = flush
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._draining: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        """Items are waiting or being flushed."""
        return bool(self._pending) or (self._draining is not None and not self._draining.done())

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self._drain())
        # A cancelled submitter cancels only its own future: the item is still
        # flushed with its batch (no shield, which costs a task per item).
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                result = await self._flush([item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(result)

    async def drain(self) -> None:
        """Wait until everything submitted so far is flushed."""
        while self._draining is not None and not self._draining.done():
            await asyncio.shield(self._draining)
