"""The binary COPY row parser of PostgreSQL blob reads (pure: fed the CopyData
messages a server sends): one whole row per message, the file header in front of
the first; anything else is a StorageError, never a chunk cut short or run together."""

from __future__ import annotations

import asyncio
import struct
from contextlib import AsyncExitStack

import pytest

from taskdb.errors import StorageError
from taskdb.store.postgres import _COPY_SIGNATURE, _Statement

HEADER = _COPY_SIGNATURE + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)


def row(seq: int, data: bytes) -> bytes:
    return struct.pack("!hiii", 2, 4, seq, len(data)) + data


class Messages:
    """What ``psycopg.AsyncCopy.read`` returns: one message a call, then b""."""

    def __init__(self, *messages: bytes) -> None:
        self._messages = [*messages, b""]

    async def read(self) -> bytes:
        return self._messages.pop(0)


def parse(*messages: bytes) -> list[tuple[int, bytes]]:
    async def main() -> list[tuple[int, bytes]]:
        statement = _Statement(AsyncExitStack(), Messages(*messages))  # type: ignore[arg-type]
        return [r async for r in statement.rows()]

    return asyncio.run(main())


def test_rows_with_the_header_in_front_or_alone() -> None:
    expected = [(0, b"abc"), (1, b""), (2, b"xy")]
    assert parse(HEADER + row(0, b"abc"), row(1, b""), row(2, b"xy"), TRAILER) == expected
    assert parse(HEADER, row(0, b"abc"), row(1, b""), row(2, b"xy"), TRAILER) == expected


@pytest.mark.parametrize(
    "messages",
    [
        (HEADER + row(0, b"abc")[:-1], TRAILER),  # a row cut short
        (HEADER + row(0, b"abc") + row(1, b"d"), TRAILER),  # two rows in one message
        (HEADER + struct.pack("!hiii", 3, 4, 0, 1) + b"a", TRAILER),  # three fields
        (b"NOTCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0) + row(0, b"a"),),  # signature
    ],
)
def test_malformed_copy_data_is_refused(messages: tuple[bytes, ...]) -> None:
    with pytest.raises(StorageError, match="COPY"):
        parse(*messages)
