"""GET /openapi.json: an OpenAPI 3.0 description of the gateway's own endpoints.

It says what the gateway accepts (the chat request as parsed here, with its bounds; the
Messages and Responses requests as their translations read them), who may call what (an API
key, the master key, nobody), and the error shape every endpoint answers with (OpenAI's, but
Anthropic's on the Messages endpoints). The fuzz tests (tests/test_fuzz_api_e2e.py,
bench/fuzz_api.py) generate requests from it, so a route added without a description here is
a route nobody fuzzes: tests check that every route the app serves is described. Built once;
public, like /health (it holds no secret).
"""

from __future__ import annotations

from typing import Any

import orjson

from faregate.config import LimitsSettings
from faregate.routing.routes import TASKS, TIERS

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


def _answers(*statuses: int, ok: dict[str, Any] | None = None, ok_status: int = 200) -> dict[str, Any]:
    out: dict[str, Any] = {
        str(ok_status): {"description": "OK", "content": {JSON: {"schema": ok or {"type": "object"}}}}
    }
    for status in statuses:
        out[str(status)] = {"description": "An error", "content": {JSON: {"schema": _ref("Error")}}}
    return out


# USD amounts as the server takes them (accounts/money.parse_usd): decimal text with at most 9
# decimals, a balance holding at most $9007199.254740991. Described a little narrower (below
# $9000000) rather than wider: a client must not be told a value is valid that the server refuses.
_USD_INTEGER = r"(?:[0-9]{1,6}|[1-8][0-9]{6})"
_USD_FRACTION = r"(?:\.[0-9]{1,9})?"
# More than 0 (a top-up, a cap, a budget): a non-zero integer part, or a fraction with a non-zero digit.
_USD_NON_ZERO_FRACTION = "|".join(f"0{{{zeros}}}[1-9][0-9]{{0,{8 - zeros}}}" for zeros in range(9))
USD_PATTERN = f"^{_USD_INTEGER}{_USD_FRACTION}$"
POSITIVE_USD_PATTERN = (
    rf"^(?:0*(?:[1-9][0-9]{{0,5}}|[1-8][0-9]{{6}}){_USD_FRACTION}|0*\.(?:{_USD_NON_ZERO_FRACTION}))$"
)


