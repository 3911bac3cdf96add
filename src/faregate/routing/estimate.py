"""Prompt size for routing decisions, cheap first and exact only when it matters.

Counting tokens exactly needs the tokenizer (about a second to load and ~70 MB), so
decisions use a bound first: a token is never shorter than one UTF-8 byte, so the
byte count is an upper bound, and most requests are far from every limit. Only when
the bound cannot settle a decision is the exact count taken.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faregate import tokens

# Per-message framing and the reply primer, as tokens.count_messages counts them.
_FRAMING = tokens.TOKENS_PER_MESSAGE


class PromptSize:
    def __init__(self, messages: list[Any]) -> None:
        self._messages = messages
        self._exact: int | None = None
        self.upper_bound = self._bound(messages)

    @staticmethod
    def _bound(messages: list[Any]) -> int:
        total = tokens.TOKENS_PER_REPLY
        for message in messages:
            if not isinstance(message, dict):
                continue
            total += _FRAMING
            content = message.get("content")
            if isinstance(content, str):
                total += len(content.encode())
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict):
                        if part.get("type") == "text":
                            total += len(str(part.get("text", "")).encode())
                        else:
                            total += tokens.TOKENS_PER_MEDIA_PART
            name = message.get("name")
            if name:
                total += len(str(name).encode()) + 1
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict):
                    fn = call.get("function") or {}
                    total += len(str(fn.get("name", "")).encode()) + len(
                        str(fn.get("arguments", "")).encode()
                    )
        return total

    @property
    def known_exact(self) -> int | None:
        return self._exact

    async def exact(self) -> int:
        if self._exact is None:
            if tokens.is_loaded():
                self._exact = tokens.count_messages(self._messages)
            else:
                # The first count loads the tokenizer: keep that off the event loop.
                self._exact = await asyncio.to_thread(tokens.count_messages, self._messages)
        return self._exact

    async def at_most(self, limit: int) -> bool:
        """Is the prompt no longer than `limit` tokens?"""
        if self.upper_bound <= limit:
            return True
        return await self.exact() <= limit

    async def best(self) -> int:
        """The exact count if it is already known or cheap to get, else the upper bound."""
        if self._exact is not None:
            return self._exact
        if tokens.is_loaded():
            return await self.exact()
        return self.upper_bound
