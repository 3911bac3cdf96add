"""`GET /v1/models/{id}` in process (aiohttp's test server): it answers for the models
`GET /v1/models` lists and chat accepts, and 404s, as chat does, for a broad-catalog model no
declared provider sells."""

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
        admin = {"Authorization": f"Bearer {MASTER_KEY}"}
        made = await test_client.post("/admin/keys", json={"name": "t"}, headers=admin)
        assert made.status == 201, await made.text()
        test_client.session.headers["Authorization"] = f"Bearer {(await made.json())['api_key']}"
        yield test_client


async def test_a_model_is_found_by_id_when_it_is_listed(client: TestClient[Any, Any]) -> None:
    listed = {m["id"] for m in (await (await client.get("/v1/models")).json())["data"]}
    # A broad-catalog model of a provider the gateway does not declare: known to genai-prices,
    # sold by no provider here.
    unsold = "groq/llama-3.3-70b-versatile"
    assert unsold not in listed
    answer = await client.get(f"/v1/models/{unsold}")
    assert answer.status == 404, await answer.text()
    error = (await answer.json())["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    chat = await client.post(
        "/v1/chat/completions", json={"model": unsold, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.status == 404, await chat.text()
    # Listed models, curated or broad, available or not, are found by name and alias.
    for name in ("gpt-4o", "deepseek-v4-flash", "deepseek-ai/DeepSeek-V4-Flash", "o3"):
        found = await client.get(f"/v1/models/{name}")
        assert found.status == 200, name
        assert (await found.json())["id"] in listed
    assert (await client.get("/v1/models/no-such-model")).status == 404
