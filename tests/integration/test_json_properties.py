"""Property (hypothesis): any JSON-able payload round-trips submit -> worker ->
output exactly, or is refused with InvalidJobInput, on SQLite and PostgreSQL
alike. One server per dialect serves every example (no process per example).

Examples: ``TASKDB_HYPOTHESIS_EXAMPLES`` (profile in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taskdb
from taskdb import InvalidJobInput, JobContext, JobError, JobQueueClient, JobQueueServer
from taskdb.core.jobs import MAX_JSON_DEPTH
from tests.integration.conftest import FAST

pytestmark = pytest.mark.timeout(600)


def nested(depth: int, leaf: Any = "bottom") -> Any:
    value: Any = leaf
    for _ in range(depth):
        value = [value]
    return value


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values and of the same types: ``1`` is not ``1.0`` nor ``True``,
    ``-0.0`` is not ``0.0`` (iterative: values nest hundreds deep)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, float):
            if x != y or math.copysign(1, x) != math.copysign(1, y):
                return False
        elif isinstance(x, dict):
            if x.keys() != y.keys():
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif x != y:
            return False
    return True


special_text = st.sampled_from(
    ["", "\x00", "a\x00b", "\ud800", "\udfff", "\ud83d", "x\ude00y", "😀", "\u2028", "\\u0000", "é"]
)
texts = st.text(st.characters(exclude_categories=())) | special_text
numbers = (
    st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**100, -(10**100)])
    | st.floats()
    | st.sampled_from([-0.0, 0.0, 1.0, 1e16, 1e22, 1e308, 5e-324, 2.0**53 + 2, 1.5e-7, 0.1])
)
scalars = st.none() | st.booleans() | numbers | texts
nested_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4),
    max_leaves=16,
)
# a bare number as the whole payload included: SQLite's JSON columns are TEXT (0012)
values = nested_values | numbers
# nesting around the documented limit, built in the test (hypothesis would print it)
depths = st.integers(MAX_JSON_DEPTH - 3, MAX_JSON_DEPTH + 2)


@dataclass
class Side:
    db: taskdb.Database
    client: JobQueueClient
    server: JobQueueServer

    async def outcome(self, value: Any) -> tuple[str, Any]:
        """``("refused", message)``, ``("ok", output)`` or ``("failed", code)``."""
        try:
            handle = await self.client.submit(value)
        except InvalidJobInput as exc:
            return "refused", str(exc)
        try:
            return "ok", await handle.wait(timeout=30)
        except JobError as exc:
            return "failed", exc.error_code


async def _echo(value: Any, ctx: JobContext) -> Any:
    return value


async def _open(url: str) -> Side:
    db = taskdb.connect(url)
    server = JobQueueServer(db, "q", _echo, **FAST)
    await server.start()
    return Side(db, JobQueueClient(db, "q", poll_interval=0.01), server)


async def _close(sides: list[Side]) -> None:
    for side in sides:
        await side.server.stop(timeout=5)
        await side.db.aclose()


@pytest.fixture
def sides(fresh_sqlite_url: str, fresh_pg_url: str) -> Iterator[tuple[asyncio.Runner, list[Side]]]:
    """A running echo server per dialect on one event loop, kept across examples."""
    with asyncio.Runner() as runner:
        opened = [runner.run(_open(url)) for url in (fresh_sqlite_url, fresh_pg_url)]
        try:
            yield runner, opened
        finally:
            runner.run(_close(opened))


def test_any_json_round_trips_exactly_or_is_refused_on_both_dialects(
    sides: tuple[asyncio.Runner, list[Side]],
) -> None:
    runner, (lite, pg) = sides

    async def both(value: Any) -> list[tuple[str, Any]]:
        return list(await asyncio.gather(lite.outcome(value), pg.outcome(value)))

    @settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(values, st.none() | depths)
    def check(value: Any, depth: int | None) -> None:
        if depth is not None:  # value at the bottom of depth lists
            value = nested(depth, value)
        found = runner.run(both(value))
        (kind_lite, got_lite), (kind_pg, got_pg) = found
        assert kind_lite == kind_pg, found
        if kind_lite == "ok":
            assert same(got_lite, value), got_lite
            assert same(got_pg, value), got_pg
        else:
            assert kind_lite == "refused", found

    check()
