"""The SSE decoder over adversarial chunk boundaries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import pytest

from faregate.providers.sse import SSEDecoder, SSEProtocolError, iter_sse_data


def decode(chunks: Iterable[bytes]) -> tuple[list[bytes], bool]:
    decoder = SSEDecoder()
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out, decoder.done


def every_split(stream: bytes) -> Iterable[list[bytes]]:
    """The whole stream, byte by byte, and split in two and three at every position."""
    yield [stream]
    yield [stream[i : i + 1] for i in range(len(stream))]
    for i in range(len(stream) + 1):
        yield [stream[:i], stream[i:]]
        for j in range(i, len(stream) + 1, 3):
            yield [stream[:i], stream[i:j], stream[j:]]


STREAM = (
    b'\xef\xbb\xbf: keep-alive\r\n\r\nevent: message\r\ndata: {"a": 1}\r\n\r\n'
    b'data:{"b":\rdata: 2}\r\rid: 7\nretry: 100\n: another comment\ndata: {"c": 3}\n\n'
    b"data: [DONE]\n\ndata: after-done\n\n"
)
EXPECTED = [b'{"a": 1}', b'{"b":\n2}', b'{"c": 3}']


def test_every_chunk_boundary_gives_the_same_events() -> None:
    for chunks in every_split(STREAM):
        assert decode(chunks) == (EXPECTED, True), chunks


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    # If the LF after a chunk-final CR were a second line end, the event would end early.
    out, _ = decode([b"data: x\r", b"\ndata: y\r", b"\n\r", b"\n"])
    assert out == [b"x\ny"]


def test_lone_cr_and_lf_line_endings() -> None:
    assert decode([b"data: a\r\rdata: b\n\n"]) == ([b"a", b"b"], False)


def test_split_inside_the_field_name() -> None:
    assert decode([b"da", b"ta", b":", b" ", b"hello\n", b"\n"]) == ([b"hello"], False)


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode([b"data: one\ndata:two\ndata\ndata:  four\n\n"]) == ([b"one\ntwo\n\n four"], False)


def test_comments_and_unknown_fields_are_ignored() -> None:
    stream = b": ping\n\nevent: delta\nfoo: bar\nid: 1\ndata: x\n\n:\n\n"
    assert decode([stream]) == ([b"x"], False)


def test_event_without_data_is_not_dispatched() -> None:
    assert decode([b"event: ping\n\nid: 3\n\n"]) == ([], False)


def test_unterminated_event_at_end_is_discarded() -> None:
    assert decode([b"data: whole\n\ndata: cut"]) == ([b"whole"], False)
    assert decode([b"data: whole\n\ndata: cut\n"]) == ([b"whole"], False)


def test_done_stops_and_ignores_the_rest() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n\ndata: [DONE]\n\ndata: 2\n\n") == [b"1"]
    assert decoder.done
    assert decoder.feed(b"data: 3\n\n") == []


def test_bom_only_at_the_start() -> None:
    assert decode([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]) == ([b"x"], False)
    assert decode([b"data: \xef\xbb\xbfx\n\n"]) == ([b"\xef\xbb\xbfx"], False)
    # Bytes that merely begin like a BOM are kept.
    assert decode([b"\xef", b"data: x\n\n"]) == ([], False)  # not a valid field name: ignored


def test_an_unbounded_line_is_refused() -> None:
    decoder = SSEDecoder(max_bytes=1000)
    decoder.feed(b"data: " + b"x" * 500)
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"x" * 600)


def test_an_unbounded_event_is_refused() -> None:
    decoder = SSEDecoder(max_bytes=1000)
    with pytest.raises(SSEProtocolError):
        for _ in range(20):
            decoder.feed(b"data: " + b"x" * 100 + b"\n")


async def test_iter_sse_data_stops_at_done() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"data: 1\n", b"\ndata: [DO", b"NE]\n\n", b"data: 2\n\n"):
            yield part

    assert [p async for p in iter_sse_data(chunks())] == [b"1"]


def test_lf_only_streams_decode_as_their_crlf_twins_at_every_split() -> None:
    """A chunk without CR takes a fast path (events split at blank lines): it must give what the
    line-by-line reading gives the same stream with CRLF endings, wherever the reads are cut."""
    streams = [
        b'data: {"a":1}\n\ndata: {"b":2}\n\n',
        b": keep\n\ndata: x\ndata: y\n\nevent: e\ndata: z\n\n\n\ndata:w\n\ndata\n\n"
        b"data: [DONE]\n\ndata: after\n\n",
        b"\xef\xbb\xbfdata: 1\n\nid: 3\n\ndata:  sp\n\ndata: [DONE] \n\n",
        b"data: a\n\ndata: b",
        b"retry: 5\ndata: q\n\n\ndata: r\n\n",
    ]

    def decode(data: bytes, cuts: list[int]) -> tuple[list[bytes], bool]:
        decoder, out, prev = SSEDecoder(), [], 0
        for cut in [*cuts, len(data)]:
            out += decoder.feed(data[prev:cut])
            prev = cut
        return out, decoder.done

    for data in streams:
        expected = decode(data.replace(b"\n", b"\r\n"), [])
        for first in range(len(data) + 1):
            for second in range(first, len(data) + 1, 3):
                assert decode(data, [first, second]) == expected, (data, first, second)
