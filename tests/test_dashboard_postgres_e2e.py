"""The dashboard, feedback and alerts on the shared store: two gateway processes on one real
PostgreSQL database (and Redis) serve requests through the openai SDK; either one's dashboard
shows the spend of both, and feedback for a request made through one is taken by the other."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from harness import GatewayProcess, SimProcess
from servers import SharedUrls, launch_gateway, postgres_server, redis_server, shared_urls  # noqa: F401
from test_ledger_e2e import ACCOUNTS, ADMIN, FLAT_MODEL, new_key, worst_is_a_tenth_of_a_cent

pytestmark = pytest.mark.e2e

# An alert that fires at once when a key has spent anything today: proves the rules run here.
ALERTS = """
alerts:
  interval_s: 0.2
  rules:
    - {name: any-spend, metric: daily_spend_usd, above: 0.0001, for_minutes: 0}
"""


@pytest.fixture
def pair(
    sim: SimProcess,
    shared_urls: SharedUrls,  # noqa: F811
    tmp_path: Path,
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    config = ACCOUNTS + FLAT_MODEL + ALERTS
    with ExitStack() as stack:
        a = stack.enter_context(launch_gateway(tmp_path / "a", sim, store=shared_urls.store(), extra=config))
        b = stack.enter_context(launch_gateway(tmp_path / "b", sim, store=shared_urls.store(), extra=config))
        yield a, b


def ask(gateway: GatewayProcess, key: str) -> tuple[str, Decimal]:
    """One completion through the SDK: its request id and what it cost."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(**worst_is_a_tenth_of_a_cent())
    completion = raw.parse()
    assert completion.usage is not None
    cost = Decimal(str((completion.usage.model_extra or {})["cost"]))
    return raw.headers["x-faregate-request-id"], cost


def dashboard(gateway: GatewayProcess, name: str, **params: str) -> dict[str, Any]:
    response = httpx.get(
        f"http://127.0.0.1:{gateway.port}/admin/dashboard/{name}", params=params, headers=ADMIN, timeout=30
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for(check: Any, timeout_s: float = 15.0) -> Any:
    """Poll until check() returns something truthy (records and alerts are written off the request path)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def all_requests(summary: dict[str, Any], n: int) -> dict[str, Any] | None:
    return summary if summary["requests"] == n else None


def feedback(gateway: GatewayProcess, key: str, request_id: str, score: object) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{gateway.port}/v1/feedback",
        json={"request_id": request_id, "score": score, "comment": "fine"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_dashboard_feedback_and_alerts_on_the_shared_store(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = pair
    key_id, key = new_key(a, "1.00")
    _, other_key = new_key(b, "1.00")
    answers = [ask(a, key) for _ in range(3)] + [ask(b, key) for _ in range(2)]
    spent = sum((cost for _, cost in answers), Decimal(0))
    assert spent == Decimal("0.005")

    # Either instance's dashboard shows both instances' requests, to the nano-dollar.
    for gateway in (a, b):
        summary = wait_for(lambda g=gateway: all_requests(dashboard(g, "summary"), 5))
        assert summary, dashboard(gateway, "summary")
        assert Decimal(summary["spend_usd"]) == spent
        assert summary["errors"] == 0 and summary["fallbacks"] == 0
    rows = dashboard(b, "breakdown", by="key")["rows"]
    assert [(r["group"], Decimal(r["spend_usd"]), r["requests"]) for r in rows] == [(key_id, spent, 5)]
    recent = dashboard(b, "requests", limit="10")["rows"]
    assert {r["request_id"] for r in recent} == {rid for rid, _ in answers}
    assert all(r["attempts"][-1]["outcome"] == "ok" for r in recent)

    # Feedback: the key that made the request may score it, through either instance; no other key.
    request_id = answers[0][0]  # made through a
    refused = feedback(b, other_key, request_id, "up")
    # Another key's request answers like an unknown one (no existence oracle).
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "request_not_found"
    taken = feedback(b, key, request_id, "down")
    assert taken.status_code == 200, taken.text
    assert taken.json()["satisfaction"] == 0.0
    assert feedback(a, key, request_id, 5).status_code == 200  # a later score replaces the first
    assert feedback(a, key, "req_nope", "up").status_code == 404
    scored = dashboard(a, "feedback", by="model")["rows"]
    assert [(r["group"], r["feedback"], r["ratings"], r["satisfaction"]) for r in scored] == [
        ("flat-1", 1, 1, 100.0)
    ]

    # Straight after the answer, through the other instance: it waits for the record to arrive.
    fresh, _ = ask(a, key)
    assert feedback(b, key, fresh, "up").status_code == 200

    # The alert rules run on this store too.
    firing = wait_for(lambda: dashboard(b, "alerts")["firing"])
    assert firing and firing[0]["rule"] == "any-spend" and firing[0]["labels"] == {"key": key_id}
