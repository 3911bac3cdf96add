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


AMOUNTS = ["0", "0.0", "000", "0.000000000", "0.000000001", "0.5", ".5", "10.50", "1", "9000000",
           "9007199.254740991", "9007199.254740992", "9999999", "10000000", "999999999",
           "1.0000000001"]  # fmt: skip


@pytest.mark.parametrize("amount", AMOUNTS)
def test_an_amount_the_document_takes_is_one_the_server_takes(amount: str) -> None:
    """Money fields: a value valid in the document must not be refused (400) by the server. The
    document took "0" where the server wants more than 0 (a top-up, a cap, a budget), and nine
    integer digits where a balance holds at most $9007199.254740991."""
    from faregate.accounts.money import parse_usd
    from faregate.errors import InvalidRequest

    def taken(allow_zero: bool) -> bool:
        try:
            parse_usd(amount, "x", allow_zero=allow_zero)
        except InvalidRequest:
            return False
        return True

    bodies = [
        ("Credits", {"amount_usd": amount}, False),
        ("KeyCreate", {"name": "k", "max_request_usd": amount}, False),
        ("KeyUpdate", {"budgets": [{"period": "day", "limit_usd": amount}]}, False),
        ("KeyCreate", {"name": "k", "credits_usd": amount}, True),
    ]
    for schema, body, allow_zero in bodies:
        if validator(schema).is_valid(body):
            assert taken(allow_zero), (schema, body)


def test_the_document_takes_the_amounts_of_the_docs() -> None:
    for amount in ("10.50", "0.05", "0.000000001", "20", "999999.999999999"):
        assert validator("Credits").is_valid({"amount_usd": amount}), amount
        assert validator("KeyUpdate").is_valid({"budgets": [{"period": "day", "limit_usd": amount}]})
    assert validator("KeyCreate").is_valid({"name": "k", "credits_usd": "0", "max_request_usd": "0.05"})
