"""The premium tier end to end: with an upstream's concurrency limited, premium requests queued
behind standard ones are served first; a queue wait past its timeout is a 429; dedicated offers
serve premium keys only."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from harness import GatewayProcess, SimProcess, wait_until
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


STREAM = {"model": "qwen3-8b", "messages": LORE, "stream": True}


def ask(gateway: GatewayProcess, key: str, ttft_ms: int, model: str = "qwen3-8b") -> Any:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=60)
    return client.chat.completions.create(
        model=model, messages=LORE, max_tokens=5, extra_body={"sim": {"ttft_ms": ttft_ms}}
    )


def upstream_queue(gateway: GatewayProcess) -> dict[str, int]:
    health = httpx.get(f"http://127.0.0.1:{gateway.port}/health", headers=ADMIN).json()
    return dict(health["upstream_queues"]["sim"])


def queued(gateway: GatewayProcess) -> int:
    return upstream_queue(gateway)["queued"]


def holding_the_slot(gateway: GatewayProcess) -> bool:
    return upstream_queue(gateway)["active"] == 1


@contextmanager
def slot_held(gateway: GatewayProcess, key: str) -> Iterator[None]:
    """The upstream's only slot held by a slow stream of `key`'s (20 s of tokens), however long the
    rest takes on a busy machine; hung up on leaving, which frees the slot then, not at the end of a
    fixed wait."""
    blocker = {**STREAM, "sim": {"answer": {"lorem": 1000}, "tokens_per_s": 50, "fault": "none"}}
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{gateway.base_url}/chat/completions", json=blocker, headers=headers) as held,
    ):
        assert held.status_code == 200
        wait_until(lambda: holding_the_slot(gateway), "the blocker holds the only slot")
        yield


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

        # A standard request holds the only slot while the others queue; it hangs up once they all are.
        with slot_held(gateway, standard):
            # Each request is queued before the next starts: every standard one before any premium one.
            waiting = [(f"standard-{i}", standard) for i in range(4)]
            waiting += [(f"premium-{i}", premium) for i in range(4)]
            threads = []
            for position, (name, key) in enumerate(waiting, 1):
                threads.append(threading.Thread(target=run, args=(name, key, 150)))
                threads[-1].start()
                wait_until(lambda n=position: queued(gateway) == n, f"{name} is queued")
            assert queued(gateway) == len(waiting) and holding_the_slot(gateway), upstream_queue(gateway)
            done["blocker"] = time.monotonic()
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
    with launch_gateway(tmp_path / "gw", sim, extra=config, sim_first_byte_s=15) as gateway:
        _, key = new_key(gateway, "0")
        # The slot is held until the other request has given up; then the blocker hangs up.
        with slot_held(gateway, key):
            started = time.monotonic()
            with pytest.raises(openai.RateLimitError) as limited:
                ask(gateway, key, 0)
            # It waited its whole timeout (a lower bound: a busy machine only makes the wait
            # longer), and gave up while the blocker still held the slot.
            assert time.monotonic() - started >= 0.5
            assert holding_the_slot(gateway) and upstream_queue(gateway)["timeouts"] == 1
        assert limited.value.response.headers["retry-after"] == "1"
        body = limited.value.body
        assert isinstance(body, dict) and body["code"] == "upstream_queue_timeout"
        wait_until(lambda: upstream_queue(gateway)["active"] == 0, "the blocker's slot is freed")
        assert ask(gateway, key, 0).choices[0].message.content  # the slot came back
