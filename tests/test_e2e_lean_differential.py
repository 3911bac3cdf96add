"""The same bytes to two real gateways, `server.lean_http` on and off: the answers match.

A handful of raw requests (good, malformed, pipelined with garbage after them, HTTP/1.0, chunked,
Expect: 100-continue, refused early, gzip) go to a gateway whose hot POSTs the lean server carries
(server/lean_http.py) and to one where aiohttp carries everything. Each exchange is compared on
what a client can see: the statuses in order, each answer's header names, content type and error
type, and whether the connection is closed after. The differences that remain are listed in
KNOWN, with why.
"""

from __future__ import annotations

import gzip
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httptools
import orjson
import pytest

from harness import SimProcess, create_key, run_gateway
from raw_http import Responses

pytestmark = pytest.mark.e2e

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]})
STREAM = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}], "stream": True}
)
# Headers whose presence depends on the answer's content, not on the server.
PER_ANSWER = {"x-faregate-request-id", "x-request-id"}


@pytest.fixture(scope="module")
def gateways(
    sim: SimProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[int, str]]]:
    ports: dict[str, tuple[int, str]] = {}
    lean_dir: Path = tmp_path_factory.mktemp("diff-lean")
    aiohttp_dir: Path = tmp_path_factory.mktemp("diff-aiohttp")
    with (
        run_gateway(lean_dir, sim, lean_http=True) as lean,
        run_gateway(aiohttp_dir, sim, lean_http=False) as plain,
    ):
        for name, gateway in (("lean", lean), ("aiohttp", plain)):
            ports[name] = (gateway.port, create_key(gateway.store_path, f"diff-{name}"))
        yield ports


def exchange(
    port: int, data: bytes, after_continue: bytes = b""
) -> tuple[list[tuple[int, dict[str, str], bytes]], bool]:
    """Send `data` (and `after_continue` once the server has said 100 Continue, so the two arrive
    in two reads), read until the server closes or is quiet for 2 s: the answers, and whether it
    closed the connection."""
    answers = Responses()
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        if after_continue:
            while not answers.done:
                answers.parser.feed_data(sock.recv(65536))
            assert answers.done[0][0] == 100, answers.done
            sock.sendall(after_continue)
        sock.settimeout(2.0)
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            try:
                answers.parser.feed_data(chunk)
            except httptools.HttpParserUpgrade:
                break
    return answers.done, closed


def seen(answers: list[tuple[int, dict[str, str], bytes]], closed: bool) -> dict[str, Any]:
    """What a client sees of an exchange, minus what differs by content (ids, dates, costs)."""
    shown = []
    for index, (status, headers, body) in enumerate(answers):
        kind = headers.get("content-type", "").split(";")[0]
        error = None
        if kind == "application/json" and status >= 400:
            error = orjson.loads(body)["error"]["type"]
        names = set(headers) - PER_ANSWER
        if closed and index == len(answers) - 1 and headers.get("connection") == "close":
            # aiohttp's error answers close without saying so; the lean server says it: the same.
            names.discard("connection")
        shown.append({"status": status, "headers": sorted(names), "type": kind, "error": error})
    return {"answers": shown, "closed": closed}


def chat(
    key: str, body: bytes = BODY, extra: str = "", version: str = "1.1", length: int | None = None
) -> bytes:
    size = len(body) if length is None else length
    head = (
        f"POST /v1/chat/completions HTTP/{version}\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n{extra}\r\n"
    )
    return head.encode() + body


def chunked(key: str, body: bytes) -> bytes:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return head.encode() + body


