"""The output cache contract, the in-memory cache and the run-private wrapper.

A :class:`TaskOutputRepository` keeps task outputs keyed by ``(namespace,
task_type, inputs_fingerprint(inputs))``. ``namespace`` is ``""`` for the
shared cache; :class:`RunPrivateCacheRepo` works in a namespace of its own
(through the repository's :meth:`~TaskOutputRepository.with_namespace` hook,
or, for a repository without one, by folding the namespace into the inputs it
keys by), so one run's entries are invisible to every other run and to the
shared cache.
Blobs (what ``CacheRef``\\ s point to) are not namespaced: a ref reads the same
through any view of one store.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from taskdb.core.clock import Clock, seconds, utcnow
from taskdb.core.refs import CacheRef, iter_cache_refs, make_cache_ref, new_blob_key, ref_key
from taskdb.errors import ConfigurationError, InvalidJobInput
from taskdb.streams.blob import Blob, BlobWriter, check_chunk

Inputs = Mapping[str, object]
Output = Mapping[str, object]

NAMESPACE_MAX = 200  # taskdb_task_outputs.namespace
TASK_TYPE_MAX = 200  # taskdb_task_outputs.task_type


class SaveOutputStream(Protocol):
    """``save_output_stream(task_type, inputs, port, chunks, *, mime=None) -> CacheRef``."""

    def __call__(
        self,
        task_type: str,
        inputs: Inputs,
        port: str,
        chunks: AsyncIterable[bytes],
        *,
        mime: str | None = None,
    ) -> Awaitable[CacheRef]: ...


class GetOutputByRef(Protocol):
    """``get_output_by_ref(ref) -> Blob | None``."""

    def __call__(self, ref: CacheRef) -> Awaitable[Blob | None]: ...


class GetOutputStreamByRef(Protocol):
    """``get_output_stream_by_ref(ref) -> AsyncIterator[bytes] | None``."""

    def __call__(self, ref: CacheRef) -> Awaitable[AsyncIterator[bytes] | None]: ...


def _hashable_form(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"taskdb/bytes": hashlib.sha256(value).hexdigest()}
    if isinstance(value, Blob):
        digest = hashlib.sha256()
        for chunk in value.chunks():
            digest.update(chunk)
        return {"taskdb/bytes": digest.hexdigest()}
    raise TypeError(f"{type(value).__name__} is not JSON")


# The options of taskdb.core.jobs.canonical_json (a JSON input has the same digest
# as its job input), plus bytes and Blobs, which count by their content's digest.
_FINGERPRINT = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), allow_nan=False, default=_hashable_form
)


def inputs_fingerprint(inputs: Inputs) -> str:
    """The sha256 (hex) of the canonical JSON of ``inputs``: sorted keys, tuples as
    lists, ``bytes`` and ``Blob`` values by the sha256 of their content (so equal
    bytes match however they are held). Refs count by their JSON. Anything else
    that is not JSON is an :class:`InvalidJobInput`."""
    try:
        text = _FINGERPRINT.encode(inputs)
    except (TypeError, ValueError) as exc:
        raise InvalidJobInput(f"task inputs cannot be fingerprinted: {exc}") from exc
    return hashlib.sha256(text.encode()).hexdigest()


def check_task_type(task_type: str) -> str:
    if not isinstance(task_type, str) or not task_type or len(task_type) > TASK_TYPE_MAX:
        raise InvalidJobInput(
            f"task_type must be a non-empty string of at most {TASK_TYPE_MAX} characters, "
            f"got {task_type!r:.100}"
        )
    return task_type


def check_output(output: Output) -> dict[str, object]:
    if not isinstance(output, Mapping):
        raise InvalidJobInput(f"a task output must be a mapping, got {type(output).__name__}")
    return dict(output)


def check_age(age: float) -> timedelta:
    return timedelta(seconds=seconds("an age", age))


def child_namespace(parent: str, child: str) -> str:
    """The namespace ``child`` inside ``parent`` (``""`` is the shared namespace)."""
    if not isinstance(child, str) or not child:
        raise ConfigurationError(f"a cache namespace must be a non-empty string, got {child!r}")
    joined = f"{parent}/{child}" if parent else child
    if len(joined) > NAMESPACE_MAX:
        raise ConfigurationError(
            f"cache namespace {joined[:40]!r}... is longer than {NAMESPACE_MAX} characters"
        )
    return joined


class TaskOutputRepository(abc.ABC):
    """Where task outputs are cached, keyed by task type and a fingerprint of the inputs.

    Outputs are JSON mappings (binary values travel as ``CacheRef``\\ s). The
    three optional capabilities are attributes that are either a callable or
    ``None``; test them with ``callable(repo.get_output_by_ref)``:

    - ``save_output_stream(task_type, inputs, port, chunks, *, mime=None)``
      stores a stream of bytes as a blob and returns its ``CacheRef``; a stream
      that fails or is cancelled leaves nothing readable.
    - ``get_output_by_ref(ref)`` gives the blob as a ``Blob``, ``None`` for a
      dangling ref.
    - ``get_output_stream_by_ref(ref)`` gives the blob's chunks, ``None`` for a
      dangling ref.
    """

    save_output_stream: SaveOutputStream | None = None
    get_output_by_ref: GetOutputByRef | None = None
    get_output_stream_by_ref: GetOutputStreamByRef | None = None

    @abc.abstractmethod
    async def save_output(self, task_type: str, inputs: Inputs, output: Output) -> None:
        """Store ``output`` for ``(task_type, inputs)``, replacing any earlier one."""

    @abc.abstractmethod
    async def get_output(self, task_type: str, inputs: Inputs) -> dict[str, object] | None:
        """The output stored for ``(task_type, inputs)``, or ``None``."""

    @abc.abstractmethod
    async def clear(self) -> int:
        """Remove every entry of this namespace; returns how many."""

    @abc.abstractmethod
    async def size(self) -> int:
        """How many entries this namespace holds."""

    @abc.abstractmethod
    async def clear_older_than(self, seconds: float) -> int:
        """Remove this namespace's entries saved more than ``seconds`` ago; returns how many."""

    def with_namespace(self, namespace: str) -> TaskOutputRepository | None:
        """A view of the same store whose entries live in ``namespace`` (nested in
        this one's), what :class:`RunPrivateCacheRepo` is built on; ``None`` (the
        default) when this repository keeps no namespaces."""
        return None

    def supports_streaming(self) -> bool:
        """Whether ``save_output_stream`` is available."""
        return _capability(self, "save_output_stream") is not None


