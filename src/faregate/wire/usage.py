"""The internal `usage` object: OpenAI's chat usage, prompt-cache counts included.

The internal answer is an OpenAI chat body (types.py), so usage travels in OpenAI's shape:
prompt-cache reads are `prompt_tokens_details.cached_tokens` and writes
`prompt_tokens_details.cache_write_tokens`, as OpenAI reports them. The part of the writes
made with a one-hour TTL (Anthropic's, priced apart) is
`prompt_tokens_details.cache_write_tokens_details.ttl_1h_tokens`. Audio tokens, priced apart too,
are `prompt_tokens_details.audio_tokens` and `completion_tokens_details.audio_tokens`.

Reasoning is output: inside `completion_tokens` as OpenAI counts it (a vendor that reports
`completion_tokens_details.reasoning_tokens` beside it, as xAI does, has it added in).

Invariant: `prompt_tokens` counts every input token, cache reads and writes included; cache
counts that do not fit inside it are dropped as malformed rather than billed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faregate.types import JSON, Usage

# What the gateway adds to the usage object a client sees (wire/openai.py's `usage_json`): every
# client wire carries these over into its own usage shape.
GATEWAY_USAGE_FIELDS = ("cost", "baseline_cost", "estimated")


def usage_from(body: Mapping[str, Any]) -> Usage | None:
    """Usage from an OpenAI body or stream chunk, or None if absent or malformed."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = token_count(usage.get("prompt_tokens"))
    completion = token_count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    details = usage.get("prompt_tokens_details")
    out_details = usage.get("completion_tokens_details")
    if isinstance(out_details, dict):
        completion = min(completion + _reasoning_apart(usage, prompt, completion, out_details), _MAX_COUNT)
    # Audio parts, billed at the audio prices where the model has them (types.Price).
    audio_out = (token_count(out_details.get("audio_tokens")) or 0) if isinstance(out_details, dict) else 0
    if audio_out > completion:
        audio_out = 0
    # Made positionally below (read on every answer): a class called with keywords costs a dict of
    # them per call. Usage's fields: prompt, completion, estimated, cache read, write, 1h write,
    # audio prompt, audio completion.
    if not isinstance(details, dict):
        return Usage(prompt, completion, False, 0, 0, 0, 0, audio_out)
    read = token_count(details.get("cached_tokens")) or 0
    write = token_count(details.get("cache_write_tokens")) or 0
    by_ttl = details.get("cache_write_tokens_details")
    write_1h = (token_count(by_ttl.get("ttl_1h_tokens")) or 0) if isinstance(by_ttl, dict) else 0
    audio_in = token_count(details.get("audio_tokens")) or 0
    if audio_in > prompt:
        audio_in = 0
    if read + write > prompt or write_1h > write:
        return Usage(prompt, completion, False, 0, 0, 0, audio_in, audio_out)
    return Usage(prompt, completion, False, read, write, write_1h, audio_in, audio_out)


def _reasoning_apart(usage: dict[str, Any], prompt: int, completion: int, out_details: dict[str, Any]) -> int:
    """Reasoning tokens reported beside `completion_tokens` rather than inside it (xAI's chat
    usage: its total_tokens is prompt + completion + reasoning), else 0. OpenAI counts them inside
    completion_tokens; either way they are billed as output, once. Apart when the total says so,
    or, without a total that says inside, when they outnumber the completion they would be part of."""
    reasoning = token_count(out_details.get("reasoning_tokens")) or 0
    if not reasoning:
        return 0
    total = token_count(usage.get("total_tokens"))
    if total == prompt + completion + reasoning:
        return reasoning
    if reasoning > completion and total != prompt + completion:
        return reasoning
    return 0


def usage_json(usage: Usage) -> JSON:
    """The OpenAI `usage` object for `usage`, with cache details only when there are some."""
    out: JSON = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cache_read_tokens or usage.cache_write_tokens:
        details: JSON = {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        }
        if usage.cache_write_1h_tokens:
            details["cache_write_tokens_details"] = {
                "ttl_5m_tokens": usage.cache_write_tokens - usage.cache_write_1h_tokens,
                "ttl_1h_tokens": usage.cache_write_1h_tokens,
            }
        out["prompt_tokens_details"] = details
    if usage.audio_prompt_tokens:
        out.setdefault("prompt_tokens_details", {})["audio_tokens"] = usage.audio_prompt_tokens
    if usage.audio_completion_tokens:
        out["completion_tokens_details"] = {"audio_tokens": usage.audio_completion_tokens}
    if usage.estimated:
        out["estimated"] = True
    return out


# The largest count taken: far past any real one, and sent on by orjson and compared exactly as
# a double (a JSON number past 2**64 is read as a float, which as an int could not be sent on).
_MAX_COUNT = 2**53 - 1


def token_count(value: Any) -> int | None:
    """A non-negative whole token count (JSON may spell it 12.0) up to 2**53 - 1, else None; never
    a bool."""
    if type(value) is int:
        return value if 0 <= value <= _MAX_COUNT else None
    if type(value) is float and value.is_integer() and 0 <= value <= _MAX_COUNT:
        return int(value)
    return None
