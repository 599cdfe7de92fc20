"""Query-string parameters of the job list (pure): a bad one is a 400, one line."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request

from taskdb.admin import Admin
from taskdb.core.jobs import Job, check_job_id, statuses_of
from taskdb.errors import ConfigurationError, JobNotFound

MAX_LIMIT = 500
MAX_FORM_BYTES = 64 * 1024


class BadRequest(ConfigurationError):
    """A request parameter the dashboard cannot use (answered with 400)."""


async def form_of(request: Request) -> QueryParams:
    """The fields of a POSTed form (``application/x-www-form-urlencoded``: every form
    of the dashboard; no multipart parser needed), at most 64 KiB."""
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_FORM_BYTES:
        raise BadRequest("the form is too large")
    body = await request.body()  # cached: a handler may read the form twice
    return QueryParams(body[:MAX_FORM_BYTES].decode("utf-8", "replace"))


def _int(params: QueryParams, name: str, low: int, high: int) -> int | None:
    text = params.get(name)
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}, got {text!r}")
    return int(text)


def _text(params: QueryParams, name: str) -> str | None:
    value = params.get(name, "").strip()
    if len(value) > 200:
        raise BadRequest(f"{name} is longer than 200 characters")
    return value or None


@dataclass(frozen=True, slots=True)
class JobFilter:
    """What the job list shows: ``queue``, ``status`` (any of), ``task``, ``text``,
    ``limit`` jobs with ids below ``before`` (keyset pagination, newest first)."""

    queue: str | None = None
    status: list[str] = field(default_factory=list)
    task: str | None = None
    text: str | None = None
    limit: int = 50
    before: int | None = None

    async def fetch(self, admin: Admin) -> list[Job]:
        """The page of jobs this filter selects."""
        return await admin.list_jobs(
            queue=self.queue,
            status=self.status,
            task=self.task,
            text=self.text,
            limit=self.limit,
            before=self.before,
        )

    @classmethod
    def parse(cls, params: QueryParams) -> JobFilter:
        try:
            status = statuses_of([s for s in params.getlist("status") if s])
        except ConfigurationError as exc:
            raise BadRequest(f"bad status: {exc}") from None
        before = _int(params, "before", 1, 2**63 - 1)
        if before is not None:
            try:
                check_job_id(before)
            except JobNotFound as exc:
                raise BadRequest(str(exc)) from None
        return cls(
            queue=_text(params, "queue"),
            status=status,
            task=_text(params, "task"),
            text=_text(params, "q"),
            limit=_int(params, "limit", 1, MAX_LIMIT) or 50,
            before=before,
        )

    def query(self, *, before: int | None = None) -> str:
        """The query string of this filter (for another page: ``before``)."""
        pairs: list[tuple[str, str | int]] = []
        for name, value in (("queue", self.queue), ("task", self.task), ("q", self.text)):
            if value is not None:
                pairs.append((name, value))
        pairs.extend(("status", s) for s in self.status)
        if self.limit != 50:
            pairs.append(("limit", self.limit))
        if before is not None:
            pairs.append(("before", before))
        return urlencode(pairs)
