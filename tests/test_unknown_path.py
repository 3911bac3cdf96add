"""A 404 for a path the gateway does not serve, in process (aiohttp's test server): a base_url
without `/v1` or with it twice is told the path meant and the base_url to set."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from faregate.config import load_settings
from faregate.server.app import build_gateway, create_app
from harness import MASTER_KEY


@pytest.fixture
async def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient[Any, Any]]:
    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    gateway = await build_gateway(load_settings(overrides={"store": {"path": str(tmp_path / "store")}}))
    async with TestClient(TestServer(create_app(gateway))) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("method", "path", "meant"),
    [
        ("POST", "/v1/v1/chat/completions", "/v1/chat/completions"),  # base_url ends in /v1/v1
        ("POST", "/v1/v1/v1/embeddings", "/v1/embeddings"),
        ("GET", "/models", "/v1/models"),  # base_url without /v1
        ("GET", "/v1/v1/models/gpt-4o", "/v1/models/gpt-4o"),
    ],
)
async def test_a_missing_or_doubled_v1_names_the_path_and_base_url(
    client: TestClient[Any, Any], method: str, path: str, meant: str
) -> None:
    answer = await client.request(method, path, json={})
    assert answer.status == 404, await answer.text()
    message = (await answer.json())["error"]["message"]
    host = f"{client.server.host}:{client.server.port}"
    assert f"Did you mean {method} {meant}?" in message, message
    assert f"Set the client's base_url to http://{host}/v1 (ending in /v1 once)." in message, message


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completion"),  # no such path under any prefix
        ("POST", "/v1"),
        ("GET", "/"),
        ("GET", "/v1/v1/chat/completions"),  # the path is served, not for GET: no hint to a 405
    ],
)
async def test_a_path_served_under_no_prefix_is_only_unknown(
    client: TestClient[Any, Any], method: str, path: str
) -> None:
    answer = await client.request(method, path, json={})
    assert answer.status == 404, await answer.text()
    error = (await answer.json())["error"]
    assert error["code"] == "unknown_url"
    assert error["message"] == f"Unknown path: {method} {path}."


async def test_the_anthropic_sdk_is_told_its_base_url_is_the_host(client: TestClient[Any, Any]) -> None:
    """The anthropic SDK adds /v1/messages to its base_url: one ending in /v1 doubles it, and the
    fix is the host alone, not a base_url ending in /v1."""
    host = f"{client.server.host}:{client.server.port}"
    for path in ("/v1/v1/messages", "/v1/v1/messages/count_tokens"):
        answer = await client.post(path, json={})
        assert answer.status == 404, await answer.text()
        message = (await answer.json())["error"]["message"]
        meant = path.removeprefix("/v1")
        assert f"Did you mean POST {meant}? Set the anthropic client's base_url to http://{host} " in message
        assert message.endswith("(the SDK adds /v1 itself).")


@pytest.mark.parametrize("path", ["/v1/completions", "/completions"])
async def test_the_legacy_completions_api_points_to_chat(client: TestClient[Any, Any], path: str) -> None:
    """LangChain's `OpenAI` class and older tutorials call /v1/completions, which is not served."""
    answer = await client.post(path, json={"model": "gpt-4o", "prompt": "hi"})
    assert answer.status == 404, await answer.text()
    message = (await answer.json())["error"]["message"]
    assert message == (
        f"Unknown path: POST {path}. The legacy completions API is not served: send `messages` to "
        "POST /v1/chat/completions."
    )
