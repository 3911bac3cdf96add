"""OpenAI's /v1/embeddings wire: request checks, input token counts, and the answer's usage.

Embeddings pass through: the request goes upstream as sent (with the upstream's model name),
and the answer comes back with our model name and `usage.cost`. An embedding model's price is
per 1M input tokens (its Price has output 0), so usage is input only.

Invariants: a request that passes `parse_request` has a model, an input of 1..MAX_INPUTS items
(strings, or token arrays), no empty string, and valid encoding_format/dimensions; anything
else is an InvalidRequest naming the parameter, as OpenAI words it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from faregate import usage_estimate
from faregate.errors import InvalidRequest
from faregate.types import GATEWAY_FIELDS, JSON, Usage
from faregate.wire.usage import token_count

# OpenAI's bound on the inputs of one request.
MAX_INPUTS = 2048
ENCODINGS = ("float", "base64")
_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


@dataclass(slots=True, frozen=True)
class EmbeddingRequest:
    model: str
    # Each input as text, or as the token ids the client sent.
    inputs: tuple[str | tuple[int, ...], ...]
    encoding_format: str = "float"
    dimensions: int | None = None


def parse_request(body: Any) -> EmbeddingRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    for name in body:
        if name not in _FIELDS and name not in GATEWAY_FIELDS:
            raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    inputs = _inputs(body.get("input"))
    encoding = body.get("encoding_format")
    if encoding is None:  # null is left out, as OpenAI reads it (LiteLLM sends it so)
        encoding = "float"
    if encoding not in ENCODINGS:
        raise InvalidRequest(f"encoding_format must be one of {list(ENCODINGS)}", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise InvalidRequest("dimensions must be a positive integer", param="dimensions")
    return EmbeddingRequest(model, inputs, encoding, dimensions)


def _inputs(value: Any) -> tuple[str | tuple[int, ...], ...]:
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(type(v) is int for v in value):
        items = [value]  # one input given as token ids
    elif isinstance(value, list) and value:
        items = value
    else:
        raise InvalidRequest("'input' must be a non-empty string or array", param="input")
    if len(items) > MAX_INPUTS:
        raise InvalidRequest(
            f"'input' has {len(items)} items; at most {MAX_INPUTS} are allowed", param="input"
        )
    out: list[str | tuple[int, ...]] = []
    for i, item in enumerate(items):
        if isinstance(item, str) and item:
            out.append(item)
        elif isinstance(item, list) and item and all(token_count(t) is not None for t in item):
            out.append(tuple(int(t) for t in item))
        else:
            raise InvalidRequest(
                f"input[{i}] must be a non-empty string or array of token ids", param="input"
            )
    return tuple(out)


def upstream_body(body: JSON) -> JSON:
    """The client's body as an upstream receives it: a field given as null left out, as OpenAI
    reads it; strict OpenAI-wire servers (vLLM, TEI, DeepInfra) refuse `encoding_format: null`."""
    if None not in body.values():
        return body
    return {name: value for name, value in body.items() if value is not None}


def input_tokens(request: EmbeddingRequest) -> int:
    """Tokens the inputs will be billed for, counted as the gateway counts (faregate.usage_estimate;
    token arrays as sent): the estimate a budget reserves, and the usage when the upstream gives none."""
    count = usage_estimate.count_text
    return sum(len(item) if isinstance(item, tuple) else count(item) for item in request.inputs)


def usage_of(body: JSON) -> Usage | None:
    """The upstream's usage (input only), or None when absent or malformed."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = token_count(usage.get("prompt_tokens"))
    return None if prompt is None else Usage(prompt, 0)


def response_body(body: JSON, model: str, usage: Usage, cost: Decimal, baseline: Decimal) -> JSON:
    """The answer as the client sees it: our model name, and usage with the cost and the baseline
    cost (and `estimated` when we counted the tokens)."""
    out = dict(body)
    out["model"] = model
    usage_json: JSON = {
        "prompt_tokens": usage.prompt_tokens,
        "total_tokens": usage.prompt_tokens,
        "cost": float(cost),
        "baseline_cost": float(baseline),
    }
    if usage.estimated:
        usage_json["estimated"] = True
    out["usage"] = usage_json
    return out


def is_answer(body: JSON, request: EmbeddingRequest) -> bool:
    """True when the upstream's answer has one embedding per input: anything less is a failed
    call to fall back from, not an answer."""
    data = body.get("data")
    return isinstance(data, list) and len(data) == len(request.inputs)
