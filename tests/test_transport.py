"""The upstream transport and its pool, against raw scripted HTTP servers on 127.0.0.1.

Each test scripts the exact bytes a server answers with (framing, keep-alive, compression,
faults), so what the client does with each is checked byte for byte, not through another
client's idea of HTTP. The core paths run once more on uvloop, the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import shutil
import socket
import ssl
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop

from faregate.providers.http import ConnectionPool
from faregate.providers.http_framing import (
    BadResponse,
    ConnectFailed,
    ConnectionClosed,
    ConnectTimeout,
    Endpoint,
    Headers,
    PoolClosed,
    request_bytes,
    request_head,
)
from faregate.providers.response import Response
from faregate.providers.transport import HIGH_WATER


@dataclass
class Exchange:
    """One request a RawServer received, and the stream to answer it on."""

    peer_port: int
    head: bytes
    body: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def until_client_closes(self) -> None:
        await self.reader.read()


Reply = Callable[[Exchange], Awaitable[None]]


@dataclass
class RawServer:
    url: str = ""
    reply: Reply | None = None
    seen: list[Exchange] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)  # peer ports whose connection ended
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_port = writer.get_extra_info("peername")[1]
        try:
            while not writer.is_closing():
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                exchange = Exchange(peer_port, head, await reader.readexactly(length), reader, writer)
                self.seen.append(exchange)
                assert self.reply is not None
                await self.reply(exchange)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.append(peer_port)
            writer.close()

    async def wait_closed(self, peer_port: int) -> None:
        await until(lambda: peer_port in self.closed)


@asynccontextmanager
async def raw_server(
    reply: Reply | None = None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[RawServer]:
    state = RawServer(reply=reply)
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    state.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1/chat/completions"
    try:
        yield state
    finally:
        state.release.set()
        server.close()
        for writer in [e.writer for e in state.seen]:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    async with raw_server() as state:
        yield state


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool()
    yield pool
    await pool.close()


async def post(
    pool: ConnectionPool, url: str, body: bytes = b"{}", *, head: float = 5.0, total: float = 5.0
) -> Response:
    endpoint = Endpoint(url)
    payload = request_bytes(request_head(endpoint, {"Content-Type": "application/json"}), body)
    return await pool.request(endpoint, payload, head_timeout_s=head, total_timeout_s=total)


async def fetch(pool: ConnectionPool, url: str, body: bytes = b"{}") -> tuple[Response, bytes]:
    resp = await post(pool, url, body)
    try:
        return resp, await resp.read()
    finally:
        resp.release()


def raw(data: bytes) -> Reply:
    async def reply(exchange: Exchange) -> None:
        exchange.writer.write(data)

    return reply


def ok(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (head.encode(), len(body), body)


async def echo_port(exchange: Exchange) -> None:
    exchange.writer.write(ok(str(exchange.peer_port).encode()))


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Poll pool or server state (neither has events to wait on) for up to `timeout_s`."""
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


# --- requests on the wire -----------------------------------------------------------------------


def test_endpoint_parses_once() -> None:
    plain = Endpoint("http://127.0.0.1:8000/v1/chat/completions?x=1", connect_timeout_s=3)
    assert (plain.tls, plain.host, plain.port, plain.path) == (
        False,
        "127.0.0.1",
        8000,
        "/v1/chat/completions?x=1",
    )
    assert (plain.authority, plain.key, plain.connect_timeout_s) == (
        "127.0.0.1:8000",
        ("http", "127.0.0.1", 8000),
        3,
    )
    tls = Endpoint("HTTPS://API.Example.com/v1")
    assert (tls.tls, tls.host, tls.port, tls.authority) == (True, "api.example.com", 443, "api.example.com")
    assert Endpoint("http://[::1]:81").authority == "[::1]:81"
    assert Endpoint("http://[::1]:81").path == "/"
    for bad in ("ftp://x/", "http:///v1", "http://x:99999/"):
        with pytest.raises(ValueError):
            Endpoint(bad)