@dataclass(frozen=True, slots=True)
class _Entry:
    output: dict[str, object]
    created_at: datetime
    refs: frozenset[str]


class _MemoryStore:
    """What every view of one :class:`MemoryTaskOutputRepository` shares."""

    __slots__ = ("blobs", "entries")

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str, str], _Entry] = {}
        self.blobs: dict[str, Blob] = {}


class MemoryTaskOutputRepository(TaskOutputRepository):
    """An in-process cache (tests, single-process graphs). With ``streaming=False``
    the three optional capabilities are ``None``. A blob is dropped when the
    last entry referring to it is removed. ``clock`` stamps entries."""

    def __init__(self, streaming: bool = True, *, clock: Clock = utcnow) -> None:
        self.namespace = ""
        self._streaming = streaming
        self._clock = clock
        self._store = _MemoryStore()
        self.save_output_stream = self._save_output_stream if streaming else None
        self.get_output_by_ref = self._get_output_by_ref if streaming else None
        self.get_output_stream_by_ref = self._get_output_stream_by_ref if streaming else None

    def __repr__(self) -> str:
        return f"MemoryTaskOutputRepository(streaming={self._streaming}, ns={self.namespace!r})"

    def with_namespace(self, namespace: str) -> MemoryTaskOutputRepository:
        view = MemoryTaskOutputRepository(self._streaming, clock=self._clock)
        view.namespace = child_namespace(self.namespace, namespace)
        view._store = self._store
        return view

    def _key(self, task_type: str, inputs: Inputs) -> tuple[str, str, str]:
        return (self.namespace, check_task_type(task_type), inputs_fingerprint(inputs))

    async def save_output(self, task_type: str, inputs: Inputs, output: Output) -> None:
        value = check_output(output)
        refs = frozenset(ref_key(r) for r in iter_cache_refs(value))
        key = self._key(task_type, inputs)
        old = self._store.entries.get(key)
        self._store.entries[key] = _Entry(value, self._clock(), refs)
        if old is not None:
            self._release(old.refs - refs)

    async def get_output(self, task_type: str, inputs: Inputs) -> dict[str, object] | None:
        entry = self._store.entries.get(self._key(task_type, inputs))
        return None if entry is None else dict(entry.output)

    async def size(self) -> int:
        return sum(1 for key in self._store.entries if key[0] == self.namespace)

    async def clear(self) -> int:
        return self._remove(lambda _entry: True)

    async def clear_older_than(self, seconds: float) -> int:
        cutoff = self._clock() - check_age(seconds)
        return self._remove(lambda entry: entry.created_at < cutoff)

    def _remove(self, doomed: Callable[[_Entry], bool]) -> int:
        entries = self._store.entries
        keys = [k for k, e in entries.items() if k[0] == self.namespace and doomed(e)]
        freed: set[str] = set()
        for key in keys:
            freed |= entries.pop(key).refs
        self._release(freed)
        return len(keys)

    def _release(self, keys: set[str] | frozenset[str]) -> None:
        if keys:
            held = set().union(*(e.refs for e in self._store.entries.values()))
            for key in keys - held:
                self._store.blobs.pop(key, None)

    async def _save_output_stream(
        self,
        task_type: str,
        inputs: Inputs,
        port: str,
        chunks: AsyncIterable[bytes],
        *,
        mime: str | None = None,
    ) -> CacheRef:
        check_task_type(task_type)
        writer = BlobWriter()
        try:
            async for chunk in chunks:
                check_chunk(chunk)
                writer.write(chunk)
        except BaseException:
            writer.discard()
            raise
        blob = writer.finish(mime=mime)
        key = new_blob_key()
        self._store.blobs[key] = blob
        return make_cache_ref(key, size=blob.size, mime=mime, port=port)

    async def _get_output_by_ref(self, ref: CacheRef) -> Blob | None:
        return self._store.blobs.get(ref_key(ref))

    async def _get_output_stream_by_ref(self, ref: CacheRef) -> AsyncIterator[bytes] | None:
        blob = self._store.blobs.get(ref_key(ref))
        return None if blob is None else aiter(blob)


