"""The README's `GET /health` answer (with the master key) has the fields a gateway's answer has: the
same keys at the top, in an offer, in its latency figures, in `usage_estimate` and in `counters`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from faregate.config import load_settings
from faregate.server.app import build_gateway, create_app
from harness import MASTER_KEY

ROOT = Path(__file__).resolve().parents[1]


def readme_health() -> dict[str, Any]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("```json\n", text.index("curl -s localhost:4000/health")) + len("```json\n")
    answer: dict[str, Any] = json.loads(text[start : text.index("```", start)])
    return answer


def shape(answer: dict[str, Any]) -> dict[str, Any]:
    """The keys of an answer, nested; an offer's keys under "offer" whatever its name."""
    offers = list(answer["offers"].values())
    return {
        "top": sorted(answer),
        "offer": sorted(offers[0]) if offers else None,
        "latency_ms": sorted(offers[0]["latency_ms"]) if offers else None,
        "usage_estimate": sorted(answer["usage_estimate"]),
        "counters": sorted(answer["counters"]),
    }


async def test_the_readme_health_answer_has_the_gateways_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    settings = load_settings(
        overrides={"store": {"path": str(tmp_path / "store")}, "catalog": {"broad": False}}
    )
    gateway = await build_gateway(settings)
    gateway.pipeline.runner.health.success("sim/m", 10.0)  # one offer with figures
    async with TestClient(TestServer(create_app(gateway))) as client:
        plain = await client.get("/health")
        assert await plain.json() == {"status": "ok"}
        response = await client.get("/health", headers={"Authorization": f"Bearer {MASTER_KEY}"})
        real = await response.json()
    assert shape(readme_health()) == shape(real)
