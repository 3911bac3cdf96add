"""Issue #12, items 6 and 10: the exact cache never answers a request with another tier's or
task's model, and a hit is still a request for the key's rate limit.

Real gateway and simulator processes, the official openai SDK."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import httpx
import openai
import pytest

from harness import MASTER_KEY, GatewayProcess, SimProcess
from servers import launch_gateway

pytestmark = pytest.mark.e2e

CONFIG = """
routes:
  smart:
    default_tier: standard
    tiers:
      economy: [qwen3-8b]
      standard: [deepseek-v4-flash]
      premium: [deepseek-v4-pro]
    tasks:
      code: [gpt-4o]
accounts: {enabled: true}
"""


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with launch_gateway(tmp_path_factory.mktemp("cache-iso"), sim, extra=CONFIG) as process:
        yield process


def new_key(gateway: GatewayProcess, **fields: Any) -> str:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{gateway.port}", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    ) as client:
        response = client.post("/admin/keys", json={"name": "cache", "credits_usd": "1", **fields})
    assert response.status_code == 201, response.text
    return str(response.json()["api_key"])


def ask(client: openai.OpenAI, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": text}], temperature=0, max_tokens=50, **kwargs
    )


def settle_cache() -> None:
    time.sleep(0.2)  # entries are stored just after the response, off its path


def test_the_key_holds_every_hint_that_picks_the_model(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=new_key(gateway), max_retries=0)
    economy = ask(client, "which model?", extra_body={"faregate": {"tier": "economy"}})
    assert economy.headers["x-faregate-model"] == "Qwen/Qwen3-8B"
    settle_cache()
    assert (
        ask(client, "which model?", extra_body={"faregate": {"tier": "economy"}}).headers["x-faregate-cache"]
        == "hit"
    )
    # Premium asked the same question: a miss answered by the premium model, not economy's answer.
    premium = ask(client, "which model?", extra_body={"faregate": {"tier": "premium"}})
    assert premium.headers["x-faregate-cache"] == "miss"
    assert premium.headers["x-faregate-model"] == "deepseek-ai/DeepSeek-V4-Pro"
    settle_cache()
    # The same hint as a header is the same request: premium's own entry.
    by_header = ask(client, "which model?", extra_headers={"x-faregate-tier": "premium"})
    assert by_header.headers["x-faregate-cache"] == "hit"
    assert by_header.headers["x-faregate-model"] == "deepseek-ai/DeepSeek-V4-Pro"
    # A task hint and a cost cap pick differently too.
    code = ask(client, "which model?", extra_body={"faregate": {"tier": "economy", "task": "code"}})
    assert code.headers["x-faregate-cache"] == "miss" and code.headers["x-faregate-model"] == "gpt-4o"
    capped = ask(client, "which model?", extra_body={"faregate": {"tier": "economy", "max_cost_usd": 1}})
    assert capped.headers["x-faregate-cache"] == "miss"


def test_cache_hits_count_against_requests_per_minute(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(
        base_url=gateway.base_url, api_key=new_key(gateway, requests_per_minute=5), max_retries=0
    )
    statuses: list[int] = []
    for i in range(40):
        try:
            reply = ask(client, "the same question")
            statuses.append(200)
            assert reply.headers["x-faregate-cache"] == ("miss" if i == 0 else "hit")
            assert reply.headers["x-ratelimit-limit-requests"] == "5"
        except openai.RateLimitError as refused:
            statuses.append(429)
            assert refused.response.headers["Retry-After"]
        if i == 0:
            settle_cache()
    # A 5 rpm key gets 5 answers a minute (one bucket refill may land during the loop), cached or not.
    assert 5 <= statuses.count(200) <= 6 and statuses.count(429) >= 34, statuses


def test_a_hit_refused_by_the_rate_limit_is_neither_a_hit_served_nor_a_miss(gateway: GatewayProcess) -> None:
    """The cache held the answer but the key's rate limit refused the request before it was
    served: the record, its header and /metrics say `hit-refused`, so the dashboard's hits are
    answers served and its misses answers the cache did not hold."""
    client = openai.OpenAI(
        base_url=gateway.base_url, api_key=new_key(gateway, requests_per_minute=1), max_retries=0
    )
    assert ask(client, "asked twice in a minute").headers["x-faregate-cache"] == "miss"
    settle_cache()
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client, "asked twice in a minute")
    headers = refused.value.response.headers
    assert headers["x-faregate-cache"] == "hit-refused"
    request_id = headers["x-faregate-request-id"]
    deadline = time.monotonic() + 5
    row = None
    while row is None and time.monotonic() < deadline:
        with sqlite3.connect(gateway.store_path / "faregate.db") as db:
            row = db.execute(
                "SELECT status, cache_status, cost_usd FROM request_records WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        time.sleep(0.05)
    assert row is not None and tuple(row[:2]) == (429, "hit-refused"), row
    metrics = httpx.get(
        f"http://127.0.0.1:{gateway.port}/metrics", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    ).text
    refused_series = [
        line
        for line in metrics.splitlines()
        if line.startswith("faregate_requests_total{") and 'status="429"' in line and 'route="smart"' in line
    ]
    assert refused_series and all('cache="hit-refused"' in line for line in refused_series), refused_series
