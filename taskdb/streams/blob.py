"""``Blob``: immutable bytes with a size and a MIME type.

Small contents live in memory; content built from chunks spills to an
anonymous temporary file past ``spill_bytes``, so materializing a large
stream never needs the whole payload in memory (let alone twice). Reads are
positional (``os.pread``), so a Blob is safe to share.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import IO

from taskdb.errors import InvalidJobInput

DEFAULT_SPILL_BYTES = 8 * 1024 * 1024
DEFAULT_CHUNK_BYTES = 1024 * 1024


def check_chunk(chunk: object) -> None:
    """A stream's chunks are bytes-like; anything else is an :class:`InvalidJobInput`."""
    if not isinstance(chunk, bytes | bytearray | memoryview):
        raise InvalidJobInput(f"blob chunks must be bytes, got {type(chunk).__name__}")


class Blob:
    """Immutable bytes. ``bytes(blob)`` / ``read()`` give the content; ``chunks()``
    and ``async for`` give it piecewise without loading a spilled blob whole."""

    __slots__ = ("_data", "_file", "_size", "mime")

    def __init__(self, data: bytes | bytearray | memoryview = b"", *, mime: str | None = None):
        self._data: bytes | None = bytes(data)
        self._file: IO[bytes] | None = None
        self._size = len(self._data)
        self.mime = mime

    @classmethod
    def from_chunks(
        cls,
        chunks: Iterable[bytes | bytearray | memoryview],
        *,
        mime: str | None = None,
        spill_bytes: int = DEFAULT_SPILL_BYTES,
    ) -> Blob:
        """Join ``chunks``; past ``spill_bytes`` the content goes to a temporary file."""
        writer = BlobWriter(spill_bytes=spill_bytes)
        try:
            for chunk in chunks:
                writer.write(chunk)
        except BaseException:
            writer.discard()
            raise
        return writer.finish(mime=mime)

    @property
    def size(self) -> int:
        return self._size

    @property
    def spilled(self) -> bool:
        """Whether the content lives in a temporary file."""
        return self._file is not None

    def read(self) -> bytes:
        """The whole content (for a spilled blob this loads it: prefer ``chunks``)."""
        if self._data is not None:
            return self._data
        return b"".join(self.chunks())

    def __bytes__(self) -> bytes:
        return self.read()

    def __len__(self) -> int:
        return self._size

    def chunks(self, chunk_size: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
        """The content in order, ``chunk_size`` bytes at a time."""
        if self._data is not None:
            view = memoryview(self._data)
            for start in range(0, self._size, chunk_size):
                yield bytes(view[start : start + chunk_size])
            return
        assert self._file is not None
        fd = self._file.fileno()
        for start in range(0, self._size, chunk_size):
            yield os.pread(fd, min(chunk_size, self._size - start), start)

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks():
            yield chunk
            await asyncio.sleep(0)  # a long blob does not monopolize the loop

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Blob):
            if (self._size, self.mime) != (other._size, other.mime):
                return False
            return all(a == b for a, b in zip(self.chunks(), other.chunks(), strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal by content, yet mutable-free: no hash

    def __repr__(self) -> str:
        where = "file" if self.spilled else "memory"
        return f"Blob(size={self._size}, mime={self.mime!r}, in {where})"

    def close(self) -> None:
        """Release a spilled blob's temporary file early (it is released when collected)."""
        if self._file is not None:
            self._file.close()


class BlobWriter:
    """Builds a :class:`Blob` chunk by chunk, spilling to a temporary file past
    ``spill_bytes``; ``finish`` hands the content over, ``discard`` drops it."""

    __slots__ = ("_buffer", "_file", "_size", "spill_bytes")

    def __init__(self, *, spill_bytes: int = DEFAULT_SPILL_BYTES) -> None:
        self.spill_bytes = spill_bytes
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self._size += len(chunk)
        if self._file is not None:
            self._file.write(chunk)
            return
        self._buffer += chunk
        if len(self._buffer) > self.spill_bytes:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - the Blob will own it
            self._file.write(self._buffer)
            self._buffer = bytearray()

    def finish(self, *, mime: str | None = None) -> Blob:
        blob = Blob(mime=mime)
        if self._file is None:
            blob._data = bytes(self._buffer)
        else:
            self._file.flush()
            blob._data, blob._file = None, self._file
        blob._size = self._size
        self._buffer, self._file = bytearray(), None
        return blob

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        self._buffer, self._file, self._size = bytearray(), None, 0
