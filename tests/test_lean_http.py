"""The lean HTTP/1.1 server (server/lean_http.py) at the transport seam: a fake transport feeds it
bytes as a socket would (split anywhere, pipelined, chunked) and collects what it writes; the
requests it does not serve go to a real aiohttp server, as in the gateway."""

from __future__ import annotations

import asyncio
import gzip
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson
import pytest
from aiohttp import web

from faregate.errors import FaregateError
from faregate.server import lean_http
from faregate.server.client_wires import CHAT
from faregate.server.http_seam import HttpRequest, Reply, Whole
from faregate.server.lean_http import LeanConnection
from faregate.server.lean_server import LeanServer

MAX_BODY = 1000


class FakeTransport:
    """What a connection's socket does, in memory."""

    def __init__(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol
        self.out = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.out += data

    def writelines(self, lines: list[bytes]) -> None:
        for line in lines:
            self.write(line)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)  # type: ignore[attr-defined]

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 4000)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.close()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


@dataclass
class Parsed:
    status: int
    headers: dict[str, str]
    body: bytes
    version: str


@dataclass
class _Collector:
    responses: list[Parsed] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    parser: Any = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        version = self.parser.get_http_version()
        self.responses.append(Parsed(status, self.headers, bytes(self.body), version))
        self.headers, self.body = {}, bytearray()


def parse(out: bytes) -> list[Parsed]:
    """Every whole response in `out` (a 100 Continue included)."""
    collector = _Collector()
    collector.parser = httptools.HttpResponseParser(collector)
    collector.parser.feed_data(bytes(out))
    return collector.responses


# -- the handlers the lean server serves ---------------------------------------------------------

Handler = Callable[[HttpRequest], Any]
events: list[str] = []


async def echo(http: HttpRequest) -> Reply:
    """As the pipelines read: the declared length first, then the body."""
    try:
        length = http.content_length
        if length is not None and length > MAX_BODY:
            from faregate.errors import PayloadTooLarge

            raise PayloadTooLarge(f"Request body is {length} bytes; the limit is {MAX_BODY} bytes.")
        body = await http.read()
    except FaregateError as error:
        return Whole(CHAT.status(error), CHAT.error(error), {"x-req": "1"})
    return Whole(
        200, orjson.dumps({"body": body.decode(), "auth": http.headers.get("authorization")}), {"x-req": "1"}
    )


async def refuse(http: HttpRequest) -> Reply:
    """Answers without reading the body (a 401)."""
    return Whole(401, b'{"error":{}}', {"x-req": "2"})


async def stream(http: HttpRequest) -> Reply:
    await http.read()
    events.clear()
    out = await http.open_stream({"x-req": "3"})
    try:
        for word in (b"data: one\n\n", b"data: two\n\n"):
            await out.write(word)
            events.append("wrote")
            await asyncio.sleep(0)
        await out.write_eof()
        events.append("eof")
    except ConnectionResetError:
        events.append("client gone")
    return out


gate: asyncio.Event | None = None


async def slow(http: HttpRequest) -> Reply:
    await http.read()
    assert gate is not None
    await gate.wait()
    return Whole(200, b"{}", {})


async def fallback_handler(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text=f"aiohttp {request.method} {request.path} {await request.text()}")


@pytest.fixture
async def server() -> LeanServer:
    routes = {
        ("POST", "/echo"): echo,
        ("POST", "/refuse"): refuse,
        ("POST", "/stream"): stream,
        ("POST", "/slow"): slow,
    }
    return LeanServer(web.Server(fallback_handler), routes, MAX_BODY)  # type: ignore[arg-type]


def connect(server: LeanServer) -> tuple[LeanConnection, FakeTransport]:
    conn = server()
    transport = FakeTransport(conn)
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


async def settle(condition: Callable[[], bool] | None = None) -> None:
    for _ in range(200):
        await asyncio.sleep(0)
        if condition is not None and condition():
            return
    if condition is not None:
        raise AssertionError("the server did not get there")


def post(path: str, body: bytes = b"{}", extra: str = "", version: str = "1.1") -> bytes:
    head = f"POST {path} HTTP/{version}\r\nHost: gw\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def send(transport: FakeTransport, *chunks: bytes) -> None:
    for chunk in chunks:
        transport.protocol.data_received(chunk)  # type: ignore[attr-defined]


# -- tests --------------------------------------------------------------------------------------


