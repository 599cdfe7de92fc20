"""taskdb.streams: events and their codec, port helpers, materialize_binary, Blob."""

from __future__ import annotations

import json
import os
import tracemalloc
from typing import Any

import pytest

from taskdb import AbortedJobError, JobError
from taskdb.streams import (
    BinaryDelta,
    Blob,
    Finish,
    ObjectDelta,
    Phase,
    Snapshot,
    StreamError,
    StreamEventError,
    StreamSchemaError,
    TextDelta,
    edge_needs_accumulation,
    event_from_json,
    event_to_json,
    get_binary_port_format,
    get_binary_port_id,
    get_output_stream_mode,
    get_port_media_type,
    get_port_stream_mode,
    get_streaming_ports,
    materialize_binary,
)

EVENTS = [
    TextDelta("text", "héllo"),
    ObjectDelta("items", [{"id": 1, "v": "a"}]),
    ObjectDelta("obj", {"k": [1, 2]}),
    BinaryDelta("video", bytes(range(256))),
    Snapshot({"text": "so far"}),
    Finish({"text": "done", "n": 3}),
    Phase("rendering", 42.5),
    Phase("starting"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.type)
def test_events_round_trip_through_json_text(event: Any) -> None:
    wire = json.dumps(event_to_json(event))
    assert event_from_json(json.loads(wire)) == event


def test_type_strings() -> None:
    assert [type(e).type for e in EVENTS[:7]] == [
        "text-delta",
        "object-delta",
        "object-delta",
        "binary-delta",
        "snapshot",
        "finish",
        "phase",
    ]
    assert StreamError.type == "error"


def test_errors_cross_as_their_class_or_a_job_error() -> None:
    back = event_from_json(json.loads(json.dumps(event_to_json(StreamError(AbortedJobError("x"))))))
    assert isinstance(back, StreamError) and type(back.error) is AbortedJobError
    other = event_from_json(event_to_json(StreamError(ValueError("bad value"))))
    assert isinstance(other, StreamError)
    assert isinstance(other.error, JobError) and other.error.error_code == "ValueError"
    assert str(other.error) == "bad value"


@pytest.mark.parametrize(
    "data",
    [
        {"type": "text-delta", "port": "p"},
        {"type": "text-delta", "port": 1, "text": "x"},
        {"type": "binary-delta", "port": "p", "chunk": "not base64!"},
        {"type": "object-delta", "port": "p", "value": 3},
        {"type": "finish", "data": []},
        {"type": "phase", "message": "m", "progress": "half"},
        {"type": "nope"},
        ["not", "a", "dict"],
        None,
    ],
)
def test_malformed_events_are_one_clear_error(data: Any) -> None:
    with pytest.raises(StreamEventError, match="stream event"):
        event_from_json(data)


SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "text": {"type": "string", "x-stream": "append"},
        "status": {"type": "string", "x-stream": "replace"},
        "items": {"type": "array", "x-stream": "object"},
        "video": {"x-stream": "binary", "contentMediaType": "video/mp4"},
        "raw": {"x-stream": "binary", "format": "binary"},
    },
}


def test_port_modes() -> None:
    assert get_port_stream_mode(SCHEMA, "title") == "none"
    assert get_port_stream_mode(SCHEMA, "missing") == "none"
    assert get_port_stream_mode(None, "x") == "none"
    assert get_port_stream_mode(SCHEMA, "video") == "binary"
    assert get_streaming_ports(SCHEMA) == [
        ("text", "append"),
        ("status", "replace"),
        ("items", "object"),
        ("video", "binary"),
        ("raw", "binary"),
    ]
    assert get_binary_port_id(SCHEMA) == "video"
    assert get_binary_port_id({"properties": {"a": {"x-stream": "append"}}}) is None
    assert get_port_media_type(SCHEMA, "video") == "video/mp4"
    assert get_port_media_type(SCHEMA, "raw") is None


