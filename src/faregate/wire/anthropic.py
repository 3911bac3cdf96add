"""Anthropic's Messages wire as a client speaks it to the gateway: a Messages request becomes
the internal chat body (answers go back through wire/anthropic_replies.py).

What both sides can say is translated both ways without loss: system prompts (a string, or
text blocks with their cache_control), text and image blocks (base64 and URL), PDF documents
(base64), tool definitions, tool_use and tool_result blocks, tool_choice, stop_sequences,
temperature/top_p/top_k, max_tokens, metadata.user_id, stream, prompt-cache markers
(`cache_control` kept on the chat part, tool call or tool it marks; a top-level one marks the
last block), output_config (format json_schema as response_format, effort as
reasoning_effort: "max", which the chat wire lacks, as "high", and as "max" to Anthropic),
service_tier. One loss, said in the text: a tool_result's `is_error` becomes an "Error: "
prefix (the chat wire has no such flag). What the other side cannot say
is refused with an InvalidRequest naming the parameter: `thinking` (unless disabled), server
tools, images inside tool results, file sources, thinking blocks, unknown fields.
`wire/anthropic_stream.py` translates answer streams, `wire/anthropic_upstream.py` and
`wire/anthropic_upstream_answers.py` speak the Messages wire to Anthropic itself, and
count_tokens counts as the gateway bills estimates (faregate.usage_estimate).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from faregate import usage_estimate
from faregate.errors import InvalidRequest
from faregate.types import GATEWAY_FIELDS, JSON

# Messages' efforts that OpenAI's reasoning_effort lacks (a chat upstream refuses them with a
# 400), as the nearest one it takes; the one asked for goes along as MESSAGES_EFFORT, a wire extra
# (client_wires.MessagesWire.extras) only a Messages upstream gets, which sends it instead.
_CHAT_EFFORTS = {"max": "high"}
MESSAGES_EFFORT = "messages_effort"

# Request fields read below; anything else is refused (GATEWAY_FIELDS pass through untouched).
_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "tools",
        "tool_choice",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "stream",
        "cache_control",
        "output_config",
        "service_tier",
        "thinking",
    }
)
_SERVICE_TIERS = {"auto": "auto", "standard_only": "default"}


def messages_to_chat(body: JSON, *, count_only: bool = False) -> JSON:
    """The internal chat body for a Messages request. `count_only` (count_tokens) does not ask
    for max_tokens. Raises InvalidRequest naming the parameter that cannot be translated."""
    for name in body:
        if name not in _FIELDS and name not in GATEWAY_FIELDS:
            raise InvalidRequest(f"`{name}` is not supported by the Messages translation", param=name)
    thinking = body.get("thinking")
    if thinking is not None and not (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
        raise InvalidRequest(
            "extended thinking cannot be translated for the models this gateway routes to; "
            "send the request without `thinking`",
            param="thinking",
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: a model name is required", param="model")
    chat: JSON = {"model": model}
    messages: list[JSON] = []
    system = body.get("system")
    if system is not None:
        content = _system_content(system)
        if content:  # `system: []` or "": none (OpenAI-wire upstreams refuse an empty one)
            messages.append({"role": "system", "content": content})
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("messages: a non-empty list of messages is required", param="messages")
    for i, message in enumerate(raw_messages):
        messages.extend(_message(message, f"messages[{i}]"))
    if not any(m["role"] != "system" for m in messages):
        raise InvalidRequest("messages: no message with content to send", param="messages")
    chat["messages"] = messages
    max_tokens = body.get("max_tokens")
    if max_tokens is not None or not count_only:
        if type(max_tokens) is not int or max_tokens < 1:
            raise InvalidRequest("max_tokens: a positive integer is required", param="max_tokens")
        chat["max_tokens"] = max_tokens
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequest("tools: expected a list", param="tools")
        if tools:
            chat["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    if body.get("tool_choice") is not None:
        chat.update(_tool_choice(body["tool_choice"]))
    if body.get("cache_control") is not None:
        _mark_last_block(chat, body["cache_control"])
    _copy_sampling(body, chat)
    if body.get("stream") is not None:
        if not isinstance(body["stream"], bool):
            raise InvalidRequest("stream: expected a boolean", param="stream")
        chat["stream"] = body["stream"]
        if chat["stream"]:
            # A Messages stream always reports usage at its end.
            chat["stream_options"] = {"include_usage": True}
    for name in GATEWAY_FIELDS:
        if name in body:
            chat[name] = body[name]
    return chat


def _system_content(system: Any) -> str | list[JSON]:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise InvalidRequest("system: expected a string or a list of text blocks", param="system")
    parts: list[JSON] = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidRequest(f"system[{i}]: only text blocks can be translated", param=f"system[{i}]")
        parts.append(_text_part(block))
    return parts


def _text_part(block: JSON) -> JSON:
    part: JSON = {"type": "text", "text": str(block.get("text", ""))}
    if block.get("cache_control") is not None:
        part["cache_control"] = block["cache_control"]
    return part


def _message(message: Any, where: str) -> list[JSON]:
    """The chat messages for one Messages message: tool results become `tool` messages (first,
    as the chat wire wants them right after the assistant's calls), the rest one message."""
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise InvalidRequest(f"{where}: expected a message with role user or assistant", param=where)
    role = message["role"]
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest(
            f"{where}.content: expected a string or a list of blocks", param=f"{where}.content"
        )
    parts: list[JSON] = []
    calls: list[JSON] = []
    results: list[JSON] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_part(block))
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "document":
            parts.append(_document_part(block, at))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_call(block, at))
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, at))
        else:
            raise InvalidRequest(f"{at}: a {kind!r} block cannot be translated in a {role} message", param=at)
    out = results
    if role == "assistant":
        assistant: JSON = {"role": "assistant", "content": _joined(parts) if parts else None}
        if calls:
            assistant["tool_calls"] = calls
        if parts or calls:
            out.append(assistant)
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _joined(parts: list[JSON]) -> str | list[JSON]:
    """An assistant's text: one string when nothing marks its blocks, else the parts kept whole."""
    if any("cache_control" in p for p in parts) or len(parts) > 1:
        return parts
    return str(parts[0]["text"])


