"""A task function's signature as its payload schema, and its return annotation as
its output schema (pure: pydantic, no I/O).

The parameters become a pydantic model: ``defer`` validates the arguments
against it before anything is stored and stores them as JSON; the worker
validates that JSON again before calling the function. A parameter annotated
:class:`~taskdb.JobContext` (or :class:`~taskdb.SyncJobContext`) receives the
context and is not part of the payload. The return annotation validates and
serializes what the task returns; binary values (``bytes``, ``Blob``, async
iterators of bytes) pass through to the blob store and come back as inline
bytes or ``CacheRef``\\ s.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import types
import typing
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from pydantic_core import PydanticSerializationError, to_jsonable_python

from taskdb.core.inline import decode_binary_values, is_binary
from taskdb.core.jobs import EncodedInputs, canonical_json
from taskdb.core.refs import is_cache_ref
from taskdb.errors import ConfigurationError, InvalidJobInput
from taskdb.queue.context import JobContext, SyncJobContext
from taskdb.streams.blob import Blob

_ARGS = ConfigDict(
    extra="forbid",
    allow_inf_nan=False,  # JSON has no NaN: refuse it at defer, never store null instead
    ser_json_inf_nan="constants",  # a NaN under Any stays NaN, to be refused by name
    ser_json_bytes="base64",
    val_json_bytes="base64",
)
_BINARY = (bytes, bytearray, memoryview, Blob)
_STREAMS = (AsyncIterator, AsyncIterable, typing.AsyncGenerator)


def describe(error: ValidationError, what: str, *, at: str = "") -> str:
    """One line for the first problem of ``error``: where (its location, after
    ``at``), and what is wrong."""
    first = error.errors()[0]
    where = at + (".".join(str(p) for p in first["loc"]) or "(arguments)")
    extra = f" ({len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    return f"{what}: {where}: {first['msg']}{extra}"


def _storable(value: Any) -> bool:
    """Whether ``value`` (plain JSON data) holds nothing :func:`_unstorable` would name:
    the fast walk every deferred batch takes (no paths built)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            if "\x00" in item:
                return False
        elif kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is float and not math.isfinite(item):
            return False
    return True