def test_binary_formats() -> None:
    assert get_binary_port_format(SCHEMA, "video") == "blob"  # absent means blob
    assert get_binary_port_format(SCHEMA, "raw") == "binary"
    bad = {"properties": {"v": {"x-stream": "binary", "format": "base64"}}}
    with pytest.raises(StreamSchemaError, match="'blob' or 'binary'"):
        get_binary_port_format(bad, "v")
    with pytest.raises(StreamSchemaError, match="x-stream"):
        get_port_stream_mode({"properties": {"v": {"x-stream": "sideways"}}}, "v")


@pytest.mark.parametrize(
    ("ports", "mode"),
    [
        ({}, "none"),
        ({"a": {"type": "string"}}, "none"),
        ({"a": {"x-stream": "append"}, "b": {"x-stream": "append"}}, "append"),
        ({"a": {"x-stream": "binary"}, "b": {"type": "string"}}, "binary"),
        ({"a": {"x-stream": "append"}, "b": {"x-stream": "binary"}}, "mixed"),
    ],
)
def test_output_stream_mode(ports: dict[str, Any], mode: str) -> None:
    assert get_output_stream_mode({"properties": ports}) == mode


MODES = ["none", "append", "replace", "object", "binary"]


def _schema(mode: str) -> dict[str, Any]:
    return {"properties": {"p": {} if mode == "none" else {"x-stream": mode}}}


@pytest.mark.parametrize("src", MODES)
@pytest.mark.parametrize("dst", MODES)
def test_edge_needs_accumulation_matrix(src: str, dst: str) -> None:
    expected = src != "none" and src != dst
    assert edge_needs_accumulation(_schema(src), "p", _schema(dst), "p") is expected


def test_materialize_binary_by_format() -> None:
    chunks = [b"ab", b"", b"cd"]
    blob = materialize_binary(chunks, "blob", mime="image/png")
    assert isinstance(blob, Blob) and bytes(blob) == b"abcd" and blob.mime == "image/png"
    assert isinstance(materialize_binary(chunks, None), Blob)
    raw = materialize_binary(chunks, "binary")
    assert type(raw) is bytes and raw == b"abcd"
    with pytest.raises(StreamSchemaError):
        materialize_binary(chunks, "hex")


def test_blob_in_memory() -> None:
    blob = Blob(b"hello world", mime="text/plain")
    assert (blob.size, len(blob), blob.read(), bytes(blob)) == (
        11,
        11,
        b"hello world",
        b"hello world",
    )
    assert list(blob.chunks(4)) == [b"hell", b"o wo", b"rld"]
    assert not blob.spilled
    assert blob == Blob(b"hello world", mime="text/plain")
    assert blob != Blob(b"hello world", mime="text/html")
    assert blob != Blob(b"hello")
    assert Blob().size == 0 and list(Blob().chunks()) == []


async def test_blob_spills_and_reads_back_in_order() -> None:
    parts = [bytes([i]) * 1000 for i in range(50)]
    blob = Blob.from_chunks(parts, spill_bytes=4096, mime="application/octet-stream")
    assert blob.spilled and blob.size == 50_000
    assert blob.read() == b"".join(parts)
    assert b"".join(blob.chunks(3333)) == b"".join(parts)
    assert b"".join([c async for c in blob]) == b"".join(parts)
    assert blob == Blob(b"".join(parts), mime="application/octet-stream")
    blob.close()


def test_spilling_bounds_memory() -> None:
    """Materializing 64 MiB with a 1 MiB spill threshold never holds the payload."""
    chunk = b"x" * (256 * 1024)

    def produce() -> Any:
        for _ in range(256):  # 64 MiB
            yield chunk

    tracemalloc.start()
    blob = Blob.from_chunks(produce(), spill_bytes=1024 * 1024)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert blob.size == 64 * 1024 * 1024 and blob.spilled
    assert peak < 8 * 1024 * 1024
    assert sum(len(c) for c in blob.chunks()) == blob.size
    blob.close()


def test_failed_producer_leaves_no_blob() -> None:
    def broken() -> Any:
        yield b"x" * 10_000
        raise RuntimeError("producer died")

    open_files = len(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError, match="producer died"):
        Blob.from_chunks(broken(), spill_bytes=100)
    assert len(os.listdir("/proc/self/fd")) == open_files  # its temp file is closed