async def test_keep_alive_serves_one_request_after_another(server: LeanServer) -> None:
    conn, transport = connect(server)
    send(transport, post("/echo", b"first", "Authorization: Bearer k\r\n"))
    await settle(lambda: len(parse(transport.out)) == 1)
    send(transport, post("/echo", b"second"))
    await settle(lambda: len(parse(transport.out)) == 2)
    first, second = parse(transport.out)
    assert first.status == 200 and orjson.loads(first.body) == {"body": "first", "auth": "Bearer k"}
    assert first.headers["x-req"] == "1" and first.headers["content-type"] == "application/json"
    assert first.headers["content-length"] == str(len(first.body)) and "date" in first.headers
    assert orjson.loads(second.body)["body"] == "second"
    assert not transport.closed and transport.protocol is conn


async def test_a_request_split_anywhere(server: LeanServer) -> None:
    _, transport = connect(server)
    raw = post("/echo", b'{"a": 1}', "X-Long: " + "v" * 50 + "\r\n")
    send(transport, *[raw[i : i + 1] for i in range(len(raw))])
    await settle(lambda: len(parse(transport.out)) == 1)
    assert orjson.loads(parse(transport.out)[0].body)["body"] == '{"a": 1}'


async def test_pipelined_requests_in_one_read_are_answered_in_order(server: LeanServer) -> None:
    _, transport = connect(server)
    send(transport, post("/echo", b"1") + post("/echo", b"22") + post("/echo", b"333"))
    await settle(lambda: len(parse(transport.out)) == 3)
    assert [orjson.loads(r.body)["body"] for r in parse(transport.out)] == ["1", "22", "333"]


async def test_pipelined_requests_split_across_reads(server: LeanServer) -> None:
    _, transport = connect(server)
    raw = post("/echo", b"abc") + post("/echo", b"defg") + post("/stream")
    send(transport, raw[:30], raw[30:75], raw[75:])
    await settle(lambda: len(parse(transport.out)) == 3)
    answers = parse(transport.out)
    assert [orjson.loads(r.body)["body"] for r in answers[:2]] == ["abc", "defg"]
    assert answers[2].body == b"data: one\n\ndata: two\n\n"


async def test_chunked_request_body(server: LeanServer) -> None:
    _, transport = connect(server)
    head = b"POST /echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    send(transport, head, b"5\r\nhello\r\n", b"6\r\n world\r\n0\r\n\r\n")
    await settle(lambda: len(parse(transport.out)) == 1)
    assert orjson.loads(parse(transport.out)[0].body)["body"] == "hello world"


