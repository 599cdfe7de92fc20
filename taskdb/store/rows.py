"""Rows read back as models: a malformed row is a :class:`StorageError`, never a crash."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from taskdb.errors import StorageError

M = TypeVar("M", bound=BaseModel)


def model(cls: type[M], row: Any, **extra: Any) -> M:
    """Validate a row (anything with ``_asdict()``) and ``extra`` fields into ``cls``."""
    try:
        return cls.model_validate({**row._asdict(), **extra})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StorageError(f"malformed {cls.__name__} row: {where}: {first['msg']}") from exc
