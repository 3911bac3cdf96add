"""POST /v1/feedback against a real gateway: only the key that made a request may score it."""

from __future__ import annotations

import sqlite3

import httpx
import openai
import pytest

from faregate.server.feedback import MAX_BODY_BYTES, REQUEST_ID, parse_score
from harness import MASTER_KEY, GatewayProcess, create_key

pytestmark = pytest.mark.e2e


def ask(gateway: GatewayProcess, key: str, model: str = "glm-4-plus") -> str:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "rate me"}]
    )
    return raw.headers["x-faregate-request-id"]


def feedback(gateway: GatewayProcess, key: str | None, body: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(gateway.base_url + "/feedback", json=body, headers=headers)


def test_the_same_key_scores_its_request_at_once(gateway: GatewayProcess, api_key: str) -> None:
    # Sent straight after the answer: the record may not be flushed yet, and must still be found.
    request_id = ask(gateway, api_key)
    response = feedback(gateway, api_key, {"request_id": request_id, "score": "up", "comment": "spot on"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "object": "feedback",
        "request_id": request_id,
        "score": "up",
        "satisfaction": 100.0,
        "model": "THUDM/glm-4-plus",
        "route": "THUDM/glm-4-plus",  # the model's canonical name, whatever alias was asked
    }
    # A second score replaces the first; the row joins its request record.
    assert feedback(gateway, api_key, {"request_id": request_id, "score": 2}).status_code == 200
    with sqlite3.connect(gateway.store_path / "faregate.db") as db:
        rows = db.execute(
            "SELECT f.thumb, f.rating, f.score, f.comment, r.model_used FROM feedback f"
            " JOIN request_records r ON r.request_id = f.request_id WHERE f.request_id = ?",
            (request_id,),
        ).fetchall()
    assert rows == [(None, 2, 25.0, None, "THUDM/glm-4-plus")]
    summary = httpx.get(
        f"http://127.0.0.1:{gateway.port}/admin/dashboard/feedback?by=model",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
    ).json()
    glm = next(r for r in summary["rows"] if r["group"] == "THUDM/glm-4-plus")
    assert glm["feedback"] >= 1 and glm["ratings"] >= 1 and glm["requests"] >= 1


def test_another_key_is_refused_exactly_like_an_unknown_id(gateway: GatewayProcess, api_key: str) -> None:
    """No existence oracle (issue #12, item 10): another key's request and an id nobody was given
    get the same 404, word for word but for the id itself."""
    request_id = ask(gateway, api_key)
    other = create_key(gateway.store_path, "someone-else")
    response = feedback(gateway, other, {"request_id": request_id, "score": "down"})
    unknown_id = "req_" + "0" * 24
    unknown = feedback(gateway, other, {"request_id": unknown_id, "score": "down"})
    assert response.status_code == unknown.status_code == 404
    assert response.json()["error"] == {
        **unknown.json()["error"],
        "message": unknown.json()["error"]["message"].replace(unknown_id, request_id),
    }
    assert feedback(gateway, MASTER_KEY, {"request_id": request_id, "score": "down"}).status_code == 401


def test_ids_of_both_formats_are_looked_up(gateway: GatewayProcess, api_key: str) -> None:
    """Ids are "req_" + 32 hex digits now, 24 before they began with the time: records of the old
    format can still be given feedback (an id of neither format is refused without a look-up, with
    the same 404)."""
    request_id = ask(gateway, api_key)
    assert len(request_id) == 36
    assert feedback(gateway, api_key, {"request_id": request_id, "score": "up"}).status_code == 200
    assert REQUEST_ID.fullmatch("req_" + "a" * 24) and REQUEST_ID.fullmatch(request_id)
    assert not REQUEST_ID.fullmatch("req_" + "a" * 28)
    for unknown in ("req_" + "0" * 24, "req_" + "0" * 32, "req_" + "0" * 28):
        response = feedback(gateway, api_key, {"request_id": unknown, "score": "up"})
        assert response.status_code == 404 and response.json()["error"]["code"] == "request_not_found"


def test_unknown_request_and_bad_bodies(gateway: GatewayProcess, api_key: str) -> None:
    missing = feedback(gateway, api_key, {"request_id": "req_nope", "score": "up"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"
    assert feedback(gateway, None, {"request_id": "req_nope", "score": "up"}).status_code == 401
    request_id = ask(gateway, api_key)
    for body in (
        {"request_id": request_id, "score": 6},
        {"request_id": request_id, "score": True},
        {"request_id": request_id, "score": "meh"},
        {"request_id": request_id},
        {"score": "up"},
        {"request_id": request_id, "score": "up", "comment": 5},
        ["not", "an", "object"],
    ):
        response = feedback(gateway, api_key, body)
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_body_over_the_feedback_limit_is_a_413(gateway: GatewayProcess, api_key: str) -> None:
    # As every other body over its limit (the chat wire's, aiohttp's own): 413, not 400.
    body = {"request_id": "req_" + "0" * 32, "score": "up", "comment": "x" * (MAX_BODY_BYTES + 1)}
    response = feedback(gateway, api_key, body)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"


def test_scores_parse() -> None:
    assert parse_score("UP") == ("up", None)
    assert parse_score("down") == ("down", None)
    assert parse_score(1) == (None, 1) and parse_score(5) == (None, 5)