def test_request_head_is_preformatted_and_safe() -> None:
    endpoint = Endpoint("http://127.0.0.1:8000/v1/chat/completions")
    head = request_head(endpoint, {"Authorization": "Bearer k", "Content-Length": "9", "Connection": "close"})
    assert (
        head == b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAuthorization: Bearer k\r\n"
    )
    assert request_bytes(head, b"{}").endswith(b"Authorization: Bearer k\r\nContent-Length: 2\r\n\r\n{}")
    assert b"\r\nhost: gw.internal\r\n" in request_head(endpoint, {"host": "gw.internal"})
    assert b"Host: 127.0.0.1" not in request_head(endpoint, {"host": "gw.internal"})
    for name, value in [("X-A", "v\r\nInjected: 1"), ("X A", "v"), ("X-A", "nul\0"), ("X-A", "€")]:
        with pytest.raises(ValueError):
            request_head(endpoint, {name: value})


def test_headers_are_case_insensitive_and_joined() -> None:
    headers = Headers([(b"Retry-After", b"7"), (b"X-Multi", b"a"), (b"x-multi", b"b")])
    assert headers["retry-after"] == headers.get("RETRY-AFTER") == "7"
    assert headers["X-MULTI"] == "a, b"
    assert "Retry-After" in headers and "Missing" not in headers
    assert headers.get("retry-after-ms") is None
    assert sorted(headers) == ["retry-after", "x-multi"]


async def test_a_request_goes_out_as_one_http11_post(server: RawServer, pool: ConnectionPool) -> None:
    server.reply = raw(ok(b'{"a":1}', "Content-Type: application/json", "Retry-After: 3"))
    resp, body = await fetch(pool, server.url, b'{"q":"hello"}')
    assert (resp.status, resp.reason, body) == (200, "OK", b'{"a":1}')
    assert resp.headers["content-type"] == "application/json" and resp.headers["retry-after"] == "3"
    seen = server.seen[0]
    assert seen.head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Content-Length: 13\r\n" in seen.head and b"Accept-Encoding" not in seen.head
    assert seen.body == b'{"q":"hello"}'


# --- the pool -----------------------------------------------------------------------------------


async def test_connections_are_reused(server: RawServer, pool: ConnectionPool) -> None:
    server.reply = echo_port
    ports = {(await fetch(pool, server.url))[1] for _ in range(5)}
    assert len(ports) == 1
    assert (pool.size, pool.idle, pool.in_use) == (1, 1, 0)


async def test_idle_connections_are_reused_newest_first(server: RawServer, pool: ConnectionPool) -> None:
    everyone_in = asyncio.Event()

    async def reply(exchange: Exchange) -> None:
        if len(server.seen) == 3:
            everyone_in.set()
        await everyone_in.wait()
        await echo_port(exchange)

    server.reply = reply
    responses = await asyncio.gather(*(post(pool, server.url) for _ in range(3)))
    bodies = [await r.read() for r in responses]
    assert len(set(bodies)) == 3 and pool.size == 3
    for index in (1, 2, 0):  # the last one released is the warmest
        responses[index].release()
    server.reply = echo_port
    assert (await fetch(pool, server.url))[1] == bodies[0]
    assert (await fetch(pool, server.url))[1] == bodies[0]


async def test_at_the_cap_requests_queue_first_come_first_served(server: RawServer) -> None:
    pool = ConnectionPool(limit=1)

    async def reply(exchange: Exchange) -> None:
        await server.release.wait()
        exchange.writer.write(ok(exchange.body))

    server.reply = reply
    # Tasks first run in the order they are created, so they queue in that order.
    tasks = [asyncio.create_task(fetch(pool, server.url, b"%d" % i)) for i in range(4)]
    await until(lambda: pool.waiting == 3)
    assert (pool.size, pool.in_use, pool.waiting) == (1, 1, 3)
    server.release.set()
    results = await asyncio.gather(*tasks)
    assert [body for _, body in results] == [b"0", b"1", b"2", b"3"]
    assert [e.body for e in server.seen] == [b"0", b"1", b"2", b"3"]
    assert len({e.peer_port for e in server.seen}) == 1  # handed straight from one to the next
    assert (pool.size, pool.waiting) == (1, 0)
    await pool.close()


