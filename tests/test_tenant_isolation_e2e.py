"""Issue #12, items 4 and 10 (cache hits and rate limits): what one key does cannot hurt another.

Real gateway and simulator processes, the official openai SDK, default breaker settings."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from harness import SimProcess, create_key
from servers import launch_gateway

pytestmark = pytest.mark.e2e


def test_blank_answers_one_key_provokes_do_not_open_the_breaker_for_another(
    sim: SimProcess, tmp_path: Path
) -> None:
    # The simulator echoes the prompt: an empty prompt gets a blank answer, which the gateway treats
    # as a failed attempt (and falls back from). Key A can do that at will.
    with launch_gateway(tmp_path / "gw", sim) as gateway:
        key_a = create_key(gateway.store_path, "a")
        key_b = create_key(gateway.store_path, "b")
        a = openai.OpenAI(base_url=gateway.base_url, api_key=key_a, max_retries=0)
        b = openai.OpenAI(base_url=gateway.base_url, api_key=key_b, max_retries=0)
        empty = [{"role": "user", "content": ""}]
        for _ in range(4):
            with pytest.raises(openai.APIStatusError):
                a.chat.completions.create(model="deepseek-v4-flash", messages=empty)
        # A has stopped only itself: its own breaker for the offer is open (503 at once)...
        with pytest.raises(openai.APIStatusError) as own:
            a.chat.completions.create(model="deepseek-v4-flash", messages=[{"role": "user", "content": "hi"}])
        assert own.value.status_code == 503
        # ...while B is served as if nothing happened.
        for i in range(3):
            reply = b.chat.completions.create(
                model="deepseek-v4-flash", messages=[{"role": "user", "content": f"hello {i}"}]
            )
            assert reply.choices[0].message.content == f"hello {i}"
