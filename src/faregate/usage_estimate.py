"""The gateway's token counts where no upstream gave one: estimated usage, reservations,
context-window fits, count_tokens answers.

Two ways, chosen by `accounts.usage_estimate` and set once per process at start-up (`configure`):

- `light` (the default): faregate.light_tokens, no vocabulary. It counts over o200k by ~8-19% on
  average and under it on 1-3% of texts, by at most ~15% (bench/README.md, "Token estimates
  without the tokenizer"); for a model with another tokenizer o200k is itself only an estimate.
- `tokenizer`: the exact o200k BPE (faregate.tokens): ~58 MiB of RSS once loaded, at the first
  count (or in the supervisor before `serve --workers N` forks, so the workers share its pages).

In `light` mode faregate.tokens (and tiktoken) is never imported: tests/test_usage_estimate.py.
A completion's estimate is never below the content deltas the stream carried (providers send
about one token per delta), so a stream is not billed under what it visibly sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from typing import Any, Literal

from faregate import counting, light_tokens
from faregate.types import ChatRequest, Usage

UsageEstimate = Literal["light", "tokenizer"]

_mode: UsageEstimate = "light"


def configure(mode: UsageEstimate) -> None:
    """Choose how this process counts (the server calls it with `accounts.usage_estimate`)."""
    global _mode
    _mode = mode


def mode() -> UsageEstimate:
    return _mode


def ready() -> bool:
    """May a count run on the event loop? Not while the tokenizer still has to be loaded."""
    if _mode == "light":
        return True
    from faregate import tokens

    return tokens.is_loaded()


def state() -> dict[str, Any]:
    """For the admin health answer: the mode, and whether this process has imported tiktoken
    or loaded the o200k vocabulary (neither, in `light` mode)."""
    tokens = sys.modules.get("faregate.tokens")
    loaded = tokens is not None and bool(tokens.is_loaded())
    return {"mode": _mode, "tokenizer_imported": "tiktoken" in sys.modules, "tokenizer_loaded": loaded}


def preload() -> None:
    """Load the tokenizer now if this process counts with it (before forking workers)."""
    if _mode == "tokenizer":
        from faregate import tokens

        tokens.encoding()


def count_text(text: str) -> int:
    if _mode == "light":
        return light_tokens.count_text(text)
    from faregate import tokens

    return tokens.count_text(text)


def count_messages(messages: list[Any], media_part_tokens: int = counting.TOKENS_PER_MEDIA_PART) -> int:
    return counting.count_messages(messages, count_text, media_part_tokens)


def count_input(body: dict[str, Any]) -> int:
    return counting.count_input(body, count_text)


async def estimate_after(usage: Usage, completion: str, deltas: int = 0) -> Usage:
    """A usage reported before a stream's end (exact up to there: Anthropic's message_start, a
    server that counts as it goes) with the output that followed it, `completion`, estimated (never
    below its `deltas`)."""

    def count() -> Usage:
        more = max(deltas, count_text(completion))
        return dataclasses.replace(usage, completion_tokens=usage.completion_tokens + more, estimated=True)

    if ready():
        return count()
    return await asyncio.to_thread(count)


async def estimate_usage(request: ChatRequest, completion: str, deltas: int = 0) -> Usage:
    """The usage of an answer the upstream reported none for: the request's input and the
    completion text, the completion never below `deltas` (the content deltas a stream carried)."""

    def count() -> Usage:
        return Usage(count_input(request.body), max(deltas, count_text(completion)), True)

    if ready():
        return count()
    return await asyncio.to_thread(count)
