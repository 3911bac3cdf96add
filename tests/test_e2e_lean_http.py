"""End to end, with `server.lean_http` on and off: the official openai SDK and raw HTTP/1.x through
a real gateway get the same answers whichever server carries the hot POSTs (server/lean_http.py)."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from harness import GatewayProcess, SimProcess, create_key, run_gateway, stored_record
from raw_http import Responses

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module", params=[True, False], ids=["lean", "aiohttp"])
def served(
    request: pytest.FixtureRequest, sim: SimProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str]]:
    workdir: Path = tmp_path_factory.mktemp("lean" if request.param else "aiohttp")
    with run_gateway(workdir, sim, lean_http=request.param) as gateway:
        yield gateway, create_key(gateway.store_path, "lean-e2e")


def exchange(port: int, data: bytes, count: int) -> tuple[list[Any], bytes]:
    """Send `data`, read until `count` responses are whole."""
    parsed = Responses()
    raw = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        while len(parsed.done) < count:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
            parsed.parser.feed_data(chunk)
    return parsed.done, raw


def chat(key: str, body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    head = (
        f"POST /v1/chat/completions HTTP/{version}\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": MSG})


def test_the_sdk_chats_streams_and_lists_models_on_one_connection(served: tuple[GatewayProcess, str]) -> None:
    gateway, key = served
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
    answer = raw.parse()
    assert answer.choices[0].message.content and raw.headers["x-faregate-cost-usd"]
    request_id = raw.headers["x-faregate-request-id"]
    assert stored_record(gateway, request_id)["status"] == 200
    # The pooled connection now carries a GET (aiohttp's), then the hot POSTs again.
    assert any(m.id == "gpt-4o-mini" for m in client.models.list())
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MSG,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.cost > 0  # type: ignore[attr-defined]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.base_url, api_key="fg-wrong", max_retries=0).chat.completions.create(
            model="gpt-4o-mini",
            messages=MSG,  # type: ignore[arg-type]
        )


def test_errors_in_openai_format(served: tuple[GatewayProcess, str]) -> None:
    gateway, key = served
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as too_large:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "x" * 1_100_000}],
        )
    assert too_large.value.status_code == 413
    assert too_large.value.response.headers["x-faregate-request-id"]
    (status, headers, body), *_ = exchange(gateway.port, chat(key, b"{not json"), 1)[0]
    assert status == 400 and orjson.loads(body)["error"]["type"] == "invalid_request_error"
    assert headers["x-faregate-request-id"]


def test_pipelined_requests_and_a_hand_off(served: tuple[GatewayProcess, str]) -> None:
    gateway, key = served
    health = b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"
    answers, _ = exchange(gateway.port, chat(key, BODY) + chat(key, BODY) + health + chat(key, BODY), 4)
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert answers[2][2] == b'{"status":"ok"}'
    ids = {headers["x-faregate-request-id"] for _, headers, _ in (answers[0], answers[1], answers[3])}
    assert len(ids) == 3


def test_http_1_0_chunked_bodies_and_100_continue(served: tuple[GatewayProcess, str]) -> None:
    gateway, key = served
    answers, raw = exchange(gateway.port, chat(key, BODY, version="1.0"), 1)
    assert answers[0][0] == 200
    chunked = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    half = len(BODY) // 2
    body = b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (half, BODY[:half], len(BODY) - half, BODY[half:])
    assert exchange(gateway.port, chunked + body, 1)[0][0][0] == 200
    # With Expect: 100-continue the body follows once the server answered something (aiohttp's
    # fast path sends no 100; a client then sends the body after a wait, as curl does).
    head = chat(key, b"", "Expect: 100-continue\r\n").replace(
        b"Content-Length: 0", b"Content-Length: %d" % len(BODY)
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
        sock.sendall(head)
        sock.settimeout(1.0)
        try:
            first = sock.recv(65536)
        except TimeoutError:
            first = b""
        sock.settimeout(20)
        sock.sendall(BODY)
        raw = first
        while b"x-faregate-cost-usd" not in raw:
            raw += sock.recv(65536)
    assert b"HTTP/1.1 200 OK" in raw
    if gateway.config.read_text().count("lean_http: true"):
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")


def test_a_client_gone_mid_stream_is_recorded(served: tuple[GatewayProcess, str]) -> None:
    gateway, key = served
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": MSG,
            "stream": True,
            "sim": {"answer": {"lorem": 400}, "tokens_per_s": 40},
        }
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
        sock.sendall(chat(key, body))
        raw = b""
        while b"data: " not in raw:
            raw += sock.recv(65536)
    request_id = raw.split(b"x-faregate-request-id: ")[1].split(b"\r\n")[0].decode()
    row = stored_record(gateway, request_id, timeout_s=30)
    assert row["status"] == 499 and row["error"] == "client disconnected during the stream"


def test_a_client_gone_before_its_body_is_read_is_recorded_without_a_trace(
    served: tuple[GatewayProcess, str],
) -> None:
    """Either server says ConnectionResetError when the client leaves mid-body: a 499 record
    naming it, not a 500 'internal error' with a traceback in the log."""
    gateway, key = served
    marker = f"cut-{time.monotonic_ns()}"
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": marker}]})
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
        sock.sendall(chat(key, body)[: -len(body) // 2])
        time.sleep(0.3)  # the gateway is reading the body when the client leaves
    deadline = time.monotonic() + 30
    while True:
        with sqlite3.connect(gateway.store_path / "faregate.db") as db:
            rows = db.execute(
                "SELECT status, error FROM request_records WHERE error LIKE 'The client closed%'"
            ).fetchall()
        if rows:
            break
        assert time.monotonic() < deadline, "no record of the request cut mid-body"
        time.sleep(0.05)
    assert rows[-1] == (499, "The client closed the connection before its body was read.")
    assert "ConnectionResetError" not in gateway.read_log()


def test_a_client_gone_while_its_stream_is_held_back_ends_the_upstream_call(
    served: tuple[GatewayProcess, str],
) -> None:
    """The lean server says when a client goes while its stream is held back (the model still
    thinking): the upstream call ends then, billed, and the record says so at once, not when the
    first content (here a minute away) or the request's deadline comes. (aiohttp's server does
    not say: a handler learns it only at a write.)"""
    gateway, key = served
    if "lean_http: true" not in gateway.config.read_text():
        pytest.skip("aiohttp's server does not tell a handler that its client is gone")
    marker = f"held-{time.monotonic_ns()}"
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": marker}],
            "stream": True,
            "sim": {"ttft_ms": 60000},
        }
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
        sock.sendall(chat(key, body))
        time.sleep(0.3)  # the gateway waits for the first content when the client leaves
    deadline = time.monotonic() + 10  # the request's deadline is 20 s, the first token 60 s away
    while True:
        with sqlite3.connect(gateway.store_path / "faregate.db") as db:
            rows = db.execute(
                "SELECT status, error, attempts FROM request_records WHERE error LIKE '%before its stream%'"
            ).fetchall()
        if rows:
            break
        assert time.monotonic() < deadline, "no record of the request whose client left"
        time.sleep(0.05)
    status, error, attempts = rows[-1]
    assert (status, error) == (499, "The client closed the connection before its stream started.")
    assert [a["outcome"] for a in orjson.loads(attempts)] == ["client_gone"]
