"""Prompt size for routing decisions and reservations, cheap first and exact only when it matters.

Counting tokens costs CPU (and, with `accounts.usage_estimate: tokenizer`, a tokenizer that takes
about a second and ~58 MiB to load), so decisions use a bound first: a token is never shorter
than one UTF-8 byte, so the byte count is an upper bound, and most requests are far from every
limit. Only when the bound cannot settle a decision is the count taken ("exact" below: the
gateway's own count, faregate.usage_estimate, the light estimate by default).

The prompt is everything the provider bills as input: the messages, and the tools, functions,
tool_choice and response_format it renders into the prompt (counting.BILLED_INPUT_FIELDS).
Media parts (images, audio, video, files) count as counting.TOKENS_PER_MEDIA_PART each for
fitting a context window; for money (`billable`) an inline part counts one token per
`media_bytes_per_token` bytes of its data when that is more, since providers bill a large
image, a long recording or a many-page file by its size.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson

from faregate import counting, usage_estimate

# Per-message framing and the reply primer, as counting.count_messages counts them.
_FRAMING = counting.TOKENS_PER_MESSAGE
# Default bytes of inline media data per billed token, for reservations (see the docstring).
MEDIA_BYTES_PER_TOKEN = 64
# The light estimate under-counts o200k on 1-3% of texts, by at most 15% measured (bench/README.md,
# "Token estimates without the tokenizer"): a reservation counts 1/0.85 = 1.18 times it, and more.
LIGHT_RESERVE_FACTOR = 1.25


def _text_bytes(value: Any) -> int:
    return len(value.encode()) if isinstance(value, str) else len(str(value).encode())


class PromptSize:
    def __init__(
        self, messages: list[Any], extras: str = "", media_bytes_per_token: int = MEDIA_BYTES_PER_TOKEN
    ) -> None:
        self._messages = messages
        self._extras = extras
        self._exact: int | None = None
        self.media_parts = 0
        # Bytes of media parts (their whole JSON, data included), for the billable count.
        self._media_bytes: list[int] = []
        self.upper_bound = self._bound(messages) + len(extras.encode())
        flat = counting.TOKENS_PER_MEDIA_PART
        self._media_surplus = (
            sum(max(0, size // media_bytes_per_token - flat) for size in self._media_bytes)
            if self._media_bytes
            else 0  # text only (most requests): no generator
        )

    @classmethod
    def of(cls, body: dict[str, Any], media_bytes_per_token: int = MEDIA_BYTES_PER_TOKEN) -> PromptSize:
        """The billed input of a whole request body."""
        messages = body.get("messages")
        return cls(
            messages if isinstance(messages, list) else [],
            counting.billed_extras_text(body),
            media_bytes_per_token,
        )

    def _bound(self, messages: list[Any]) -> int:
        total = counting.TOKENS_PER_REPLY
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
                            total += _text_bytes(part.get("text", ""))
                        else:
                            total += counting.TOKENS_PER_MEDIA_PART
                            self.media_parts += 1
                            self._media_bytes.append(len(orjson.dumps(part)))
            name = message.get("name")
            if name:
                total += _text_bytes(name) + 1
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    total += _text_bytes(fn.get("name", "")) + _text_bytes(fn.get("arguments", ""))
            # The functions API's one call (before tool_calls), rendered and billed alike.
            fn = message.get("function_call")
            if isinstance(fn, dict):
                total += _text_bytes(fn.get("name", "")) + _text_bytes(fn.get("arguments", ""))
        return total

    @property
    def billable_bound(self) -> int:
        """A bound on `billable` without a count: the byte bound plus the media by size."""
        return self.upper_bound + self._media_surplus

    @property
    def known_exact(self) -> int | None:
        return self._exact

    def _count(self) -> int:
        return usage_estimate.count_messages(self._messages) + usage_estimate.count_text(self._extras)

    async def exact(self) -> int:
        if self._exact is None:
            if usage_estimate.ready():
                self._exact = self._count()
            else:
                # The first count loads an opted-in tokenizer: keep that off the event loop.
                self._exact = await asyncio.to_thread(self._count)
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
        if usage_estimate.ready():
            return await self.exact()
        return self.upper_bound

    async def billable(self) -> int:
        """The input tokens to reserve money for: `best()` with large inline media counted by size,
        and the light estimate raised by LIGHT_RESERVE_FACTOR (never past the byte bound), as a
        reservation must be a worst case and the light count is only an estimate."""
        best = await self.best()
        if self._exact is not None and usage_estimate.mode() == "light":
            best = min(self.upper_bound, math.ceil(best * LIGHT_RESERVE_FACTOR))
        return best + self._media_surplus
