"""Anthropic's Messages wire as a client sees it in answers: an internal (OpenAI chat) answer
becomes a Messages response, and our errors become Anthropic's error shape.

Kept on the way: text and tool calls (as tool_use blocks, arguments parsed back into `input`,
an id made for a call the upstream gave none), a refusal (its text as a text block, stop reason
refusal), the stop reason (stop -> end_turn, length -> max_tokens, tool_calls (or stop after
tool calls) -> tool_use, content_filter -> refusal, and a matched stop sequence, which an
upstream names in the choice's `stop_reason` as vLLM does, -> stop_sequence with the
sequence), and usage: `input_tokens` is the prompt less cache reads and writes (Anthropic's
sense), the cache counts and their split by TTL beside it, and the gateway's `cost`,
`baseline_cost` (and `estimated`) carried over.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from faregate.errors import FaregateError, UpstreamFailed
from faregate.types import JSON, Usage
from faregate.wire.usage import GATEWAY_USAGE_FIELDS, usage_from

# Messages stop reasons for chat finish reasons, and back (wire/anthropic_upstream_answers.py).
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic's status when it has no capacity (its SDKs retry it, Claude Code says "Overloaded").
OVERLOADED = 529
# Anthropic's error type for each status of our error tree.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def completion_to_message(body: JSON, *, model: str | None = None) -> JSON:
    """The Messages response for an internal (OpenAI chat) answer; `model` names it, else the
    body's model. The `usage.cost` and `baseline_cost` (and `estimated`) the gateway added are
    kept in `usage`."""
    choices = body.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[JSON] = []
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
    refusal = message.get("refusal")
    if refusal and not text:
        text = str(refusal)
    if isinstance(text, str) and (text or not message.get("tool_calls")):
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": tool_use_id(call),
                "name": str(fn.get("name") or ""),
                "input": tool_input(fn.get("arguments")),
            }
        )
    called = any(block["type"] == "tool_use" for block in content)
    stop_reason, stop_sequence = stop_reason_of(choice, refused=bool(refusal), called=called)
    return {
        "id": message_id(body.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model or str(body.get("model") or ""),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": messages_usage(body.get("usage")),
    }


def message_id(chat_id: Any) -> str:
    text = str(chat_id or "")
    return text if text.startswith("msg_") else "msg_" + text.removeprefix("chatcmpl-")


def tool_use_id(call: JSON) -> str:
    """A chat tool call's id, or a new one when its upstream gave none (Ollama, StepFun, GLM
    behind DashScope do): a tool_result names its call by it, so it must be there and unique."""
    return str(call.get("id") or "toolu_" + secrets.token_hex(12))


def tool_input(arguments: Any) -> JSON:
    """A tool call's `input` object from the chat wire's arguments text; text that is not a JSON
    object is kept whole under `arguments` rather than lost."""
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": arguments}


def stop_reason_of(
    choice: JSON, *, refused: bool = False, called: bool = False
) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) for a chat choice; a stop string the upstream named in
    `stop_reason` (vLLM does, and our Anthropic provider) makes it `stop_sequence`; an answer
    that was a refusal (`refused`) stops with `refusal`, one that made tool calls (`called`)
    with `tool_use` (Gemini's OpenAI endpoint says "stop" for them, and a Messages client runs
    the tools only on tool_use)."""
    finish = choice.get("finish_reason")
    if finish is None:
        return None, None
    if refused and finish == "stop":
        return "refusal", None
    if called and finish == "stop":
        return "tool_use", None
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and matched:
        return "stop_sequence", matched
    return STOP_REASONS.get(str(finish), "end_turn"), None


def messages_usage(usage_body: Any) -> JSON:
    """Anthropic's usage object for an internal usage object (input_tokens excludes the cached
    and cache-written tokens there); the gateway's fields (GATEWAY_USAGE_FIELDS: `cost`,
    `baseline_cost`, `estimated`) are carried over when present."""
    usage = usage_from({"usage": usage_body}) or Usage(0, 0)
    out = anthropic_usage(usage)
    if isinstance(usage_body, dict):
        for extra in GATEWAY_USAGE_FIELDS:
            if extra in usage_body:
                out[extra] = usage_body[extra]
    return out


def anthropic_usage(usage: Usage) -> JSON:
    write_1h = usage.cache_write_1h_tokens
    return {
        "input_tokens": usage.uncached_prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_tokens - write_1h,
            "ephemeral_1h_input_tokens": write_1h,
        },
    }


def error_body(error: FaregateError, request_id: str | None = None) -> tuple[int, JSON]:
    """(status, body) of Anthropic's error shape for one of our errors: 529 overloaded_error
    when every upstream attempt failed for want of capacity (`overloaded`); a 503 is
    overloaded_error when it passes (a breaker open, a store down), api_error when it says
    x-should-retry: false."""
    status = OVERLOADED if overloaded(error) else error.status
    error_type = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if status == 503 and error.headers.get("x-should-retry") == "false":
        # A 503 no retry fixes (a model no enabled provider sells, until the operator sets a
        # key) is no "Overloaded, retry later": Anthropic's type for a failure on its side.
        error_type = "api_error"
    body: JSON = {"type": "error", "error": {"type": error_type, "message": error.message}}
    if request_id is not None:
        body["request_id"] = request_id
    return status, body


def overloaded(error: FaregateError) -> bool:
    """Did every upstream attempt fail with 429, 503 or 529 (errors.UpstreamFailed.overloaded)?"""
    return isinstance(error, UpstreamFailed) and error.status == 502 and error.overloaded
