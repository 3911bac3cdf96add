"""OpenAI's Responses API wire, stateless: a Responses request becomes the internal chat body,
and an internal answer becomes a Response object.

Translated: `input` as a string or items (messages with input_text, input_image and
input_file parts; earlier output messages; function_call and function_call_output items),
`instructions`, function tools, tool_choice, parallel_tool_calls, max_output_tokens,
temperature, top_p, stream, text.format (json_object, json_schema), text.verbosity,
reasoning.effort, user, safety_identifier, prompt_cache_key, service_tier. Answers: the
output message (or refusal), one function_call item per tool call (a call_id made for one the
upstream gave none), status `incomplete` with its reason when the answer was cut, and usage
with cached and cache-written tokens.

Refused with InvalidRequest naming the parameter: anything needing stored state
(previous_response_id, conversation, prompt templates, item_reference items, background),
built-in tools (web_search, file_search, computer use, code interpreter, MCP, image
generation...), file ids and file URLs, images inside function outputs, top_logprobs, and
unknown fields; and, as OpenAI refuses them, a function tool without its name, a function_call
item without its call_id or name, a function_call_output without its call_id. Accepted and
without effect: `store` (nothing is stored: the Response says `store: false`), `include`,
`truncation`, `metadata`, `stream_options`, `max_tool_calls`;
reasoning items in `input` are dropped (no chat model can take them back).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from faregate import usage_estimate
from faregate.errors import InvalidRequest
from faregate.types import GATEWAY_FIELDS, JSON
from faregate.wire.tool_calls import NO_ARGUMENTS, new_call_id
from faregate.wire.usage import GATEWAY_USAGE_FIELDS, usage_from

_COPIED = (
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
)
_IGNORED = frozenset({"store", "include", "truncation", "metadata", "stream_options", "max_tool_calls"})
_READ = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "stream",
        "text",
        "reasoning",
    }
)
_STATEFUL = {
    "previous_response_id": "stored responses are not kept: send the whole conversation in `input`",
    "conversation": "conversations are not stored: send the whole conversation in `input`",
    "prompt": "stored prompt templates cannot be used: send the instructions and input",
}
# Response fields echoed from the request, as the Responses API does.
_ECHOED = ("instructions", "max_output_tokens", "temperature", "top_p", "user")


def responses_to_chat(body: JSON) -> JSON:
    """The internal chat body for a Responses request. Raises InvalidRequest naming the
    parameter that cannot be translated."""
    for name, value in body.items():
        if name in _STATEFUL and value is not None:
            raise InvalidRequest(f"`{name}` is not supported: {_STATEFUL[name]}", param=name)
        if name == "background" and value:
            raise InvalidRequest("background responses are not supported", param="background")
        if name == "top_logprobs" and value:
            raise InvalidRequest("logprobs are not translated for the Responses API", param="top_logprobs")
        known = name in _READ or name in _IGNORED or name in _COPIED or name in GATEWAY_FIELDS
        if not known and name not in (*_STATEFUL, "background", "top_logprobs"):
            raise InvalidRequest(f"`{name}` is not supported by the Responses translation", param=name)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: a model name is required", param="model")
    messages: list[JSON] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequest("instructions: expected a string", param="instructions")
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list) and items:
        for i, item in enumerate(items):
            _add_item(messages, item, f"input[{i}]")
    else:
        raise InvalidRequest("input: a string or a non-empty list of items is required", param="input")
    chat: JSON = {"model": model, "messages": messages}
    limit = body.get("max_output_tokens")
    if limit is not None:
        if type(limit) is not int or limit < 1:
            raise InvalidRequest(
                "max_output_tokens: a positive integer is required", param="max_output_tokens"
            )
        chat["max_tokens"] = limit
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("tools: expected a list", param="tools")
    if tools:
        chat["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    for name in (*_COPIED, *GATEWAY_FIELDS):
        if body.get(name) is not None:
            chat[name] = body[name]
    _text_options(body, chat)
    if not isinstance(body.get("stream", False), bool | None):
        raise InvalidRequest("stream: expected a boolean", param="stream")
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # response.completed always carries usage
    return chat


async def input_tokens(body: JSON) -> JSON:
    """The answer of POST /v1/responses/input_tokens: the input tokens of a Responses request, as
    the gateway counts the translated chat body (the count it bills an estimate by,
    faregate.usage_estimate; an opted-in tokenizer loads at the first call, off the event loop)."""
    chat = responses_to_chat(body)
    if usage_estimate.ready():
        counted = usage_estimate.count_input(chat)
    else:
        counted = await asyncio.to_thread(usage_estimate.count_input, chat)
    return {"object": "response.input_tokens", "input_tokens": counted}


def _add_item(messages: list[JSON], item: Any, at: str) -> None:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{at}: expected an input item", param=at)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequest(f"{at}.role: {role!r} is not a message role", param=f"{at}.role")
        chat_role = "system" if role == "developer" else role
        content = _content(item.get("content"), at, chat_role)
        if (
            chat_role == "assistant"
            and messages
            and messages[-1]["role"] == "assistant"
            and not messages[-1].get("content")
        ):
            messages[-1]["content"] = content  # text that goes with the calls before it
        else:
            messages.append({"role": chat_role, "content": content})
    elif kind == "function_call":
        _require_text(item, ("call_id", "name"), at)
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        _require_text(item, ("call_id",), at)
        messages.append(
            {
                "role": "tool",
                "tool_call_id": item.get("call_id"),
                "content": _output_text(item.get("output"), at),
            }
        )
    elif kind == "reasoning":
        return  # a model's own earlier reasoning: no chat model can take it back
    elif kind == "item_reference":
        raise InvalidRequest(
            f"{at}: item references need stored responses, which are not kept", param=f"{at}.type"
        )
    else:
        raise InvalidRequest(f"{at}: a {kind!r} item cannot be translated", param=f"{at}.type")


def _require_text(item: JSON, names: tuple[str, ...], at: str) -> None:
    """The fields an item cannot go without (a call and its output name each other by call_id), as
    OpenAI refuses them missing: a 400 naming the first one missing."""
    for name in names:
        if not isinstance(item.get(name), str) or not item[name]:
            raise InvalidRequest(f"Missing required parameter: '{at}.{name}'.", param=f"{at}.{name}")


def _content(content: Any, at: str, role: str) -> str | list[JSON]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{at}.content: expected a string or a list of parts", param=f"{at}.content")
    parts: list[JSON] = []
    for j, part in enumerate(content):
        where = f"{at}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: JSON = {"url": part["image_url"]}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file" and isinstance(part.get("file_data"), str):
            file: JSON = {"file_data": part["file_data"]}
            if isinstance(part.get("filename"), str):
                file["filename"] = part["filename"]
            parts.append({"type": "file", "file": file})
        else:
            raise InvalidRequest(
                f"{where}: a {kind!r} part cannot be translated (file ids and URLs need OpenAI's storage)",
                param=where,
            )
    if role != "user" and all(p["type"] == "text" for p in parts):
        return "".join(str(p["text"]) for p in parts)
    return parts


def _output_text(output: Any, at: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts: list[str] = []
        for k, part in enumerate(output):
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
                where = f"{at}.output[{k}]"
                raise InvalidRequest(f"{where}: function outputs are translated as text only", param=where)
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise InvalidRequest(f"{at}.output: expected a string", param=f"{at}.output")


def _tool(tool: Any, at: str) -> JSON:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise InvalidRequest(
            f"{at}: the built-in tool {kind!r} is not supported; only function tools", param=f"{at}.type"
        )
    _require_text(tool, ("name",), at)
    function: JSON = {
        "name": tool.get("name"),
        "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
    }
    for name in ("description", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(f"tool_choice {choice!r} cannot be translated", param="tool_choice")


def _text_options(body: JSON, chat: JSON) -> None:
    text = body.get("text")
    if isinstance(text, dict):
        fmt = text.get("format")
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "json_object":
            chat["response_format"] = {"type": "json_object"}
        elif kind == "json_schema":
            assert isinstance(fmt, dict)
            schema = {
                k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None
            }
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt is not None and kind != "text":
            raise InvalidRequest(f"text.format {kind!r} cannot be translated", param="text.format")
        if text.get("verbosity") is not None:
            chat["verbosity"] = text["verbosity"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]


# --- answers -----------------------------------------------------------------------------------


def response_id(chat_id: Any) -> str:
    text = str(chat_id or f"{time.time_ns():x}")
    return text if text.startswith("resp_") else "resp_" + text.removeprefix("chatcmpl-")


def base_response(rid: str, model: str, request: JSON | None, created: float | None = None) -> JSON:
    """A Response object without output or usage, its settings echoed from the request."""
    request = request or {}
    response: JSON = {
        "id": rid,
        "object": "response",
        "created_at": created if created is not None else int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "store": False,
        "text": request.get("text") or {"format": {"type": "text"}},
        "metadata": request.get("metadata") or {},
        "usage": None,
    }
    for name in _ECHOED:
        response[name] = request.get(name)
    return response


def message_item(item_id: str, text: str, status: str = "completed", *, refusal: bool = False) -> JSON:
    part: JSON = (
        {"type": "refusal", "refusal": text}
        if refusal
        else {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    )
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": [part]}


def function_call_item(item_id: str, call: JSON, status: str = "completed") -> JSON:
    fn = call.get("function") or {}
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": str(call.get("id") or new_call_id()),
        "name": str(fn.get("name") or ""),
        "arguments": str(fn.get("arguments") or NO_ARGUMENTS),
        "status": status,
    }


def finish_status(finish: Any) -> tuple[str, JSON | None]:
    """(status, incomplete_details) for a chat finish reason."""
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def completion_to_response(body: JSON, request: JSON | None = None, *, model: str | None = None) -> JSON:
    """The Response object for an internal (OpenAI chat) answer to `request` (echoed settings)."""
    rid = response_id(body.get("id"))
    response = base_response(rid, model or str(body.get("model") or ""), request, body.get("created"))
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[JSON] = []
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
    suffix = rid.removeprefix("resp_")
    if message.get("refusal"):
        output.append(message_item(f"msg_{suffix}", str(message["refusal"]), refusal=True))
    elif isinstance(text, str) and (text or not message.get("tool_calls")):
        output.append(message_item(f"msg_{suffix}", text))
    for k, call in enumerate(message.get("tool_calls") or ()):
        output.append(function_call_item(f"fc_{suffix}_{k}", call))
    status, incomplete = finish_status(choice.get("finish_reason"))
    response.update(
        status=status, incomplete_details=incomplete, output=output, usage=responses_usage(body.get("usage"))
    )
    return response


def responses_usage(usage_body: Any) -> JSON | None:
    """The Responses usage object for an internal one (input_tokens include cached tokens, as
    OpenAI counts them); `cost`, `baseline_cost` and `estimated` carried over."""
    usage = usage_from({"usage": usage_body})
    if usage is None:
        return None
    details = usage_body.get("completion_tokens_details") if isinstance(usage_body, dict) else None
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    out: JSON = {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning if isinstance(reasoning, int) else 0},
        "total_tokens": usage.total_tokens,
    }
    assert isinstance(usage_body, dict)
    for extra in GATEWAY_USAGE_FIELDS:
        if extra in usage_body:
            out[extra] = usage_body[extra]
    return out
