"""The Messages wire as the gateway speaks it to Anthropic: the internal chat body becomes a
Messages request (the answers coming back are wire/anthropic_upstream_answers.py's).

Lossless where both sides can say a thing (the inverse of wire/anthropic.py, round-trip
tested): system and developer messages (hoisted into `system`, wherever they stood), text,
image (data and http URLs) and PDF file parts, tool definitions, tool calls and tool results
(their ids spelled as Messages allows when another upstream made them otherwise),
tool_choice and parallel_tool_calls, stop (a whitespace-only sequence, which Messages refuses,
is left out and the gateway cuts the answer at it: local_stops), temperature (0-1), top_p
(either left out at its neutral 1 beside the other, which newer Claude models refuse to get both
of), top_k, max_tokens, user, response_format json_schema (as output_config.format, Anthropic's
structured outputs),
reasoning_effort (as output_config.effort; none and minimal as low, the least it says),
prompt-cache markers, and in answers the stop reason, a matched stop sequence and usage with
cache reads and writes (one-hour writes apart).

Refused with InvalidRequest naming the parameter: n > 1, logprobs/top_logprobs, logit_bias,
non-zero presence/frequency penalties, temperature above 1, audio in or out, predicted
outputs, web search options, legacy functions, response_format json_object, and any field
not listed here. Ignored, because they change nothing a Messages model does: seed (best effort
on OpenAI too), stream_options (Messages streams always report usage), store and metadata
(OpenAI's stored completions), prompt_cache_key and safety_identifier (OpenAI's routing hints),
verbosity (OpenAI's gpt-5 length hint, which Messages has no field for: not a reason to refuse
the request; an OpenAI model before gpt-5 is sent none either, wire/model_params.py).

Empty or whitespace-only text in system and user messages (Messages refuses it, OpenAI does
not) is dropped; a user message left with nothing is sent as EMPTY_USER_TEXT.

Without max_tokens (Messages requires it) DEFAULT_MAX_TOKENS is asked for, or the model's own
maximum output when that is smaller (a model that allows 4,096 refuses a request for 8,192).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from faregate.errors import InvalidRequest
from faregate.types import JSON
from faregate.wire.anthropic import MESSAGES_EFFORT

DEFAULT_MAX_TOKENS = 8192
# The text of a user turn the client sent empty (Messages refuses empty and blank text).
EMPTY_USER_TEXT = "(empty message)"
_SAMPLING = ("temperature", "top_p", "top_k")
_IGNORED = frozenset(
    {"seed", "stream_options", "store", "metadata", "prompt_cache_key", "safety_identifier", "verbosity"}
)
_MAPPED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "stop",
        "user",
        "stream",
        "response_format",
        "reasoning_effort",
        MESSAGES_EFFORT,
        "n",
        "logprobs",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "modalities",
        *_SAMPLING,
    }
)
_SERVICE_TIERS = {"auto": "auto", "default": "standard_only"}
# Messages' effort starts at "low" (it refuses OpenAI's "none" and "minimal"): the least effort
# it can say. No thinking for these either: `thinking` is never sent, so a model that thinks only
# when asked does not think; one that thinks unasked thinks least at "low". (Not
# thinking: disabled, which the adaptive-only models refuse.)
_EFFORTS = {"none": "low", "minimal": "low"}
# What a Messages tool_use id may not hold (its pattern is ^[a-zA-Z0-9_-]+$, else a 400), and
# ids other upstreams made do: Kimi K2's `functions.get_weather:0`.
_NOT_IN_TOOL_IDS = re.compile(r"[^a-zA-Z0-9_-]")


def chat_to_messages(body: JSON, max_output: int | None = None) -> JSON:
    """The Messages request for an internal chat body (`max_output`: the model's maximum output,
    bounding the default limit). Raises InvalidRequest naming the parameter Messages cannot say."""
    _refuse_unsayable(body)
    out: JSON = {"model": body.get("model")}
    system: list[JSON] = []
    messages: list[JSON] = []
    for i, message in enumerate(body.get("messages") or ()):
        at = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.extend(_without_blank_text(_blocks(message.get("content"), at, allow_media=False)))
        elif role == "user":
            blocks = _without_blank_text(_blocks(message.get("content"), at))
            if not blocks and not (messages and messages[-1]["role"] == "user"):
                # Messages takes no empty turn, and dropping it would end the conversation on
                # the assistant (a prefill to continue, which newer models refuse) or leave
                # none: the user's turn says it was empty. After tool results it adds nothing.
                blocks = [{"type": "text", "text": EMPTY_USER_TEXT}]
            _append(messages, "user", blocks)
        elif role == "assistant":
            _append(messages, "assistant", _assistant_blocks(message, at))
        elif role == "tool":
            _append(messages, "user", [_tool_result(message, at)])
        else:
            raise InvalidRequest(f"{at}: a {role!r} message cannot be sent to a Messages model", param=at)
    if system:
        plain = len(system) == 1 and set(system[0]) == {"type", "text"}
        out["system"] = system[0]["text"] if plain else system
    out["messages"] = messages
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    default = min(DEFAULT_MAX_TOKENS, max_output) if max_output else DEFAULT_MAX_TOKENS
    out["max_tokens"] = limit if type(limit) is int else default
    _copy_options(body, out)
    return out


def local_stops(body: JSON) -> tuple[str, ...]:
    """The chat body's whitespace-only stop sequences ("\\n", " "): Messages refuses them ("each
    stop sequence must contain non-whitespace"), so they are not sent and the gateway cuts the
    answer at them itself (wire/anthropic_upstream_answers.TextCut). An empty one stops nothing."""
    return tuple(s for s in _stops(body) if isinstance(s, str) and s and not s.strip())


def _stops(body: JSON) -> list[Any]:
    stop = body.get("stop")
    if not stop:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _refuse_unsayable(body: JSON) -> None:
    for name in body:
        if name not in _MAPPED and name not in _IGNORED and name not in ("service_tier", "functions"):
            raise InvalidRequest(f"`{name}` cannot be sent to a Messages (Anthropic) model", param=name)
    checks = (
        ("n", body.get("n") not in (None, 1), "n > 1: a Messages model gives one answer per request"),
        ("logprobs", body.get("logprobs") not in (None, False), "logprobs are not reported by Messages"),
        ("top_logprobs", body.get("top_logprobs") is not None, "logprobs are not reported by Messages"),
        ("logit_bias", bool(body.get("logit_bias")), "logit_bias cannot be sent to a Messages model"),
        ("presence_penalty", bool(body.get("presence_penalty")), "penalties have no Messages equivalent"),
        ("frequency_penalty", bool(body.get("frequency_penalty")), "penalties have no Messages equivalent"),
        ("functions", body.get("functions") is not None, "legacy functions: send tools instead"),
        ("modalities", body.get("modalities") not in (None, ["text"]), "Messages models answer in text only"),
    )
    for param, refused, why in checks:
        if refused:
            raise InvalidRequest(why, param=param)
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and temperature > 1:
        raise InvalidRequest(
            "temperature above 1 has no Messages equivalent (its range is 0-1)", param="temperature"
        )


def _append(messages: list[JSON], role: str, blocks: list[JSON]) -> None:
    """Messages alternate roles: consecutive same-role turns (tool results, then a user's text)
    become one turn."""
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _without_blank_text(blocks: list[JSON]) -> list[JSON]:
    """`blocks` without empty or whitespace-only text, which Messages refuses ("text content
    blocks must be non-empty"); a cache mark on one goes to the block before it, which ends the
    same prefix."""
    kept: list[JSON] = []
    for block in blocks:
        if block["type"] != "text" or block["text"].strip():
            kept.append(block)
        elif "cache_control" in block and kept:
            kept[-1] = {**kept[-1], "cache_control": block["cache_control"]}
    return kept


def _blocks(content: Any, at: str, *, allow_media: bool = True) -> list[JSON]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"{at}.content: expected a string or a list of parts", param=f"{at}.content")
    blocks: list[JSON] = []
    for j, part in enumerate(content):
        where = f"{at}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            block: JSON = {"type": "text", "text": str(part.get("text", ""))}
        elif kind == "image_url" and allow_media:
            block = _image_block(part, where)
        elif kind == "file" and allow_media:
            block = _document_block(part, where)
        else:
            raise InvalidRequest(f"{where}: a {kind!r} part cannot be sent to a Messages model", param=where)
        if part.get("cache_control") is not None:
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _image_block(part: JSON, where: str) -> JSON:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise InvalidRequest(f"{where}.image_url: expected a URL", param=where)
    if url.startswith("data:"):
        media_type, data = _data_url(url, where)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _document_block(part: JSON, where: str) -> JSON:
    file = part.get("file")
    if not isinstance(file, dict):
        file = {}
    data_url = file.get("file_data")
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise InvalidRequest(f"{where}.file: only inline file_data (a data: URL) can be sent", param=where)
    media_type, data = _data_url(data_url, where)
    block: JSON = {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if isinstance(file.get("filename"), str):
        block["title"] = file["filename"]
    return block


# Media types browsers and OpenAI take that the Messages API spells otherwise.
MEDIA_TYPE_SPELLINGS = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}


def _data_url(url: str, where: str) -> tuple[str, str]:
    head, _, data = url.partition(",")
    if not head.endswith(";base64"):
        raise InvalidRequest(f"{where}: only base64 data URLs can be sent to a Messages model", param=where)
    media_type = head[len("data:") : -len(";base64")].lower()
    return MEDIA_TYPE_SPELLINGS.get(media_type, media_type), data


def _assistant_blocks(message: JSON, at: str) -> list[JSON]:
    blocks = _blocks(message.get("content"), at, allow_media=False)
    blocks = [b for b in blocks if b.get("text") or "cache_control" in b]  # Messages refuses empty text
    for k, call in enumerate(message.get("tool_calls") or ()):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise InvalidRequest(
                f"{at}.tool_calls[{k}]: expected a function call", param=f"{at}.tool_calls[{k}]"
            )
        arguments = fn.get("arguments") or "{}"
        try:
            value = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise InvalidRequest(
                f"{at}.tool_calls[{k}].function.arguments: a Messages tool input must be a JSON object",
                param=f"{at}.tool_calls[{k}].function.arguments",
            )
        block: JSON = {
            "type": "tool_use",
            "id": _tool_id(call.get("id")),
            "name": fn.get("name"),
            "input": value,
        }
        if call.get("cache_control") is not None:
            block["cache_control"] = call["cache_control"]
        blocks.append(block)
    return blocks


def _tool_id(call_id: Any) -> Any:
    """A tool call's id as a Messages tool_use id: kept when Anthropic's pattern allows it, else
    its other characters as `_` and a digest of the whole (so two ids never become one), the
    same for the call and for the result that names it. Anything else is sent as it came."""
    if not isinstance(call_id, str) or not _NOT_IN_TOOL_IDS.search(call_id):
        return call_id
    digest = hashlib.blake2s(call_id.encode(), digest_size=4).hexdigest()
    return f"{_NOT_IN_TOOL_IDS.sub('_', call_id)}_{digest}"


def _tool_result(message: JSON, at: str) -> JSON:
    content = message.get("content")
    block: JSON = {"type": "tool_result", "tool_use_id": _tool_id(message.get("tool_call_id"))}
    if isinstance(content, list):
        # A mark stays on its text block: the same cache breakpoint as one on the tool result.
        parts = _blocks(content, at, allow_media=False)
        block["content"] = [p for p in parts if p.get("text") or "cache_control" in p]
    else:
        block["content"] = "" if content is None else str(content)
    return block


def _copy_options(body: JSON, out: JSON) -> None:
    for name in _SAMPLING:
        if body.get(name) is not None:
            out[name] = body[name]
    if "temperature" in out and "top_p" in out:
        # Claude Sonnet 4.5, Haiku 4.5, Opus 4.1 and later refuse both (a 400); one at 1, the
        # Messages default for both (no scaling, no nucleus cut), says nothing: it is left out.
        if out["top_p"] == 1:
            del out["top_p"]
        elif out["temperature"] == 1:
            del out["temperature"]
    sent = [s for s in _stops(body) if not (isinstance(s, str) and not s.strip())]
    if sent:
        out["stop_sequences"] = sent
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream") is True:
        out["stream"] = True
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = _tool_choice(body.get("tool_choice"))
    # Messages' `none` choice has no disable_parallel_tool_use (Anthropic refuses the extra
    # field), and with no call allowed there is nothing to limit.
    if body.get("parallel_tool_calls") is False and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    tier = body.get("service_tier")
    if tier is not None:
        if tier not in _SERVICE_TIERS:
            raise InvalidRequest(f"service_tier {tier!r} has no Messages equivalent", param="service_tier")
        out["service_tier"] = _SERVICE_TIERS[tier]
    config: JSON = {}
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        config["format"] = {"type": "json_schema", "schema": schema}
    elif fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise InvalidRequest(
            "response_format json_object has no Messages equivalent; send a json_schema instead",
            param="response_format",
        )
    # A Messages client's own effort where the chat wire lacks it (others get the nearest one).
    effort = body.get(MESSAGES_EFFORT, body.get("reasoning_effort"))
    if effort is not None:
        config["effort"] = _EFFORTS.get(effort, effort) if isinstance(effort, str) else effort
    if config:
        out["output_config"] = config


def _tool(tool: Any, at: str) -> JSON:
    fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(fn, dict):
        raise InvalidRequest(f"{at}: only function tools can be sent to a Messages model", param=at)
    out: JSON = {
        "name": fn.get("name"),
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if fn.get("description") is not None:
        out["description"] = fn["description"]
    if fn.get("strict") is not None:
        out["strict"] = fn["strict"]
    if tool.get("cache_control") is not None:
        out["cache_control"] = tool["cache_control"]
    return out


def _tool_choice(choice: Any) -> JSON | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if isinstance(name, str):
        return {"type": "tool", "name": name}
    raise InvalidRequest(f"tool_choice {choice!r} has no Messages equivalent", param="tool_choice")
