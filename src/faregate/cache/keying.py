"""What makes two requests "the same": the exact-cache key.

Every request field is classified here. A field that changes the answer is in the key;
a field that does not is listed as ignored; a field that is in neither list makes the
request uncacheable. So a new OpenAI field can never silently share cache entries: it
bypasses the cache until someone decides which list it belongs to (a test fails until
every field the SDK can send is classified).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

# Fields that change the answer, so they are part of the key.
KEY_FIELDS = frozenset(
    {
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "response_format",
        "temperature",
        "top_p",
        "seed",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "n",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
        "modalities",
        "audio",
        "prediction",
        "verbosity",
        "web_search_options",
        "moderation",
        # Provider extensions commonly sent through OpenAI-compatible gateways.
        "top_k",
        "min_p",
        "repetition_penalty",
        "enable_thinking",
    }
)
# Fields that do not change the answer (transport, bookkeeping, or read by the gateway itself).
IGNORED_FIELDS = frozenset(
    {
        "model",  # replaced by the resolved model or route
        "models",  # idem
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "metadata",
        "store",
        "service_tier",
        "faregate",
        "sim",  # the simulator's per-request script (tests, demos); part of the answer there
    }
)


def unclassified_fields(body: dict[str, Any]) -> list[str]:
    return sorted(k for k in body if k not in KEY_FIELDS and k not in IGNORED_FIELDS)


def exact_key(body: dict[str, Any], resolved: str, scope: str) -> str:
    """SHA-256 over the normalised key fields (sorted keys, canonical JSON)."""
    material = {k: body[k] for k in sorted(body) if k in KEY_FIELDS}
    # The simulator's behaviour changes its answer, so it is part of the key when present.
    if "sim" in body:
        material["sim"] = body["sim"]
    payload = orjson.dumps([scope, resolved, material], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


def is_deterministic(body: dict[str, Any]) -> bool:
    """Only answers that would come out the same are cached by default: temperature 0
    (OpenAI's default is 1) and a single choice."""
    temperature = body.get("temperature")
    n = body.get("n")
    return temperature is not None and float(temperature) == 0.0 and n in (None, 1)