def _capability(repo: object, name: str) -> Any:
    """``repo``'s optional capability ``name``: a callable, or ``None`` (also when
    the attribute is missing or not callable)."""
    found = getattr(repo, name, None)
    return found if callable(found) else None


NAMESPACED = "taskdb/namespace"
"""The key a self-namespacing :class:`RunPrivateCacheRepo` folds its namespace under."""


class RunPrivateCacheRepo(TaskOutputRepository):
    """``backing`` seen through the namespace ``run_id``, so this run's entries are
    invisible to other runs and to the shared cache.

    Every method is forwarded to ``backing.with_namespace(run_id)``, whose
    ``clear``/``size`` touch only this run's entries. A backing without
    namespaces (no ``with_namespace``, or one that returns ``None``) is
    namespaced here: entries are keyed by ``{"taskdb/namespace": run_id,
    "inputs": inputs}``; ``size`` then counts the entries this wrapper saved
    that are still there, and ``clear``/``clear_older_than``, which such a
    backing can only apply to everything, raise :class:`ConfigurationError`.

    Each optional capability is ``None`` here exactly when it is ``None`` (or
    missing) on ``backing``.
    """

    def __init__(self, backing: TaskOutputRepository, run_id: str) -> None:
        self.backing = backing
        self.run_id = child_namespace("", run_id)
        make_view = _capability(backing, "with_namespace")
        view = make_view(run_id) if make_view is not None else None
        self._view: TaskOutputRepository | None = view
        self._saved: dict[tuple[str, str], dict[str, object]] = {}  # self-namespaced only
        if view is None:
            stream = _capability(backing, "save_output_stream")
            self.save_output_stream = None if stream is None else self._save_stream(stream)
            self.get_output_by_ref = _capability(backing, "get_output_by_ref")
            self.get_output_stream_by_ref = _capability(backing, "get_output_stream_by_ref")
            return
        for name in ("save_output_stream", "get_output_by_ref", "get_output_stream_by_ref"):
            if _capability(backing, name) is None:
                setattr(self, name, None)
            else:
                setattr(self, name, _capability(view, name))

    def __repr__(self) -> str:
        return f"RunPrivateCacheRepo({self.backing!r}, run_id={self.run_id!r})"

    def with_namespace(self, namespace: str) -> TaskOutputRepository:
        if self._view is None:
            return RunPrivateCacheRepo(self.backing, child_namespace(self.run_id, namespace))
        nested = self._view.with_namespace(namespace)
        assert nested is not None  # a view keeps namespaces
        return nested

    def supports_streaming(self) -> bool:
        return self.backing.supports_streaming()

    def _inputs(self, inputs: Inputs) -> Inputs:
        """``inputs`` as a self-namespacing wrapper keys them."""
        if self._view is not None:
            return inputs
        if not isinstance(inputs, Mapping):
            raise InvalidJobInput(f"task inputs must be a mapping, got {type(inputs).__name__}")
        return {NAMESPACED: self.run_id, "inputs": dict(inputs)}

    def _save_stream(self, save: SaveOutputStream) -> SaveOutputStream:
        def save_stream(
            task_type: str,
            inputs: Inputs,
            port: str,
            chunks: AsyncIterable[bytes],
            *,
            mime: str | None = None,
        ) -> Awaitable[CacheRef]:
            return save(task_type, self._inputs(inputs), port, chunks, mime=mime)

        return save_stream

    def _own(self, what: str) -> TaskOutputRepository:
        if self._view is None:
            raise ConfigurationError(
                f"cannot {what} only run {self.run_id!r}'s entries: "
                f"{type(self.backing).__name__} keeps no namespaces (no with_namespace)"
            )
        return self._view

    async def save_output(self, task_type: str, inputs: Inputs, output: Output) -> None:
        keyed = self._inputs(inputs)
        await (self._view or self.backing).save_output(task_type, keyed, output)
        if self._view is None:
            self._saved[(task_type, inputs_fingerprint(keyed))] = dict(keyed)

    async def get_output(self, task_type: str, inputs: Inputs) -> dict[str, object] | None:
        return await (self._view or self.backing).get_output(task_type, self._inputs(inputs))

    async def clear(self) -> int:
        return await self._own("clear").clear()

    async def size(self) -> int:
        if self._view is not None:
            return await self._view.size()
        found = 0
        for (task_type, _), keyed in list(self._saved.items()):
            found += await self.backing.get_output(task_type, keyed) is not None
        return found

    async def clear_older_than(self, seconds: float) -> int:
        return await self._own("clear entries of").clear_older_than(seconds)
