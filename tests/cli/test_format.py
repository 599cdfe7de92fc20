"""The CLI's pure formatting: sizes, summaries of binary values, paths to them."""

from __future__ import annotations

from taskdb.core.format import binary_values, human_size, inline_size, render, summarize_binary
from taskdb.core.inline import encode_inline
from taskdb.core.refs import make_cache_ref
from taskdb.streams.blob import Blob


def test_human_size() -> None:
    assert [human_size(n) for n in (0, 12, 1023, 1024, 1536, 5 * 2**20, 3 * 2**30)] == [
        "0 B", "12 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 GiB",
    ]  # fmt: skip


def test_inline_size_without_decoding() -> None:
    for n in range(10):
        assert inline_size(encode_inline(b"x" * n)) == n


def test_summaries() -> None:
    ref = make_cache_ref("k" * 32, size=5 * 2**20, mime="image/png")
    assert summarize_binary(ref) == "<ref 5.0 MiB image/png>"
    assert summarize_binary(make_cache_ref("abc")) == "<ref abc>"
    assert summarize_binary(encode_inline(b"hello world!")) == "<bytes 12 B>"
    assert summarize_binary(encode_inline(Blob(b"abc", mime="text/plain"))) == (
        "<bytes 3 B text/plain>"
    )


def test_render_summarises_binary_values_at_any_depth() -> None:
    output = {
        "image": make_cache_ref("k", size=2048, mime="image/png"),
        "parts": [encode_inline(b"ab"), {"$ref": "#/defs/x"}],
        "n": 1,
    }
    assert render(output) == (
        "{\n"
        '  "image": <ref 2.0 KiB image/png>,\n'
        '  "parts": [\n'
        "    <bytes 2 B>,\n"
        "    {\n"
        '      "$ref": "#/defs/x"\n'
        "    }\n"
        "  ],\n"
        '  "n": 1\n'
        "}"
    )
    assert render(None) == "null" and render([]) == "[]" and render("é") == '"\\u00e9"'


def test_binary_values_name_their_paths() -> None:
    ref = make_cache_ref("k", port="video")
    small = encode_inline(b"x")
    output = {"outputs": {"render": {"video": ref, "sha256": "ab"}}, "l": [small]}
    assert list(binary_values(output)) == [("outputs.render.video", ref), ("l.0", small)]
    assert list(binary_values(ref)) == [("", ref)]
    assert list(binary_values({"$ref": "#/x"})) == []