async def test_expect_100_continue(server: LeanServer) -> None:
    _, transport = connect(server)
    send(transport, b"POST /echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    await settle(lambda: bytes(transport.out).startswith(b"HTTP/1.1 100 Continue\r\n\r\n"))
    send(transport, b"body")
    await settle(lambda: b"200 OK" in transport.out)
    assert orjson.loads(bytes(transport.out).split(b"\r\n\r\n", 2)[2])["body"] == "body"


async def test_no_continue_for_a_request_refused_before_its_body(server: LeanServer) -> None:
    _, transport = connect(server)
    send(transport, b"POST /refuse HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    await settle(lambda: len(parse(transport.out)) == 1)
    assert b"100 Continue" not in transport.out and parse(transport.out)[0].status == 401


async def test_an_answer_before_the_body_then_the_next_request(server: LeanServer) -> None:
    """The rest of the body is read into nothing, then the connection goes on."""
    _, transport = connect(server)
    raw = post("/refuse", b"x" * 500)
    send(transport, raw[:80])
    await settle(lambda: len(parse(transport.out)) == 1)
    send(transport, raw[80:] + post("/echo", b"next"))
    await settle(lambda: len(parse(transport.out)) == 2)
    assert orjson.loads(parse(transport.out)[1].body)["body"] == "next" and not transport.closed


@pytest.mark.parametrize(
    ("extra", "version"), [("Connection: close\r\n", "1.1"), ("", "1.0")], ids=["close", "http/1.0"]
)
async def test_an_answer_before_the_body_to_a_closing_request_closes_once_the_rest_is_read(
    server: LeanServer, extra: str, version: str
) -> None:
    """A connection that ends with its answer still reads the rest of the body into nothing before
    it closes, as aiohttp does: closed with unread bytes in its socket, the kernel resets it, and
    the client may lose the answer (a 401 to a large upload) for a reset."""
    _, transport = connect(server)
    raw = post("/refuse", b"x" * 500, extra, version)
    send(transport, raw[:80])
    await settle(lambda: len(parse(transport.out)) == 1)
    await settle()
    assert parse(transport.out)[0].status == 401 and not transport.closed
    send(transport, raw[80:])
    await settle(lambda: transport.closed)
    assert len(parse(transport.out)) == 1


@pytest.mark.parametrize("path", ["/refuse", "/echo"])
async def test_a_body_read_into_nothing_is_not_kept(server: LeanServer, path: str) -> None:
    """A 401 (or a 413) is answered at the head; the rest of the body, read for LINGER_S, must not
    pile up in memory: a client without a key could send gigabytes into it."""
    import tracemalloc

    _, transport = connect(server)
    send(transport, f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000000000\r\n\r\n".encode())
    await settle(lambda: len(parse(transport.out)) == 1)
    assert parse(transport.out)[0].status in (401, 413)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(32):
            send(transport, bytes([65 + i % 26]) * (1 << 20))  # a new 1 MiB read each time
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 4 << 20, f"{kept} bytes kept of 32 MiB read into nothing"
    assert not transport.closed


async def test_a_request_pipelined_behind_a_body_too_big_to_keep_closes_the_connection(
    server: LeanServer,
) -> None:
    # Its start cannot be found in bytes no longer kept: the connection closes instead.
    _, transport = connect(server)
    size = lean_http.MAX_HEAD_BYTES + 3 * MAX_BODY
    send(transport, post("/refuse", b"x" * size)[:-10])
    await settle(lambda: len(parse(transport.out)) == 1)
    send(transport, b"x" * 10 + post("/echo", b"next"))
    await settle(lambda: transport.closed)
    assert [r.status for r in parse(transport.out)] == [401]


async def test_trailers_are_not_kept(server: LeanServer) -> None:
    conn, transport = connect(server)
    send(transport, b"POST /echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n")
    for _ in range(1000):
        send(transport, b"X-Trailer: " + b"a" * 100 + b"\r\n")
    assert len(conn._headers) < 5  # the head's: trailers are not read


async def test_oversized_bodies_are_413(server: LeanServer) -> None:
    _, transport = connect(server)
    send(transport, post("/echo", b"x" * (MAX_BODY + 1)))
    await settle(lambda: len(parse(transport.out)) == 1)
    answer = parse(transport.out)[0]
    assert answer.status == 413 and orjson.loads(answer.body)["error"]["type"] == "invalid_request_error"
    # A chunked body has no declared length: read() stops buffering past the limit.
    _, transport = connect(server)
    head = b"POST /echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%b\r\n" % (600, b"y" * 600)
    send(transport, head, chunk, chunk, b"0\r\n\r\n")
    await settle(lambda: len(parse(transport.out)) == 1)
    answer = parse(transport.out)[0]
    assert answer.status == 413 and b"larger than the limit" in answer.body


async def test_malformed_chunked_body_is_400_and_closes(server: LeanServer) -> None:
    _, transport = connect(server)
    send(transport, b"POST /echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    await settle(lambda: transport.closed)
    answer = parse(transport.out)[0]
    assert answer.status == 400 and answer.headers["connection"] == "close"


async def test_a_malformed_request_goes_to_aiohttp(server: LeanServer) -> None:
    conn, transport = connect(server)
    send(transport, b"NOT HTTP AT ALL\r\n\r\n")
    await settle(lambda: transport.closed)
    assert transport.protocol is not conn and b" 400 Bad Request" in transport.out


async def test_an_endless_head_is_not_kept_but_refused_by_aiohttp(server: LeanServer) -> None:
    """llhttp bounds no head: past MAX_HEAD_BYTES of an unfinished one the connection is aiohttp's,
    whose field limit answers 400, and nothing more is buffered here."""
    conn, transport = connect(server)
    send(transport, b"POST /echo HTTP/1.1\r\nHost: gw\r\nX-Big: ")
    for _ in range(lean_http.MAX_HEAD_BYTES // 4096 + 1):
        send(transport, b"v" * 4096)
        if transport.protocol is not conn:
            break
    assert transport.protocol is not conn and conn._raw == []
    await settle(lambda: transport.closed)
    assert b" 400 " in transport.out.split(b"\r\n")[0]


async def test_hand_off_to_aiohttp_mid_connection(server: LeanServer) -> None:
    """A lean request, then another path on the same connection: aiohttp gets that request's bytes
    from its first one, and the connection from then on."""
    conn, transport = connect(server)
    send(transport, post("/echo", b"lean"))
    await settle(lambda: len(parse(transport.out)) == 1)
    get = b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"
    send(transport, get[:10], get[10:] + post("/other", b"later"))
    await settle(lambda: len(parse(transport.out)) == 3)
    answers = parse(transport.out)
    assert orjson.loads(answers[0].body)["body"] == "lean"
    assert answers[1].body == b"aiohttp GET /health " and answers[2].body == b"aiohttp POST /other later"
    assert transport.protocol is not conn and conn not in server.lean
    await server.shutdown(1)


async def test_pipelined_lean_then_other_in_one_read(server: LeanServer) -> None:
    _, transport = connect(server)
    send(transport, post("/echo", b"a") + b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
    await settle(lambda: len(parse(transport.out)) == 2)
    answers = parse(transport.out)
    assert orjson.loads(answers[0].body)["body"] == "a" and answers[1].body == b"aiohttp GET /x "
    await server.shutdown(1)


async def test_connection_close_and_http_1_0(server: LeanServer) -> None:
    _, transport = connect(server)
    send(transport, post("/echo", b"1", "Connection: close\r\n"))
    await settle(lambda: transport.closed)
    assert parse(transport.out)[0].headers["connection"] == "close"
    _, transport = connect(server)
    send(transport, post("/echo", b"1", version="1.0"))
    await settle(lambda: transport.closed)
    assert bytes(transport.out).startswith(b"HTTP/1.0 200 OK\r\n")
    _, transport = connect(server)
    send(transport, post("/echo", b"1", "Connection: keep-alive\r\n", version="1.0"))
    await settle(lambda: b"\r\n\r\n" in transport.out)
    await settle()
    assert b"Connection: keep-alive" in transport.out and not transport.closed


async def test_event_stream_is_chunked_and_keeps_the_connection(server: LeanServer) -> None:
    _, transport = connect(server)
    send(transport, post("/stream") + post("/echo", b"after"))
    await settle(lambda: len(parse(transport.out)) == 2)
    streamed, after = parse(transport.out)
    assert streamed.headers["transfer-encoding"] == "chunked"
    assert streamed.headers["content-type"] == "text/event-stream" and streamed.headers["x-req"] == "3"
    assert streamed.body == b"data: one\n\ndata: two\n\n" and orjson.loads(after.body)["body"] == "after"
    # HTTP/1.0 has no chunks: the body ends with the connection.
    _, transport = connect(server)
    send(transport, post("/stream", version="1.0"))
    await settle(lambda: transport.closed)
    assert bytes(transport.out).endswith(b"\r\n\r\ndata: one\n\ndata: two\n\n")


async def test_a_client_gone_mid_stream_fails_the_next_write(server: LeanServer) -> None:
    conn, transport = connect(server)
    send(transport, post("/stream"))
    await settle(lambda: events == ["wrote"])
    conn.connection_lost(ConnectionResetError())
    transport.closed = True
    await settle(lambda: events[-1:] == ["client gone"])


async def test_a_full_write_buffer_holds_the_writer(server: LeanServer) -> None:
    conn, transport = connect(server)
    conn.pause_writing()
    events.append("before")
    send(transport, post("/stream"))
    await settle(lambda: b"data: one" in transport.out)
    await settle()
    assert events == []  # the first write waits for the buffer to drain
    conn.resume_writing()
    await settle(lambda: events[-1:] == ["eof"])


async def test_an_abort_ends_a_write_waiting_for_a_client_that_does_not_read(server: LeanServer) -> None:
    """The responder drops a stream its client has not read by the request's deadline
    (server/responses.py): the write waiting for room raises, and the connection is gone."""
    conn, transport = connect(server)
    conn.pause_writing()  # the client's window is full, and stays so
    send(transport, post("/stream"))
    await settle(lambda: b"data: one" in transport.out)
    request = conn._request
    assert request is not None and events == []
    request.abort()
    await settle(lambda: events[-1:] == ["client gone"])
    assert transport.closed and conn.lost


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_an_encoded_body_goes_to_aiohttp_which_decodes_it(server: LeanServer, encoding: str) -> None:
    """A Content-Encoding body (some HTTP clients gzip theirs) is aiohttp's, which decodes it (and
    says which encoding it cannot); read as it came, it was a 400 "not valid JSON"."""
    conn, transport = connect(server)
    body = gzip.compress(b"hi") if encoding == "gzip" else zlib.compress(b"hi")
    raw = (
        f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Encoding: {encoding}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    send(transport, raw)
    await settle(lambda: bool(parse(transport.out)))
    assert transport.protocol is not conn  # handed over
    assert parse(transport.out)[0].body == b"aiohttp POST /echo hi"


async def test_an_identity_encoded_body_stays_lean(server: LeanServer) -> None:
    conn, transport = connect(server)
    raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Encoding: identity\r\nContent-Length: 2\r\n\r\nhi"
    send(transport, raw)
    await settle(lambda: bool(parse(transport.out)))
    assert transport.protocol is conn and orjson.loads(parse(transport.out)[0].body)["body"] == "hi"


async def test_shutdown_closes_idle_connections_and_waits_for_busy_ones(server: LeanServer) -> None:
    global gate
    gate = asyncio.Event()
    _, idle = connect(server)
    _, busy = connect(server)
    send(busy, post("/slow"))
    await settle()
    server.pre_shutdown()
    await settle(lambda: idle.closed)
    assert not busy.closed
    stopping = asyncio.ensure_future(server.shutdown(5))
    await settle()
    assert not stopping.done()
    gate.set()
    await stopping
    assert parse(busy.out)[0].status == 200 and busy.closed
    assert parse(busy.out)[0].headers.get("connection") == "close"


async def bad_header(http: HttpRequest) -> Reply:
    return Whole(200, b"{}", {"x-bad": "one\r\nInjected: yes"})


async def test_a_header_value_with_a_newline_is_never_written(server: LeanServer) -> None:
    server.lean_routes[(b"POST", b"/bad")] = bad_header
    _, transport = connect(server)
    send(transport, post("/bad"))
    await settle(lambda: transport.closed)
    assert b"Injected" not in transport.out


async def test_a_client_gone_before_its_body_fails_the_read(server: LeanServer) -> None:
    seen: list[str] = []

    async def reader(http: HttpRequest) -> Reply:
        try:
            await http.read()
        except ConnectionResetError:
            seen.append("reset")
        return Whole(200, b"{}", {})

    server.lean_routes[(b"POST", b"/read")] = reader
    conn, transport = connect(server)
    send(transport, post("/read", b"x" * 100)[:-50])
    await settle()
    transport.closed = True
    conn.connection_lost(None)
    await settle(lambda: seen == ["reset"])
    assert not server.tasks or all(task.done() for task in server.tasks)


async def test_a_handler_that_raises_is_a_clean_500(server: LeanServer) -> None:
    async def broken(http: HttpRequest) -> Reply:
        raise RuntimeError("a bug")

    server.lean_routes[(b"POST", b"/broken")] = broken
    _, transport = connect(server)
    send(transport, post("/broken") + post("/echo", b"after"))
    await settle(lambda: len(parse(transport.out)) == 2)
    failed, after = parse(transport.out)
    assert failed.status == 500 and orjson.loads(failed.body)["error"]["code"] == "internal_error"
    assert b"a bug" not in failed.body and orjson.loads(after.body)["body"] == "after"


async def test_a_streams_last_piece_goes_with_its_end_in_one_write() -> None:
    """`write_eof(data)`: the same bytes as `write(data)` then `write_eof()`, in one write."""
    from faregate.server.lean_request import LeanStream

    class Conn:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        async def drain(self) -> None:
            return None

    for chunked in (True, False):
        apart, together = Conn(), Conn()
        one = LeanStream(apart, chunked)  # type: ignore[arg-type]
        await one.write(b"data: [DONE]\n\n")
        await one.write_eof()
        other = LeanStream(together, chunked)  # type: ignore[arg-type]
        await other.write_eof(b"data: [DONE]\n\n")
        await other.write_eof(b"late")  # ended: nothing more
        assert b"".join(together.writes) == b"".join(apart.writes)
        assert len(together.writes) == 1


async def test_a_lean_answer_carries_the_headers_an_aiohttp_one_does(server: LeanServer) -> None:
    """Server, Date, Content-Type, Content-Length: the same names whichever server answers."""
    _, transport = connect(server)
    send(transport, post("/refuse") + b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
    await settle(lambda: len(parse(transport.out)) == 2)
    lean, aiohttp = parse(transport.out)
    assert lean.status == 401 and aiohttp.body == b"aiohttp GET /x "
    assert set(lean.headers) - {"x-req"} == set(aiohttp.headers)
    assert lean.headers["server"] == aiohttp.headers["server"]
    await server.shutdown(1)


async def test_garbage_after_a_pipelined_request_is_answered_400_in_openai_format_after_it() -> None:
    """The gateway's aiohttp server answers its own errors as OpenAI JSON (server/http_errors.py):
    the bytes after a served request that are not HTTP get that 400, after the earlier answer."""
    from faregate.server.http_errors import errors_in_openai_format

    fallback = errors_in_openai_format(web.Server(fallback_handler))
    server = LeanServer(fallback, {("POST", "/echo"): echo}, MAX_BODY)  # type: ignore[arg-type]
    for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01"):
        for split in (False, True):
            _, transport = connect(server)
            if split:
                send(transport, post("/echo", b"a"))
                await settle(lambda t=transport: len(parse(t.out)) == 1)
                send(transport, garbage)
            else:
                send(transport, post("/echo", b"a") + garbage)
            await settle(lambda t=transport: t.closed)
            first, second = parse(transport.out)
            assert first.status == 200 and orjson.loads(first.body)["body"] == "a"
            assert second.status == 400 and second.headers["content-type"] == "application/json"
            error = orjson.loads(second.body)["error"]
            assert error["type"] == "invalid_request_error" and "not valid HTTP" in error["message"]
    await server.shutdown(1)


@pytest.mark.parametrize("path", ["/echo", "/elsewhere"])
@pytest.mark.parametrize("stray", [b"\x01", b"\r", b"\x00"])
async def test_a_head_refused_for_its_key_header_never_logs_the_key(
    caplog: pytest.LogCaptureFixture, path: str, stray: bytes
) -> None:
    """aiohttp logged the parser's complaint with the offending header line, an Authorization
    header's key included (a key read from a file with a stray byte): the log says what was wrong
    and where from, never the bytes."""
    from faregate.server.http_errors import errors_in_openai_format

    fallback = errors_in_openai_format(web.Server(fallback_handler))
    server = LeanServer(fallback, {("POST", "/echo"): echo}, MAX_BODY)  # type: ignore[arg-type]
    secret = b"fg-" + b"S3cr3t" * 6
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n".encode()
    _, transport = connect(server)
    with caplog.at_level("DEBUG"):
        send(transport, head + b"Authorization: Bearer " + secret + stray + b"\r\n\r\na")
        await settle(lambda: transport.closed)
    (answer,) = parse(transport.out)
    assert answer.status == 400 and "not valid HTTP" in orjson.loads(answer.body)["error"]["message"]
    logged = caplog.text + "".join(
        logging.Formatter().formatException(r.exc_info) for r in caplog.records if r.exc_info
    )
    assert secret.decode() not in logged and "S3cr3t" not in logged
    assert "not valid HTTP: Invalid header value char" in logged or "Missing expected LF" in logged
    await server.shutdown(1)


async def test_a_key_header_too_long_for_aiohttp_is_not_logged_either(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # aiohttp's complaint about a field past its limit quotes the field's first 100 bytes.
    from faregate.server.http_errors import errors_in_openai_format

    fallback = errors_in_openai_format(web.Server(fallback_handler))
    server = LeanServer(fallback, {("POST", "/echo"): echo}, MAX_BODY)  # type: ignore[arg-type]
    secret = b"fg-" + b"S3cr3t" * 6
    _, transport = connect(server)
    with caplog.at_level("DEBUG"):
        send(transport, b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret)
        send(transport, b" " + b"x" * 9000 + b"\r\n\r\n")
        await settle(lambda: transport.closed)
    (answer,) = parse(transport.out)
    assert answer.status == 400
    assert "S3cr3t" not in caplog.text and "Got more than 8190 bytes when reading" in caplog.text
    await server.shutdown(1)


async def test_a_request_aiohttp_refuses_for_its_host_is_handed_over_and_answered_400() -> None:
    from faregate.server.http_errors import errors_in_openai_format

    fallback = errors_in_openai_format(web.Server(fallback_handler))
    server = LeanServer(fallback, {("POST", "/echo"): echo}, MAX_BODY)  # type: ignore[arg-type]
    for request, said in (
        (post("/echo", b"a").replace(b"Host: gw\r\n", b""), "Missing 'Host' header in request."),
        (post("/echo", b"a", extra="Host: other\r\n"), "Duplicate 'Host' header found."),
    ):
        _, transport = connect(server)
        send(transport, request)
        await settle(lambda t=transport: t.closed)
        (answer,) = parse(transport.out)
        assert answer.status == 400
        assert orjson.loads(answer.body)["error"]["message"] == f"The request is not valid HTTP: {said}"
    await server.shutdown(1)


async def test_a_connection_runs_its_requests_in_one_task(server: LeanServer) -> None:
    _, transport = connect(server)
    send(transport, post("/echo", b"one") + post("/echo", b"two"))
    await settle(lambda: len(parse(transport.out)) == 2)
    (worker,) = server.tasks
    send(transport, post("/echo", b"three"))
    await settle(lambda: len(parse(transport.out)) == 3)
    assert server.tasks == {worker} and not worker.done()  # idle, waiting for the next request
    transport.close()
    await settle(lambda: worker.done())
    assert [orjson.loads(r.body)["body"] for r in parse(transport.out)] == ["one", "two", "three"]


async def test_the_keepalive_timer_is_armed_once_and_closes_an_idle_connection(server: LeanServer) -> None:
    global gate
    conn, transport = connect(server)
    armed = conn._keepalive
    send(transport, post("/echo", b"one"))
    await settle(lambda: len(parse(transport.out)) == 1)
    assert conn._keepalive is armed  # not re-armed per request
    loop = asyncio.get_running_loop()
    # Fired while busy: nothing closes, and it is armed again once the request is answered.
    gate = asyncio.Event()
    send(transport, post("/slow"))
    await settle()
    conn._cancel_keepalive()
    conn._idle_timeout()
    assert not transport.closed and conn._keepalive is None
    gate.set()
    await settle(lambda: len(parse(transport.out)) == 2)
    assert conn._keepalive is not None
    # Fired before the connection has been idle for KEEPALIVE_S: armed again for the rest.
    conn._cancel_keepalive()
    conn._idle_timeout()
    assert not transport.closed and conn._keepalive is not None
    assert conn._keepalive.when() == pytest.approx(conn._idle_since + lean_http.KEEPALIVE_S, abs=1)
    # Idle for longer: closed.
    conn._cancel_keepalive()
    conn._idle_since = loop.time() - lean_http.KEEPALIVE_S - 1
    conn._idle_timeout()
    assert transport.closed


@pytest.mark.parametrize(
    "partial", [b"POST /echo HTTP/1.1\r\nHost: x\r\n", post("/echo", b"0123456789")[:-4]]
)
async def test_a_request_that_stops_arriving_is_cut_off(server: LeanServer, partial: bytes) -> None:
    """Half a head, or a head and half its body, then nothing: the connection is closed once
    nothing has come for KEEPALIVE_S (else it would be held for ever), not while bytes still come."""
    conn, transport = connect(server)
    send(transport, partial)
    await settle()
    loop = asyncio.get_running_loop()
    conn._cancel_keepalive()
    conn._idle_since = loop.time() - lean_http.KEEPALIVE_S - 1  # the timer's own deadline passed
    conn._idle_timeout()  # but bytes came just now: armed again for the rest
    assert not transport.closed and conn._keepalive is not None
    assert conn._keepalive.when() == pytest.approx(conn._data_at + lean_http.KEEPALIVE_S, abs=1)
    conn._cancel_keepalive()
    conn._data_at = loop.time() - lean_http.KEEPALIVE_S - 1
    conn._idle_timeout()
    assert transport.closed and not parse(transport.out)
    await settle(lambda: not server.tasks or all(t.done() for t in server.tasks))


async def test_shutdown_without_pre_shutdown_does_not_wait_for_idle_connections(server: LeanServer) -> None:
    _, transport = connect(server)
    send(transport, post("/echo", b"one"))
    await settle(lambda: len(parse(transport.out)) == 1)
    (worker,) = server.tasks
    await asyncio.wait_for(server.shutdown(60), 5)  # the idle connection's task ends at once
    assert worker.done() and transport.closed


@pytest.mark.parametrize(
    "endless",
    [
        b"X-Trailer: " + b"a" * 100 + b"\r\n",  # trailers after the last chunk
        b";ext=" + b"a" * 100,  # the last chunk's extensions
    ],
    ids=["trailers", "chunk-extensions"],
)
async def test_a_message_that_never_ends_is_413_and_closes(
    server: LeanServer, endless: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Endless trailers (or chunk extensions) add nothing to the body, so neither its limit nor the idle
    timeout (bytes keep coming) ended the request: the connection was held for ever. A message
    past a head, twice the body limit and its framing is answered 413, and the connection closes
    (after the rest is read into nothing for at most LINGER_S, so the client reads the answer)."""
    monkeypatch.setattr(lean_http, "LINGER_S", 0.05)
    _, transport = connect(server)
    head = b"POST /echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
    send(transport, head + (b"0\r\n" if endless.startswith(b"X-") else b"0"))
    for _ in range((lean_http.MAX_HEAD_BYTES + 2 * MAX_BODY) // len(endless) + 10):
        send(transport, endless)
    await settle(lambda: len(parse(transport.out)) == 1)
    answer = parse(transport.out)[0]
    assert answer.status == 413 and answer.headers["connection"] == "close"
    assert orjson.loads(answer.body)["error"]["type"] == "invalid_request_error"
    for _ in range(20):  # still coming: read into nothing, then closed
        send(transport, endless)
        await asyncio.sleep(0.01)
    assert transport.closed
    await settle(lambda: not server.tasks or all(t.done() for t in server.tasks))


async def test_a_request_that_keeps_trickling_in_past_request_s_is_408_and_closes(
    server: LeanServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that comes a byte at a time never stops arriving, so the idle cut-off never fired:
    a request that is not whole REQUEST_S after it began is answered 408 and the connection
    closes. (A head that is not whole by then is closed without an answer: nothing serves it.)"""
    monkeypatch.setattr(lean_http, "LINGER_S", 0.05)
    conn, transport = connect(server)
    send(transport, post("/echo", b"0123456789")[:-8])
    await settle()
    loop = asyncio.get_running_loop()
    conn._cancel_keepalive()
    conn._idle_timeout()  # fired before REQUEST_S: armed again, no answer
    assert not parse(transport.out) and conn._keepalive is not None
    assert conn._keepalive.when() <= conn._message_at + lean_http.REQUEST_S + 1
    conn._cancel_keepalive()
    conn._message_at = loop.time() - lean_http.REQUEST_S - 1
    send(transport, b"2")  # bytes still coming
    conn._idle_timeout()
    await settle(lambda: len(parse(transport.out)) == 1)
    answer = parse(transport.out)[0]
    assert answer.status == 408 and answer.headers["connection"] == "close"
    for _ in range(20):
        send(transport, b"3")
        await asyncio.sleep(0.01)
    assert transport.closed

    conn, transport = connect(server)
    send(transport, b"POST /echo HTTP/1.1\r\nHost: gw\r\n")
    await settle()
    conn._cancel_keepalive()
    conn._message_at = loop.time() - lean_http.REQUEST_S - 1
    send(transport, b"X: 1\r\n")
    conn._idle_timeout()
    assert transport.closed and not parse(transport.out)


async def test_a_pipelined_request_that_stops_arriving_is_still_timed(server: LeanServer) -> None:
    """The idle timer is dropped when it fires while a request is handled, and armed again once
    the connection is idle: a request pipelined behind it, whose head was whole, left it off, so
    its body could stop arriving (or trickle in) with nothing to cut it off."""
    global gate
    conn, transport = connect(server)
    gate = asyncio.Event()
    send(transport, post("/slow"))
    await settle()
    conn._cancel_keepalive()
    conn._idle_timeout()  # fired while busy: off until idle
    assert conn._keepalive is None
    send(transport, post("/echo", b"0123456789")[:-4])  # pipelined, its body not whole
    gate.set()
    await settle(lambda: len(parse(transport.out)) == 1)
    assert conn._request is not None and conn._keepalive is not None


async def test_a_messages_handler_that_raises_is_a_500_in_anthropics_shape(server: LeanServer) -> None:
    """A Messages client reads errors as Anthropic's {"type": "error", "error": {...}}, whichever
    server answers: the lean one's own 500 too."""

    async def broken(http: HttpRequest) -> Reply:
        raise RuntimeError("a bug")

    server.lean_routes[(b"POST", b"/v1/messages")] = broken
    _, transport = connect(server)
    send(transport, post("/v1/messages"))
    await settle(lambda: len(parse(transport.out)) == 1)
    (failed,) = parse(transport.out)
    body = orjson.loads(failed.body)
    assert failed.status == 500 and body["type"] == "error" and body["error"]["type"] == "api_error"
    assert b"a bug" not in failed.body


async def test_aiohttps_own_500_under_messages_is_in_anthropics_shape() -> None:
    """A handler that raises past the middlewares (the runner's fast routes skip them) is answered
    by aiohttp's handle_error (server/http_errors.py): in Anthropic's shape under /v1/messages, in
    OpenAI's elsewhere."""
    from faregate.server.http_errors import errors_in_openai_format

    async def broken(request: web.BaseRequest) -> web.StreamResponse:
        raise RuntimeError("a bug")

    server = LeanServer(errors_in_openai_format(web.Server(broken)), {}, MAX_BODY)
    answers = {}
    for path in ("/v1/messages", "/v1/chat/completions"):
        _, transport = connect(server)
        send(transport, post(path))
        await settle(lambda t=transport: t.closed)
        (answers[path],) = parse(transport.out)
    messages, chat = (orjson.loads(answers[path].body) for path in answers)
    assert answers["/v1/messages"].status == 500 and messages["type"] == "error"
    assert messages["error"]["type"] == "api_error" and b"a bug" not in answers["/v1/messages"].body
    assert answers["/v1/chat/completions"].status == 500 and chat["error"]["code"] == "internal_error"
    await server.shutdown(1)
