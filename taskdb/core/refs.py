"""``CacheRef`` and the walkers over values that may hold refs (pure, no I/O).

A ``CacheRef`` is a small JSON object standing where a binary output would
be: ``{"kind": "taskdb/CacheRef", "$ref": key, "size"?, "mime"?, "port"?}``.
The ``kind`` brand is what makes it a ref: a plain ``{"$ref": "#/defs/x"}``
(a JSON-Schema ref, or user data) is never taken for one.

:func:`resolve_output` replaces refs inside any value by what a resolver
returns for them (typically the ``Blob``); :func:`iter_cache_refs` lists them.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import inspect
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import date, time, timedelta
from decimal import Decimal
from enum import Enum
from fractions import Fraction
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Literal, NotRequired, Protocol, TypeGuard, TypeVar
from uuid import UUID

# pydantic validates only typing_extensions' TypedDict before Python 3.12: CacheRef can
# then be a field of a task's argument or return model.
from typing_extensions import TypedDict

from taskdb.core.inline import decode_binary_values
from taskdb.errors import ConfigurationError, InvalidCacheRef
from taskdb.streams.blob import Blob

T = TypeVar("T")

CACHE_REF_KIND: Literal["taskdb/CacheRef"] = "taskdb/CacheRef"
"""The brand every ``CacheRef`` carries in its ``kind`` field."""

CacheRef = TypedDict(
    "CacheRef",
    {
        "kind": Literal["taskdb/CacheRef"],
        "$ref": str,
        "size": NotRequired[int],
        "mime": NotRequired[str],
        "port": NotRequired[str],
    },
)
CacheRef.__doc__ = """A reference to a blob in a cache: ``$ref`` is the blob's key; ``size``
(bytes), ``mime`` and ``port`` (the output port it was produced on) are hints."""

CacheRefResolver = Callable[[CacheRef], Awaitable[object]]
"""What :func:`resolve_output` calls per ref: returns the value to put in its place
(``None`` for a dangling ref)."""

RefFilter = Callable[[CacheRef], bool]


class RefSource(Protocol):
    """Anything with a ``get_output_by_ref`` reader (a ``TaskOutputRepository``)."""

    @property
    def get_output_by_ref(self) -> Callable[[CacheRef], Awaitable[Blob | None]] | None: ...


def make_cache_ref(
    key: str, *, size: int | None = None, mime: str | None = None, port: str | None = None
) -> CacheRef:
    """A ``CacheRef`` to blob ``key``; hints that are ``None`` are left out."""
    if not isinstance(key, str) or not key:
        raise InvalidCacheRef(f"a CacheRef key must be a non-empty string, got {key!r}")
    ref: CacheRef = {"kind": CACHE_REF_KIND, "$ref": key}
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidCacheRef(f"a CacheRef size must be an int >= 0, got {size!r}")
        ref["size"] = size
    if mime is not None:
        ref["mime"] = mime
    if port is not None:
        ref["port"] = port
    return ref


def new_blob_key() -> str:
    """A fresh public blob name, the ``$ref`` of a new ref (128 random bits, hex)."""
    return secrets.token_hex(16)


def is_cache_ref(value: object) -> TypeGuard[CacheRef]:
    """Whether ``value`` is a ``CacheRef``: a dict with the ``kind`` brand and a
    string ``$ref``."""
    return (
        isinstance(value, dict)
        and value.get("kind") == CACHE_REF_KIND
        and isinstance(value.get("$ref"), str)
    )


def ref_key(ref: object) -> str:
    """The blob key a ref points to; :class:`InvalidCacheRef` if ``ref`` is not a ref."""
    if not is_cache_ref(ref):
        raise InvalidCacheRef(
            f"not a CacheRef (needs kind={CACHE_REF_KIND!r} and a string '$ref'): {ref!r:.200}"
        )
    return ref["$ref"]


# -- walking --------------------------------------------------------------------------

# Values never looked into (besides scalars, which have nothing inside).
_OPAQUE: tuple[type, ...] = (
    str,
    bytes,
    bytearray,
    memoryview,
    int,
    float,
    complex,
    type(None),
    Blob,
    date,  # datetime too
    time,
    timedelta,
    re.Pattern,
    Decimal,
    Fraction,
    UUID,
    Enum,
    type,
    ModuleType,
    FunctionType,
    BuiltinFunctionType,
    MethodType,
)


def _attribute_names(cls: type) -> list[str]:
    """Instance attribute names declared in ``__slots__`` along ``cls``'s MRO."""
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"  # name mangling
            names.append(name)
    return names