def _schemas(limits: LimitsSettings) -> dict[str, Any]:
    text_part = {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"enum": ["text"]}, "text": {"type": "string"}},
    }
    image_part = {
        "type": "object",
        "required": ["type", "image_url"],
        "properties": {
            "type": {"enum": ["image_url"]},
            "image_url": {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}},
        },
    }
    message = {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
            "content": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"oneOf": [text_part, image_part]}},
                    {"type": "null"},
                ]
            },
            "name": {"type": "string"},
            "tool_call_id": {"type": "string"},
        },
    }
    tool = {
        "type": "object",
        "required": ["type", "function"],
        "properties": {
            "type": {"enum": ["function"]},
            "function": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "parameters": {"type": "object"},
                },
            },
        },
    }
    cache_hint = {
        "oneOf": [
            {"type": "boolean"},
            {
                "type": "object",
                "properties": {
                    "enabled": {"type": "boolean"},
                    "ttl_s": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
                    "namespace": {"enum": ["key", "shared"]},
                },
            },
        ]
    }
    hints = {
        "type": "object",
        "description": "Routing and cache hints read by the gateway (also as x-faregate-* headers).",
        "properties": {
            "tier": {"enum": list(TIERS)},
            "task": {"enum": list(TASKS)},
            "max_cost_usd": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 10**9},
            "cache": cache_hint,
        },
        "additionalProperties": False,
    }
    name = {"type": "string", "minLength": 1, "maxLength": limits.max_model_name_chars}
    chat = {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": name,
            "models": {"type": "array", "minItems": 1, "maxItems": limits.max_models, "items": name},
            "messages": {"type": "array", "minItems": 1, "items": message},
            "stream": {"type": "boolean"},
            "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "n": {"type": "integer", "minimum": 1, "maximum": limits.max_n},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "seed": {"type": "integer"},
            "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "tools": {"type": "array", "items": tool},
            "tool_choice": {"oneOf": [{"enum": ["none", "auto", "required"]}, {"type": "object"}]},
            "response_format": {"type": "object", "properties": {"type": {"type": "string"}}},
            "user": {"type": "string"},
            "faregate": hints,
        },
    }
    tokens = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
    embeddings = {
        "type": "object",
        "required": ["model", "input"],
        # Unlike chat's, an unknown field is refused (wire/embeddings.py), and `models` too.
        "additionalProperties": False,
        "properties": {
            "model": name,
            "input": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 2048,
                        "items": {"type": "string", "minLength": 1},
                    },
                    tokens,
                    {"type": "array", "minItems": 1, "maxItems": 2048, "items": tokens},
                ]
            },
            # null: left out (the default), as OpenAI reads it.
            "encoding_format": {"enum": ["float", "base64", None], "nullable": True},
            "dimensions": {"type": "integer", "minimum": 1, "nullable": True},
            "user": {"type": "string", "nullable": True},
            "faregate": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"cache": cache_hint},
            },
        },
    }
    budget = {
        "type": "object",
        "required": ["period", "limit_usd"],
        "properties": {
            "period": {"enum": ["day", "week", "month"]},
            "window": {"enum": ["calendar", "rolling"]},
            "limit_usd": {"type": "string", "pattern": POSITIVE_USD_PATTERN},
        },
    }
    money = {"type": "string", "pattern": USD_PATTERN}
    positive_money = {"type": "string", "pattern": POSITIVE_USD_PATTERN}
    policy = {
        "requests_per_minute": {"type": "integer", "minimum": 1, "nullable": True},
        "tokens_per_minute": {"type": "integer", "minimum": 1, "nullable": True},
        "max_request_usd": {**positive_money, "nullable": True},
        "budgets": {"type": "array", "items": budget, "nullable": True},
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": "string", "nullable": True},
                        "code": {"type": "string", "nullable": True},
                    },
                }
            },
        },
        "AnthropicError": {
            "type": "object",
            "required": ["type", "error"],
            "properties": {
                "type": {"enum": ["error"]},
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
        "ChatRequest": chat,
        "EmbeddingsRequest": embeddings,
        "MessagesRequest": _messages_request(name, count_only=False),
        "CountTokensRequest": _messages_request(name, count_only=True),
        "ResponsesRequest": _responses_request(name),
        "Feedback": {
            "type": "object",
            "required": ["request_id", "score"],
            "properties": {
                "request_id": {"type": "string", "maxLength": 200},
                "score": {
                    "oneOf": [{"enum": ["up", "down"]}, {"type": "integer", "minimum": 1, "maximum": 5}]
                },
                "comment": {"type": "string", "maxLength": 4000},
            },
        },
        "KeyCreate": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 100},
                "premium": {"type": "boolean"},
                "credits_usd": money,
                **policy,
            },
        },
        "KeyUpdate": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100}, **policy},
        },
        "Credits": {
            "type": "object",
            "required": ["amount_usd"],
            "additionalProperties": False,
            "properties": {"amount_usd": positive_money, "note": {"type": "string", "maxLength": 500}},
        },
        "Release": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"force": {"type": "boolean"}},
        },
    }


def _messages_request(name: dict[str, Any], *, count_only: bool) -> dict[str, Any]:
    """Anthropic's Messages request, as wire/anthropic.py translates it."""
    block = {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"enum": ["text", "image", "document", "tool_use", "tool_result"]},
            "text": {"type": "string"},
            "source": {"type": "object"},
            "id": {"type": "string"},
            "name": {"type": "string"},
            "input": {"type": "object"},
            "tool_use_id": {"type": "string"},
            "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
            "cache_control": {"type": "object"},
        },
    }
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"enum": ["user", "assistant"]},
            "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": block}]},
        },
    }
    tool = {
        "type": "object",
        "required": ["name", "input_schema"],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "input_schema": {"type": "object"},
        },
    }
    properties: dict[str, Any] = {
        "model": name,
        "messages": {"type": "array", "minItems": 1, "items": message},
        "max_tokens": {"type": "integer", "minimum": 1},
        "system": {"oneOf": [{"type": "string"}, {"type": "array", "items": block}]},
        "tools": {"type": "array", "items": tool},
        "tool_choice": {"type": "object", "properties": {"type": {"enum": ["auto", "any", "none", "tool"]}}},
    }
    if not count_only:
        properties.update(
            stream={"type": "boolean"},
            temperature={"type": "number", "minimum": 0, "maximum": 1},
            top_p={"type": "number", "minimum": 0, "maximum": 1},
            top_k={"type": "integer", "minimum": 1},
            stop_sequences={"type": "array", "items": {"type": "string"}},
            metadata={"type": "object", "properties": {"user_id": {"type": "string"}}},
        )
    required = ["model", "messages"] if count_only else ["model", "messages", "max_tokens"]
    return {"type": "object", "required": required, "properties": properties}


