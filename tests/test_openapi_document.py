"""GET /openapi.json against the wires: a body a wire translates is one the document accepts (a
client built from the document must not refuse what the gateway serves)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from faregate.server.openapi import openapi_document
from faregate.wire.anthropic import messages_to_chat
from faregate.wire.responses import responses_to_chat


def validator(name: str) -> jsonschema.Draft4Validator:
    # OpenAPI 3.0's schemas are JSON Schema draft 4 (a boolean exclusiveMinimum).
    return jsonschema.Draft4Validator(openapi_document()["components"]["schemas"][name])


PDF = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}


@pytest.mark.parametrize(
    "body",
    [
        {
            "model": "m",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": [PDF, {"type": "text", "text": "sum it up"}]}],
        },
    ],
)
def test_a_messages_body_the_wire_translates_is_valid_in_the_document(body: dict[str, Any]) -> None:
    messages_to_chat(body)
    validator("MessagesRequest").validate(body)


@pytest.mark.parametrize(
    "body",
    [
        {
            "model": "m",
            "input": [{"type": "reasoning", "id": "rs_1", "summary": []}, {"role": "user", "content": "hi"}],
        },
        {
            "model": "m",
            "input": [
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [{"type": "input_text", "text": "42"}],
                },
            ],
        },
    ],
)
def test_a_responses_body_the_wire_translates_is_valid_in_the_document(body: dict[str, Any]) -> None:
    responses_to_chat(body)
    validator("ResponsesRequest").validate(body)