def _attributes(value: object) -> dict[str, object] | None:
    """The attributes of an object that is walked like a container, or ``None`` for a leaf."""
    if isinstance(value, _OPAQUE) or inspect.isawaitable(value):
        return None
    found: dict[str, object] = {}
    own = getattr(value, "__dict__", None)
    if isinstance(own, dict):
        found.update(own)
    for name in _attribute_names(type(value)):
        try:
            found[name] = getattr(value, name)
        except AttributeError:  # an unset slot
            continue
    return found or None


def _children(value: object) -> Iterable[object] | None:
    """What is inside ``value`` (``None`` for a leaf). A ref is a leaf; dict keys are
    not walked (a ref, being a dict, cannot be one)."""
    if isinstance(value, dict):
        return None if is_cache_ref(value) else value.values()
    if isinstance(value, list | tuple | set | frozenset):
        return value
    attrs = _attributes(value)
    return None if attrs is None else attrs.values()


def iter_cache_refs(value: object) -> Iterator[CacheRef]:
    """Every ``CacheRef`` inside ``value`` (each occurrence, depth first; cycles are
    visited once)."""
    if is_cache_ref(value):
        yield value
        return
    seen: set[int] = set()
    stack = [value]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for child in _children(node) or ():
            if is_cache_ref(child):
                yield child
            elif not isinstance(child, str | int | float | type(None)):
                stack.append(child)


@dataclasses.dataclass(slots=True)
class _Scan:
    """Where the matching refs are: the containers on a path to one are ``dirty``."""

    refs: dict[str, CacheRef]  # distinct keys of matching refs -> one ref each
    dirty: set[int]  # ids of containers holding a matching ref at some depth


def _scan(value: object, wanted: RefFilter) -> _Scan:
    refs: dict[str, CacheRef] = {}
    parents: dict[int, list[int]] = {}
    holders: list[int] = []
    seen = {id(value)}
    stack = [value]
    while stack:
        node = stack.pop()
        for child in _children(node) or ():
            if is_cache_ref(child):
                if wanted(child):
                    refs.setdefault(child["$ref"], child)
                    holders.append(id(node))
            elif not isinstance(child, str | int | float | type(None)):
                parents.setdefault(id(child), []).append(id(node))
                if id(child) not in seen:
                    seen.add(id(child))
                    stack.append(child)
    # A container is dirty when a ref is reachable from it: walk the parent links
    # back from every holder (a fixpoint, so refs inside cycles are found too).
    dirty: set[int] = set()
    todo = holders
    while todo:
        node_id = todo.pop()
        if node_id not in dirty:
            dirty.add(node_id)
            todo.extend(parents.get(node_id, ()))
    return _Scan(refs, dirty)


