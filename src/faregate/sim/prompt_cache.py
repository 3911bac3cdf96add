"""The simulator's prompt cache: Anthropic-style explicit caching, so Messages usage reports
cache writes and reads the way Anthropic's does.

A request's cache breakpoints are its `cache_control` marks (translated into the chat body:
on tools, content parts and tool calls), in Anthropic's order: tools, then system, then
messages. The prefix up to each mark is a cache entry keyed by the model and the prefix's
content. A request reads the longest marked prefix already cached and writes the longest
marked prefix when it is not; entries live for their mark's TTL (5 minutes, or 1 hour), and
are refreshed when used. Unlike Anthropic there is no minimum cacheable length.

Invariant: reads + writes <= the request's prompt tokens, each prefix counted with the same
tokenizer and framing as the prompt (faregate.tokens).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from faregate import tokens
from faregate.types import JSON

TTL_S = {"5m": 300.0, "1h": 3600.0}
MAX_ENTRIES = 10_000


@dataclass(slots=True, frozen=True)
class CacheUse:
    read: int = 0
    write: int = 0
    write_1h: int = 0


@dataclass(slots=True, frozen=True)
class _Mark:
    tokens: int
    key: bytes
    ttl: str


class PromptCache:
    def __init__(self) -> None:
        self._entries: OrderedDict[bytes, float] = OrderedDict()  # key -> expiry (monotonic)

    def reset(self) -> None:
        self._entries.clear()

    def use(self, model: str, chat: JSON, prompt_tokens: int) -> CacheUse:
        marks = _marks(model, chat)
        if not marks:
            return CacheUse()
        now = time.monotonic()
        cached = [m for m in marks if self._entries.get(m.key, 0.0) > now]
        read = min(max((m.tokens for m in cached), default=0), prompt_tokens)
        last = marks[-1]
        write = 0 if last in cached else max(min(last.tokens, prompt_tokens) - read, 0)
        for mark in marks:
            self._entries[mark.key] = now + TTL_S.get(mark.ttl, TTL_S["5m"])
            self._entries.move_to_end(mark.key)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        return CacheUse(read, write, write if last.ttl == "1h" else 0)


def _ttl(mark: Any) -> str:
    ttl = mark.get("ttl") if isinstance(mark, dict) else None
    return ttl if isinstance(ttl, str) else "5m"


def _marks(model: str, chat: JSON) -> list[_Mark]:
    tools = chat.get("tools") or []
    messages = chat.get("messages") or []
    marks: list[_Mark] = []

    def add(prefix: JSON, count: int, mark: Any) -> None:
        key = orjson.dumps([model, prefix], option=orjson.OPT_SORT_KEYS)
        marks.append(_Mark(count, key, _ttl(mark)))

    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("cache_control") is not None:
            prefix = {"tools": tools[: i + 1]}
            add(prefix, tokens.count_text(tokens.billed_extras_text(prefix)), tool["cache_control"])
    tools_tokens = tokens.count_text(tokens.billed_extras_text({"tools": tools})) if tools else 0
    for m, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        parts = content if isinstance(content, list) else []
        for p, part in enumerate(parts):
            if isinstance(part, dict) and part.get("cache_control") is not None:
                cut = {**message, "content": parts[: p + 1]}
                cut.pop("tool_calls", None)
                prefix = {"tools": tools, "messages": [*messages[:m], cut]}
                add(prefix, tools_tokens + tokens.count_messages(prefix["messages"]), part["cache_control"])
        calls = message.get("tool_calls") or []
        for k, call in enumerate(calls):
            if isinstance(call, dict) and call.get("cache_control") is not None:
                cut = {**message, "tool_calls": calls[: k + 1]}
                prefix = {"tools": tools, "messages": [*messages[:m], cut]}
                add(prefix, tools_tokens + tokens.count_messages(prefix["messages"]), call["cache_control"])
    marks.sort(key=lambda mark: mark.tokens)
    return marks
