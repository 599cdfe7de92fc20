"""The chaos workload, pure: job inputs and the output each one must produce.

Outputs depend on the input only (so the checker knows what the handler
returned), except ``run``: a token the handler draws for each run and also
records in the ``chaos_runs`` side table, which tells which run's completion
was stored.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

QUEUE = "chaos"
BLOB_MIN_BYTES = 70_000  # above the 64 KiB reference threshold: stored as a ref
STREAM_EVENTS = 6

RUNS_TABLE = "chaos_runs"
RUNS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {RUNS_TABLE} ("
    "job_id BIGINT NOT NULL, attempt INTEGER NOT NULL, worker TEXT NOT NULL, "
    "token TEXT NOT NULL)"
)
"""One row per handler run that returned (written before the outcome, by the handler)."""


def inputs(count: int, seed: int, max_sleep: float) -> list[dict[str, Any]]:
    """``count`` job inputs: ~20% return a blob, ~20% write a durable stream."""
    rng = random.Random(seed)
    made = []
    for n in range(count):
        roll = rng.random()
        kind = "blob" if roll < 0.2 else "stream" if roll < 0.4 else "plain"
        made.append({"n": n, "kind": kind, "sleep": round(rng.uniform(0, max_sleep), 4)})
    return made


def blob_bytes(n: int) -> bytes:
    """The binary output of job input ``n`` (70-100 kB, derived from ``n``)."""
    size = BLOB_MIN_BYTES + (n * 7919) % 30_000
    block = hashlib.sha256(f"chaos-{n}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def stream_texts(n: int) -> list[str]:
    """The text deltas a stream job emits, in order."""
    return [f"{n}.{i} " for i in range(STREAM_EVENTS)]


def expected(value: dict[str, Any]) -> dict[str, Any]:
    """What the handler returns for ``value`` (``data``: bytes; without ``run``)."""
    n, kind = value["n"], value["kind"]
    out: dict[str, Any] = {"n": n, "kind": kind}
    if kind == "blob":
        out["data"] = blob_bytes(n)
    elif kind == "stream":
        out["text"] = "".join(stream_texts(n))
    else:
        out["digest"] = hashlib.sha256(str(n).encode()).hexdigest()[:16]
    return out