class _Rebuild:
    """Clones the dirty containers with resolved refs in place; everything else is
    shared with the input. ``memo`` maps an original's id to its clone (cycles)."""

    def __init__(self, scan: _Scan, wanted: RefFilter, resolved: dict[str, object]) -> None:
        self.dirty = scan.dirty
        self.wanted = wanted
        self.resolved = resolved
        self.memo: dict[int, object] = {}

    def __call__(self, value: object) -> object:
        if is_cache_ref(value):
            key = value["$ref"]
            return self.resolved[key] if key in self.resolved and self.wanted(value) else value
        if id(value) not in self.dirty:
            return value
        if id(value) in self.memo:
            return self.memo[id(value)]
        if isinstance(value, dict):
            return self._mapping(value)
        if isinstance(value, list):
            return self._list(value)
        if isinstance(value, set):
            return self._set(value)
        if isinstance(value, tuple | frozenset):
            return self._immutable(value)
        return self._object(value)

    def _mapping(self, value: dict[object, object]) -> object:
        clone = dict(value) if type(value) is dict else copy.copy(value)
        self.memo[id(value)] = clone
        for key, item in value.items():
            new = self(item)
            if new is not item:
                clone[key] = new
        return clone

    def _list(self, value: list[object]) -> object:
        clone = list(value) if type(value) is list else copy.copy(value)
        self.memo[id(value)] = clone
        for i, item in enumerate(value):
            new = self(item)
            if new is not item:
                clone[i] = new
        return clone

    def _set(self, value: set[object]) -> object:
        clone = set() if type(value) is set else copy.copy(value)
        self.memo[id(value)] = clone
        clone.clear()
        clone.update(self(item) for item in value)
        return clone

    def _immutable(self, value: tuple[object, ...] | frozenset[object]) -> object:
        items = [self(item) for item in value]
        if id(value) in self.memo:  # built meanwhile through a cycle
            return self.memo[id(value)]
        clone: object
        if type(value) in (tuple, frozenset):
            clone = type(value)(items)
        elif hasattr(value, "_make"):  # a named tuple
            clone = value._make(items)
        else:
            clone = type(value)(items)
        self.memo[id(value)] = clone
        return clone

    def _object(self, value: object) -> object:
        clone = copy.copy(value)  # same class, __init__ not called
        self.memo[id(value)] = clone
        for name, item in (_attributes(value) or {}).items():
            new = self(item)
            if new is not item:
                object.__setattr__(clone, name, new)  # frozen dataclasses too
        return clone


async def _resolve_all(
    refs: dict[str, CacheRef], resolver: CacheRefResolver, concurrency: int | None
) -> dict[str, object]:
    resolved: dict[str, object] = {}
    pending = iter(refs.items())

    async def worker() -> None:
        for key, ref in pending:  # workers share the iterator: one call per ref
            resolved[key] = await resolver(ref)

    workers = len(refs) if concurrency is None else min(concurrency, len(refs))
    tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return resolved


def _always(_ref: CacheRef) -> bool:
    return True


async def resolve_output(
    value: T,
    resolver: CacheRefResolver,
    *,
    filter: RefFilter | None = None,
    concurrency: int | None = None,
) -> T:
    """``value`` with every ``CacheRef`` replaced by ``await resolver(ref)``.

    Walks dicts, lists, tuples, sets, frozensets and objects (dataclasses and
    plain class instances, through their ``__dict__`` and ``__slots__``); bytes,
    ``Blob``, dates and times, compiled regexes, awaitables and other scalars
    are leaves. Only containers on a path to a resolved ref are cloned (class
    intact, ``__init__`` not called); the rest is shared, and when nothing is to
    be resolved ``value`` itself is returned. Refs failing ``filter`` stay. Each
    distinct ``$ref`` is resolved once, at most ``concurrency`` at a time; a
    resolver returning ``None`` leaves ``None`` in the ref's place, an error it
    raises propagates. Cycles are cloned as cycles.
    """
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise ConfigurationError(f"concurrency must be None or an int >= 1, got {concurrency!r}")
    wanted = filter or _always
    root: object = value
    if is_cache_ref(root):
        return await resolver(root) if wanted(root) else value  # type: ignore[return-value]
    scan = _scan(value, wanted)
    if not scan.refs:
        return value
    resolved = await _resolve_all(scan.refs, resolver, concurrency)
    return _Rebuild(scan, wanted, resolved)(value)  # type: ignore[return-value]


async def resolve_job_output(
    output: T, source: CacheRefResolver | RefSource, *, concurrency: int | None = 4
) -> T:
    """A job's output with its inlined bytes decoded and its refs hydrated (see
    :func:`resolve_output`).

    ``source`` is a resolver or any object with a ``get_output_by_ref`` reader
    (a ``TaskOutputRepository``); one without that capability is a
    :class:`ConfigurationError`.
    """
    getter = getattr(source, "get_output_by_ref", None)
    if callable(getter):
        resolver: CacheRefResolver = getter
    elif callable(source):
        resolver = source
    else:
        raise ConfigurationError(
            f"{type(source).__name__} cannot resolve cache refs: pass a resolver or a "
            "repository whose get_output_by_ref is not None"
        )
    decoded: T = decode_binary_values(output)
    return await resolve_output(decoded, resolver, concurrency=concurrency)