def _image_part(block: JSON, at: str) -> JSON:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        assert isinstance(source, dict)
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif kind == "url":
        assert isinstance(source, dict)
        url = str(source.get("url"))
    else:
        raise InvalidRequest(f"{at}.source: an image source of type {kind!r} cannot be translated", param=at)
    part: JSON = {"type": "image_url", "image_url": {"url": url}}
    if block.get("cache_control") is not None:
        part["cache_control"] = block["cache_control"]
    return part


def _document_part(block: JSON, at: str) -> JSON:
    source = block.get("source")
    if not (isinstance(source, dict) and source.get("type") == "base64"):
        raise InvalidRequest(f"{at}.source: only base64 PDF documents can be translated", param=at)
    file: JSON = {"file_data": f"data:{source.get('media_type')};base64,{source.get('data')}"}
    if isinstance(block.get("title"), str):
        file["filename"] = block["title"]
    part: JSON = {"type": "file", "file": file}
    if block.get("cache_control") is not None:
        part["cache_control"] = block["cache_control"]
    return part


def _tool_call(block: JSON, at: str) -> JSON:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise InvalidRequest(f"{at}: a tool_use block needs an id and a name", param=at)
    call: JSON = {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": orjson.dumps(block.get("input") or {}).decode()},
    }
    if block.get("cache_control") is not None:
        call["cache_control"] = block["cache_control"]
    return call


