import pytest

from faregate.errors import InvalidRequest
from faregate.server.parse import decode_json_object, parse_chat_request
from faregate.wire.anthropic import messages_to_chat
from faregate.wire.responses import responses_to_chat

MSG = [{"role": "user", "content": "hi"}]


def parse(body: dict, headers: dict | None = None):  # type: ignore[no-untyped-def]
    return parse_chat_request(body, headers or {}, "req_1")


def test_minimal_request() -> None:
    request = parse({"model": "m", "messages": MSG})
    assert request.model == "m" and not request.stream and request.max_tokens is None
    assert request.required_modalities == frozenset()


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"", "empty"), (b"{", "not valid JSON"), (b"[1]", "must be a JSON object")],
)
def test_bad_json(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_json_object(raw)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MSG}, "model"),
        ({"model": 3, "messages": MSG}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": ["x"]}, "messages[0]"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "m", "messages": MSG, "stream": "yes"}, "stream"),
        ({"model": "m", "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": MSG, "max_tokens": True}, "max_tokens"),
        ({"model": "m", "messages": MSG, "models": []}, "models"),
        ({"model": "m", "messages": MSG, "faregate": "x"}, "faregate"),
    ],
)
def test_invalid_fields_name_the_param(body: dict, param: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidRequest) as info:
        parse(body)
    assert info.value.param == param
    assert info.value.status == 400


@pytest.mark.parametrize("tier", ["flex", "priority", "scale", "fast", 1, ["flex"]])
def test_a_service_tier_billed_at_other_prices_is_refused(tier: object) -> None:
    """OpenAI bills flex at about half the standard prices and priority at about twice; the
    gateway prices every answer at the catalog's standard prices, so such a request was served
    and billed wrong (a budget overspent on priority). Refused, naming the field."""
    with pytest.raises(InvalidRequest) as info:
        parse({"model": "m", "messages": MSG, "service_tier": tier})
    assert (info.value.param, info.value.status) == ("service_tier", 400)


@pytest.mark.parametrize("tier", ["auto", "default", None])
def test_the_standard_service_tier_is_passed_through(tier: object) -> None:
    body = {"model": "m", "messages": MSG, "service_tier": tier}
    assert parse(body).body["service_tier"] == tier


def test_a_developer_message_is_read_as_a_system_one_in_a_copy() -> None:
    messages = [{"role": "developer", "content": "Be brief."}, *MSG]
    body = {"model": "m", "messages": messages}
    request = parse(body)
    assert [m["role"] for m in request.body["messages"]] == ["system", "user"]
    assert request.body["messages"][1] is MSG[0]
    assert messages[0]["role"] == "developer" and body["messages"] is messages  # the client's, as sent
    plain = {"model": "m", "messages": MSG}
    assert parse(plain).body is plain  # nothing to translate: nothing copied


def test_modalities_detected_from_content_parts() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            ],
        },
    ]
    request = parse({"model": "m", "messages": messages})
    assert request.required_modalities == {"image", "audio"}


def test_stream_usage_and_max_tokens() -> None:
    request = parse(
        {
            "model": "m",
            "messages": MSG,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": 7,
            "max_tokens": 9,
        }
    )
    assert request.stream and request.include_usage and request.max_tokens == 7


def test_hints_from_body_and_headers() -> None:
    request = parse(
        {"model": "m", "messages": MSG, "faregate": {"tier": "economy"}},
        {"x-faregate-task": "code", "x-faregate-tier": "premium"},
    )
    assert request.hints == {"tier": "economy", "task": "code"}


def test_models_list_implies_model() -> None:
    request = parse({"models": ["a", "b"], "messages": MSG})
    assert request.model == "a"


@pytest.mark.parametrize("tools", [None, []])
def test_tool_settings_without_tools_are_left_out(tools: object) -> None:
    """Frameworks send `tool_choice: "auto"` (and parallel_tool_calls) on every request, with no
    tools or `tools: []`; OpenAI refuses either ("only allowed when 'tools' are specified"),
    DeepSeek an empty tools list. With no tool to call, "auto" and "none" say nothing: left out,
    in a copy (the client's body is what the Responses wire echoes)."""
    body: dict = {"model": "m", "messages": MSG, "tool_choice": "auto", "parallel_tool_calls": True}  # type: ignore[type-arg]
    if tools is not None:
        body["tools"] = tools
    sent = parse(body).body
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sent)
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is True
    assert parse({"model": "m", "messages": MSG, "tool_choice": "none"}).body.get("tool_choice") is None


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "f"}}])
def test_a_forced_tool_choice_without_tools_is_refused(choice: object) -> None:
    """A call forced with nothing to call cannot be answered: refused as OpenAI refuses it."""
    with pytest.raises(InvalidRequest) as info:
        parse({"model": "m", "messages": MSG, "tool_choice": choice})
    assert (info.value.param, info.value.status) == ("tool_choice", 400)
    assert "tools" in info.value.message


def test_tool_settings_with_tools_are_kept() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {
        "model": "m",
        "messages": MSG,
        "tools": tools,
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    assert parse(body).body is body


def test_tool_settings_without_tools_are_left_out_on_every_wire() -> None:
    """A Messages or Responses client's tool_choice without tools reaches a chat upstream alike."""
    messages = {"model": "m", "max_tokens": 5, "messages": MSG, "tool_choice": {"type": "auto"}}
    assert "tool_choice" not in parse(messages_to_chat(messages)).body
    responses = {"model": "m", "input": "hi", "tool_choice": "auto", "parallel_tool_calls": False}
    sent = parse(responses_to_chat(responses)).body
    assert not {"tool_choice", "parallel_tool_calls"} & set(sent)
