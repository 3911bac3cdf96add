"""Settings a model refuses are left out of what it is sent, on every client wire (wire/model_params.py)."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from faregate.catalog import build_catalog
from faregate.catalog.broad import _openai_efforts
from faregate.config import load_settings
from faregate.errors import ConfigError
from faregate.providers.registry import ProviderRegistry
from faregate.routing.attempts import AttemptRunner
from faregate.routing.plan import Candidate
from faregate.server.client_wires import CHAT, MESSAGES, RESPONSES, ClientWire
from faregate.server.exchange import Exchange
from faregate.types import ChatRequest, Price
from faregate.wire.anthropic import MESSAGES_EFFORT
from faregate.wire.anthropic_upstream import chat_to_messages
from faregate.wire.model_params import (
    adjusted_effort,
    drop_refused,
    dropped_params,
    effort_list,
    fit_effort,
    nearest_effort,
    refused_params,
)
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


O3 = ("low", "medium", "high")
GPT_5 = ("minimal", "low", "medium", "high")
GPT_5_2 = ("none", "low", "medium", "high", "xhigh")
OPUS_4_5 = ("low", "medium", "high")
OPUS_4_6 = ("low", "medium", "high", "max")


def fitted(body: dict[str, Any], efforts: tuple[str, ...]) -> dict[str, Any]:
    """The upstream body `body` becomes for a model that takes `efforts`."""
    out = upstream_body(body, "upstream-name", None, False, "max_tokens")
    fit_effort(out, efforts)
    return out


def test_an_effort_a_model_does_not_take_is_sent_as_the_nearest_above_else_its_most() -> None:
    # Never less effort than asked where the model takes more: o3 asked "minimal" thinks at "low",
    # gpt-5 asked "none" at "minimal", Opus 4.6 asked "xhigh" at "max"...
    assert nearest_effort("minimal", O3) == "low"
    assert nearest_effort("none", GPT_5) == "minimal"
    assert nearest_effort("xhigh", OPUS_4_6) == "max"
    assert nearest_effort("minimal", GPT_5_2) == "low"
    # ...and a model that takes nothing above it its most (gpt-5 asked "xhigh", Opus 4.5 "max").
    assert nearest_effort("xhigh", GPT_5) == "high"
    assert nearest_effort("max", OPUS_4_5) == "high"
    assert nearest_effort("medium", ("high",)) == "high"  # gpt-5-pro
    # An effort taken, or not on the scale (the upstream's 400 says what is wrong), as given.
    assert nearest_effort("medium", O3) == "medium"
    assert nearest_effort("ultra", O3) == "ultra" and nearest_effort(3, O3) == 3
    assert effort_list(["max", "low", "high", "low"]) == ("low", "high", "max")


def test_each_wires_effort_is_fitted_and_the_header_names_the_one_sent() -> None:
    body = {"model": "auto", "messages": MSG, "reasoning_effort": "minimal"}
    kept = copy.deepcopy(body)
    assert fitted(body, O3)["reasoning_effort"] == "low"
    assert body == kept, "the client's body is not changed"
    assert adjusted_effort(body, O3) == "low" and CHAT.effort_param == "reasoning_effort"
    assert fitted(body, GPT_5)["reasoning_effort"] == "minimal" and adjusted_effort(body, GPT_5) is None
    assert fitted({"model": "auto", "messages": MSG}, O3) == {"model": "upstream-name", "messages": MSG}
    assert adjusted_effort({"model": "auto", "messages": MSG}, O3) is None

    # A Messages client's "max" (the chat wire's "high" beside it) is fitted as asked: "max" to
    # Opus 4.6, "high" to Opus 4.5 (both fields), "xhigh" to gpt-5.2 (which reads reasoning_effort).
    asked_max = {"model": "auto", "max_tokens": 20, "messages": MSG, "output_config": {"effort": "max"}}
    chat = MESSAGES.to_chat(asked_max)
    assert chat_to_messages(fitted(chat, OPUS_4_6))["output_config"] == {"effort": "max"}
    assert adjusted_effort(chat, OPUS_4_6) is None
    assert chat_to_messages(fitted(chat, OPUS_4_5))["output_config"] == {"effort": "high"}
    assert adjusted_effort(chat, OPUS_4_5) == "high" and MESSAGES.effort_param == "output_config.effort"
    assert fitted(chat, GPT_5_2)["reasoning_effort"] == "xhigh" and adjusted_effort(chat, GPT_5_2) == "xhigh"

    # A Responses client's, translated and passed through natively (the client's body unchanged).
    asked = {"model": "auto", "input": "hi", "reasoning": {"effort": "none", "summary": "auto"}}
    kept = copy.deepcopy(asked)
    chat = RESPONSES.to_chat(asked)
    assert fitted(chat, GPT_5)["reasoning_effort"] == "minimal"
    native = native_body(fitted(chat, GPT_5), stream=False)
    assert native["reasoning"] == {"effort": "minimal", "summary": "auto"}
    assert asked == kept, "the client's body is not changed"
    assert adjusted_effort(chat, GPT_5) == "minimal" and RESPONSES.effort_param == "reasoning.effort"


def test_the_catalog_says_the_efforts_a_model_takes_and_the_config_can_say_it() -> None:
    catalog = build_catalog(load_settings())
    assert catalog.models["claude-opus-4-5"].efforts == OPUS_4_5
    assert catalog.models["claude-opus-4-6"].efforts == OPUS_4_6
    assert catalog.models["claude-opus-5"].efforts == ("low", "medium", "high", "xhigh", "max")
    assert catalog.models["deepseek-ai/DeepSeek-V4-Flash"].efforts is None  # not listed: sent as given
    # OpenAI's reasoning models from the broad catalog, by name, as OpenAI documents them.
    broad = {name: catalog.get(name) for name in ("o3", "o4-mini", "gpt-5", "gpt-5-pro", "gpt-5.1", "gpt-4o")}
    assert {name: model.efforts for name, model in broad.items() if model is not None} == {
        "o3": O3,
        "o4-mini": O3,
        "gpt-5": GPT_5,
        "gpt-5-pro": ("high",),
        "gpt-5.1": ("none", "low", "medium", "high"),
        "gpt-4o": None,
    }
    own = {"input": 1, "output": 1, "offers": [{"provider": "vllm"}]}
    settings = load_settings(overrides={"models": {"mine": {**own, "efforts": ["high", "low"]}}})
    assert build_catalog(settings).models["mine"].efforts == ("low", "high")
    not_reasoning = {**own, "efforts": ["low"], "reasoning": False}
    with pytest.raises(ConfigError, match=r"models\.mine: efforts"):
        build_catalog(load_settings(overrides={"models": {"mine": not_reasoning}}))
    with pytest.raises(ConfigError, match="efforts"):
        load_settings(overrides={"models": {"mine": {**own, "efforts": ["ultra"]}}})


def test_the_newer_openai_models_say_the_efforts_openai_takes_for_them() -> None:
    # Each was sent the client's effort as given, and refused one it does not take with a 400
    # (gpt-5.4-mini "minimal", o3-deep-research anything but "medium").
    catalog = build_catalog(load_settings())
    to_xhigh = ("none", "low", "medium", "high", "xhigh")
    expected = {
        "gpt-5.4": to_xhigh,
        "gpt-5.4-mini": to_xhigh,
        "gpt-5.4-nano": to_xhigh,
        "gpt-5.5": to_xhigh,
        "gpt-5.6": (*to_xhigh, "max"),  # the alias of gpt-5.6-sol
        "gpt-5.6-sol": (*to_xhigh, "max"),
        "gpt-5.1-codex-mini": ("low", "medium", "high"),
        "o3-deep-research": ("medium",),
        "o4-mini-deep-research": ("medium",),
    }
    found = {name: catalog.get(name) for name in expected}
    assert {name: model.efforts for name, model in found.items() if model is not None} == {
        name: efforts for name, efforts in expected.items() if found[name] is not None
    }
    assert found["gpt-5.4-mini"] is not None and found["o3-deep-research"] is not None
    # By name, whether or not this genai-prices snapshot prices them yet.
    assert {name: _openai_efforts(name) for name in expected} == expected
    assert _openai_efforts("gpt-5.4-mini-2026-03-17") == expected["gpt-5.4-mini"]
    # Not documented alike: sent as given (gpt-5.6-terra and -luna: "max" or not, sources differ).
    for name in ("gpt-5.6-terra", "gpt-5.6-luna", "gpt-5.4-pro", "gpt-5.5-pro", "gpt-5.3"):
        model = catalog.get(name)
        assert model is None or model.efforts is None, name


class _Wire:
    """A provider at the transport seam that is only built calls for: what it carries."""

    def __init__(self, carries: frozenset[str] = frozenset()) -> None:
        self.carries = carries


def _sent_and_said(
    candidate: Candidate, body: dict[str, Any], wire: ClientWire, extras: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], str | None]:
    """The body `candidate` is sent for the client's `body` (as the internal chat body), and the
    x-faregate-adjusted-params header its answer carries."""
    offer = candidate.offer
    carries = frozenset({MESSAGES_EFFORT}) if offer.protocol == "anthropic" else frozenset()
    registry = ProviderRegistry.of({offer.provider: _Wire(carries)})  # type: ignore[dict-item]
    request = ChatRequest("req", body, "claude-opus-4-6", False, False, None, frozenset(), wire_extras=extras)
    call = AttemptRunner(registry, 30.0).build_call(
        request, candidate, registry.entry(candidate.offer.provider), 30.0
    )
    exchange = Exchange.begin(SimpleNamespace(headers={}), Price(0, 0), wire)  # type: ignore[arg-type]
    exchange.parsed = request
    exchange.answered_by(candidate, [])
    return call.body, exchange.headers.get("x-faregate-adjusted-params")


def test_a_provider_that_maps_efforts_itself_is_sent_the_clients_effort() -> None:
    # Claude Opus 4.6's efforts are those of Anthropic's Messages API (Bedrock's and Vertex's
    # too): fitted for OpenRouter, which takes OpenAI's none to xhigh for every model and maps
    # them itself, a chat client's "xhigh" went as "max", which OpenRouter's scale lacks.
    offers = [{"provider": "anthropic"}, {"provider": "openrouter", "upstream": "anthropic/claude-opus-4.6"}]
    settings = load_settings(overrides={"models": {"claude-opus-4-6": {"offers": offers}}})
    model = build_catalog(settings).models["claude-opus-4-6"]
    direct, aggregator = (Candidate(model, offer) for offer in model.offers)
    assert (direct.offer.provider, aggregator.offer.provider) == ("anthropic", "openrouter")
    assert direct.offer.fits_efforts and not aggregator.offer.fits_efforts

    chat = {"model": "claude-opus-4-6", "messages": MSG, "reasoning_effort": "xhigh"}
    body, said = _sent_and_said(aggregator, chat, CHAT)
    assert body["reasoning_effort"] == "xhigh" and said is None
    body, said = _sent_and_said(direct, chat, CHAT)
    assert body["reasoning_effort"] == "max" and said == "reasoning_effort=max"

    # A Messages client's "max": Anthropic is sent it; OpenRouter the chat wire's "high".
    asked_max = {"model": "m", "max_tokens": 9, "messages": MSG, "output_config": {"effort": "max"}}
    messages = MESSAGES.to_chat(asked_max)
    body, said = _sent_and_said(direct, messages, MESSAGES, MESSAGES.extras)
    assert body[MESSAGES_EFFORT] == "max" and said is None
    body, said = _sent_and_said(aggregator, messages, MESSAGES, MESSAGES.extras)
    assert body["reasoning_effort"] == "high" and MESSAGES_EFFORT not in body
    assert said == "output_config.effort=high"


def test_a_messages_clients_max_sent_as_high_on_the_chat_wire_is_said() -> None:
    # A model without a list on a chat-wire provider is sent the chat wire's "high" for a
    # Messages client's "max", which no header said; a listed one says the effort it fits to.
    settings = load_settings(overrides={"models": {"claude-opus-4-6": {"efforts": None}}})
    catalog = build_catalog(settings)
    asked_max = {"model": "m", "max_tokens": 9, "messages": MSG, "output_config": {"effort": "max"}}
    messages = MESSAGES.to_chat(asked_max)
    for name, sent_as, said in (
        ("deepseek-ai/DeepSeek-V4-Flash", ("high", None), "output_config.effort=high"),  # no list
        ("gpt-5.2", ("xhigh", None), "output_config.effort=xhigh"),  # its most
        ("gpt-5.6-sol", ("max", None), None),  # takes it
        ("gpt-4o-mini", (None, None), None),  # does not reason: left out (the dropped header)
        ("claude-opus-4-6", ("high", "max"), None),  # no list, on the Messages wire: "max" as asked
    ):
        model = catalog.get(name)
        if model is None:  # not in this genai-prices snapshot
            continue
        body, header = _sent_and_said(Candidate(model, model.offers[0]), messages, MESSAGES, MESSAGES.extras)
        assert (body.get("reasoning_effort"), body.get(MESSAGES_EFFORT)) == sent_as, name
        assert header == said, name
    # Other wires, and a Messages client's effort the chat wire has, say nothing.
    deepseek = catalog.models["deepseek-ai/DeepSeek-V4-Flash"]
    unlisted = Candidate(deepseek, deepseek.offers[0])
    medium = MESSAGES.to_chat({**asked_max, "output_config": {"effort": "medium"}})
    assert _sent_and_said(unlisted, medium, MESSAGES, MESSAGES.extras)[1] is None
    chat = {"model": "m", "messages": MSG, "reasoning_effort": "high"}
    assert _sent_and_said(unlisted, chat, CHAT)[1] is None


def test_the_models_list_says_each_models_refused_settings_and_efforts() -> None:
    # GET /v1/models showed neither, so a client could not tell what a model would be sent
    # without, or which efforts it takes, before it asked (OpenRouter lists supported_parameters).
    from openai.types import Model as SdkModel

    from faregate.server.app import model_entry, models_listing

    catalog = build_catalog(load_settings())
    opus, mini = model_entry(catalog.models["claude-opus-4-5"]), model_entry(catalog.models["gpt-4o-mini"])
    assert opus["efforts"] == ["low", "medium", "high"] and opus["refused_params"] == []
    assert mini["efforts"] is None and mini["refused_params"] == ["reasoning_effort", "verbosity"]
    o3 = catalog.get("o3")
    if o3 is not None:
        assert model_entry(o3)["refused_params"] == sorted(NO_SAMPLING)
    # The official SDK reads them as extra fields of its Model.
    listed = orjson.loads(models_listing(catalog))["data"]  # (the e2e models test reads it all)
    wanted = [entry for entry in listed if entry["id"] in ("claude-opus-4-5", "gpt-4o-mini")]
    parsed = {m.id: m for m in (SdkModel.model_validate(entry) for entry in wanted)}
    assert (parsed["claude-opus-4-5"].model_extra or {})["efforts"] == ["low", "medium", "high"]
    assert (parsed["gpt-4o-mini"].model_extra or {})["refused_params"] == ["reasoning_effort", "verbosity"]


def test_the_record_of_the_call_that_served_says_what_it_was_sent_without_or_instead() -> None:
    # Only the answer's headers said it: the request's record, what the dashboard shows and
    # what an operator reads later, did not.
    from faregate.store.rows import attempts_from_json, attempts_json
    from faregate.types import Attempt

    catalog = build_catalog(load_settings())
    opus, mini = catalog.models["claude-opus-4-5"], catalog.models["gpt-4o-mini"]
    chat = {"model": "m", "messages": MSG, "reasoning_effort": "xhigh"}
    request = ChatRequest("req", chat, "m", False, False, None, frozenset())
    for candidate, field, said in (
        (Candidate(opus, opus.offers[0]), "adjusted_params", "reasoning_effort=high"),
        (Candidate(mini, mini.offers[0]), "dropped_params", "reasoning_effort"),
    ):
        failed = Attempt("other", "sim", "server_error", 1.0, status=500)
        served = Attempt(candidate.model.name, candidate.offer.provider, "ok", 2.0)
        exchange = Exchange.begin(SimpleNamespace(headers={}), Price(0, 0), CHAT)  # type: ignore[arg-type]
        exchange.parsed = request
        exchange.answered_by(candidate, [failed, served])
        assert getattr(served, field) == said and not failed.dropped_params and not failed.adjusted_params
        stored = orjson.loads(attempts_json([failed, served]))
        assert stored[1][field] == said
        assert not {"dropped_params", "adjusted_params"} & set(stored[0]), "only where there is one"
        assert getattr(attempts_from_json(attempts_json([failed, served]))[1], field) == said
