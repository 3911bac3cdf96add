"""Two gateway processes sharing real PostgreSQL and Redis servers act as one: credits, budgets and
rate limits hold across both, revocation is seen by both at once, the ledger audit is clean."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from harness import GatewayProcess, SimProcess, clean_env
from servers import (  # noqa: F401
    PostgresServer,
    RedisServer,
    SharedUrls,
    launch_gateway,
    postgres_server,
    redis_server,
    shared_urls,
)
from test_ledger_e2e import (
    ACCOUNTS,
    ADMIN,
    FLAT_MODEL,
    LORE,
    fire,
    key_state,
    new_key,
    worst_is_a_tenth_of_a_cent,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def module_urls(postgres_server: PostgresServer, redis_server: RedisServer) -> SharedUrls:  # noqa: F811
    return SharedUrls(postgres_server.new_database(), redis_server.new_database())


@pytest.fixture(scope="module")
def pair(
    sim: SimProcess, module_urls: SharedUrls, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two instances on one PostgreSQL database and one Redis, for the whole module (each test
    uses keys of its own)."""
    config = ACCOUNTS + FLAT_MODEL
    workdir = tmp_path_factory.mktemp("pair")
    with ExitStack() as stack:
        a = stack.enter_context(launch_gateway(workdir / "a", sim, store=module_urls.store(), extra=config))
        b = stack.enter_context(launch_gateway(workdir / "b", sim, store=module_urls.store(), extra=config))
        yield a, b


