"""StreamProcessor: accumulation per port mode, finish precedence, phases, errors."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from taskdb.streams import (
    BinaryDelta,
    Blob,
    Finish,
    ObjectDelta,
    Phase,
    Snapshot,
    StreamError,
    StreamEventError,
    StreamProcessor,
    TextDelta,
)

SCHEMA: dict[str, Any] = {
    "properties": {
        "title": {"type": "string"},
        "text": {"x-stream": "append"},
        "status": {"x-stream": "replace"},
        "items": {"x-stream": "object"},
        "image": {"x-stream": "binary", "contentMediaType": "image/png"},
        "raw": {"x-stream": "binary", "format": "binary"},
    }
}


def run(*events: Any, **options: Any) -> StreamProcessor:
    processor = StreamProcessor(SCHEMA, **options)
    for event in events:
        processor.feed(event)
    return processor


def test_each_mode_accumulates_its_way() -> None:
    p = run(
        TextDelta("text", "Hel"),
        TextDelta("text", "lo"),
        TextDelta("status", "working"),
        TextDelta("status", "almost"),
        ObjectDelta("items", [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]),
        ObjectDelta("items", [{"id": 1, "v": "A"}, {"v": "no id"}, {"id": 3, "v": "c"}]),
        BinaryDelta("image", b"\x89PN"),
        BinaryDelta("image", b"G"),
        BinaryDelta("raw", b"ab"),
        BinaryDelta("raw", b"cd"),
        Finish({"title": "t"}),
    )
    out = p.output
    assert out is not None
    assert out["title"] == "t" and out["text"] == "Hello" and out["status"] == "almost"
    assert out["items"] == [
        {"id": 1, "v": "A"},
        {"id": 2, "v": "b"},
        {"v": "no id"},
        {"id": 3, "v": "c"},
    ]
    assert isinstance(out["image"], Blob) and bytes(out["image"]) == b"\x89PNG"
    assert out["image"].mime == "image/png"
    assert type(out["raw"]) is bytes and out["raw"] == b"abcd"


def test_object_dict_replaces_the_value() -> None:
    p = run(ObjectDelta("items", [{"id": 1}]), ObjectDelta("items", {"all": "new"}), Finish({}))
    assert p.output == {"items": {"all": "new"}}


def test_explicit_finish_value_wins_over_accumulated_chunks() -> None:
    p = run(
        BinaryDelta("image", b"streamed"),
        TextDelta("text", "streamed"),
        Finish({"image": "explicit-artifact", "text": "explicit"}),
    )
    assert p.output == {"image": "explicit-artifact", "text": "explicit"}


def test_phase_becomes_progress_and_is_never_accumulated() -> None:
    p = run(Phase("loading", 10), Phase("rendering"), TextDelta("text", "x"))
    assert (p.progress, p.message) == (10, "rendering")
    p.feed(Finish({}))
    assert p.output == {"text": "x"}


def test_snapshot_sets_values() -> None:
    p = run(TextDelta("text", "old"), Snapshot({"text": "whole text", "status": "s"}), Finish({}))
    assert p.output == {"text": "whole text", "status": "s"}


def test_error_event_fails_the_stream_and_drops_bytes() -> None:
    boom = RuntimeError("producer failed")
    p = run(BinaryDelta("image", b"x" * 100), StreamError(boom), spill_bytes=10)
    assert p.error is boom and p.output is None and p.done
    with pytest.raises(StreamEventError, match="after the end"):
        p.feed(TextDelta("text", "late"))


def test_only_requested_ports_accumulate() -> None:
    p = run(
        TextDelta("text", "kept"),
        BinaryDelta("image", b"piped elsewhere"),
        Finish({}),
        accumulate=["text"],
    )
    assert p.output == {"text": "kept"}


@pytest.mark.parametrize(
    "event",
    [
        TextDelta("title", "not a streaming port"),
        TextDelta("image", "text on a binary port"),
        BinaryDelta("text", b"bytes on a text port"),
        ObjectDelta("text", {"k": 1}),
        TextDelta("unknown", "x"),
    ],
)
def test_mode_mismatch_is_a_clear_error(event: Any) -> None:
    with pytest.raises(StreamEventError, match="stream mode"):
        run(event)


def test_ten_thousand_ordered_deltas() -> None:
    p = run(*(TextDelta("text", f"{i},") for i in range(10_000)), Finish({}))
    assert p.output is not None
    assert p.output["text"].split(",")[:-1] == [str(i) for i in range(10_000)]


def test_binary_accumulation_memory_is_bounded() -> None:
    chunk = b"y" * (256 * 1024)
    processor = StreamProcessor(SCHEMA, spill_bytes=1024 * 1024)
    tracemalloc.start()
    for _ in range(128):  # 32 MiB
        processor.feed(BinaryDelta("image", chunk))
    processor.feed(Finish({}))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert processor.output is not None
    blob = processor.output["image"]
    assert isinstance(blob, Blob) and blob.spilled and blob.size == 32 * 1024 * 1024
    assert peak < 8 * 1024 * 1024
    blob.close()
