"""Bind parameters as every store statement names them, and the JSON encoding of
the values bound to JSON columns (pure).

Names carry a ``p_`` prefix so none collides with a column name (SQLAlchemy
reserves column names for the values of INSERT and UPDATE); :func:`params`
adds it to the values of a call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import BindParameter, bindparam

from taskdb.core.jobs import encode_json

IN_BATCH = 500
"""Values per expanding IN list (see :func:`batches`)."""

_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def dumps(value: Any, wrapping: int = 0) -> str:
    """The JSON encoding used for every JSON column (strict: see
    :func:`taskdb.core.jobs.encode_json`; ``wrapping``: the levels a batch adds)."""
    return encode_json(_ENCODER, value, "value", wrapping)


def bind(name: str, type_: Any = None) -> BindParameter[Any]:
    """The bind parameter ``name`` (its value comes from :func:`params`)."""
    return bindparam(f"p_{name}", type_=type_)


def bind_list(name: str) -> BindParameter[Any]:
    """A bind parameter taking a list (an expanding IN)."""
    return bindparam(f"p_{name}", expanding=True)


def params(**values: Any) -> dict[str, Any]:
    """The values of a call, keyed as :func:`bind` names its parameters."""
    return {f"p_{name}": value for name, value in values.items()}


def batches(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """``values`` in slices short enough for one IN list."""
    for start in range(0, len(values), IN_BATCH):
        yield values[start : start + IN_BATCH]
