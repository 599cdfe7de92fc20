"""`job show` summaries, `blob ls`, `blob cat` and `gc` on both dialects."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

import taskdb
from taskdb.store.blobs import BlobStore
from tests.cli.helpers import invoke, invoke_failing, run_job

MIB = 2**20
IMAGE = random.Random(5).randbytes(5 * MIB)


async def image_job(value: Any, ctx: taskdb.JobContext) -> Any:
    return {"image": taskdb.Blob(IMAGE, mime="image/png"), "note": b"hello world!", "n": 1}


@pytest.fixture
def image_job_id(db_url: str) -> str:
    return str(run_job(db_url, image_job))


def test_job_show_summarises_refs_and_inline_bytes(db_url: str, image_job_id: str) -> None:
    shown = invoke("job", "show", image_job_id, "--db", db_url).output
    assert '"image": <ref 5.0 MiB image/png>' in shown
    assert '"note": <bytes 12 B>' in shown
    assert "COMPLETED" in shown and "1 of at most 4" in shown
    raw = json.loads(invoke("job", "show", image_job_id, "--db", db_url, "--json").output)
    key = raw["output"]["image"]["$ref"]
    assert f"image: {key}" in shown  # the key to `blob cat`
    assert len(json.dumps(raw["output"])) < 1024


def test_blob_cat_streams_the_exact_bytes(db_url: str, image_job_id: str) -> None:
    expected = hashlib.sha256(IMAGE).hexdigest()
    raw = json.loads(invoke("job", "show", image_job_id, "--db", db_url, "--json").output)
    ref = raw["output"]["image"]
    for target in (ref["$ref"], json.dumps(ref)):
        result = invoke("blob", "cat", target, "--db", db_url)
        assert result.exit_code == 0
        assert hashlib.sha256(result.stdout_bytes).hexdigest() == expected
    by_port = invoke("blob", "cat", image_job_id, "--port", "image", "--db", db_url)
    assert hashlib.sha256(by_port.stdout_bytes).hexdigest() == expected
    note = invoke("blob", "cat", image_job_id, "--port", "note", "--db", db_url)
    assert note.stdout_bytes == b"hello world!"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "several binary values: pick one with --port (image, note)"),
        (["--port", "video"], "has no binary output 'video' (has: image, note)"),
    ],
)
def test_blob_cat_of_a_job_needs_a_port_when_ambiguous(
    db_url: str, image_job_id: str, args: list[str], message: str
) -> None:
    result = invoke_failing("blob", "cat", image_job_id, *args, "--db", db_url)
    assert result.exit_code == 1 and message in result.output
    assert result.output.strip().count("\n") == 0


def test_blob_cat_of_a_job_without_binary_output(db_url: str) -> None:
    async def plain(value: Any, ctx: taskdb.JobContext) -> Any:
        return {"text": "no bytes here"}

    job_id = str(run_job(db_url, plain))
    result = invoke_failing("blob", "cat", job_id, "--db", db_url)
    assert result.exit_code == 1 and "holds no binary value" in result.output


def test_blob_cat_of_a_purged_jobs_ref_is_one_line(db_url: str, image_job_id: str) -> None:
    raw = json.loads(invoke("job", "show", image_job_id, "--db", db_url, "--json").output)
    invoke("job", "purge", "--older-than", "0s", "--db", db_url)
    result = invoke_failing("blob", "cat", json.dumps(raw["output"]["image"]), "--db", db_url)
    assert result.exit_code == 1 and "no committed blob" in result.output
    assert result.output.strip().count("\n") == 0


def test_blob_ls(db_url: str, image_job_id: str) -> None:
    listed = json.loads(invoke("blob", "ls", "--json", "--db", db_url).output)
    assert [(b["state"], b["size"], b["mime"]) for b in listed] == [
        ("committed", 5 * MIB, "image/png")
    ]
    table = invoke("blob", "ls", "--db", db_url).output
    assert listed[0]["key"] in table and "5.0 MiB" in table
    assert (
        json.loads(invoke("blob", "ls", "--state", "writing", "--json", "--db", db_url).output)
        == []
    )


async def _orphan(db_url: str, size: int) -> str:
    """A committed blob no row refers to."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"\x07" * size

    async with taskdb.connect(db_url) as db:
        return (await BlobStore(db).write(chunks())).key


def test_gc_dry_run_then_real(db_url: str, image_job_id: str) -> None:
    orphan = asyncio.run(_orphan(db_url, MIB))

    def keys() -> set[str]:
        return {b["key"] for b in json.loads(invoke("blob", "ls", "--json", "--db", db_url).output)}

    assert len(keys()) == 2
    kept = invoke("gc", "--db", db_url).output  # within the default grace: kept
    assert kept.strip() == "removed 0 unreferenced blob(s) and 0 abandoned write(s): 0 B"
    dry = invoke("gc", "--dry-run", "--grace", "0s", "--db", db_url).output
    assert dry.strip() == "would remove 1 unreferenced blob(s) and 0 abandoned write(s): 1.0 MiB"
    assert orphan in keys()
    report = json.loads(invoke("gc", "--grace", "0s", "--json", "--db", db_url).output)
    assert report == {
        "dry_run": False,
        "blobs_removed": 1,
        "stale_writers_removed": 0,
        "bytes_freed": MIB,
        "stale_links_removed": 0,
    }
    assert orphan not in keys() and len(keys()) == 1  # the job's blob stays
    again = invoke("gc", "--dry-run", "--grace", "0s", "--db", db_url).output
    assert again.startswith("would remove 0 unreferenced blob(s)")
    assert invoke("blob", "cat", image_job_id, "--port", "image", "--db", db_url).stdout_bytes
