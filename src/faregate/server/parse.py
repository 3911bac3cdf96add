"""Turn a raw HTTP body into a ChatRequest, checking only what the gateway relies on.

Everything else in the body is passed upstream untouched, so new OpenAI fields
work without a gateway release.
"""

from __future__ import annotations

from typing import Any

import orjson

from faregate.config import LimitsSettings
from faregate.errors import InvalidRequest
from faregate.server.media_urls import check_media_urls
from faregate.server.request_checks import check_depth, check_numbers, positive_int
from faregate.types import JSON, ChatRequest

# Content-part types that need a model able to read that modality.
PART_MODALITY = {
    "image_url": "image",
    "input_image": "image",
    "image": "image",
    "input_audio": "audio",
    "audio_url": "audio",
    "audio": "audio",
    "video_url": "video",
    "video": "video",
    # A document (a PDF): only a model listing `file` reads one (the wires' own document and
    # input_file parts arrive as this).
    "file": "file",
}
VALID_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# The service tiers billed at the catalog's prices, the standard ones. OpenAI bills flex at about
# half of them and priority at about twice (scale from prepaid units): passed through, such a
# request was billed at the standard prices all the same, so it is refused instead.
STANDARD_SERVICE_TIERS = frozenset({"auto", "default"})
# What only a request with tools may say: OpenAI refuses each without any ("'tool_choice' is only
# allowed when 'tools' are specified"), and DeepSeek an empty `tools` list.
_TOOL_SETTINGS = ("tools", "tool_choice", "parallel_tool_calls")


DEFAULT_LIMITS = LimitsSettings()


def decode_json_object(raw: bytes, max_depth: int = DEFAULT_LIMITS.max_json_depth) -> JSON:
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {type(body).__name__}.")
    check_depth(body, max_depth, raw)
    return body


def required_modalities(messages: list[Any]) -> frozenset[str]:
    found: set[str] = set()
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    modality = PART_MODALITY.get(str(part.get("type")))
                    if modality:
                        found.add(modality)
    return frozenset(found)


def _check_messages(messages: Any) -> list[Any]:
    """The messages, checked; a `developer` message comes out as a `system` one (a copy: the
    client's body is not changed). OpenAI's SDKs and agents send developer, OpenAI's name for
    system instructions since o1, which DeepSeek and many other OpenAI-wire servers refuse
    (`unknown variant developer`), while OpenAI takes system as developer instructions; the
    Responses and Messages wires translate it so too."""
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array of message objects.", param="messages")
    developer = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"'messages[{i}]' must be an object.", param=f"messages[{i}]")
        role = message.get("role")
        if role == "developer":
            developer = True
        elif role not in VALID_ROLES:
            raise InvalidRequest(
                f"'messages[{i}].role' must be one of {sorted(VALID_ROLES)}, got {role!r}.",
                param=f"messages[{i}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"'messages[{i}].content' must be a string or an array of content parts.",
                param=f"messages[{i}].content",
            )
    if developer:
        return [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
    return messages


def _without_tool_settings(body: JSON) -> JSON:
    """A request without tools as an upstream takes it: an empty `tools`, a `tool_choice` of
    "auto" or "none" and `parallel_tool_calls` left out (with no tool to call they say nothing;
    frameworks send them on every request), in a copy; the body itself when it names none. A
    call forced with nothing to call cannot be answered: refused, as OpenAI refuses it."""
    if "tool_choice" not in body and "parallel_tool_calls" not in body and "tools" not in body:
        return body  # the common case, on every request: no generator (_TOOL_SETTINGS)
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("auto", "none"):
        raise InvalidRequest(
            "Invalid value for 'tool_choice': a tool call is forced, but no 'tools' are specified.",
            param="tool_choice",
        )
    return {name: value for name, value in body.items() if name not in _TOOL_SETTINGS}


def _check_models(body: JSON, limits: LimitsSettings) -> str:
    """The model asked for; a `models` list is bounded in length and in each name."""
    models = body.get("models")
    model = body.get("model")
    longest = limits.max_model_name_chars
    if models is not None:
        if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
            raise InvalidRequest("'models' must be a non-empty array of model names.", param="models")
        if len(models) > limits.max_models:
            raise InvalidRequest(
                f"'models' may list at most {limits.max_models} models, got {len(models)}.", param="models"
            )
        if any(len(m) > longest for m in models):
            raise InvalidRequest(f"A name in 'models' is longer than {longest} characters.", param="models")
        if model is None:
            model = models[0]
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    if len(model) > longest:
        raise InvalidRequest(f"'model' is longer than {longest} characters.", param="model")
    return model


def parse_chat_request(
    body: JSON, headers: Any, request_id: str, limits: LimitsSettings = DEFAULT_LIMITS
) -> ChatRequest:
    """Validate the fields the gateway interprets; `headers` is any case-insensitive mapping."""
    model = _check_models(body, limits)
    asked_messages = body.get("messages")
    messages = _check_messages(asked_messages)
    if messages is not asked_messages:
        body = {**body, "messages": messages}
    if not limits.allow_private_media_urls:
        check_media_urls(messages)
    check_numbers(body)
    if not body.get("tools"):
        body = _without_tool_settings(body)
    tier = body.get("service_tier")
    if tier is not None and (not isinstance(tier, str) or tier not in STANDARD_SERVICE_TIERS):
        raise InvalidRequest(
            f"'service_tier' {tier!r} is not served here: the gateway bills at its catalog's standard "
            f"prices, so it takes only {sorted(STANDARD_SERVICE_TIERS)} (or none).",
            param="service_tier",
        )

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    include_usage = False
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
        include_usage = bool(stream_options.get("include_usage"))

    # Both are checked even when both are given: both are forwarded upstream, at the one in force
    # (wire/openai.upstream_body).
    completion_cap = positive_int(body, "max_completion_tokens")
    legacy_cap = positive_int(body, "max_tokens")
    max_tokens = completion_cap if completion_cap is not None else legacy_cap
    choices = positive_int(body, "n", limits.max_n) or 1

    hints = body.get("faregate") or {}
    if not isinstance(hints, dict):
        raise InvalidRequest("'faregate' must be an object of gateway hints.", param="faregate")
    for header, hint in (
        ("x-faregate-tier", "tier"),
        ("x-faregate-task", "task"),
        ("x-faregate-max-cost-usd", "max_cost_usd"),
    ):
        value = headers.get(header)
        if value is not None and hint not in hints:
            hints = {**hints, hint: value}

    # Positional, in the order of ChatRequest's fields (one per request: keywords would cost a
    # dict of them).
    return ChatRequest(
        request_id,
        body,
        model,
        stream,
        include_usage and stream,  # include_usage
        max_tokens,
        required_modalities(messages),
        hints,
        choices,
    )