async def test_the_per_host_cap_does_not_hold_up_other_hosts(server: RawServer) -> None:
    pool = ConnectionPool(limit=10, limit_per_host=1)

    async def slow(exchange: Exchange) -> None:
        await server.release.wait()
        exchange.writer.write(ok(b"slow"))

    server.reply = slow
    first = asyncio.create_task(fetch(pool, server.url))
    second = asyncio.create_task(fetch(pool, server.url))
    await until(lambda: pool.waiting == 1)
    async with raw_server(raw(ok(b"other"))) as other:
        assert (await fetch(pool, other.url))[1] == b"other"
    server.release.set()
    assert [body for _, body in await asyncio.gather(first, second)] == [b"slow", b"slow"]
    await pool.close()


async def test_a_full_pool_closes_an_idle_connection_to_another_host(server: RawServer) -> None:
    pool = ConnectionPool(limit=1)
    server.reply = echo_port
    port = int((await fetch(pool, server.url))[1])
    async with raw_server(raw(ok(b"b"))) as other:
        assert (await fetch(pool, other.url))[1] == b"b"
        await server.wait_closed(port)
        assert (pool.size, pool.idle) == (1, 1)
    await pool.close()


async def test_a_connection_freed_at_the_total_cap_goes_to_a_waiter_of_another_host(
    server: RawServer,
) -> None:
    pool = ConnectionPool(limit=1)

    async def slow(exchange: Exchange) -> None:
        await server.release.wait()
        exchange.writer.write(ok(b"a"))

    server.reply = slow
    first = asyncio.create_task(fetch(pool, server.url))
    await until(lambda: pool.in_use == 1)
    async with raw_server(raw(ok(b"b"))) as other:
        second = asyncio.create_task(fetch(pool, other.url))
        await until(lambda: pool.waiting == 1)
        server.release.set()
        assert (await first)[1] == b"a" and (await second)[1] == b"b"
    assert pool.size == 1
    await pool.close()


async def test_waiting_for_a_connection_counts_against_the_head_deadline(server: RawServer) -> None:
    pool = ConnectionPool(limit=1)

    async def hang(exchange: Exchange) -> None:
        await server.release.wait()

    server.reply = hang
    held = asyncio.create_task(post(pool, server.url))
    await until(lambda: pool.in_use == 1)
    with pytest.raises(TimeoutError):
        await post(pool, server.url, head=0.1)
    assert pool.waiting == 0
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)
    assert (pool.size, pool.in_use) == (0, 0)
    await pool.close()


async def test_connection_close_is_honoured(server: RawServer, pool: ConnectionPool) -> None:
    server.reply = raw(ok(b"bye", "Connection: close"))
    await fetch(pool, server.url)
    await fetch(pool, server.url)
    assert len({e.peer_port for e in server.seen}) == 2
    assert (pool.size, pool.idle) == (0, 0)