async def fire_both(a: GatewayProcess, b: GatewayProcess, key: str, n: int, **create: Any) -> list[int]:
    halves = await asyncio.gather(
        fire(a.base_url, key, n // 2, **create), fire(b.base_url, key, n - n // 2, **create)
    )
    return halves[0] + halves[1]


def audit(gateway: GatewayProcess) -> dict[str, Any]:
    response = httpx.get(f"http://127.0.0.1:{gateway.port}/admin/audit", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def pg_value(server: PostgresServer, urls: SharedUrls, sql: str) -> str:
    return server.psql(sql, database=urls.postgres.rsplit("/", 1)[1]).strip()


def test_no_overspend_across_two_instances(
    pair: tuple[GatewayProcess, GatewayProcess],
    postgres_server: PostgresServer,  # noqa: F811
    module_urls: SharedUrls,
) -> None:
    a, b = pair
    key_id, key = new_key(a, "0.01")
    statuses = asyncio.run(fire_both(a, b, key, 200, **worst_is_a_tenth_of_a_cent()))
    admitted = statuses.count(200)
    assert 1 <= admitted <= 10, statuses
    assert statuses.count(402) == 200 - admitted
    for gateway in (a, b):
        state = key_state(gateway, key_id)
        assert Decimal(state["balance_usd"]) == Decimal("0.01") - admitted * Decimal("0.001") >= 0
        assert state["reserved_usd"] == "0"
    assert audit(b) == {"clean": True, "accounts": 1, "entries": 1 + 2 * admitted, "problems": []}
    stored = pg_value(
        postgres_server, module_urls, f"SELECT balance_nano FROM accounts WHERE key_id = '{key_id}'"
    )
    total = pg_value(
        postgres_server, module_urls, f"SELECT SUM(amount_nano) FROM ledger WHERE key_id = '{key_id}'"
    )
    assert int(stored) == int(total) == 10_000_000 - admitted * 1_000_000 >= 0


def test_budget_and_rate_limit_hold_as_one(pair: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, b = pair
    # Plenty of credits, a calendar-day budget of five requests' worth.
    budget_id, budget_key = new_key(a, "100", budgets=[{"period": "day", "limit_usd": "0.005"}])
    statuses = asyncio.run(fire_both(a, b, budget_key, 40, **worst_is_a_tenth_of_a_cent()))
    assert 1 <= statuses.count(200) <= 5 and statuses.count(402) == 40 - statuses.count(200)
    assert key_state(b, budget_id)["budgets"][0]["spent_usd"] == str(Decimal("0.001") * statuses.count(200))
    with pytest.raises(openai.APIStatusError) as refused:
        openai.OpenAI(base_url=b.base_url, api_key=budget_key, max_retries=0).chat.completions.create(
            **worst_is_a_tenth_of_a_cent()
        )
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "budget_exceeded"

    # 20 requests per minute for the key, whichever instance serves it.
    _, rate_key = new_key(a, "100", requests_per_minute=20)
    started = time.monotonic()
    cheap = {
        "model": "flat-1",
        "messages": LORE,
        "max_tokens": 5,
        "extra_body": {"sim": {"answer": {"lorem": 1}}},
    }
    statuses = asyncio.run(fire_both(a, b, rate_key, 60, **cheap))
    refills = (time.monotonic() - started) * 20 / 60
    assert 20 <= statuses.count(200) <= 20 + refills + 1, statuses
    assert statuses.count(429) == 60 - statuses.count(200)
    with pytest.raises(openai.RateLimitError) as limited:
        openai.OpenAI(base_url=a.base_url, api_key=rate_key, max_retries=0).chat.completions.create(**cheap)
    headers = limited.value.response.headers
    assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-limit-requests"] == "20"
    assert headers["x-ratelimit-remaining-requests"] == "0" and "x-ratelimit-reset-requests" in headers
    assert audit(a)["clean"] is True


def test_a_request_that_can_never_fit_is_told_so_at_once(pair: tuple[GatewayProcess, GatewayProcess]) -> None:
    """More tokens than the key's limit per minute: 429 request_too_large with no Retry-After, even
    while the requests bucket is empty (a Retry-After would only make the SDK wait to hear it)."""
    a, b = pair
    _, key = new_key(a, "1", requests_per_minute=1, tokens_per_minute=500)
    openai.OpenAI(base_url=a.base_url, api_key=key, max_retries=0).chat.completions.create(
        model="flat-1", messages=LORE, max_tokens=5
    )
    with pytest.raises(openai.RateLimitError) as refused:
        openai.OpenAI(base_url=b.base_url, api_key=key, max_retries=0).chat.completions.create(
            model="flat-1", messages=LORE, max_tokens=1000
        )
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "request_too_large"
    assert "retry-after" not in refused.value.response.headers


def test_revoked_key_is_refused_at_once_on_every_instance(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a = pair[0]
    key_id, key = new_key(a, "1")
    clients = [openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0) for g in pair]
    for client in clients:  # both instances have the key in their caches now
        client.chat.completions.create(model="flat-1", messages=LORE, max_tokens=5)
        client.models.list()
    revoked = httpx.delete(f"http://127.0.0.1:{a.port}/admin/keys/{key_id}", headers=ADMIN, timeout=10)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    # At once: the very next request on the other instance, with no pause.
    for client in reversed(clients):
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="flat-1", messages=LORE, max_tokens=5)
    # And every other route drops it as soon as the revocation is broadcast.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            clients[1].models.list()
        except openai.AuthenticationError:
            break
        time.sleep(0.02)
    else:
        pytest.fail("instance b still accepts the revoked key on /v1/models")


def test_reservation_of_a_killed_instance_expires(
    sim: SimProcess,
    shared_urls: SharedUrls,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = "accounts: {enabled: true, hold_ttl_s: 4, sweep_interval_s: 0.5}\n" + FLAT_MODEL
    with launch_gateway(tmp_path / "b", sim, store=shared_urls.store(), extra=config) as survivor:
        with launch_gateway(tmp_path / "a", sim, store=shared_urls.store(), extra=config) as victim:
            key_id, key = new_key(victim, "0.001")

            def slow() -> None:
                client = openai.OpenAI(base_url=victim.base_url, api_key=key, max_retries=0, timeout=30)
                try:
                    client.chat.completions.create(
                        **{**worst_is_a_tenth_of_a_cent(), "extra_body": {"sim": {"ttft_ms": 20_000}}}
                    )
                except openai.APIError:
                    pass

            thread = threading.Thread(target=slow, daemon=True)
            thread.start()
            deadline = time.monotonic() + 10
            while key_state(survivor, key_id)["reserved_usd"] == "0" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert key_state(survivor, key_id)["reserved_usd"] == "0.001"
            victim.process.kill()
            victim.process.wait()
        thread.join(30)
        # The survivor's sweeper releases it once its time to live is over.
        deadline = time.monotonic() + 15
        while key_state(survivor, key_id)["reserved_usd"] != "0" and time.monotonic() < deadline:
            time.sleep(0.2)
        state = key_state(survivor, key_id)
        assert state["reserved_usd"] == "0" and state["balance_usd"] == "0.001"
        ledger = httpx.get(
            f"http://127.0.0.1:{survivor.port}/admin/keys/{key_id}/ledger", headers=ADMIN
        ).json()
        kinds = [(row["kind"], row["note"]) for row in reversed(ledger["data"])]
        assert kinds[1][0] == "reservation" and kinds[2][0] == "release" and "expired" in kinds[2][1]
        assert audit(survivor)["clean"] is True


def test_cli_audits_and_tops_up_the_shared_store(
    pair: tuple[GatewayProcess, GatewayProcess],
    tmp_path: Path,
) -> None:
    a, b = pair
    key_id, key = new_key(a, "0.001")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "faregate.cli.main", *args, "--config", str(a.config)],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    added = cli("credits", "add", key_id, "0.002", "--note", "thanks")
    assert added.returncode == 0 and "balance $0.003" in added.stdout, added.stdout + added.stderr
    # The top-up went through Redis: both instances may spend it at once.
    statuses = asyncio.run(fire_both(a, b, key, 6, **worst_is_a_tenth_of_a_cent()))
    assert statuses.count(200) == 3 and statuses.count(402) == 3
    audited = cli("credits", "audit")
    assert audited.returncode == 0 and "Every balance equals the sum of its ledger rows" in audited.stdout
    shown = cli("keys", "show", key_id)
    assert "balance   $0 " in shown.stdout and "today $0.003" in shown.stdout, shown.stdout
