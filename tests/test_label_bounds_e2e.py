"""Issue #12, item 2: no client-chosen text in a metrics label, and the `models` list is bounded,
so /metrics, the x-faregate-route header and the record's route stay small whatever is sent."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import MASTER_KEY, GatewayProcess

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "hi"}]


def test_long_model_lists_and_name_spellings_never_reach_a_label(
    gateway: GatewayProcess, api_key: str
) -> None:
    names = ["deepseek-v4-flash", "gpt-4o-mini", "qwen3-8b", "glm-4-plus", "gpt-4o"]
    with httpx.Client(
        base_url=f"http://127.0.0.1:{gateway.port}",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=30,
    ) as client:
        # The request: a `models` list hundreds of names long. Refused, before any work.
        long_list = names * 200
        refused = client.post(
            "/v1/chat/completions", json={"model": "x", "models": long_list, "messages": MSG}
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "models"
        routes = set()
        for i in range(24):
            # Many distinct lists and spellings of one model: each is a fine request...
            order = names[i % 5 :] + names[: i % 5]
            answer = client.post(
                "/v1/chat/completions", json={"model": "x", "models": order[:3], "messages": MSG}
            )
            assert answer.status_code == 200, answer.text
            routes.add(answer.headers["x-faregate-route"])
            spelled = "".join(c.upper() if (i >> k) & 1 else c for k, c in enumerate("deepseek-v4-flash"))
            assert (
                client.post("/v1/chat/completions", json={"model": spelled, "messages": MSG}).status_code
                == 200
            )
        assert len(routes) == 5 and all(len(route) < 200 for route in routes)
    scrape = httpx.get(
        f"http://127.0.0.1:{gateway.port}/metrics", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    ).text
    labels = {
        s.labels["route"]
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
        if "route" in s.labels
    }
    # ...but the route label is "list" for every list and the canonical name for every spelling.
    assert "list" in labels and "deepseek-ai/DeepSeek-V4-Flash" in labels
    assert not any(label.startswith("list:") for label in labels), labels
    assert {label for label in labels if "v4-flash" in label.lower()} == {"deepseek-ai/DeepSeek-V4-Flash"}
