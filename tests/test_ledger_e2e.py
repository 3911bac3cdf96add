"""End to end on the embedded store: the official openai SDK against real gateway and simulator
processes. No overspend under concurrency, exact settlement, cut streams, killed processes."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from harness import MASTER_KEY, GatewayProcess, SimProcess, wait_until
from servers import launch_gateway

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
# A model whose worst case is exactly max_tokens * $1/1M (input is free): easy money to reason about.
FLAT_MODEL = """
models:
  flat-1:
    input: 0
    output: 1
    context_window: 128000
    offers: [{provider: sim}]
"""
ACCOUNTS = "accounts: {enabled: true}\n"
LORE = [{"role": "user", "content": "Tell me a story"}]


def admin(gateway: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", headers=ADMIN, timeout=30)


def new_key(gateway: GatewayProcess, credits: str, **fields: Any) -> tuple[str, str]:
    with admin(gateway) as client:
        response = client.post("/admin/keys", json={"name": "e2e", "credits_usd": credits, **fields})
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["api_key"]


def key_state(gateway: GatewayProcess, key_id: str) -> dict[str, Any]:
    with admin(gateway) as client:
        response = client.get(f"/admin/keys/{key_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def audit(gateway: GatewayProcess) -> dict[str, Any]:
    with admin(gateway) as client:
        return dict(client.get("/admin/audit").json())


def db_rows(gateway: GatewayProcess, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(gateway.store_path / "faregate.db") as db:
        return db.execute(sql, params).fetchall()


def wait_recorded_and_settled(gateway: GatewayProcess, *request_ids: str) -> None:
    """Records are written in batches and holds closed just after the response: wait for both."""

    def done(request_id: str) -> bool:
        recorded = db_rows(gateway, "SELECT 1 FROM request_records WHERE request_id = ?", request_id)
        closed = db_rows(
            gateway,
            "SELECT 1 FROM ledger WHERE request_id = ? AND kind IN ('settlement', 'release')",
            request_id,
        )
        return bool(recorded and closed)

    wait_until(lambda: all(done(r) for r in request_ids), f"{request_ids} are recorded and settled")


def ledger_sum(gateway: GatewayProcess, key_id: str) -> int:
    return int(
        db_rows(gateway, "SELECT COALESCE(SUM(amount_nano), 0) FROM ledger WHERE key_id = ?", key_id)[0][0]
    )


def balance_nano(gateway: GatewayProcess, key_id: str) -> int:
    return int(db_rows(gateway, "SELECT balance_nano FROM accounts WHERE key_id = ?", key_id)[0][0])


async def fire(base_url: str, key: str, n: int, /, **create: Any) -> list[int]:
    """n concurrent completions; the HTTP status of each (`create` may have an `n` of its own)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)

    async def one() -> int:
        try:
            await client.chat.completions.create(**create)
        except openai.APIStatusError as error:
            return error.status_code
        return 200

    try:
        return list(await asyncio.gather(*(one() for _ in range(n))))
    finally:
        await client.close()


def worst_is_a_tenth_of_a_cent() -> dict[str, Any]:
    # max_tokens 1000 at $1/1M output, and the answer really is 1000 tokens: cost == worst case.
    return {
        "model": "flat-1",
        "messages": LORE,
        "max_tokens": 1000,
        "extra_body": {"sim": {"answer": {"lorem": 1000}}},
    }


def test_no_overspend_under_concurrency(sim: SimProcess, tmp_path: Path) -> None:
    with launch_gateway(tmp_path / "gw", sim, extra=ACCOUNTS + FLAT_MODEL) as gateway:
        key_id, key = new_key(gateway, "0.01")
        statuses = asyncio.run(fire(gateway.base_url, key, 200, **worst_is_a_tenth_of_a_cent()))
        admitted = statuses.count(200)
        assert 1 <= admitted <= 10, statuses
        assert statuses.count(402) == 200 - admitted, sorted(set(statuses))
        state = key_state(gateway, key_id)
        assert Decimal(state["balance_usd"]) == Decimal("0.01") - admitted * Decimal("0.001") >= 0
        assert state["reserved_usd"] == "0"
        assert balance_nano(gateway, key_id) == ledger_sum(gateway, key_id) >= 0
        assert audit(gateway)["clean"] is True
        client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        if admitted == 10:
            with pytest.raises(openai.APIStatusError) as refused:
                client.chat.completions.create(**worst_is_a_tenth_of_a_cent())
            body = refused.value.body
            assert refused.value.status_code == 402 and isinstance(body, dict)
            assert body["code"] == "insufficient_quota" and "$0.001" in body["message"]
            assert "balance is $0" in body["message"]


