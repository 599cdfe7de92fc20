"""A 256 MiB blob downloads through ``taskdb dashboard`` with the right length, type
and bytes while the server's peak memory grows by a small fraction of it: the
response streams the blob chunk by chunk (both dialects)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import taskdb
from taskdb.store import BlobStore
from tests.cli.helpers import reap, taskdb_process
from tests.helpers import eventually
from tests.web.conftest import free_port

MIB = 1 << 20
SIZE = 256 * MIB

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc for the peak RSS")


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_a_256_mib_blob_streams_out_in_bounded_memory(
    db: taskdb.Database, db_url: str
) -> None:
    block = bytes(range(256)) * 4096  # 1 MiB
    expected = hashlib.sha256()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(SIZE // MIB):
            piece = block[i % 256 :] + block[: i % 256]
            expected.update(piece)
            yield piece

    blob = await BlobStore(db).write(chunks(), mime="video/mp4")
    port = free_port()
    proc = taskdb_process("dashboard", "--port", str(port), db_url=db_url)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:

            async def up() -> bool:
                try:
                    return (await http.get("/api/stats")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(up, bool, timeout=30, interval=0.1)
            before = peak_rss(proc.pid)
            got = hashlib.sha256()
            received = 0
            async with http.stream("GET", f"/api/blobs/{blob.key}") as response:
                assert response.status_code == 200
                assert response.headers["content-length"] == str(SIZE)
                assert response.headers["content-type"] == "video/mp4"
                async for piece in response.aiter_raw():
                    got.update(piece)
                    received += len(piece)
            grown = peak_rss(proc.pid) - before
    finally:
        reap(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    assert (received, got.hexdigest()) == (SIZE, expected.hexdigest())
    assert grown < 64 * MIB, f"the server's peak memory grew by {grown / MIB:.0f} MiB"
