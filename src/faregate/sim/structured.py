"""The simulator's `echo` answer to a request for structured output: JSON its response_format
accepts, as a model with structured outputs returns, so the SDKs' helpers that parse it
(openai's chat.completions.parse and responses.parse, anthropic's output_config.format, all
reaching the simulator as a chat response_format) get their object back. A tool call's arguments
are such an instance of the tool's parameters, for the parsed arguments of a strict tool.

`json_schema`: an instance of the schema, strings the prompt echoed (a string format such as
date-time gets a valid value of it), numbers their minimum or 0, every property present (strict
mode requires them all), arrays as short as minItems allows, the first of an enum, a const, a
union. `json_object`: {"answer": the prompt}. Deterministic, so usage is exact and the cache
sees the same answer twice.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from faregate.types import JSON

# Deeper than any real schema; a recursive one ($ref to itself) stops here with null.
MAX_DEPTH = 16
# A valid value for each string format the SDKs' models map to (pydantic's datetime, UUID, ...).
FORMATTED = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "duration": "P1D",
    "email": "user@example.com",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def structured_answer(body: JSON, echo: str) -> str | None:
    """The JSON text answering `body`'s response_format with `echo` in it; None without one."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return orjson.dumps({"answer": echo}).decode()
    if fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema")
    return instance_json(spec.get("schema") if isinstance(spec, dict) else None, echo)


def instance_json(schema: Any, echo: str) -> str:
    """The JSON text of an instance of `schema` (a tool's parameters too), `echo` in its strings."""
    root = schema if isinstance(schema, dict) else {}
    return orjson.dumps(_instance(root, root, echo, 0)).decode()


def _instance(schema: Any, root: JSON, echo: str, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _instance(_resolve(ref, root), root, echo, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for union in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(union)
        if isinstance(branches, list) and branches:
            return _instance(branches[0], root, echo, depth + 1)
    kind = _kind(schema)
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {name: _instance(sub, root, echo, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = schema.get("minItems")
        count = count if type(count) is int and count > 0 else 0
        return [_instance(schema.get("items"), root, echo, depth + 1) for _ in range(count)]
    if kind == "string":
        return _string(schema, echo)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        value = low if isinstance(low, int | float) and not isinstance(low, bool) else 0
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            value += 1
        return math.ceil(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    return None


def _kind(schema: JSON) -> str:
    """The schema's type: the first that is not null of a list; else what its keywords imply."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        return kinds[0] if kinds else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"  # any value is valid: the prompt, as text


def _resolve(ref: str, root: JSON) -> Any:
    """A local $ref ("#", "#/$defs/Name", "#/definitions/Name"); anything else resolves to None."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in ref[1:].split("/"):
        if part:
            node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
    return node


def _string(schema: JSON, echo: str) -> str:
    fmt = schema.get("format")
    text = FORMATTED.get(fmt, echo) if isinstance(fmt, str) else echo
    low, high = schema.get("minLength"), schema.get("maxLength")
    if type(high) is int and len(text) > high:
        text = text[:high]
    if type(low) is int and len(text) < low:
        text = text.ljust(low, ".")
    return text