async def test_http10_responses_are_not_kept_alive(server: RawServer, pool: ConnectionPool) -> None:
    server.reply = raw(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (await fetch(pool, server.url))[1] == b"ok"
    assert (pool.size, pool.idle) == (0, 0)
    await server.wait_closed(server.seen[0].peer_port)


async def test_a_connection_closed_while_idle_leaves_the_pool_at_once(
    server: RawServer, pool: ConnectionPool
) -> None:
    async def then_close(exchange: Exchange) -> None:
        exchange.writer.write(ok(b"ok"))
        await asyncio.sleep(0.05)
        exchange.writer.close()

    server.reply = then_close
    await fetch(pool, server.url)
    assert pool.idle == 1
    await until(lambda: pool.size == 0)
    assert pool.idle == 0
    server.reply = raw(ok(b"again"))
    assert (await fetch(pool, server.url))[1] == b"again"


async def test_bytes_on_an_idle_connection_close_it(server: RawServer, pool: ConnectionPool) -> None:
    async def then_408(exchange: Exchange) -> None:
        exchange.writer.write(ok(b"ok"))
        await asyncio.sleep(0.05)
        exchange.writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")

    server.reply = then_408
    await fetch(pool, server.url)
    await until(lambda: pool.size == 0)


async def test_idle_connections_expire(server: RawServer) -> None:
    pool = ConnectionPool(keepalive_timeout_s=0.05)
    server.reply = echo_port
    port = int((await fetch(pool, server.url))[1])
    assert pool.idle == 1
    await server.wait_closed(port)
    assert (pool.size, pool.idle) == (0, 0)
    await pool.close()


# --- bodies -------------------------------------------------------------------------------------


async def test_chunked_bodies_are_dechunked_and_the_connection_kept(
    server: RawServer, pool: ConnectionPool
) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire = head + chunked(b"hello ", b"chunked ", b"world")

    async def dribble(exchange: Exchange) -> None:
        for i in range(0, len(wire), 5):
            exchange.writer.write(wire[i : i + 5])
            await exchange.writer.drain()
            await asyncio.sleep(0.001)

    server.reply = dribble
    assert (await fetch(pool, server.url))[1] == b"hello chunked world"
    assert (await fetch(pool, server.url))[1] == b"hello chunked world"
    assert len({e.peer_port for e in server.seen}) == 1


async def test_a_stream_is_iterated_chunk_by_chunk(server: RawServer, pool: ConnectionPool) -> None:
    async def stream(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            exchange.writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await exchange.writer.drain()
            await asyncio.sleep(0.02)
        exchange.writer.write(b"0\r\n\r\n")

    server.reply = stream
    resp = await post(pool, server.url)
    assert [chunk async for chunk in resp] == [b"data: 1\n\n", b"data: 2\n\n"]
    assert resp.at_eof
    resp.release()
    assert pool.idle == 1


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send
    ],
)
async def test_compressed_bodies_are_decoded(
    server: RawServer, pool: ConnectionPool, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    body = b'{"choices": []}' * 100
    server.reply = raw(ok(compress(body), f"Content-Encoding: {encoding}"))
    assert (await fetch(pool, server.url))[1] == body
    assert pool.idle == 1


async def test_a_chunked_gzip_stream_decodes_as_it_arrives(server: RawServer, pool: ConnectionPool) -> None:
    packed = gzip.compress(b"data: x\n\n" * 1000)
    pieces = [packed[i : i + 100] for i in range(0, len(packed), 100)]
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    server.reply = raw(head + chunked(*pieces))
    assert (await fetch(pool, server.url))[1] == b"data: x\n\n" * 1000


async def test_an_undecodable_body_is_a_bad_response(server: RawServer, pool: ConnectionPool) -> None:
    server.reply = raw(ok(b"not gzip at all", "Content-Encoding: gzip"))
    resp = await post(pool, server.url)
    with pytest.raises(BadResponse, match="the gzip body cannot be decoded"):
        await resp.read()
    resp.release()
    assert pool.size == 0


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress"])
async def test_a_body_in_an_encoding_we_cannot_read_is_a_bad_response_that_says_so(
    server: RawServer, pool: ConnectionPool, encoding: str
) -> None:
    # Without Accept-Encoding any coding is allowed (RFC 9110 12.5.3); its bytes are no JSON and
    # no event stream, and a stream of them read as one would just end without an event.
    server.reply = raw(ok(b"\x1b\x07\x00\xf8\xa5\x40\x20data: x\n\n", f"Content-Encoding: {encoding}"))
    resp = await post(pool, server.url)
    assert resp.status == 200  # the head is fine: an error's status still classifies it
    with pytest.raises(BadResponse, match=rf"the {encoding} body cannot be decoded \(only gzip and deflate"):
        await resp.read()
    resp.release()
    assert pool.size == 0


async def test_identity_is_no_encoding(server: RawServer, pool: ConnectionPool) -> None:
    server.reply = raw(ok(b"plain", "Content-Encoding: identity"))
    assert (await fetch(pool, server.url))[1] == b"plain"


async def test_a_body_delimited_by_the_end_of_the_connection(server: RawServer, pool: ConnectionPool) -> None:
    async def until_close(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ")
        await asyncio.sleep(0.02)
        exchange.writer.write(b"world")
        await exchange.writer.drain()
        exchange.writer.close()

    server.reply = until_close
    assert (await fetch(pool, server.url))[1] == b"hello world"
    assert pool.size == 0


async def test_a_reset_does_not_end_a_body_delimited_by_the_connection(
    server: RawServer, pool: ConnectionPool
) -> None:
    async def reset(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial")
        await exchange.writer.drain()
        await asyncio.sleep(0.02)
        sock = exchange.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        exchange.writer.transport.abort()

    server.reply = reset
    resp = await post(pool, server.url)
    with pytest.raises(ConnectionClosed, match="connection reset mid-body"):
        await resp.read()


async def test_informational_responses_are_skipped(server: RawServer, pool: ConnectionPool) -> None:
    server.reply = raw(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"final", "X-Final: 1"))
    resp, body = await fetch(pool, server.url)
    assert (resp.status, body, resp.headers.get("x-final"), "link" in resp.headers) == (
        200,
        b"final",
        "1",
        False,
    )
    assert pool.idle == 1


async def test_a_slow_reader_pauses_the_socket(server: RawServer, pool: ConnectionPool) -> None:
    total = 48 << 20
    piece = b"x" * (64 << 10)
    sent = 0
    writers: list[asyncio.StreamWriter] = []

    def backed_up() -> bool:
        """The server's transport holds more than its high-water mark, so its drain() waits."""
        transport = writers[0].transport if writers else None
        return transport is not None and (
            transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
        )

    async def flood(exchange: Exchange) -> None:
        nonlocal sent
        writers.append(exchange.writer)
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(total // len(piece)):
            exchange.writer.write(piece)
            await exchange.writer.drain()
            sent += len(piece)

    server.reply = flood
    resp = await post(pool, server.url, total=30)
    received = len(await resp.read_chunk())
    # The server's writes back up, which happens only when the client stopped reading and TCP
    # pushed back.
    await until(backed_up, timeout_s=10)
    assert resp.buffered <= HIGH_WATER + (512 << 10)  # stopped reading, not buffering everything
    assert sent < total
    while chunk := await resp.read_chunk():
        received += len(chunk)
    assert received == total
    resp.release()
    assert pool.idle == 1


# --- faults -------------------------------------------------------------------------------------


async def test_an_abandoned_response_closes_its_connection(server: RawServer, pool: ConnectionPool) -> None:
    async def endless(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"5\r\nfirst\r\n")
        await exchange.until_client_closes()

    server.reply = endless
    resp = await post(pool, server.url)
    assert await resp.read_chunk() == b"first"
    assert pool.in_use == 1
    del resp
    gc.collect()
    assert (pool.in_use, pool.size, pool.idle) == (0, 0, 0)
    await server.wait_closed(server.seen[0].peer_port)


async def test_a_half_read_response_is_never_reused(server: RawServer, pool: ConnectionPool) -> None:
    async def half(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await server.release.wait()

    server.reply = half
    resp = await post(pool, server.url)
    resp.release()
    assert (pool.size, pool.idle) == (0, 0)
    with pytest.raises(RuntimeError, match="released"):
        await resp.read()


async def test_closed_mid_body(server: RawServer, pool: ConnectionPool) -> None:
    async def cut(exchange: Exchange) -> None:
        exchange.writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"choices"')
        await asyncio.sleep(0.02)
        exchange.writer.close()

    server.reply = cut
    resp = await post(pool, server.url)
    with pytest.raises(ConnectionClosed, match=r"closed mid-body \(.*got 10 of 100 bytes\)"):
        await resp.read()
    resp.release()
    assert pool.size == 0


async def test_chunked_body_cut_short(server: RawServer, pool: ConnectionPool) -> None:
    async def cut(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await asyncio.sleep(0.02)
        exchange.writer.close()

    server.reply = cut
    resp = await post(pool, server.url)
    assert await resp.read_chunk() == b"abc"  # what arrived is delivered before the failure
    with pytest.raises(ConnectionClosed, match="the chunked body did not end"):
        await resp.read_chunk()


async def test_closed_before_the_head(server: RawServer, pool: ConnectionPool) -> None:
    async def drop(exchange: Exchange) -> None:
        exchange.writer.close()

    server.reply = drop
    with pytest.raises(ConnectionClosed, match=r"^server closed the connection$"):
        await post(pool, server.url)
    assert (pool.size, pool.in_use) == (0, 0)


async def test_garbage_is_a_bad_response(server: RawServer, pool: ConnectionPool) -> None:
    server.reply = raw(b"SSH-2.0-OpenSSH_9.6\r\n")
    with pytest.raises(BadResponse, match="invalid HTTP response"):
        await post(pool, server.url)
    assert pool.size == 0


async def test_a_second_response_to_one_request_is_a_protocol_error(
    server: RawServer, pool: ConnectionPool
) -> None:
    server.reply = raw(ok(b"one") + ok(b"two"))
    _, body = await fetch(pool, server.url)
    assert body == b"one"
    assert pool.size == 0  # the connection's framing cannot be trusted any more


async def test_head_timeout_closes_the_connection(server: RawServer, pool: ConnectionPool) -> None:
    server.reply = Exchange.until_client_closes
    with pytest.raises(TimeoutError):
        await post(pool, server.url, head=0.1)
    assert (pool.size, pool.in_use) == (0, 0)
    await server.wait_closed(server.seen[0].peer_port)


async def test_calls_on_one_connection_share_one_deadline_timer(
    server: RawServer, pool: ConnectionPool
) -> None:
    server.reply = raw(ok(b"one"))
    await fetch(pool, server.url)
    (conn,) = pool._hosts[Endpoint(server.url).key].idle
    armed = conn._timer
    assert armed is not None
    for _ in range(3):
        await fetch(pool, server.url)
    assert conn._timer is armed  # the first call's timer fires first: not armed again per call
    # A call with an earlier head deadline than the armed timer's arms one of its own.
    server.reply = Exchange.until_client_closes
    with pytest.raises(TimeoutError):
        await post(pool, server.url, head=0.1)
    assert (pool.size, pool.in_use) == (0, 0)


async def test_a_deadline_timer_that_fires_early_is_armed_again(
    server: RawServer, pool: ConnectionPool
) -> None:
    server.reply = raw(ok(b"one"))
    first = await post(pool, server.url, head=0.05, total=0.05)  # leaves a timer due in 0.05 s
    await first.read()
    first.release()
    assert pool.size == 1
    server.reply = Exchange.until_client_closes
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await post(pool, server.url, head=0.3)
    assert loop.time() - started >= 0.3 - 0.002  # not at the earlier call's deadline


async def test_whole_body_is_the_body_only_once_all_of_it_is_in(
    server: RawServer, pool: ConnectionPool
) -> None:
    server.reply = raw(ok(b"all at once"))
    resp = await post(pool, server.url)
    await until(lambda: resp.at_eof is False and resp.whole_body is not None and resp.buffered > 0)
    assert resp.whole_body() == b"all at once" and resp.at_eof
    resp.release()

    async def in_two(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        await exchange.writer.drain()
        await server.release.wait()
        exchange.writer.write(b"def")

    server.reply = in_two
    resp = await post(pool, server.url)
    assert resp.whole_body() is None  # not all here: read it
    server.release.set()
    assert await resp.read() == b"abcdef"
    resp.release()


async def test_total_timeout_while_reading_the_body(server: RawServer, pool: ConnectionPool) -> None:
    async def stall(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await server.release.wait()

    server.reply = stall
    resp = await post(pool, server.url, head=0.1, total=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await resp.read_chunk() == b"abc"
    with pytest.raises(TimeoutError):
        await resp.read_chunk()
    assert loop.time() - started < 1.0
    assert pool.size == 0


async def test_cancelling_a_read_closes_the_connection(server: RawServer, pool: ConnectionPool) -> None:
    async def stall(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await server.release.wait()

    server.reply = stall
    resp = await post(pool, server.url)
    reader = asyncio.create_task(resp.read())
    await asyncio.sleep(0.05)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    assert (pool.size, pool.in_use) == (0, 0)
    resp.release()


async def test_connection_refused(pool: ConnectionPool) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectFailed, match=f"^connection refused by 127.0.0.1:{port}$"):
        await post(pool, f"http://127.0.0.1:{port}/v1")
    assert pool.size == 0


async def test_connect_timeout() -> None:
    pool = ConnectionPool()
    with socket.socket() as listener:  # a full accept queue: further SYNs go unanswered
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            await asyncio.sleep(0.05)
            endpoint = Endpoint(f"http://127.0.0.1:{port}/v1", connect_timeout_s=0.2)
            payload = request_bytes(request_head(endpoint, {}), b"{}")
            with pytest.raises(ConnectTimeout, match=r"could not connect within 0\.2s"):
                await pool.request(endpoint, payload, head_timeout_s=5, total_timeout_s=5)
        finally:
            for filler in fillers:
                filler.close()
    assert pool.size == 0
    await pool.close()


async def test_names_are_resolved_and_each_address_tried(server: RawServer, pool: ConnectionPool) -> None:
    server.reply = raw(ok(b"by name"))
    # localhost may resolve to ::1 first, where nobody listens: the next address is tried.
    assert (await fetch(pool, server.url.replace("127.0.0.1", "localhost")))[1] == b"by name"


async def test_closing_the_pool_fails_requests_in_flight(server: RawServer) -> None:
    pool = ConnectionPool(limit=1)

    async def stall(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await server.release.wait()

    server.reply = stall
    resp = await post(pool, server.url)
    queued = asyncio.create_task(post(pool, server.url))
    await until(lambda: pool.waiting == 1)
    await pool.close()
    with pytest.raises(PoolClosed):
        await resp.read()
    with pytest.raises(PoolClosed):
        await queued
    with pytest.raises(PoolClosed):
        await post(pool, server.url)
    assert pool.size == 0


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("needs the openssl command: apt-get install openssl (make test installs it)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.mark.e2e  # openssl makes the certificate
async def test_https_verifies_the_server_by_name(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    async with raw_server(raw(ok(b"secure")), tls=server_side) as server:
        url = server.url.replace("127.0.0.1", "localhost")
        trusting = ConnectionPool(ssl_context=ssl.create_default_context(cafile=str(cert)))
        assert (await fetch(trusting, url))[1] == b"secure"
        assert (await fetch(trusting, url))[1] == b"secure"
        assert len({e.peer_port for e in server.seen}) == 1
        await trusting.close()
        strict = ConnectionPool()  # the system's trust store does not know our certificate
        with pytest.raises(
            ConnectFailed, match=r"TLS handshake with localhost:\d+ failed: CERTIFICATE_VERIFY_FAILED"
        ):
            await post(strict, url)
        assert strict.ssl_context.check_hostname and strict.ssl_context.verify_mode == ssl.CERT_REQUIRED
        await strict.close()


# --- HTTPS_PROXY ------------------------------------------------------------------------------

TUNNEL_OPEN = b"HTTP/1.1 200 Connection established\r\n\r\n"


@dataclass
class ConnectProxy:
    url: str = ""
    asked: list[bytes] = field(default_factory=list)  # the heads of the CONNECT requests


@asynccontextmanager
async def connect_proxy(answer: bytes = TUNNEL_OPEN) -> AsyncIterator[ConnectProxy]:
    """An HTTP proxy on 127.0.0.1 that answers CONNECT with `answer` and, if that opens the
    tunnel, pipes the bytes both ways to the host and port asked for."""
    state = ConnectProxy()

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            state.asked.append(head)
            writer.write(answer)
            if answer == TUNNEL_OPEN:
                host, port = head.split(b" ")[1].decode().rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.url = f"http://gw:p%40ss@127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        server.close()


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.mark.e2e  # openssl makes the certificate
async def test_https_upstreams_go_through_the_proxy_https_proxy_names(
    certificate: tuple[Path, Path], no_proxy_env: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    trust = ssl.create_default_context(cafile=str(cert))
    async with raw_server(raw(ok(b"secure")), tls=server_side) as server, connect_proxy() as proxy:
        url = server.url.replace("127.0.0.1", "localhost")
        port = url.split(":")[2].split("/")[0]
        no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
        pool = ConnectionPool(ssl_context=trust)
        assert (await fetch(pool, url))[1] == b"secure"
        assert (await fetch(pool, url))[1] == b"secure"  # the tunnel is kept alive and reused
        assert proxy.asked == [
            f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n"
            "Proxy-Authorization: Basic Z3c6cEBzcw==\r\n\r\n".encode()  # gw:p@ss
        ]
        await pool.close()
        no_proxy_env.setenv("NO_PROXY", "localhost")  # exempt: straight to the upstream
        pool = ConnectionPool(ssl_context=trust)
        assert (await fetch(pool, url))[1] == b"secure"
        assert len(proxy.asked) == 1
        await pool.close()


async def test_a_proxy_that_refuses_the_tunnel_is_a_connect_failure(no_proxy_env: pytest.MonkeyPatch) -> None:
    async with connect_proxy(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n") as proxy:
        no_proxy_env.setenv("https_proxy", proxy.url)
        pool = ConnectionPool()
        with pytest.raises(ConnectFailed) as info:
            await post(pool, "https://api.example.com/v1/chat/completions")
        await pool.close()
    where = proxy.url.replace("gw:p%40ss@", "")  # never the proxy's credentials in a message
    assert str(info.value) == (
        f"the proxy {where} refused a tunnel to api.example.com:443: "
        "'HTTP/1.1 407 Proxy Authentication Required'"
    )
    assert proxy.asked[0].startswith(b"CONNECT api.example.com:443 HTTP/1.1\r\n")


async def test_plain_http_upstreams_never_go_through_the_proxy(
    server: RawServer, no_proxy_env: pytest.MonkeyPatch
) -> None:
    async with connect_proxy() as proxy:
        no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
        no_proxy_env.setenv("ALL_PROXY", proxy.url)
        pool = ConnectionPool()
        server.reply = raw(ok(b"direct"))
        assert (await fetch(pool, server.url))[1] == b"direct"
        await pool.close()
    assert proxy.asked == []


# --- the same on uvloop -------------------------------------------------------------------------


async def core_paths() -> None:
    async with raw_server() as server:
        pool = ConnectionPool()
        server.reply = echo_port
        assert len({(await fetch(pool, server.url))[1] for _ in range(3)}) == 1
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        packed = gzip.compress(b"data: y\n\n" * 500)
        server.reply = raw(head + chunked(packed[:50], packed[50:]))
        assert (await fetch(pool, server.url))[1] == b"data: y\n\n" * 500

        async def endless(exchange: Exchange) -> None:
            exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
            await server.release.wait()

        server.reply = endless
        resp = await post(pool, server.url, total=0.2)
        assert await resp.read_chunk() == b"ab"
        with pytest.raises(TimeoutError):
            await resp.read_chunk()
        del resp
        gc.collect()
        assert (pool.size, pool.in_use) == (0, 0)
        await pool.close()


def test_core_paths_on_uvloop() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(core_paths())


@pytest.mark.e2e  # openssl makes the certificate
def test_the_proxy_tunnel_on_uvloop(certificate: tuple[Path, Path], no_proxy_env: pytest.MonkeyPatch) -> None:
    # uvloop's start_tls, like asyncio's, hands back the secured transport without telling the
    # protocol: the tunnel's connection must work there too.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(test_https_upstreams_go_through_the_proxy_https_proxy_names(certificate, no_proxy_env))
