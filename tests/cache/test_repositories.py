"""The TaskOutputRepository contract, run over every implementation.

Memory (streaming and not), SQL on SQLite and PostgreSQL, and a
RunPrivateCacheRepo over each of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

import taskdb
from taskdb import Blob, ConfigurationError, InvalidJobInput
from taskdb.cache import (
    CacheRef,
    MemoryTaskOutputRepository,
    RunPrivateCacheRepo,
    SqlTaskOutputRepository,
    TaskOutputRepository,
    make_cache_ref,
)
from taskdb.errors import InvalidCacheRef
from tests.helpers import FakeClock

BACKINGS = ["memory", "memory-nostream", "sql-sqlite", "sql-postgresql"]
CAPABILITIES = ("save_output_stream", "get_output_by_ref", "get_output_stream_by_ref")


@dataclass
class Setup:
    backing: TaskOutputRepository
    repo: TaskOutputRepository  # the backing itself, or a run-private view of it
    clock: FakeClock


@pytest.fixture(params=BACKINGS)
def backing_url(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """The kind of backing and its database URL (resolved outside the event loop)."""
    kind: str = request.param
    if kind.startswith("memory"):
        return kind, None
    fixture = "fresh_sqlite_url" if kind == "sql-sqlite" else "fresh_pg_url"
    url: str = request.getfixturevalue(fixture)
    return kind, url


@pytest.fixture
async def backing(
    backing_url: tuple[str, str | None],
) -> AsyncIterator[tuple[TaskOutputRepository, FakeClock]]:
    clock = FakeClock()
    kind, url = backing_url
    if url is None:
        yield MemoryTaskOutputRepository(streaming=kind == "memory", clock=clock), clock
        return
    db = taskdb.connect(url)
    yield SqlTaskOutputRepository(db, clock=clock), clock
    await db.aclose()


@pytest.fixture(params=["direct", "run-private"])
def setup(request: pytest.FixtureRequest, backing: tuple[TaskOutputRepository, FakeClock]) -> Setup:
    repo, clock = backing
    view = repo if request.param == "direct" else RunPrivateCacheRepo(repo, "run-1")
    return Setup(repo, view, clock)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def save_stream(
    repo: TaskOutputRepository, *parts: bytes, mime: str | None = None
) -> CacheRef:
    assert repo.save_output_stream is not None
    return await repo.save_output_stream("img", {"n": 1}, "out", chunks(*parts), mime=mime)


def streams(repo: TaskOutputRepository) -> bool:
    return repo.save_output_stream is not None


# -- the contract ---------------------------------------------------------------------------


async def test_save_get_and_replace(setup: Setup) -> None:
    repo = setup.repo
    assert await repo.get_output("t", {"a": 1}) is None
    await repo.save_output("t", {"a": 1, "b": [1, 2]}, {"text": "one", "n": 1})
    assert await repo.get_output("t", {"b": [1, 2], "a": 1}) == {"text": "one", "n": 1}
    assert await repo.get_output("other", {"a": 1, "b": [1, 2]}) is None
    await repo.save_output("t", {"a": 1, "b": [1, 2]}, {"text": "two"})
    assert await repo.get_output("t", {"a": 1, "b": [1, 2]}) == {"text": "two"}
    assert await repo.size() == 1


async def test_size_and_clear(setup: Setup) -> None:
    repo = setup.repo
    for i in range(3):
        await repo.save_output("t", {"i": i}, {"i": i})
    assert await repo.size() == 3
    assert await repo.clear() == 3
    assert await repo.size() == 0
    assert await repo.get_output("t", {"i": 0}) is None


async def test_clear_older_than(setup: Setup) -> None:
    repo, clock = setup.repo, setup.clock
    await repo.save_output("t", {"age": "old"}, {"v": 1})
    clock.advance(100)
    await repo.save_output("t", {"age": "new"}, {"v": 2})
    assert await repo.clear_older_than(50) == 1
    assert await repo.get_output("t", {"age": "old"}) is None
    assert await repo.get_output("t", {"age": "new"}) == {"v": 2}
    assert await repo.clear_older_than(0) == 0  # saved this very instant: not older
    clock.advance(1)
    assert await repo.clear_older_than(0) == 1


async def test_bad_arguments(setup: Setup) -> None:
    repo = setup.repo
    with pytest.raises(InvalidJobInput):
        await repo.save_output("", {}, {"v": 1})
    with pytest.raises(InvalidJobInput):
        await repo.save_output("t", {}, ["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(InvalidJobInput):
        await repo.get_output("t", {"not json": object()})
    with pytest.raises(ConfigurationError):
        await repo.clear_older_than(-1)


async def test_streaming_capabilities(setup: Setup) -> None:
    repo = setup.repo
    assert repo.supports_streaming() is streams(setup.backing)
    if not streams(setup.backing):
        assert all(getattr(repo, name) is None for name in CAPABILITIES)
        return
    assert repo.get_output_by_ref is not None and repo.get_output_stream_by_ref is not None
    ref = await save_stream(repo, b"abc", b"", b"defg", mime="image/png")
    assert (ref["size"], ref["mime"], ref["port"]) == (7, "image/png", "out")
    assert await repo.get_output_by_ref(ref) == Blob(b"abcdefg", mime="image/png")
    stream = await repo.get_output_stream_by_ref(ref)
    assert stream is not None and b"".join([c async for c in stream]) == b"abcdefg"
    empty = await save_stream(repo)
    assert await repo.get_output_by_ref(empty) == Blob(b"")

    dangling = make_cache_ref("no-such-blob")
    assert await repo.get_output_by_ref(dangling) is None
    assert await repo.get_output_stream_by_ref(dangling) is None
    with pytest.raises(InvalidCacheRef):
        await repo.get_output_by_ref({"$ref": "x"})  # type: ignore[typeddict-item]


async def test_a_failing_or_malformed_stream_raises(setup: Setup) -> None:
    repo = setup.repo
    if not streams(repo):
        pytest.skip("not a streaming repository")

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("producer failed")

    assert repo.save_output_stream is not None
    with pytest.raises(RuntimeError, match="producer failed"):
        await repo.save_output_stream("img", {}, "out", broken())

    async def not_bytes() -> AsyncIterator[bytes]:
        yield "text"  # type: ignore[misc]

    with pytest.raises(InvalidJobInput, match="must be bytes"):
        await repo.save_output_stream("img", {}, "out", not_bytes())


async def test_blobs_live_as_long_as_an_entry_refers_to_them(setup: Setup) -> None:
    repo = setup.repo
    if not streams(repo):
        pytest.skip("not a streaming repository")
    assert repo.get_output_by_ref is not None
    shared = await save_stream(repo, b"shared")
    first = await save_stream(repo, b"first")
    await repo.save_output("t", {"k": 1}, {"a": first, "s": shared})
    await repo.save_output("t", {"k": 2}, {"s": [shared]})
    replacement = await save_stream(repo, b"second")
    await repo.save_output("t", {"k": 1}, {"a": replacement, "s": shared})
    assert await repo.get_output_by_ref(first) is None  # only the replaced output held it
    assert await repo.get_output_by_ref(shared) == Blob(b"shared")
    setup.clock.advance(1)
    assert await repo.clear_older_than(0) == 2
    assert await repo.get_output_by_ref(shared) is None
    assert await repo.get_output_by_ref(replacement) is None


# -- RunPrivateCacheRepo --------------------------------------------------------------------


async def test_capabilities_are_mirrored(backing: tuple[TaskOutputRepository, FakeClock]) -> None:
    repo, _ = backing
    wrapper = RunPrivateCacheRepo(repo, "run-1")
    for name in CAPABILITIES:
        assert (getattr(wrapper, name) is None) == (getattr(repo, name) is None), name
    assert wrapper.supports_streaming() is repo.supports_streaming()

    partial = MemoryTaskOutputRepository()
    partial.get_output_stream_by_ref = None
    wrapped = RunPrivateCacheRepo(partial, "run-1")
    assert wrapped.get_output_stream_by_ref is None
    assert callable(wrapped.save_output_stream) and callable(wrapped.get_output_by_ref)


async def test_runs_are_isolated(backing: tuple[TaskOutputRepository, FakeClock]) -> None:
    shared, _ = backing
    run_a, run_b = RunPrivateCacheRepo(shared, "run-a"), RunPrivateCacheRepo(shared, "run-b")
    await run_a.save_output("t", {"x": 1}, {"who": "a"})
    await shared.save_output("t", {"x": 1}, {"who": "shared"})
    await run_b.save_output("t", {"x": 2}, {"who": "b"})

    assert await run_a.get_output("t", {"x": 1}) == {"who": "a"}
    assert await run_b.get_output("t", {"x": 1}) is None
    assert await shared.get_output("t", {"x": 1}) == {"who": "shared"}
    assert await shared.get_output("t", {"x": 2}) is None
    assert (await run_a.size(), await run_b.size(), await shared.size()) == (1, 1, 1)

    assert await run_a.clear() == 1
    assert await run_a.size() == 0
    assert await run_b.get_output("t", {"x": 2}) == {"who": "b"}
    assert await shared.get_output("t", {"x": 1}) == {"who": "shared"}
    # the same run id sees the same entries again
    assert await RunPrivateCacheRepo(shared, "run-b").get_output("t", {"x": 2}) == {"who": "b"}


async def test_a_run_private_ref_reads_through_the_shared_repo(
    backing: tuple[TaskOutputRepository, FakeClock],
) -> None:
    shared, _ = backing
    if not streams(shared):
        pytest.skip("not a streaming repository")
    private = RunPrivateCacheRepo(shared, "run-a")
    ref = await save_stream(private, b"bytes")
    await private.save_output("t", {}, {"out": ref})
    assert shared.get_output_by_ref is not None
    assert await shared.get_output_by_ref(ref) == Blob(b"bytes")


def test_run_ids_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        RunPrivateCacheRepo(MemoryTaskOutputRepository(), "")
    with pytest.raises(ConfigurationError):
        RunPrivateCacheRepo(MemoryTaskOutputRepository(), "x" * 201)


# -- a backing that keeps no namespaces, or lacks optional attributes ----------------------


class Minimal(SqlTaskOutputRepository):
    """The real SQL repository with some attributes hidden (``getattr`` finds nothing):
    the smallest repository SPEC §4 allows."""

    def __init__(self, db: taskdb.Database, hidden: frozenset[str]) -> None:
        self.hidden = hidden
        super().__init__(db)

    def __getattribute__(self, name: str) -> Any:
        if name != "hidden" and name in object.__getattribute__(self, "hidden"):
            raise AttributeError(name)
        return super().__getattribute__(name)


async def test_a_backing_without_namespaces_is_namespaced_by_the_wrapper(
    db: taskdb.Database,
) -> None:
    shared = Minimal(db, frozenset({"with_namespace"}))
    assert not hasattr(shared, "with_namespace")
    run_a, run_b = RunPrivateCacheRepo(shared, "run-a"), RunPrivateCacheRepo(shared, "run-b")
    await run_a.save_output("t", {"x": 1}, {"who": "a"})
    await shared.save_output("t", {"x": 1}, {"who": "shared"})
    await run_b.save_output("t", {"x": 2}, {"who": "b"})
    assert await run_a.get_output("t", {"x": 1}) == {"who": "a"}
    assert await run_b.get_output("t", {"x": 1}) is None
    assert await shared.get_output("t", {"x": 1}) == {"who": "shared"}
    assert await shared.get_output("t", {"x": 2}) is None
    assert (await run_a.size(), await run_b.size(), await shared.size()) == (1, 1, 3)
    # the same run id sees the same entries again (a graph resumed elsewhere)
    assert await RunPrivateCacheRepo(shared, "run-b").get_output("t", {"x": 2}) == {"who": "b"}
    nested = run_a.with_namespace("inner")
    await nested.save_output("t", {"x": 1}, {"who": "inner"})
    assert await run_a.get_output("t", {"x": 1}) == {"who": "a"}
    assert await nested.get_output("t", {"x": 1}) == {"who": "inner"}
    # clearing one run's entries would take every entry of such a backing
    with pytest.raises(ConfigurationError, match="keeps no namespaces"):
        await run_a.clear()
    with pytest.raises(ConfigurationError, match="keeps no namespaces"):
        await run_a.clear_older_than(0)

    for name in CAPABILITIES:  # the backing streams: so does the wrapper
        assert callable(getattr(run_a, name)), name
    assert run_a.supports_streaming()
    ref = await save_stream(run_a, b"private bytes")
    await run_a.save_output("t", {"x": 3}, {"out": ref})
    assert run_a.get_output_by_ref is not None
    assert await run_a.get_output_by_ref(ref) == Blob(b"private bytes")
    assert await run_b.get_output("t", {"x": 3}) is None


@pytest.mark.parametrize("with_namespace", [True, False])
async def test_missing_capabilities_are_none_on_the_wrapper(
    db: taskdb.Database, with_namespace: bool
) -> None:
    hidden = frozenset(CAPABILITIES) | (frozenset() if with_namespace else {"with_namespace"})
    backing = Minimal(db, hidden)
    wrapper = RunPrivateCacheRepo(backing, "run-1")
    for name in CAPABILITIES:
        assert getattr(wrapper, name) is None, name
    assert not backing.supports_streaming() and not wrapper.supports_streaming()
    await wrapper.save_output("t", {}, {"n": 1})
    assert await wrapper.get_output("t", {}) == {"n": 1}
    assert await backing.get_output("t", {}) is None
    assert await wrapper.size() == 1