def test_settlement_is_exact_streaming_or_not(sim: SimProcess, tmp_path: Path) -> None:
    from test_e2e_chat import prompt_of

    with launch_gateway(tmp_path / "gw", sim, extra=ACCOUNTS) as gateway:
        key_id, key = new_key(gateway, "1")
        client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        create = {
            "model": "deepseek-v4-flash",
            "messages": prompt_of(1000),
            "max_tokens": 600,
            "extra_body": {"sim": {"answer": {"lorem": 500}}},
        }
        raw = client.chat.completions.with_raw_response.create(**create)
        ids = [raw.headers["x-faregate-request-id"]]
        assert raw.headers["x-faregate-cost-usd"] == "0.00082"
        assert raw.headers["x-ratelimit-limit-requests"] == "600"
        for options in ({"include_usage": True}, None):
            extra = {"stream_options": options} if options else {}
            streamed = client.chat.completions.with_raw_response.create(stream=True, **create, **extra)
            ids.append(streamed.headers["x-faregate-request-id"])
            list(streamed.parse())
        wait_recorded_and_settled(gateway, *ids)
        for request_id in ids:
            (reservation, settlement, cost), *_ = db_rows(
                gateway,
                "SELECT r.amount_nano, s.amount_nano, s.cost_nano FROM ledger r JOIN ledger s"
                " ON s.entry_id = r.hold_id || ':close' WHERE r.request_id = ? AND r.kind = 'reservation'",
                request_id,
            )
            assert cost == 820_000 and settlement == -reservation - cost and -reservation >= cost
            assert db_rows(
                gateway, "SELECT cost_nanousd FROM request_records WHERE request_id = ?", request_id
            ) == [(820_000,)]
        assert balance_nano(gateway, key_id) == 1_000_000_000 - 3 * 820_000 == ledger_sum(gateway, key_id)
        assert key_state(gateway, key_id)["reserved_usd"] == "0"


def test_cut_streams_settle_to_what_was_sent_or_are_released(sim: SimProcess, tmp_path: Path) -> None:
    with launch_gateway(tmp_path / "gw", sim, extra=ACCOUNTS) as gateway:
        key_id, key = new_key(gateway, "1")
        client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        cut = client.chat.completions.with_raw_response.create(
            model="deepseek-v4-flash",
            messages=LORE,
            max_tokens=200,
            stream=True,
            extra_body={"sim": {"fault": "truncate", "after_tokens": 3, "answer": {"lorem": 50}}},
        )
        cut_id = cut.headers["x-faregate-request-id"]
        with pytest.raises(openai.APIError):
            list(cut.parse())
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(
                model="deepseek-v4-flash",
                messages=LORE,
                max_tokens=200,
                stream=True,
                extra_body={"sim": {"fault": "truncate", "after_tokens": 0}},
            )
        assert failed.value.status_code == 502
        failed_id = failed.value.response.headers["x-faregate-request-id"]
        wait_recorded_and_settled(gateway, cut_id, failed_id)
        # Content reached the user: the stream is billed for what was sent (no usage was reported,
        # so the gateway counted it), and the ledger charged exactly what the record says.
        (recorded,) = db_rows(
            gateway, "SELECT cost_nanousd FROM request_records WHERE request_id = ?", cut_id
        )
        kinds = db_rows(
            gateway, "SELECT kind, cost_nano FROM ledger WHERE request_id = ? ORDER BY id", cut_id
        )
        assert recorded[0] > 0 and kinds == [("reservation", None), ("settlement", recorded[0])]
        # Nothing reached the user and nothing was billed: the hold is released whole.
        kinds = db_rows(
            gateway, "SELECT kind, amount_nano FROM ledger WHERE request_id = ? ORDER BY id", failed_id
        )
        assert [k for k, _ in kinds] == ["reservation", "release"] and sum(a for _, a in kinds) == 0
        assert balance_nano(gateway, key_id) == 1_000_000_000 - recorded[0] == ledger_sum(gateway, key_id)
        assert db_rows(gateway, "SELECT COUNT(*) FROM holds") == [(0,)]
        assert audit(gateway)["clean"] is True


def test_reservations_of_a_killed_process_expire(sim: SimProcess, tmp_path: Path) -> None:
    config = "accounts: {enabled: true, hold_ttl_s: 6, sweep_interval_s: 600}\n" + FLAT_MODEL
    workdir = tmp_path / "gw"
    with launch_gateway(workdir, sim, extra=config) as first:
        key_id, key = new_key(first, "0.001")  # exactly one worst case

        def slow_request() -> None:
            client = openai.OpenAI(base_url=first.base_url, api_key=key, max_retries=0, timeout=30)
            try:
                client.chat.completions.create(
                    **{**worst_is_a_tenth_of_a_cent(), "extra_body": {"sim": {"ttft_ms": 20_000}}}
                )
            except openai.APIError:
                pass  # its gateway is killed under it

        thread = threading.Thread(target=slow_request, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not db_rows(first, "SELECT hold_id FROM holds") and time.monotonic() < deadline:
            time.sleep(0.05)
        (hold_id,) = db_rows(first, "SELECT hold_id FROM holds")[0]
        first.process.kill()  # SIGKILL: no cleanup, the hold stays behind
        first.process.wait()
    thread.join(30)
    with launch_gateway(workdir, sim, extra=config) as second:
        client = openai.OpenAI(base_url=second.base_url, api_key=key, max_retries=0)
        held = key_state(second, key_id)
        if held["reserved_usd"] != "0":  # still within its time to live: the money is held
            assert held["balance_usd"] == "0"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                # The sweeper runs every 600 s here: admission itself skips the expired hold.
                client.chat.completions.create(**worst_is_a_tenth_of_a_cent())
                break
            except openai.APIStatusError as error:
                assert error.status_code == 402
                time.sleep(0.5)
        else:
            pytest.fail("the dead process's reservation never expired")
        rows = db_rows(second, "SELECT kind, note FROM ledger WHERE hold_id = ? ORDER BY id", hold_id)
        assert rows[0][0] == "reservation" and rows[1][0] == "release" and "expired" in rows[1][1]
        assert key_state(second, key_id)["balance_usd"] == "0"
        assert db_rows(second, "SELECT COUNT(*) FROM holds") == [(0,)]
        assert audit(second)["clean"] is True
