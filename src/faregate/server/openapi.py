"""GET /openapi.json: an OpenAPI 3.0 description of the gateway's own endpoints.

It says what the gateway accepts (the chat request as parsed here, with its bounds), who may
call what (an API key, the master key, nobody), and the error shape every endpoint answers
with. The fuzz tests (tests/test_fuzz_api_e2e.py, bench/fuzz_api.py) generate requests from it,
so a route added without a description here is a route nobody fuzzes: tests check that every
route the app serves is described. Built once; public, like /health (it holds no secret).
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
            "max_cost_usd": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
            "cache": cache_hint,
        },
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
            "encoding_format": {"enum": ["float", "base64"]},
            "dimensions": {"type": "integer", "minimum": 1},
            "user": {"type": "string"},
            "faregate": {"type": "object", "properties": {"cache": cache_hint}},
        },
    }
    budget = {
        "type": "object",
        "required": ["period", "limit_usd"],
        "properties": {
            "period": {"enum": ["day", "week", "month"]},
            "window": {"enum": ["calendar", "rolling"]},
            "limit_usd": {"type": "string", "pattern": r"^[0-9]{1,9}(\.[0-9]{1,9})?$"},
        },
    }
    money = {"type": "string", "pattern": r"^[0-9]{1,9}(\.[0-9]{1,9})?$"}
    policy = {
        "requests_per_minute": {"type": "integer", "minimum": 1, "nullable": True},
        "tokens_per_minute": {"type": "integer", "minimum": 1, "nullable": True},
        "max_request_usd": {**money, "nullable": True},
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
        "ChatRequest": chat,
        "EmbeddingsRequest": embeddings,
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
            "properties": {"amount_usd": money, "note": {"type": "string", "maxLength": 500}},
        },
        "Release": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"force": {"type": "boolean"}},
        },
    }


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
                "responses": _answers(400, 401, 404),
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
                    {"name": "revoked", "in": "query", "required": False, "schema": {"type": "string"}}
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
                "responses": _answers(*admin_errors),
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
                "responses": _answers(*admin_errors),
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
                    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}},
                ],
                "responses": _answers(*admin_errors),
            }
        },
        "/admin/audit": {"get": {"security": master, "responses": _answers(401, 403)}},
        "/admin/instances": {"get": {"security": master, "responses": _answers(401, 403)}},
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
            "description": "The gateway's own endpoints. Errors are always OpenAI's error JSON.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": _schemas(limits),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key (fg-...)."},
                "masterKey": {"type": "http", "scheme": "bearer", "description": "The master key."},
            },
        },
    }


def openapi_body(limits: LimitsSettings | None = None) -> bytes:
    return orjson.dumps(openapi_document(limits))
