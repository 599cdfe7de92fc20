"""CacheRef, the ref walkers and input fingerprints (pure: no database)."""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict, defaultdict, namedtuple
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pytest

from taskdb import Blob, ConfigurationError, InvalidJobInput
from taskdb.cache import (
    CACHE_REF_KIND,
    CacheRef,
    MemoryTaskOutputRepository,
    inputs_fingerprint,
    is_cache_ref,
    iter_cache_refs,
    make_cache_ref,
    resolve_job_output,
    resolve_output,
)
from taskdb.core.jobs import input_digest
from taskdb.core.refs import ref_key
from taskdb.errors import InvalidCacheRef


def ref(key: str, **hints: Any) -> CacheRef:
    return make_cache_ref(key, **hints)


class Recorder:
    """A resolver that records its calls and gives ``<key>!`` (``None`` for 'gone')."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, r: CacheRef) -> object:
        self.calls.append(r["$ref"])
        return None if r["$ref"] == "gone" else f"{r['$ref']}!"


# -- refs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"kind": CACHE_REF_KIND, "$ref": "k"}, True),
        ({"kind": CACHE_REF_KIND, "$ref": "k", "size": 3, "mime": "a/b", "port": "p"}, True),
        ({"$ref": "#/defs/x"}, False),  # a JSON-Schema ref is user data
        ({"kind": "other", "$ref": "k"}, False),
        ({"kind": CACHE_REF_KIND}, False),
        ({"kind": CACHE_REF_KIND, "$ref": 5}, False),
        ([CACHE_REF_KIND, "k"], False),
        ("k", False),
        (None, False),
    ],
)
def test_is_cache_ref(value: object, expected: bool) -> None:
    assert is_cache_ref(value) is expected


def test_make_cache_ref_leaves_out_missing_hints() -> None:
    assert make_cache_ref("k") == {"kind": CACHE_REF_KIND, "$ref": "k"}
    full = make_cache_ref("k", size=3, mime="image/png", port="img")
    assert full == {
        "kind": CACHE_REF_KIND,
        "$ref": "k",
        "size": 3,
        "mime": "image/png",
        "port": "img",
    }
    with pytest.raises(InvalidCacheRef):
        make_cache_ref("")
    with pytest.raises(InvalidCacheRef):
        make_cache_ref("k", size=-1)
    with pytest.raises(InvalidCacheRef, match="not a CacheRef"):
        ref_key({"$ref": "k"})


def test_iter_cache_refs_finds_every_ref_and_survives_cycles() -> None:
    loop: dict[str, Any] = {"a": ref("1"), "items": [{"b": ref("2")}, ({"$ref": "#/x"},)]}
    loop["self"] = loop
    assert sorted(r["$ref"] for r in iter_cache_refs(loop)) == ["1", "2"]
    assert [r["$ref"] for r in iter_cache_refs(ref("root"))] == ["root"]
    assert list(iter_cache_refs({"plain": 1})) == []


# -- resolve_output ------------------------------------------------------------------------


async def test_nothing_to_resolve_returns_the_same_object() -> None:
    value = {"a": [1, {"$ref": "#/defs/x"}], "b": (b"x", {"c": "d"})}
    resolver = Recorder()
    assert await resolve_output(value, resolver) is value
    assert resolver.calls == []
    only_filtered = {"a": ref("1")}
    assert await resolve_output(only_filtered, resolver, filter=lambda r: False) is only_filtered


async def test_resolves_nested_containers_and_shares_untouched_parts() -> None:
    untouched = {"deep": [1, 2, 3]}
    value = {
        "list": [ref("1"), 2],
        "tuple": (ref("2"), "x"),
        "set": {1, 2},
        "frozen": frozenset({"a"}),
        "untouched": untouched,
        "nested": {"list": [{"r": ref("3")}]},
    }
    out = await resolve_output(value, Recorder())
    assert out == {
        "list": ["1!", 2],
        "tuple": ("2!", "x"),
        "set": {1, 2},
        "frozen": frozenset({"a"}),
        "untouched": untouched,
        "nested": {"list": [{"r": "3!"}]},
    }
    assert out["untouched"] is untouched and out["set"] is value["set"]
    assert value["list"][0] == ref("1")  # the input is not modified


class Tag:
    """Hashable by identity, so it can sit in a set while holding a ref."""

    def __init__(self, payload: object) -> None:
        self.payload = payload


async def test_sets_and_frozensets_are_walked() -> None:
    value = {"s": {Tag(ref("1"))}, "f": frozenset({Tag(ref("2"))})}
    out = await resolve_output(value, Recorder())
    assert type(out["s"]) is set and type(out["f"]) is frozenset
    assert [t.payload for t in out["s"]] == ["1!"]
    assert [t.payload for t in out["f"]] == ["2!"]


async def test_map_like_objects_keep_their_class() -> None:
    ordered = OrderedDict([("z", ref("1")), ("a", 2)])
    default: defaultdict[str, list[object]] = defaultdict(list, {"x": [ref("2")]})
    out = await resolve_output({"o": ordered, "d": default}, Recorder())
    assert type(out["o"]) is OrderedDict and list(out["o"].items()) == [("z", "1!"), ("a", 2)]
    assert type(out["d"]) is defaultdict and out["d"]["x"] == ["2!"]
    assert out["d"]["missing"] == []  # the default_factory survived


@dataclass(frozen=True, slots=True)
class Frozen:
    image: object
    label: str = "x"


@dataclass
class Record:
    items: list[object] = field(default_factory=list)


class Plain:
    made = 0

    def __init__(self, data: object) -> None:
        Plain.made += 1
        self.data = data
        self.note = "kept"


class Slotted:
    __slots__ = ("__private", "value")

    def __init__(self, value: object) -> None:
        self.value = value
        self.__private = ref("p")

    @property
    def private(self) -> object:
        return self.__private


Point = namedtuple("Point", ["x", "y"])


async def test_class_instances_are_cloned_with_their_class_intact() -> None:
    value = [
        Frozen(ref("1")),
        Record([ref("2")]),
        Plain(ref("3")),
        Slotted(ref("4")),
        Point(ref("5"), 0),
        ValueError("kept as it is"),
    ]
    made = Plain.made
    out = await resolve_output(value, Recorder())
    frozen, record, plain, slotted, point, error = out
    assert type(frozen) is Frozen and frozen == Frozen("1!")
    assert type(record) is Record and record.items == ["2!"]
    assert type(plain) is Plain and (plain.data, plain.note) == ("3!", "kept")
    assert Plain.made == made  # cloned, not constructed again
    assert type(slotted) is Slotted and (slotted.value, slotted.private) == ("4!", "p!")
    assert type(point) is Point and point == Point("5!", 0)
    assert error is value[5]
    assert value[2].data == ref("3")  # originals untouched


async def test_opaque_leaves_are_left_alone() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()
    leaves = [
        b"bytes",
        bytearray(b"ba"),
        memoryview(b"mv"),
        Blob(b"blob"),
        datetime(2026, 1, 1, tzinfo=UTC),
        date(2026, 1, 1),
        re.compile("x"),
        future,
    ]
    value = {"leaves": leaves, "r": ref("1")}
    out = await resolve_output(value, Recorder())
    assert all(a is b for a, b in zip(out["leaves"], leaves, strict=True))
    assert out["r"] == "1!"
    future.cancel()


async def test_filter_keeps_refs_it_rejects() -> None:
    value = {"img": ref("1", port="img"), "doc": ref("2", port="doc")}
    resolver = Recorder()
    out = await resolve_output(value, resolver, filter=lambda r: r.get("port") == "img")
    assert out == {"img": "1!", "doc": ref("2", port="doc")}
    assert resolver.calls == ["1"]


async def test_a_root_ref_and_duplicates() -> None:
    resolver = Recorder()
    assert await resolve_output(ref("1"), resolver) == "1!"
    assert await resolve_output([ref("2"), {"again": ref("2")}], resolver) == [
        "2!",
        {"again": "2!"},
    ]
    assert resolver.calls == ["1", "2"]  # one call per distinct key


async def test_dangling_refs_become_none() -> None:
    assert await resolve_output({"a": ref("gone"), "b": ref("1")}, Recorder()) == {
        "a": None,
        "b": "1!",
    }


@pytest.mark.parametrize(("limit", "expected_peak"), [(2, 2), (1, 1), (None, 6)])
async def test_concurrency_bound_is_enforced(limit: int | None, expected_peak: int) -> None:
    active = peak = 0

    async def slow(r: CacheRef) -> object:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(5):  # give every other worker the chance to start
            await asyncio.sleep(0)
        active -= 1
        return r["$ref"]

    value = [ref(str(i)) for i in range(6)]
    assert await resolve_output(value, slow, concurrency=limit) == [str(i) for i in range(6)]
    assert peak == expected_peak


async def test_bad_concurrency_and_resolver_errors() -> None:
    with pytest.raises(ConfigurationError):
        await resolve_output([ref("1")], Recorder(), concurrency=0)

    async def broken(r: CacheRef) -> object:
        raise RuntimeError("resolver down")

    with pytest.raises(RuntimeError, match="resolver down"):
        await resolve_output([ref("1"), ref("2")], broken, concurrency=1)


async def test_cycles_terminate_and_are_cloned_as_cycles() -> None:
    a: dict[str, Any] = {"r": ref("1")}
    a["self"] = a
    out = await resolve_output(a, Recorder())
    assert out is not a and out["r"] == "1!" and out["self"] is out

    # the ref is reachable from b only through the cycle back to a
    b: dict[str, Any] = {}
    top: list[Any] = [b, ref("2")]
    b["up"] = top
    out_top = await resolve_output(top, Recorder())
    assert out_top[1] == "2!"
    assert out_top[0]["up"] is out_top  # b was cloned too, pointing at the clone

    t: list[Any] = [ref("3")]
    t.append((t,))  # a tuple inside the cycle
    out_t = await resolve_output(t, Recorder())
    assert out_t[0] == "3!" and out_t[1][0] is out_t


async def test_resolve_job_output_sources() -> None:
    output = {"img": ref("1")}
    assert await resolve_job_output(output, Recorder()) == {"img": "1!"}

    repo = MemoryTaskOutputRepository()

    async def one_chunk() -> Any:
        yield b"png"

    assert repo.save_output_stream is not None
    stored = await repo.save_output_stream("t", {}, "img", one_chunk(), mime="image/png")
    hydrated = await resolve_job_output({"img": stored, "dangling": ref("nope")}, repo)
    assert hydrated["img"] == Blob(b"png", mime="image/png") and hydrated["dangling"] is None

    with pytest.raises(ConfigurationError, match="cannot resolve"):
        await resolve_job_output(output, MemoryTaskOutputRepository(streaming=False))


# -- fingerprints --------------------------------------------------------------------------


def test_inputs_fingerprint() -> None:
    assert inputs_fingerprint({"b": 1, "a": [1, 2]}) == inputs_fingerprint({"a": [1, 2], "b": 1})
    assert inputs_fingerprint({"a": 1}) == input_digest({"a": 1})  # same as job inputs
    assert inputs_fingerprint({"a": 1}) != inputs_fingerprint({"a": 2})
    as_bytes = inputs_fingerprint({"data": b"\x00\x01"})
    assert as_bytes == inputs_fingerprint({"data": Blob(b"\x00\x01")})
    assert as_bytes == inputs_fingerprint({"data": bytearray(b"\x00\x01")})
    assert as_bytes != inputs_fingerprint({"data": b"\x00\x02"})
    assert inputs_fingerprint({"t": (1, 2)}) == inputs_fingerprint({"t": [1, 2]})
    with pytest.raises(InvalidJobInput):
        inputs_fingerprint({"when": datetime.now(UTC)})
    with pytest.raises(InvalidJobInput):
        inputs_fingerprint({"x": float("nan")})
