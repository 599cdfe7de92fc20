"""Job rows, statuses, change-feed items and what a submit or a claim carries (pure data)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from taskdb.errors import ConfigurationError, InvalidJobInput, JobNotFound


class JobStatus(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    ABORTING = "ABORTING"
    FAILED = "FAILED"
    DISABLED = "DISABLED"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DISABLED)


TERMINAL_STATUSES = tuple(s.value for s in JobStatus if s.terminal)
ACTIVE_STATUSES = ("PENDING", "PROCESSING", "ABORTING")
"""Statuses of a job that has not ended (a fingerprint dedupes against these)."""
RUNNING_STATUSES = ("PROCESSING", "ABORTING")
"""Statuses of a job a worker holds."""


ChangeCursor = str
"""Where a reader of the change feed stands: opaque text (see :mod:`taskdb.store.feed`)."""


class ChangeKind(StrEnum):
    """What a change-feed item records."""

    SUBMITTED = "submitted"
    CLAIMED = "claimed"
    PROGRESS = "progress"
    RETRIED = "retried"
    REQUEUED = "requeued"  # lease expired, job back to PENDING
    RELEASED = "released"  # worker stopped gracefully before the job finished
    ABORTING = "aborting"
    ABORTED = "aborted"
    COMPLETED = "completed"
    FAILED = "failed"
    PURGED = "purged"


class Job(BaseModel):
    """One row of ``taskdb_jobs``."""

    model_config = ConfigDict(frozen=True)

    id: int
    queue: str
    status: JobStatus
    input: Any
    output: Any = None
    error: str | None = None
    error_code: str | None = None
    error_traceback: str | None = None
    attempts: int
    max_retries: int
    priority: int
    run_after: datetime
    deadline: datetime | None = None
    progress: float
    progress_message: str | None = None
    progress_details: Any = None
    fingerprint: str | None = None
    job_run_id: str | None = None
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    durable_stream: bool = False
    task: str | None = None
    trace_context: Any = None  # W3C carrier, read leniently: a bad row must not hide the job


class JobChange(BaseModel):
    """One item of the change feed: a job's state transition.

    ``seq`` numbers changes in the order they were made (of one job, always);
    ``cursor`` is where the read that returned this change stands: pass it as
    ``after`` to resume right after this change. Two reads of one change are
    equal whatever their cursors.
    """

    model_config = ConfigDict(frozen=True)

    seq: int
    job_id: int
    queue: str
    kind: ChangeKind
    status: JobStatus
    attempts: int
    progress: float | None = None
    at: datetime
    cursor: str = ""

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _CHANGE_KEY)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JobChange):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


_CHANGE_KEY = tuple(name for name in JobChange.model_fields if name != "cursor")


# One encoder, made once: json.dumps with options builds a new encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)

MAX_JSON_DEPTH = 512
"""The deepest nesting a stored JSON value may have (both databases store it)."""
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # an escaped NUL, not an escaped backslash
_SURROGATE = re.compile("[\ud800-\udfff]")
# A JSON string (skipped) or a number PostgreSQL's jsonb would not give back as
# written: a float in exponent form (1e+16 comes back as the int 10000000000000000)
# or negative zero (numeric has none).
_NUMBER = re.compile(r'"(?:[^"\\]|\\.)*"|(-?\d+(?:\.\d+)?e\+\d+|-0\.0(?![\deE]))')


def _depth(value: Any) -> int:
    """How deeply ``value``'s lists and dicts nest (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def encode_json(encoder: json.JSONEncoder, value: Any, what: str, wrapping: int = 0) -> str:
    """``value`` as JSON text by ``encoder``, or :class:`InvalidJobInput` when no
    database could store it alike: not JSON (NaN, objects), a ``\\u0000`` in a
    string or a lone surrogate (PostgreSQL's jsonb refuses them, so SQLite refuses
    them too), negative zero (jsonb has none), or nested
    deeper than :data:`MAX_JSON_DEPTH` (plus ``wrapping`` levels that ``value``
    itself adds around the values the limit is about, as a batch of rows does)."""
    if value is None:  # most outputs: no encoder call, nothing to check
        return "null"
    try:
        text = encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidJobInput(f"{what} is not JSON: {exc}") from exc
    except RecursionError:
        raise InvalidJobInput(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    # Cheap checks first: deep nesting needs as many brackets, a NUL its escape.
    limit = MAX_JSON_DEPTH + wrapping
    if text.count("[") + text.count("{") > limit and _depth(value) > limit:
        raise InvalidJobInput(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    if "\\u0000" in text and _NUL.search(text):
        raise InvalidJobInput(f"{what} holds a \\u0000 character, which PostgreSQL cannot store")
    if "e+" in text or "-0.0" in text:
        text = _NUMBER.sub(_exact_number, text)
    if _raw_surrogate(text) if not text.isascii() else _escaped_surrogate(text, value):
        raise InvalidJobInput(
            f"{what} holds a lone surrogate (\\ud800-\\udfff, not UTF-8 text), "
            "which PostgreSQL cannot store"
        )
    return text


def _exact_number(match: re.Match[str]) -> str:
    """A float in exponent form written out with its digits (``1e+16`` as
    ``10000000000000000.0``: jsonb keeps it a float); negative zero refused."""
    number = match.group(1)
    if number is None:  # a string
        return match.group(0)
    value = float(number)
    if value == 0:
        raise InvalidJobInput("-0.0 cannot be stored exactly (PostgreSQL has no negative zero)")
    return f"{value:.1f}"


def _raw_surrogate(text: str) -> bool:
    """Whether non-ASCII JSON ``text`` holds a lone surrogate (no UTF-8 for it)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _escaped_surrogate(text: str, value: Any) -> bool:
    """Whether ASCII JSON ``text`` of ``value`` escapes a lone surrogate (a pair is
    how ``ensure_ascii`` writes a character beyond the BMP: ``value`` tells)."""
    return "\\ud" in text and _has_lone_surrogate(value)


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string (or dict key) in ``value`` holds a code point U+D800-U+DFFF (a
    character beyond the BMP is one code point in Python: only lone halves match)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def canonical_json(value: Any) -> str:
    """Stable JSON text of a job input (sorted keys); see :func:`encode_json`."""
    return encode_json(_CANONICAL, value, "job input")


def input_digest(value: Any) -> str:
    """The digest ``output_for_input`` looks jobs up by."""
    return json_digest(canonical_json(value))


def json_digest(text: str) -> str:
    """The digest of a :func:`canonical_json` text."""
    return hashlib.sha256(text.encode()).hexdigest()


def check_queue(queue: str) -> str:
    """``queue`` if it can name a queue (1 to 200 characters)."""
    if not isinstance(queue, str) or not 0 < len(queue) <= 200:
        raise ConfigurationError(f"a queue name is a string of 1..200 chars, got {queue!r}")
    return queue


def statuses_of(statuses: Sequence[JobStatus | str], *, ended: bool = False) -> list[str]:
    """The statuses as stored (any case accepted); :class:`ConfigurationError` for a
    status that does not exist, or (``ended``) one of a job that has not ended."""
    try:
        found = [JobStatus(s.upper() if isinstance(s, str) else s).value for s in statuses]
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    live = [s for s in found if s not in TERMINAL_STATUSES] if ended else []
    if live:
        raise ConfigurationError(f"only ended jobs can be purged, not {', '.join(live)}")
    return found


_MAX_ID = 2**63 - 1  # job ids are BIGINT


def check_job_id(job_id: int) -> int:
    """``job_id`` if it can name a job; :class:`JobNotFound` for an id no job can have
    (the same on both dialects: a database would overflow on some)."""
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise ConfigurationError(f"a job id is an int, got {job_id!r}")
    if not 0 < job_id <= _MAX_ID:
        raise JobNotFound(job_id)
    return job_id


def require_aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise InvalidJobInput(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class JobOptions:
    """What the jobs of one submit share (validated by the client)."""

    run_after: datetime
    max_retries: int
    priority: int = 0
    deadline: datetime | None = None
    job_run_id: str | None = None
    durable_stream: bool = False
    task: str | None = None
    trace_context: dict[str, str] | None = None
    """The W3C trace context of the submit (see :mod:`taskdb.queue.tracing`)."""


class EncodedInputs(list[str]):
    """Job inputs already encoded by :func:`canonical_json`, as one list: typed tasks
    encode each call's arguments as soon as they are checked, so no payload dict
    outlives its call. (A batch of dicts, or of ``str`` subclasses, lives long
    enough to set off the garbage collector's full passes; plain strings and one
    list do not.)"""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job to insert: its input as canonical JSON text, that text's digest, an
    optional dedupe key. :meth:`of` makes one from a value (encoded once)."""

    input_json: str
    input_digest: str
    fingerprint: str | None = None

    @classmethod
    def of(cls, value: Any, fingerprint: str | None = None) -> NewJob:
        """Raises InvalidJobInput if ``value`` is not JSON."""
        return cls.encoded(canonical_json(value), fingerprint)

    @classmethod
    def encoded(cls, text: str, fingerprint: str | None = None) -> NewJob:
        """One from an input already encoded by :func:`canonical_json`."""
        return cls(text, json_digest(text), fingerprint)


@dataclass(frozen=True, slots=True)
class Claim:
    """What fences a worker's writes to a job: the job id and the attempt it claimed."""

    job_id: int
    attempts: int