HALF = len(BODY) // 2
CASES: dict[str, Any] = {
    "good": lambda key: chat(key),
    "two pipelined": lambda key: chat(key) + chat(key),
    "pipelined then garbage": lambda key: chat(key) + b"NOT HTTP AT ALL\r\n\r\n",
    "pipelined then binary": lambda key: chat(key) + b"\x16\x03\x01\x00\xa5\x01",
    "not http": lambda key: b"NOT HTTP AT ALL\r\n\r\n",
    "http/1.0": lambda key: chat(key, version="1.0"),
    "http/1.0 keep-alive": lambda key: chat(key, extra="Connection: keep-alive\r\n", version="1.0"),
    "connection close": lambda key: chat(key, extra="Connection: close\r\n"),
    # HTTP/1.0 has no chunks: a stream's end is the connection's close, keep-alive asked or not.
    "http/1.0 stream": lambda key: chat(key, STREAM, version="1.0"),
    "http/1.0 keep-alive stream": lambda key: chat(
        key, STREAM, extra="Connection: keep-alive\r\n", version="1.0"
    ),
    "connection close stream": lambda key: chat(key, STREAM, extra="Connection: close\r\n"),
    # Answered (401) before the rest of the body came: the connection is kept, the rest read into
    # nothing, so that the client reads the answer instead of a reset; then closed, as asked.
    "wrong key, body to come, connection close": lambda key: chat(
        "fg-wrong", extra="Connection: close\r\n", length=len(BODY) + 100
    ),
    "wrong key, body to come, http/1.0": lambda key: chat("fg-wrong", version="1.0", length=len(BODY) + 100),
    "chunked": lambda key: chunked(
        key, b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (HALF, BODY[:HALF], len(BODY) - HALF, BODY[HALF:])
    ),
    "expect 100-continue": lambda key: chat(key, extra="Expect: 100-continue\r\n"),
    "expect 100-continue, refused": lambda key: chat("fg-wrong", extra="Expect: 100-continue\r\n"),
    "bad chunk": lambda key: chunked(key, b"zz\r\n"),
    "bad json": lambda key: chat(key, b"{not json"),
    # A gzip body (some HTTP clients compress theirs) is decoded, and its limit is its size decoded.
    "gzip body": lambda key: chat(
        key, gzip.compress(BODY), extra="Content-Encoding: gzip\r\nConnection: close\r\n"
    ),
    "gzip body past the limit": lambda key: chat(
        key,
        gzip.compress(BODY[:-2] + b" " * 2_000_000 + b"}"),
        extra="Content-Encoding: gzip\r\nConnection: close\r\n",
    ),
    "wrong key": lambda key: chat("fg-wrong"),
    "too large": lambda key: chat(key, b"", length=2_000_000),
    "get on a hot path": lambda key: b"GET /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n\r\n",
    "bad content-length": lambda key: chat(key).replace(
        b"Content-Length: %d" % len(BODY), b"Content-Length: x"
    ),
    # RFC 9112 3.2: an HTTP/1.1 request without Host, or with two, is a 400: a front proxy that
    # routes by one Host and a server that serves the other disagree on where the request goes.
    "no host": lambda key: chat(key).replace(b"Host: gw\r\n", b""),
    "two hosts": lambda key: chat(key, extra="Host: elsewhere\r\n"),
    "no host, http/1.0": lambda key: chat(key, version="1.0").replace(b"Host: gw\r\n", b""),
    # Fields of which a message has one (aiohttp's singletons): two are a 400 as well.
    "two content-types": lambda key: chat(key, extra="Content-Type: text/plain\r\n"),
    "two user-agents": lambda key: chat(key, extra="User-Agent: a\r\nUser-Agent: b\r\n"),
    # Past aiohttp's limits (8190 bytes a line or a field, 128 fields): a 400 from both.
    "a field too long": lambda key: chat(key, extra=f"X-Long: {'a' * 8200}\r\n"),
    "too many fields": lambda key: chat(key, extra="".join(f"X-F{i}: v\r\n" for i in range(130))),
    "a url too long": lambda key: chat(key).replace(b"completions ", b"completions?q=" + b"a" * 8200 + b" "),
    "fields at the limits": lambda key: chat(
        key, extra=f"X-Long: {'a' * 8000}\r\n" + "".join(f"X-F{i}: v\r\n" for i in range(120))
    ),
}
# Bytes that are not HTTP after a good request in the same read: aiohttp's parser fails the whole
# read, so it answers the 400 alone and the good request is never served; the lean server answers
# the good request, then hands the rest to aiohttp, which answers the same 400.
ANSWERED_FIRST = {"pipelined then garbage", "pipelined then binary"}
# A stream to an HTTP/1.0 client ends with the connection (it has no chunks), keep-alive asked or
# not: left open, the client never learns the answer is whole.
ENDED_BY_CLOSE = {"http/1.0 stream", "http/1.0 keep-alive stream", "connection close stream"}


@pytest.mark.parametrize("case", list(CASES))
def test_both_servers_answer_the_same_bytes_alike(gateways: dict[str, tuple[int, str]], case: str) -> None:
    views = {}
    for name, (port, key) in gateways.items():
        views[name] = seen(*exchange(port, CASES[case](key)))
    lean, plain = views["lean"], views["aiohttp"]
    if case in ANSWERED_FIRST:
        assert lean["answers"][0]["status"] == 200
        lean = {**lean, "answers": lean["answers"][1:]}
    assert lean == plain
    if case in ENDED_BY_CLOSE:
        assert plain["closed"], plain  # (an answer whose end is the close is not parsed whole here)
    for answer in lean["answers"]:
        if answer["status"] >= 400:
            assert answer["type"] == "application/json" and answer["error"], (case, answer)


def test_a_body_sent_after_100_continue_is_answered_on_both_servers(
    gateways: dict[str, tuple[int, str]],
) -> None:
    """aiohttp's expect handler (100 Continue) runs in its router, which the hot POSTs skip
    (server/runner.py): with server.lean_http off, a client that waits for the 100 before sending
    its body (curl waits a second for a large one; others until their own timeout) was never told.
    Said when the body is first read and has not all come, as the lean server says it."""
    for name, (port, key) in gateways.items():
        head = chat(key, b"", extra="Expect: 100-continue\r\n", length=len(BODY))
        answers, _ = exchange(port, head, after_continue=BODY)
        assert [status for status, _, _ in answers] == [100, 200], (name, answers)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback"])
def test_a_body_that_turns_out_malformed_is_a_400_on_both_servers(
    gateways: dict[str, tuple[int, str]], path: str
) -> None:
    """aiohttp's C parser, refusing a chunk in a read after the head's, dropped the body its handler
    was waiting for without telling it: the request hung until the client gave up. aiohttp carries
    the hot POSTs with server.lean_http off, and every other POST (here /v1/feedback) either way.
    Now the body's reader is told: a 400 in OpenAI's format that says `Connection: close` (with
    aiohttp it closed the connection unannounced), the connection closed."""
    for name, (port, key) in gateways.items():
        head = (
            f"POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
        )
        answers, closed = exchange(port, head.encode(), after_continue=b"zz\r\n")
        assert [status for status, _, _ in answers] == [100, 400], (name, path, answers)
        error = orjson.loads(answers[1][2])["error"]
        assert error["type"] == "invalid_request_error", (name, path, error)
        assert error["message"].startswith("Malformed request body: "), (name, path, error)
        assert answers[1][1].get("connection") == "close", (name, path, answers[1][1])
        assert closed, (name, path)
