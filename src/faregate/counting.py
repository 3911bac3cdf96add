"""How a chat request's billed input adds up in tokens, whatever counts the text.

OpenAI's documented framing (tokens per message and for the reply primer), a flat count per
media part, and the request fields besides the messages that providers render into the prompt.
The text itself is counted by the function passed in: the exact o200k tokenizer
(faregate.tokens) or the light estimate (faregate.light_tokens), see faregate.usage_estimate.
Nothing here loads a vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

CountText = Callable[[str], int]

# OpenAI's documented chat framing overhead: tokens per message and for the reply primer.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
# Flat estimate for an image or audio part (we cannot see its size cheaply).
TOKENS_PER_MEDIA_PART = 765
# Request fields besides the messages that providers bill as input tokens: they render tool and
# function definitions, the tool choice and a response_format schema into the prompt.
BILLED_INPUT_FIELDS = ("tools", "functions", "tool_choice", "response_format")
_BILLED_INPUT_KEYS = frozenset(BILLED_INPUT_FIELDS)


def _content_tokens(content: Any, count_text: CountText, media_part_tokens: int) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                total += count_text(str(part.get("text", "")))
            else:
                total += media_part_tokens
    return total


def billed_extras_text(body: dict[str, Any]) -> str:
    """The billed input outside the messages (tools, functions, tool_choice, response_format),
    as one JSON text: its tokens are what a provider adds to the prompt for them, give or take
    its own rendering. Empty when the request has none."""
    if _BILLED_INPUT_KEYS.isdisjoint(body):
        return ""  # most requests: no dict built
    present = {name: body[name] for name in BILLED_INPUT_FIELDS if body.get(name) is not None}
    return orjson.dumps(present).decode() if present else ""


def count_input(body: dict[str, Any], count_text: CountText) -> int:
    """Every input token a request is billed for: the messages plus tools, functions, tool_choice
    and response_format."""
    messages = body.get("messages")
    listed = messages if isinstance(messages, list) else []
    return count_messages(listed, count_text) + count_text(billed_extras_text(body))


def count_messages(
    messages: list[Any], count_text: CountText, media_part_tokens: int = TOKENS_PER_MEDIA_PART
) -> int:
    """Prompt tokens of a chat message list, the way OpenAI counts them for its chat models
    (each image or audio part as `media_part_tokens`)."""
    total = TOKENS_PER_REPLY
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE
        total += _content_tokens(message.get("content"), count_text, media_part_tokens)
        if message.get("name"):
            total += count_text(str(message["name"])) + 1
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict):
                continue
            total += count_text(str(fn.get("name", ""))) + count_text(str(fn.get("arguments", "")))
        # The functions API's one call (before tool_calls), rendered and billed alike.
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            total += count_text(str(legacy.get("name", ""))) + count_text(str(legacy.get("arguments", "")))
    return total
