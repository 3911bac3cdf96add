"""Issue #12, items 1 and 3: a request never spends more than it reserved, whatever it asks for.

The simulator honours `n` (n choices, n-fold completion usage) and bills tools, functions,
tool_choice and response_format as input tokens, as real providers do, so these tests see what
a hostile key could make an upstream bill. Real gateway and simulator processes, the openai SDK.
"""

from __future__ import annotations

import asyncio
import sqlite3
from decimal import Decimal
from typing import Any

import openai
import pytest

from harness import GatewayProcess, SimProcess
from servers import launch_gateway
from test_ledger_e2e import LORE, balance_nano, fire, new_key

pytestmark = pytest.mark.e2e

# Output $1 per 1M tokens, input $10 per 1M: a big tool list is where the money goes.
MODELS = """
models:
  flat-out:
    input: 0
    output: 1
    context_window: 128000
    offers: [{provider: sim}]
  dear-in:
    input: 10
    output: 1
    context_window: 1000000
    offers: [{provider: sim}]
accounts: {enabled: true}
limits: {max_n: 16}
"""


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with launch_gateway(tmp_path_factory.mktemp("bounds"), sim, extra=MODELS) as process:
        yield process


def ledger(gateway: GatewayProcess, key_id: str) -> list[tuple[str, int, int | None]]:
    with sqlite3.connect(gateway.store_path / "faregate.db") as db:
        rows = db.execute(
            "SELECT kind, amount_nano, cost_nano FROM ledger WHERE key_id = ? ORDER BY id", (key_id,)
        ).fetchall()
    return [(str(kind), int(amount), cost) for kind, amount, cost in rows]


def assert_never_beyond_hold(gateway: GatewayProcess, key_id: str) -> None:
    """Every settlement charged at most what its reservation held."""
    with sqlite3.connect(gateway.store_path / "faregate.db") as db:
        pairs = db.execute(
            "SELECT -r.amount_nano, s.cost_nano FROM ledger r JOIN ledger s ON s.hold_id = r.hold_id"
            " WHERE r.key_id = ? AND r.kind = 'reservation' AND s.kind = 'settlement'",
            (key_id,),
        ).fetchall()
    assert pairs
    assert all(cost <= held for held, cost in pairs), pairs


def n_choices(n: int) -> dict[str, Any]:
    # 1,000 output tokens per choice at $1/1M: $0.001 a choice, exactly.
    return {
        "model": "flat-out",
        "messages": LORE,
        "max_tokens": 1000,
        "n": n,
        "extra_body": {"sim": {"answer": {"lorem": 1000}}},
    }


def test_the_simulator_honours_n(gateway: GatewayProcess) -> None:
    _, key = new_key(gateway, "1")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    reply = client.chat.completions.create(**n_choices(3))
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage is not None and reply.usage.completion_tokens == 3000
    assert Decimal(str(reply.usage.cost)) == Decimal("0.003")  # type: ignore[attr-defined]
    stream = client.chat.completions.create(
        **n_choices(3), stream=True, stream_options={"include_usage": True}
    )
    indexes, usage = set(), None
    for chunk in stream:
        indexes.update(c.index for c in chunk.choices)
        usage = chunk.usage or usage
    assert indexes == {0, 1, 2} and usage is not None and usage.completion_tokens == 3000


def test_n_is_reserved_n_times(gateway: GatewayProcess) -> None:
    """A $0.01 key and ten concurrent n=8 requests ($0.008 each): one fits, never ten."""
    key_id, key = new_key(gateway, "0.01")
    statuses = asyncio.run(fire(gateway.base_url, key, 10, **n_choices(8)))
    assert statuses.count(200) == 1 and statuses.count(402) == 9, statuses
    assert balance_nano(gateway, key_id) == 2_000_000  # $0.01 - $0.008
    assert_never_beyond_hold(gateway, key_id)


def test_n_counts_against_the_per_request_cap(gateway: GatewayProcess) -> None:
    key_id, key = new_key(gateway, "1", max_request_usd="0.005")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    assert client.chat.completions.create(**n_choices(4)).usage.completion_tokens == 4000  # type: ignore[union-attr]
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(**n_choices(8))
    assert refused.value.status_code == 402
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "request_budget_exceeded"
    assert balance_nano(gateway, key_id) == 1_000_000_000 - 4_000_000


def test_n_above_the_bound_is_a_400(gateway: GatewayProcess) -> None:
    _, key = new_key(gateway, "1")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**n_choices(17))
    assert isinstance(refused.value.body, dict) and refused.value.body["param"] == "n"


def big_tools(kilobytes: int) -> list[dict[str, Any]]:
    """Tool definitions of about `kilobytes` KB: many functions with long descriptions."""
    words = " ".join(f"w{i}" for i in range(200))  # ~1.2 KB, ~400 tokens
    return [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": words,
                "parameters": {
                    "type": "object",
                    "properties": {"x": {"type": "string", "description": words}},
                },
            },
        }
        for i in range(max(1, kilobytes // 2))
    ]


def test_tools_are_reserved_as_input(gateway: GatewayProcess) -> None:
    """About 400 KB of tool definitions, billed by the upstream as input ($10/1M): far more than a
    $0.01 key holds. Refused before anything goes upstream, not charged into the red."""
    key_id, key = new_key(gateway, "0.01")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="dear-in", messages=LORE, max_tokens=10, tools=big_tools(400))  # type: ignore[arg-type]
    assert refused.value.status_code == 402
    assert balance_nano(gateway, key_id) == 10_000_000


def test_tools_and_schemas_are_charged_within_the_hold(gateway: GatewayProcess) -> None:
    key_id, key = new_key(gateway, "1")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": {"type": "object", "description": "x" * 3000}},
    }
    plain = client.chat.completions.create(model="dear-in", messages=LORE, max_tokens=10)
    tooled = client.chat.completions.create(
        model="dear-in",
        messages=LORE,
        max_tokens=10,
        tools=big_tools(20),  # type: ignore[arg-type]
        response_format=schema,  # type: ignore[arg-type]
    )
    assert plain.usage is not None and tooled.usage is not None
    # The upstream billed the definitions and the schema as input...
    assert tooled.usage.prompt_tokens > plain.usage.prompt_tokens + 5000
    # ...and the hold covered them.
    assert_never_beyond_hold(gateway, key_id)
    rows = ledger(gateway, key_id)
    assert [kind for kind, _, _ in rows].count("settlement") == 2


def test_a_request_that_can_never_fit_is_not_retried_by_the_sdk(gateway: GatewayProcess) -> None:
    """More tokens than the key's limit per minute will never fit, however long the client waits:
    the 429 says `x-should-retry: false`, so the SDK (which retries every other 429) asks once."""
    _, key = new_key(gateway, "1", tokens_per_minute=500)
    sent: list[object] = []
    client = openai.OpenAI(
        base_url=gateway.base_url,
        api_key=key,
        max_retries=2,
        http_client=openai.DefaultHttpxClient(event_hooks={"request": [sent.append]}),
    )
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="flat-out", messages=LORE, max_tokens=1000)
    assert refused.value.code == "request_too_large"
    assert len(sent) == 1, sent
    assert refused.value.response.headers["x-should-retry"] == "false"
