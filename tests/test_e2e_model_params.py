"""End to end: settings a model refuses are left out for it, through the openai SDK, against the
simulator refusing them as the real APIs do (gpt-4o-mini reasoning_effort, a reasoning model a
temperature, Claude Opus 4.5 an effort above "high")."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from harness import GatewayProcess, cache_written

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "Hello there"}]


@pytest.fixture()
def client(gateway: GatewayProcess, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0)


def test_the_models_picked_are_sent_only_the_settings_they_take(client: openai.OpenAI) -> None:
    # The client's list puts the cheap non-reasoning model first: it answers, without the effort
    # (sent, the simulator refuses it with OpenAI's 400, which no fallback follows).
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MSG,
        reasoning_effort="low",
        extra_body={"models": ["gpt-4o-mini", "claude-sonnet-4-6"]},
    )
    assert raw.parse().choices[0].message.content == "Hello there"
    assert raw.headers["x-faregate-model"] == "gpt-4o-mini"
    assert raw.headers["x-faregate-dropped-params"] == "reasoning_effort"
    # A reasoning model is sent no temperature; stream alike.
    with client.chat.completions.with_streaming_response.create(
        model="deepseek-reasoner", messages=MSG, temperature=0.2, top_p=0.5, stream=True
    ) as streamed:
        assert streamed.headers["x-faregate-dropped-params"] == "temperature, top_p"
        assert (
            "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices) == "Hello there"
        )
    # The Responses wire names it as its client does.
    raw_response = client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="Hello there", reasoning={"effort": "low"}
    )
    assert raw_response.parse().output_text == "Hello there"
    assert raw_response.headers["x-faregate-dropped-params"] == "reasoning"
    # Nothing left out, no header.
    plain = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSG, temperature=0.2
    )
    assert "x-faregate-dropped-params" not in plain.headers
    assert "x-faregate-adjusted-params" not in plain.headers


def test_a_model_picked_is_sent_the_nearest_effort_it_takes(
    gateway: GatewayProcess, client: openai.OpenAI
) -> None:
    # claude-opus-4-5 takes low to high: "xhigh" (which the simulator refuses for it, as Anthropic
    # does, with a 400 no fallback follows) is sent as its most, "high"; stream alike.
    raw = client.chat.completions.with_raw_response.create(
        model="claude-opus-4-5",
        messages=MSG,
        reasoning_effort="xhigh",  # type: ignore[arg-type]
        extra_body={"models": ["claude-opus-4-5", "gpt-4o-mini"]},
    )
    assert raw.parse().choices[0].message.content == "Hello there"
    assert raw.headers["x-faregate-model"] == "claude-opus-4-5"
    assert raw.headers["x-faregate-adjusted-params"] == "reasoning_effort=high"
    assert "x-faregate-dropped-params" not in raw.headers
    # An effort the model takes is sent as given, and no header says otherwise.
    same = client.responses.with_raw_response.create(
        model="claude-opus-4-5", input="Hello there", reasoning={"effort": "low"}
    )
    assert same.parse().output_text == "Hello there"
    assert "x-faregate-adjusted-params" not in same.headers

    # A hit's answer carried neither header, though the same settings (the cache's key holds
    # them) were left out or fitted when it was made.
    for model, effort, header, said in (
        ("gpt-4o-mini", "low", "x-faregate-dropped-params", "reasoning_effort"),
        ("claude-opus-4-5", "xhigh", "x-faregate-adjusted-params", "reasoning_effort=high"),
    ):
        asked: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": f"cached for {model}"}],
            "reasoning_effort": effort,
            "temperature": 0,
        }
        with cache_written(gateway):
            first = client.chat.completions.with_raw_response.create(**asked)
        hit = client.chat.completions.with_raw_response.create(**asked)
        assert (first.headers["x-faregate-cache"], hit.headers["x-faregate-cache"]) == ("miss", "hit")
        assert first.headers[header] == hit.headers[header] == said, model