def _unstorable(value: Any) -> tuple[str, str] | None:
    """The place (``a.b.0``) and the problem of the first value JSON cannot hold as
    stored by both databases (a non-finite float, a ``\\u0000``), or ``None``."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where, f"{item} is not a JSON number"
        if isinstance(item, str) and "\x00" in item:
            return where, "holds a \\u0000 character, which PostgreSQL cannot store"
        if isinstance(item, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}.{i}" if where else str(i), v) for i, v in enumerate(item))
    return None


def _mentions_bytes(tp: Any, seen: set[int] | None = None) -> bool:
    """Whether values of ``tp`` may hold bytes (they then travel as base64 JSON)."""
    seen = set() if seen is None else seen
    if id(tp) in seen:
        return False
    seen.add(id(tp))
    if tp in (bytes, bytearray):
        return True
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return any(_mentions_bytes(f.annotation, seen) for f in tp.model_fields.values())
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return any(_mentions_bytes(h, seen) for h in hints.values())
    if typing.is_typeddict(tp):
        return any(_mentions_bytes(h, seen) for h in typing.get_type_hints(tp).values())
    return any(_mentions_bytes(arg, seen) for arg in typing.get_args(tp))


def _is_binary_type(tp: Any) -> bool:
    """Whether a return annotation is a binary value (or ``None`` beside one)."""
    if tp in _BINARY:
        return True
    origin = typing.get_origin(tp)
    if origin in _STREAMS:
        return True
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return bool(args) and all(_is_binary_type(a) for a in args)
    return False


def _jsonable(value: Any) -> Any:
    """``value`` as JSON, leaving binary values (and refs) for the blob store."""
    if is_binary(value) or value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return to_jsonable_python(value)


@dataclass(frozen=True, slots=True)
class TaskSignature:
    """What a task function takes and gives (see the module docstring)."""

    what: str
    """Names the task in errors."""
    args: type[BaseModel]
    """The payload: one field per parameter, but the context."""
    context: str | None
    """The parameter receiving the job context, if any."""
    returns: TypeAdapter[Any] | None
    """Validates and serializes the output; ``None``: no annotation, or a binary one."""
    json_args: bool
    """The payload holds bytes: the worker validates it as JSON (base64)."""
    json_output: bool
    """The output holds no bytes: it is serialized in pydantic's JSON mode."""

    @classmethod
    def of(cls, func: Callable[..., Any], what: str) -> TaskSignature:
        """The signature of ``func``; :class:`ConfigurationError` when a parameter or
        the return annotation cannot be a payload (``*args``, a type pydantic cannot
        validate)."""
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except (NameError, TypeError) as exc:
            raise ConfigurationError(f"{what}: cannot resolve its annotations: {exc}") from exc
        fields: dict[str, Any] = {}
        context = None
        for name, param in inspect.signature(func).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ConfigurationError(f"{what}: *args and **kwargs cannot be a payload")
            hint = hints.get(name, Any)
            if hint in (JobContext, SyncJobContext):
                context = name
                continue
            fields[name] = (hint, ... if param.default is param.empty else param.default)
        try:
            args = create_model(f"{what} arguments", __config__=_ARGS, **fields)
        except Exception as exc:  # pydantic's schema errors come in several classes
            raise ConfigurationError(f"{what}: its parameters cannot be a payload: {exc}") from exc
        ret = hints.get("return", Any)
        returns: TypeAdapter[Any] | None = None
        if ret is not Any and not _is_binary_type(ret):
            try:
                returns = TypeAdapter(ret)
            except Exception as exc:
                raise ConfigurationError(
                    f"{what}: its return annotation cannot be an output: {exc}"
                ) from exc
        return cls(
            what,
            args,
            context,
            returns,
            json_args=any(_mentions_bytes(f.annotation) for f in args.model_fields.values()),
            json_output=not _mentions_bytes(ret),
        )

    # -- the payload -------------------------------------------------------------------

    def dump_args(self, calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Validate the keyword arguments of each call and give the payloads stored for
        them (JSON); :class:`InvalidJobInput` names the first bad argument (``i.name``
        for the ``i``-th call of several), and its place inside it: a type error, a
        value JSON cannot hold (NaN, infinities, objects), or a ``\\u0000``, which no
        database stores alike. Nothing is returned unless every call is valid."""
        return list(self._dumped(calls))

    def encode_args(self, calls: Sequence[Mapping[str, Any]]) -> EncodedInputs:
        """:meth:`dump_args`, each payload encoded as a job input as soon as it is
        dumped (see :class:`~taskdb.core.jobs.EncodedInputs`)."""
        return EncodedInputs(canonical_json(payload) for payload in self._dumped(calls))

    def _dumped(self, calls: Sequence[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
        validate = self.args.__pydantic_validator__.validate_python
        dump = self.args.__pydantic_serializer__.to_python
        what = f"{self.what} arguments"
        # One call at a time: each model is freed as soon as it is dumped. Validating
        # the batch at once keeps every model alive until the dump, and the garbage
        # collector's passes over them cost more than the per-call calls (measured).
        for i, kwargs in enumerate(calls):
            at = "" if len(calls) == 1 else f"{i}."  # a lone call's errors need no index
            if self.context is not None and self.context in kwargs:
                raise InvalidJobInput(
                    f"{what}: {at}{self.context}: the job context is not an argument"
                )
            try:
                model = validate(kwargs)
            except ValidationError as exc:
                raise InvalidJobInput(describe(exc, what, at=at)) from None
            try:
                payload = dump(model, mode="json")
            except (PydanticSerializationError, ValueError) as exc:
                raise InvalidJobInput(self._unserializable(model, at, exc)) from None
            found = None if _storable(payload) else _unstorable(payload)
            if found is not None:
                where, problem = found
                raise InvalidJobInput(f"{what}: {at}{where}: {problem}")
            yield payload

    def _unserializable(self, model: BaseModel, at: str, error: Exception) -> str:
        """Which argument of a call could not be dumped (the error path only)."""
        for name in type(model).model_fields:
            try:
                model.__pydantic_serializer__.to_python(model, mode="json", include={name})
            except (PydanticSerializationError, ValueError) as exc:
                hint = ""
                if isinstance(exc, UnicodeDecodeError):
                    hint = (
                        " (bytes a model holds travel as its config says, UTF-8 text by "
                        "default: give it ser_json_bytes='base64', val_json_bytes='base64')"
                    )
                return f"{self.what} arguments: {at}{name}: not JSON: {exc}{hint}"
        return f"{self.what} arguments are not JSON: {error}"

    def load_args(self, payload: Any) -> dict[str, Any]:
        """The keyword arguments of a stored payload, validated again (models rebuilt);
        :class:`InvalidJobInput` when it does not fit the signature any more."""
        try:
            if self.json_args:
                model = self.args.model_validate_json(json.dumps(payload))
            else:
                model = self.args.model_validate(payload)
        except ValidationError as exc:
            raise InvalidJobInput(describe(exc, f"{self.what} stored arguments")) from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    # -- the output --------------------------------------------------------------------

    def dump_output(self, value: Any) -> Any:
        """What the task returned, validated by its return annotation, as the output
        to store (JSON, with binary values left for the blob store)."""
        if self.returns is None:
            return value
        try:
            checked = self.returns.validate_python(value)
        except ValidationError as exc:
            raise InvalidJobInput(describe(exc, f"{self.what} returned")) from None
        if self.json_output:
            return self.returns.dump_python(checked, mode="json")
        return _jsonable(self.returns.dump_python(checked, mode="python"))

    def load_output(self, output: Any) -> Any:
        """A stored output as the task's return type (a model rebuilt, inline bytes
        decoded). A large binary value stays the ``CacheRef`` it was stored as."""
        value = decode_binary_values(output)
        if self.returns is None or is_cache_ref(value):
            return value
        try:
            return self.returns.validate_python(value)
        except ValidationError as exc:
            raise InvalidJobInput(
                describe(exc, f"{self.what} output")
                + " (binary values of 64 KiB or more come back as CacheRef: "
                "annotate them `bytes | CacheRef`)"
            ) from None
