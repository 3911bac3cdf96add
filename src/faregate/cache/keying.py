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
        # A Responses request's own body (passed through to a provider that speaks that API).
        "responses_request",
        # A Messages request's effort the chat wire lacks ("max"; wire/anthropic.py).
        "messages_effort",
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
        "faregate",  # its routing hints are in the key through routing_material
        "sim",  # the simulator's per-request script (tests, demos); part of the answer there
    }
)


# Key fields at the value every OpenAI-compatible server defaults them to: keyed as if left out.
# Not top_p, temperature or the penalties, whose defaults some servers set otherwise.
UNIVERSAL_DEFAULTS: dict[str, Any] = {"n": 1, "logprobs": False}


def unclassified_fields(body: dict[str, Any]) -> list[str]:
    return sorted(k for k in body if k not in KEY_FIELDS and k not in IGNORED_FIELDS)


def routing_material(hints: Any, premium: bool, stream: bool | None = None) -> dict[str, str]:
    """What, besides the body's key fields and the route's name, decides which model answers:
    the routing hints (tier, task, max_cost_usd, from the body or the x-faregate-* headers,
    normalised), whether the key may use dedicated offers, and whether the request streams when
    its route picks the model by that (`stream` None when it does not, so that a stream and a
    whole answer share one entry wherever they get the same model). `hints` is a
    routing.routes.Hints."""
    material: dict[str, str] = {}
    if stream is not None:
        material["stream"] = "1" if stream else "0"
    if hints.tier is not None:
        material["tier"] = hints.tier
    if hints.task is not None:
        material["task"] = hints.task
    if hints.max_cost_usd is not None:
        material["max_cost_usd"] = format(hints.max_cost_usd.normalize(), "f")
    if premium:
        material["premium"] = "1"
    return material


def exact_key(body: dict[str, Any], resolved: str, scope: str, routing: dict[str, str] | None = None) -> str:
    """SHA-256 over the normalised key fields (sorted keys, canonical JSON), the resolved route or
    model, and the routing inputs that pick the model within it (`routing_material`)."""
    material = {k: _number(body[k]) for k in sorted(body) if k in KEY_FIELDS}
    for field, default in UNIVERSAL_DEFAULTS.items():
        if field in material and material[field] == default and type(material[field]) is type(default):
            del material[field]  # asks what leaving it out asks
    native = material.get("responses_request")
    if isinstance(native, dict):
        # The Responses body rides along whole, for a pass-through; its fields that do not change
        # the answer are left out as the chat body's are (`stream` above all: else a stream was
        # never served the whole answer kept before it, nor the other way round).
        material["responses_request"] = {k: v for k, v in native.items() if k not in IGNORED_FIELDS}
    # The simulator's behaviour changes its answer, so it is part of the key when present.
    if "sim" in body:
        material["sim"] = body["sim"]
    parts: list[Any] = [scope, resolved, material]
    if routing:
        # Only when present, so the keys of requests without hints are unchanged.
        parts.append(routing)
    payload = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


_EXACT_INT = 2.0**53


def _number(value: Any) -> Any:
    """A top-level number as one spelling: JSON has one number type, and `0.0` (a Python float, a
    config's value) asks what `0` does; orjson writes them apart."""
    if type(value) is float and value.is_integer() and -_EXACT_INT <= value <= _EXACT_INT:
        return int(value)  # beyond ±2**53 a float is not one integer, nor orjson's to write as one
    return value


def is_deterministic(body: dict[str, Any]) -> bool:
    """Only answers that would come out the same are cached by default: temperature 0
    (OpenAI's default is 1) and a single choice."""
    temperature = body.get("temperature")
    n = body.get("n")
    return temperature is not None and float(temperature) == 0.0 and n in (None, 1)


def embeddings_key(material: dict[str, Any], resolved: str, scope: str) -> str:
    """The exact key of an embeddings request: `material` is every field that changes its answer
    (the inputs, dimensions, encoding_format), with the model and the scope. Tagged so that it can
    never equal a chat request's key."""
    payload = orjson.dumps(["embeddings", scope, resolved, material], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()
