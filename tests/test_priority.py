"""The premium tier end to end: with an upstream's concurrency limited, premium requests queued
behind standard ones are served first; a queue wait past its timeout is a 429; dedicated offers
serve premium keys only."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from harness import GatewayProcess, SimProcess
from servers import launch_gateway
from test_ledger_e2e import ADMIN, LORE, new_key

pytestmark = pytest.mark.e2e

DEDICATED = """
models:
  reserved-1:
    input: 1
    output: 1
    context_window: 128000
    offers: [{provider: sim, dedicated: true}]
"""


def ask(gateway: GatewayProcess, key: str, ttft_ms: int, model: str = "qwen3-8b") -> Any:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=60)
    return client.chat.completions.create(
        model=model, messages=LORE, max_tokens=5, extra_body={"sim": {"ttft_ms": ttft_ms}}
    )


def queued(gateway: GatewayProcess) -> int:
    health = httpx.get(f"http://127.0.0.1:{gateway.port}/health", headers=ADMIN).json()
    return int(health["upstream_queues"]["sim"]["queued"])


def test_premium_requests_are_served_first(sim: SimProcess, tmp_path: Path) -> None:
    config = "upstream_limits: {sim: {max_concurrent: 1, max_queued: 100, timeout_s: 30}}\n" + DEDICATED
    with launch_gateway(tmp_path / "gw", sim, extra=config, sim_first_byte_s=15) as gateway:
        _, standard = new_key(gateway, "0")
        _, premium = new_key(gateway, "0", premium=True)
        assert premium.startswith("fg_pro_")
        done: dict[str, float] = {}
        errors: list[BaseException] = []

        def run(name: str, key: str, ttft_ms: int) -> None:
            try:
                ask(gateway, key, ttft_ms)
                done[name] = time.monotonic()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=("blocker", standard, 5000))]
        threads[0].start()
        time.sleep(0.3)  # the blocker holds the only slot
        for i in range(4):
            threads.append(threading.Thread(target=run, args=(f"standard-{i}", standard, 150)))
            threads[-1].start()
            time.sleep(0.03)
        time.sleep(0.1)  # every standard request is queued before any premium one arrives
        for i in range(4):
            threads.append(threading.Thread(target=run, args=(f"premium-{i}", premium, 150)))
            threads[-1].start()
            time.sleep(0.03)
        # Every request is queued while the blocker still holds the slot.
        deadline = time.monotonic() + 4.0
        while queued(gateway) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queued(gateway) == 8 and "blocker" not in done
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        premium_last = max(t for name, t in done.items() if name.startswith("premium"))
        standard_first = min(t for name, t in done.items() if name.startswith("standard"))
        assert done["blocker"] < premium_last < standard_first, sorted(done, key=done.__getitem__)

        # Dedicated offers: premium keys only.
        with pytest.raises(openai.APIStatusError) as refused:
            ask(gateway, standard, 0, "reserved-1")
        assert refused.value.status_code == 503 and "dedicated to premium keys" in refused.value.message
        assert ask(gateway, premium, 0, "reserved-1").choices[0].message.content


def test_a_queue_wait_past_its_timeout_is_a_429(sim: SimProcess, tmp_path: Path) -> None:
    config = "upstream_limits: {sim: {max_concurrent: 1, timeout_s: 0.5}}\n"
    with launch_gateway(tmp_path / "gw", sim, extra=config) as gateway:
        _, key = new_key(gateway, "0")
        blocker = threading.Thread(target=ask, args=(gateway, key, 1300))
        blocker.start()
        time.sleep(0.3)
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as limited:
            ask(gateway, key, 0)
        assert 0.4 < time.monotonic() - started < 2.5
        assert limited.value.response.headers["retry-after"] == "1"
        body = limited.value.body
        assert isinstance(body, dict) and body["code"] == "upstream_queue_timeout"
        blocker.join(30)
        assert ask(gateway, key, 0).choices[0].message.content  # the slot came back
