"""Settings a model refuses are left out of what it is sent, on every client wire (wire/model_params.py)."""

from __future__ import annotations

import copy
from typing import Any

from faregate.catalog import build_catalog
from faregate.config import load_settings
from faregate.server.client_wires import MESSAGES, RESPONSES
from faregate.wire.anthropic_upstream import chat_to_messages
from faregate.wire.model_params import drop_refused, dropped_params, refused_params
from faregate.wire.openai import upstream_body
from faregate.wire.responses_native import native_body

MSG = [{"role": "user", "content": "hi"}]
NOT_REASONING = refused_params(reasoning=False, sampling=True)  # gpt-4o-mini, claude-haiku-4-5
NO_SAMPLING = refused_params(reasoning=True, sampling=False)  # o3, gpt-5


def sent(body: dict[str, Any], refused: frozenset[str], limit_field: str = "max_tokens") -> dict[str, Any]:
    """The upstream body `body` becomes for a model that refuses `refused`."""
    out = upstream_body(body, "upstream-name", None, False, limit_field)
    drop_refused(out, refused)
    return out


def test_a_model_that_does_not_reason_is_sent_no_reasoning_effort() -> None:
    body = {"model": "auto", "messages": MSG, "reasoning_effort": "high", "temperature": 0.2}
    kept = copy.deepcopy(body)
    assert sent(body, NOT_REASONING) == {"model": "upstream-name", "messages": MSG, "temperature": 0.2}
    assert body == kept, "the client's body is not changed"
    assert dropped_params(body, NOT_REASONING) == ["reasoning_effort"]
    # A model not marked either way is sent what the client gave.
    assert sent(body, frozenset())["reasoning_effort"] == "high"


def test_a_reasoning_model_is_sent_no_sampling_settings() -> None:
    body = {
        "model": "auto",
        "messages": MSG,
        "temperature": 0.2,
        "top_p": 0.9,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
        "logprobs": True,
        "top_logprobs": 2,
        "logit_bias": {"50256": -100},
        "reasoning_effort": "low",
        "max_tokens": 50,
    }
    out = sent(body, NO_SAMPLING, "max_completion_tokens")
    assert out == {
        "model": "upstream-name",
        "messages": MSG,
        "reasoning_effort": "low",
        "max_completion_tokens": 50,
    }
    assert dropped_params(body, NO_SAMPLING) == sorted(
        [
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
            "logprobs",
            "top_logprobs",
            "logit_bias",
        ]
    )
    assert dropped_params({"model": "m", "messages": MSG, "temperature": None}, NO_SAMPLING) == []


def test_a_messages_clients_effort_is_not_sent_to_a_claude_model_without_effort() -> None:
    # claude-haiku-4-5 refuses output_config.effort; "max" rides along as the Messages effort.
    asked = {"model": "auto", "max_tokens": 20, "messages": MSG, "output_config": {"effort": "max"}}
    chat = MESSAGES.to_chat(asked)
    messages = chat_to_messages(sent(chat, NOT_REASONING))
    assert "output_config" not in messages
    assert chat_to_messages(sent(chat, frozenset()))["output_config"] == {"effort": "max"}
    names = MESSAGES.param_names
    assert [names.get(n, n) for n in dropped_params(chat, NOT_REASONING)] == ["output_config.effort"] * 2


def test_a_responses_body_passed_through_natively_leaves_them_out_too() -> None:
    asked = {"model": "auto", "input": "hi", "reasoning": {"effort": "low"}, "temperature": 0.2, "top_p": 0.5}
    kept = copy.deepcopy(asked)
    chat = RESPONSES.to_chat(asked)
    native = native_body(sent(chat, NOT_REASONING), stream=False)
    # No `reasoning`, and so no encrypted reasoning asked back (which such a model refuses too).
    assert "reasoning" not in native and "include" not in native and native["temperature"] == 0.2
    native = native_body(sent(chat, NO_SAMPLING), stream=False)
    assert native["reasoning"] == {"effort": "low"} and "temperature" not in native and "top_p" not in native
    assert asked == kept, "the client's body is not changed"
    # A summary asked for without an effort is a reasoning setting left out all the same.
    summary = RESPONSES.to_chat({"model": "auto", "input": "hi", "reasoning": {"summary": "auto"}})
    assert "reasoning" not in native_body(sent(summary, NOT_REASONING), stream=False)
    assert dropped_params(summary, NOT_REASONING) == ["reasoning_effort"]
    assert RESPONSES.param_names["reasoning_effort"] == "reasoning"
    # Encrypted reasoning asked back, which such a model refuses as well ("Encrypted content is
    # not supported with this model"), is not asked for.
    both = ["reasoning.encrypted_content", "message.output_text.logprobs"]
    encrypted = RESPONSES.to_chat({"model": "auto", "input": "hi", "include": both})
    assert native_body(sent(encrypted, NOT_REASONING), stream=False)["include"] == both[1:]
    assert native_body(sent(encrypted, NO_SAMPLING), stream=False)["include"] == both


def test_the_catalog_says_what_each_model_refuses_and_the_config_can_say_it() -> None:
    catalog = build_catalog(load_settings())
    assert "reasoning_effort" in catalog.models["gpt-4o-mini"].refuses
    assert "messages_effort" in catalog.models["claude-haiku-4-5"].refuses
    assert not catalog.models["claude-sonnet-4-6"].refuses  # takes an effort and sampling both
    assert "temperature" in catalog.models["deepseek-reasoner"].refuses
    assert not catalog.models["deepseek-ai/DeepSeek-V4-Flash"].refuses  # not marked: sent as given
    # OpenAI's reasoning models from the broad catalog, by name.
    assert catalog.get("o3") is not None and "temperature" in catalog.get("o3").refuses  # type: ignore[union-attr]
    own = {"input": 1, "output": 1, "offers": [{"provider": "vllm"}]}
    settings = load_settings(
        overrides={"models": {"mine": {**own, "reasoning": False}, "thinker": {**own, "sampling": False}}}
    )
    catalog = build_catalog(settings)
    assert catalog.models["mine"].refuses == NOT_REASONING
    assert catalog.models["thinker"].refuses == NO_SAMPLING


def test_a_model_before_gpt_5_is_sent_no_verbosity() -> None:
    """verbosity, the gpt-5 models' length hint, is refused by the models before them but at its
    default ("Unsupported value: 'verbosity' does not support 'low' with this model")."""
    body = {"model": "auto", "messages": MSG, "verbosity": "low"}
    assert "verbosity" not in sent(body, NOT_REASONING)
    assert sent(body, NO_SAMPLING)["verbosity"] == "low"
    asked = {"model": "auto", "input": "hi", "text": {"verbosity": "low", "format": {"type": "text"}}}
    chat = RESPONSES.to_chat(asked)
    assert native_body(sent(chat, NOT_REASONING), stream=False)["text"] == {"format": {"type": "text"}}
    assert asked["text"] == {"verbosity": "low", "format": {"type": "text"}}, (
        "the client's body is not changed"
    )
    assert [RESPONSES.param_names.get(n, n) for n in dropped_params(chat, NOT_REASONING)] == [
        "text.verbosity"
    ]