def _responses_request(name: dict[str, Any]) -> dict[str, Any]:
    """The Responses API request, stateless, as wire/responses.py translates it."""
    item = {
        "type": "object",
        "properties": {
            # Reasoning items are accepted and dropped (wire/responses.py).
            "type": {"enum": ["message", "function_call", "function_call_output", "reasoning"]},
            "role": {"enum": ["user", "assistant", "system", "developer"]},
            "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
            "call_id": {"type": "string"},
            "name": {"type": "string"},
            "arguments": {"type": "string"},
            # A function's output: text, or its input_text/output_text parts.
            "output": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        },
    }
    tool = {
        "type": "object",
        "required": ["type", "name"],
        "properties": {
            "type": {"enum": ["function"]},
            "name": {"type": "string"},
            "parameters": {"type": "object"},
        },
    }
    return {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": name,
            "input": {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": item}]},
            "instructions": {"type": "string"},
            "stream": {"type": "boolean"},
            "max_output_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "tools": {"type": "array", "items": tool},
            "tool_choice": {"oneOf": [{"enum": ["none", "auto", "required"]}, {"type": "object"}]},
            "store": {"type": "boolean"},
        },
    }


def _anthropic_answers(*statuses: int) -> dict[str, Any]:
    out = _answers()
    for status in statuses:
        out[str(status)] = {"description": "An error", "content": {JSON: {"schema": _ref("AnthropicError")}}}
    return out


DASHBOARD_PANELS = (
    "summary",
    "series",
    "breakdown",
    "latency",
    "reliability",
    "feedback",
    "health",
    "alerts",
)


def _dashboard_query() -> list[dict[str, Any]]:
    def query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema}

    return [
        query("range", {"enum": ["15m", "1h", "6h", "24h", "7d", "30d", "90d", "all"]}),
        query("since", {"type": "string"}),
        query("until", {"type": "string"}),
        query("model", {"type": "string"}),
        query("provider", {"type": "string"}),
        query("route", {"type": "string"}),
        query("key", {"type": "string"}),
        query("by", {"type": "string"}),
    ]