def _tool_result(block: JSON, at: str) -> JSON:
    if not isinstance(block.get("tool_use_id"), str):
        raise InvalidRequest(f"{at}: a tool_result block needs a tool_use_id", param=at)
    content = block.get("content")
    parts: list[JSON] = []
    if isinstance(content, str):
        parts.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for k, inner in enumerate(content):
            if not isinstance(inner, dict) or inner.get("type") != "text":
                kind = inner.get("type") if isinstance(inner, dict) else None
                raise InvalidRequest(
                    f"{at}.content[{k}]: a {kind!r} block inside a tool result cannot be translated "
                    "(chat tool messages carry text only)",
                    param=f"{at}.content[{k}]",
                )
            parts.append(_text_part(inner))
    if block.get("is_error") is True:
        # The chat wire has no error flag on a tool message: say it in the text the model reads.
        parts.insert(0, {"type": "text", "text": "Error: "})
    if block.get("cache_control") is not None:
        if not parts:
            parts.append({"type": "text", "text": ""})
        parts[-1]["cache_control"] = block["cache_control"]
    text_only = all(set(p) == {"type", "text"} for p in parts)
    result: JSON = {
        "role": "tool",
        "tool_call_id": block["tool_use_id"],
        "content": "".join(str(p["text"]) for p in parts) if text_only else parts,
    }
    return result


def _tool(tool: Any, at: str) -> JSON:
    if not isinstance(tool, dict):
        raise InvalidRequest(f"{at}: expected a tool definition", param=at)
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise InvalidRequest(
            f"{at}: the server tool {kind!r} cannot be translated; only client tools (with an "
            "input_schema) can",
            param=f"{at}.type",
        )
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise InvalidRequest(f"{at}.name: a client tool needs a name", param=f"{at}.name")
    if not isinstance(tool.get("input_schema"), dict):
        raise InvalidRequest(
            f"{at}.input_schema: the client tool {tool['name']!r} needs an input_schema (a JSON schema "
            "object)",
            param=f"{at}.input_schema",
        )
    function: JSON = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    out: JSON = {"type": "function", "function": function}
    if tool.get("cache_control") is not None:
        out["cache_control"] = tool["cache_control"]
    return out


def _tool_choice(choice: Any) -> JSON:
    kind = choice.get("type") if isinstance(choice, dict) else None
    out: JSON = {}
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise InvalidRequest(f"tool_choice: {choice!r} cannot be translated", param="tool_choice")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


def _mark_last_block(chat: JSON, cache_control: Any) -> None:
    """Top-level cache_control marks the last cacheable block: the last part of the last message."""
    last = chat["messages"][-1]
    content = last.get("content")
    if isinstance(content, str):
        last["content"] = [{"type": "text", "text": content, "cache_control": cache_control}]
    elif isinstance(content, list) and content:
        content[-1]["cache_control"] = cache_control
    elif last.get("tool_calls"):
        last["tool_calls"][-1]["cache_control"] = cache_control


def _copy_sampling(body: JSON, chat: JSON) -> None:
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            chat[name] = body[name]
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest("stop_sequences: expected a list of strings", param="stop_sequences")
        if stops:
            chat["stop"] = stops
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    tier = body.get("service_tier")
    if tier is not None:
        if tier not in _SERVICE_TIERS:
            raise InvalidRequest(f"service_tier: {tier!r} cannot be translated", param="service_tier")
        chat["service_tier"] = _SERVICE_TIERS[tier]
    config = body.get("output_config")
    if isinstance(config, dict):
        for name in config:
            if name not in ("format", "effort"):
                raise InvalidRequest(
                    f"output_config.{name} cannot be translated", param=f"output_config.{name}"
                )
        fmt = config.get("format")
        if fmt is not None:
            if not (isinstance(fmt, dict) and fmt.get("type") == "json_schema"):
                raise InvalidRequest("output_config.format: only json_schema", param="output_config.format")
            chat["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": fmt.get("schema"), "strict": True},
            }
        effort = config.get("effort")
        if effort is not None:
            nearest = _CHAT_EFFORTS.get(effort) if isinstance(effort, str) else None
            chat["reasoning_effort"] = effort if nearest is None else nearest
            if nearest is not None:
                chat[MESSAGES_EFFORT] = effort  # for a Messages upstream: the effort as asked


async def count_tokens(body: JSON) -> JSON:
    """The count_tokens answer for a Messages request, as the gateway counts (the count it bills
    an estimate by, faregate.usage_estimate); an opted-in tokenizer loads at the first call, off
    the event loop."""
    chat = messages_to_chat(body, count_only=True)
    if usage_estimate.ready():
        return {"input_tokens": usage_estimate.count_input(chat)}
    return {"input_tokens": await asyncio.to_thread(usage_estimate.count_input, chat)}
