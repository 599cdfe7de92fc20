"""Store logic written once for both drivers: plans.

A *plan* is a generator that yields the statements to run (:class:`Step`)
and receives each one's result; what it returns is the plan's result. A
:class:`PlanCall` says how to run it (a read or a write, in one transaction or
statement by statement). :meth:`Database.run <taskdb.store.database.Database.run>`
runs calls on the async engine and :meth:`Database.run_sync
<taskdb.store.database.Database.run_sync>` on the sync one (the synchronous
client of web apps), each with the reconnect policy. Which statements run, in
which order, and what their rows mean exists once, in the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import Result

T = TypeVar("T")

Fetch = Literal["all", "first", "scalar", "scalars", "none", "recorded"]


@dataclass(frozen=True, slots=True)
class Step:
    """One statement of a plan and what it sends back: every row (``all``), the
    first or ``None`` (``first``), the first column of the first row (``scalar``),
    the first column of every row (``scalars``), nothing (``none``), or the changed
    rows of a :class:`~taskdb.store.dialect.Recorded` write (``recorded``)."""

    stmt: Any
    values: Any = None
    fetch: Fetch = "all"


Plan = Generator[Step, Any, T]


@dataclass(frozen=True, slots=True)
class PlanCall(Generic[T]):
    """A plan to run: ``make`` builds a fresh generator (a retry starts over);
    ``write=False`` lets SQLite readers run beside the writer; ``atomic=False`` says
    every statement stands alone (see ``Database.transaction``); ``repeatable=False``
    says running it twice would apply it twice (an insert), so a lone statement
    whose connection died once sent is not run again (it may have committed)."""

    make: Callable[[], Plan[T]]
    write: bool = True
    atomic: bool = True
    repeatable: bool = True


class Drive(Generic[T]):
    """Steps through one run of a plan: :meth:`next` gives the next statement (``None``
    once the plan returned :attr:`value`); set :attr:`result` to what it sent back."""

    __slots__ = ("_plan", "result", "value")

    def __init__(self, call: PlanCall[T]) -> None:
        self._plan = call.make()
        self.result: Any = None
        self.value: T

    def next(self) -> Step | None:
        try:
            return self._plan.send(self.result)
        except StopIteration as done:
            self.value = done.value
            return None


def _scalars(result: Result[Any]) -> list[Any]:
    return list(result.scalars().all())


EXTRACT: dict[str, Callable[[Result[Any]], Any]] = {
    "all": lambda result: list(result.all()),
    "first": Result.first,
    "scalar": Result.scalar,
    "scalars": _scalars,
    "none": lambda _result: None,
}
"""How each :data:`Fetch` but ``recorded`` reads a statement's result."""