def openapi_document(limits: LimitsSettings | None = None) -> dict[str, Any]:
    limits = limits or LimitsSettings()
    key: list[dict[str, list[str]]] = [{"apiKey": []}]
    master: list[dict[str, list[str]]] = [{"masterKey": []}]
    key_id = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    instance_id = {
        "name": "instance_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    }
    admin_errors = (400, 401, 403, 404)
    page_limit = {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    }
    # Anthropic's SDK sends its key in x-api-key; a Bearer key works as well.
    anthropic_key: list[dict[str, list[str]]] = [{"apiKey": []}, {"xApiKey": []}]
    response_id = {
        "name": "response_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    }
    paths: dict[str, Any] = {
        "/v1/chat/completions": {
            "post": {
                "summary": "A chat completion, OpenAI's wire format, routed, cached and metered.",
                "security": key,
                "requestBody": _json_body(_ref("ChatRequest")),
                "responses": _answers(400, 401, 402, 404, 413, 429, 502, 503, 504),
            }
        },
        "/v1/embeddings": {
            "post": {
                "summary": "Embeddings, OpenAI's wire format: priced, cached, metered, with fallback "
                "between the providers of the model.",
                "security": key,
                "requestBody": _json_body(_ref("EmbeddingsRequest")),
                "responses": _answers(400, 401, 402, 404, 413, 429, 502, 503, 504),
            }
        },
        "/v1/messages": {
            "post": {
                "summary": "Anthropic's Messages API, translated: any model, routed, cached and metered.",
                "security": anthropic_key,
                "requestBody": _json_body(_ref("MessagesRequest")),
                "responses": _anthropic_answers(400, 401, 402, 404, 413, 429, 502, 503, 504),
            }
        },
        "/v1/messages/count_tokens": {
            "post": {
                "summary": "The input tokens of a Messages request, by the gateway's tokenizer.",
                "security": anthropic_key,
                "requestBody": _json_body(_ref("CountTokensRequest")),
                "responses": _anthropic_answers(400, 401, 404, 413),
            }
        },
        "/v1/responses": {
            "post": {
                "summary": "OpenAI's Responses API, stateless, translated: routed, cached and metered.",
                "security": key,
                "requestBody": _json_body(_ref("ResponsesRequest")),
                "responses": _answers(400, 401, 402, 404, 413, 429, 502, 503, 504),
            }
        },
        "/v1/responses/input_tokens": {
            "post": {
                "summary": "The input tokens of a Responses request, by the gateway's tokenizer.",
                "security": key,
                "requestBody": _json_body(_ref("ResponsesRequest")),
                "responses": _answers(400, 401, 404, 413),
            }
        },
        "/v1/responses/{response_id}": {
            "get": {
                "summary": "Not supported: nothing is stored (always a 404 saying so).",
                "security": key,
                "parameters": [response_id],
                "responses": _answers(401, 404),
            },
            "delete": {
                "summary": "Not supported: nothing is stored (always a 404 saying so).",
                "security": key,
                "parameters": [response_id],
                "responses": _answers(401, 404),
            },
        },
        "/v1/models": {"get": {"security": key, "responses": _answers(401)}},
        "/v1/models/{name}": {
            "get": {
                "security": key,
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _answers(401, 404),
            }
        },
        "/v1/me": {"get": {"security": key, "responses": _answers(401, 503)}},
        "/v1/feedback": {
            "post": {
                "security": key,
                "requestBody": _json_body(_ref("Feedback")),
                "responses": _answers(400, 401, 404, 413, 501, 503),
            }
        },
        "/health": {"get": {"summary": "Liveness (details with the master key).", "responses": _answers()}},
        "/metrics": {
            "get": {
                "security": master,
                "responses": {"200": {"description": "Prometheus text"}, "401": {"description": "no key"}},
            }
        },
        "/openapi.json": {"get": {"summary": "This document.", "responses": _answers()}},
        "/admin/keys": {
            "get": {
                "security": master,
                "parameters": [
                    {"name": "revoked", "in": "query", "required": False, "schema": {"type": "boolean"}},
                    page_limit,
                    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": _answers(*admin_errors),
            },
            "post": {
                "security": master,
                "requestBody": _json_body(_ref("KeyCreate")),
                "responses": _answers(*admin_errors, ok_status=201),
            },
        },
        "/admin/keys/{key_id}": {
            "get": {"security": master, "parameters": [key_id], "responses": _answers(*admin_errors)},
            "patch": {
                "security": master,
                "parameters": [key_id],
                "requestBody": _json_body(_ref("KeyUpdate")),
                "responses": _answers(*admin_errors, 409),  # 409: a revoked key's policy
            },
            "delete": {"security": master, "parameters": [key_id], "responses": _answers(*admin_errors)},
        },
        "/admin/keys/{key_id}/revoke": {
            "post": {"security": master, "parameters": [key_id], "responses": _answers(*admin_errors)}
        },
        "/admin/keys/{key_id}/credits": {
            "post": {
                "security": master,
                "parameters": [key_id],
                "requestBody": _json_body(_ref("Credits")),
                "responses": _answers(*admin_errors, 409),  # 409: a revoked key
            }
        },
        "/admin/keys/{key_id}/reservations": {
            "get": {"security": master, "parameters": [key_id], "responses": _answers(*admin_errors)}
        },
        "/admin/keys/{key_id}/ledger": {
            "get": {
                "security": master,
                "parameters": [
                    key_id,
                    page_limit,
                    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": _answers(*admin_errors),
            }
        },
        "/admin/audit": {"get": {"security": master, "responses": _answers(401, 403)}},
        "/admin/instances": {"get": {"security": master, "responses": _answers(401, 403)}},
        "/admin/quality": {
            "get": {
                "summary": "Quality targets: each calibrated route's and the semantic cache's figures, "
                "and the latest verifications.",
                "security": master,
                "parameters": [
                    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}}
                ],
                "responses": _answers(400, 401, 403),
            }
        },
        "/admin/instances/{instance_id}/release": {
            "post": {
                "security": master,
                "parameters": [instance_id],
                "requestBody": _json_body(_ref("Release"), required=False),
                "responses": _answers(*admin_errors),
            }
        },
        "/admin/dashboard/requests": {
            "get": {
                "security": master,
                "parameters": [
                    *_dashboard_query(),
                    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}},
                    {"name": "before", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "before_id", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "q", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": _answers(400, 401, 403),
            }
        },
    }
    for panel in DASHBOARD_PANELS:
        paths[f"/admin/dashboard/{panel}"] = {
            "get": {
                "security": master,
                "parameters": _dashboard_query(),
                "responses": _answers(400, 401, 403),
            }
        }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Faregate",
            "version": "1",
            "description": (
                "The gateway's own endpoints. Errors are OpenAI's error JSON, but Anthropic's on the "
                "Messages endpoints."
            ),
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": _schemas(limits),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key (fg-...)."},
                "xApiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "An API key (fg-...) as Anthropic's SDK sends it.",
                },
                "masterKey": {"type": "http", "scheme": "bearer", "description": "The master key."},
            },
        },
    }


def openapi_body(limits: LimitsSettings | None = None) -> bytes:
    return orjson.dumps(openapi_document(limits))
