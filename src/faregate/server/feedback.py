"""POST /v1/feedback: a score for one request, from the API key that made it.

Body: {"request_id": "req_...", "score": "up" | "down" | 1..5, "comment": "..."}.
The request id is the `x-faregate-request-id` header of the answer. A second score for
the same request replaces the first. An id that another key's request has gets the same 404
as an id that does not exist, and ids are random (server.exchange.new_request_id): the endpoint
says nothing about other keys' requests. An unknown id costs at most three record reads.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from faregate.errors import FaregateError, InvalidRequest, NotFound, PayloadTooLarge, ServiceUnavailable
from faregate.server.parse import decode_json_object
from faregate.server.request_checks import check_text
from faregate.store.feedback import Feedback, Thumb
from faregate.types import RequestRecord

if TYPE_CHECKING:
    from faregate.server.app import Gateway

MAX_BODY_BYTES = 64 * 1024
# What server.exchange.new_request_id gives out: "req_" and 32 hex digits (24 before the ids
# began with the time: records of those requests may still be given feedback).
REQUEST_ID = re.compile(r"req_(?:[0-9a-f]{32}|[0-9a-f]{24})")
MAX_COMMENT_CHARS = 4000
# How long to look for a record another instance has yet to flush, beyond two flush intervals.
OTHER_INSTANCE_GRACE_S = 0.5
# How long to wait for this instance's writer to store what it holds, as long as a request's read
# of PostgreSQL (store.postgres.pool.REQUEST_READ_TIMEOUT_S): a write that hangs longer is on a
# store that stopped answering without failing, and may hang a while yet before it fails.
RECORD_WRITE_WAIT_S = 5.0


def parse_score(value: Any) -> tuple[Thumb | None, int | None]:
    """(thumb, rating) from "up"/"down" or an integer 1..5."""
    if isinstance(value, str) and value.lower() == "up":
        return "up", None
    if isinstance(value, str) and value.lower() == "down":
        return "down", None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5:
        return None, value
    raise InvalidRequest('\'score\' must be "up", "down" or an integer from 1 to 5.', param="score")


class FeedbackUnavailable(FaregateError):
    status = 501
    type = "not_implemented"
    code = "feedback_unavailable"


async def _await_other_instance(gateway: Gateway, request_id: str) -> RequestRecord | None:
    """On the shared store the request may have been answered by another instance, whose batched
    writer stores its record within a flush interval: wait that long once, then look once more
    (an unknown id costs three reads in all, not one per poll)."""
    await asyncio.sleep(2 * gateway.settings.records.flush_interval_s + OTHER_INSTANCE_GRACE_S)
    return await gateway.store.get_record(request_id)


def add_feedback_route(app: web.Application, gateway: Gateway) -> None:
    insights = gateway.observability.insights if gateway.observability is not None else None

    async def post_feedback(request: web.Request) -> web.StreamResponse:
        key = await gateway.pipeline.authenticate(request)
        if insights is None:
            raise FeedbackUnavailable("Feedback needs the SQLite or the PostgreSQL store.")
        table = insights.feedback
        if (request.content_length or 0) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"The feedback body is larger than {MAX_BODY_BYTES} bytes.")
        raw = await request.read()
        if len(raw) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"The feedback body is larger than {MAX_BODY_BYTES} bytes.")
        body = decode_json_object(raw)
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not request_id.strip() or len(request_id) > 200:
            raise InvalidRequest(
                "'request_id' must be the x-faregate-request-id of a request.", param="request_id"
            )
        unknown = NotFound(
            f"No request with id {request_id!r} was made with this API key.",
            param="request_id",
            code="request_not_found",
        )
        thumb, rating = parse_score(body.get("score"))
        comment = body.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise InvalidRequest("'comment' must be a string.", param="comment")
        if comment is not None and len(comment) > MAX_COMMENT_CHARS:
            raise InvalidRequest(f"'comment' is longer than {MAX_COMMENT_CHARS} characters.", param="comment")
        if comment is not None:
            check_text(comment, "comment")  # PostgreSQL refused a NUL (a 500) where SQLite kept it
        if not REQUEST_ID.fullmatch(request_id):
            raise unknown  # not an id the gateway gives out: no need to look
        not_stored_yet = ServiceUnavailable(
            "The request's record is not stored yet: the store does not take it now. Retry shortly.",
            headers={"Retry-After": "1"},
        )
        record = await gateway.store.get_record(request_id)
        if record is None:
            # Feedback can arrive before the batched writer has stored the record: write it now.
            if not await gateway.records.flush_within(RECORD_WRITE_WAIT_S):
                raise not_stored_yet
            record = await gateway.store.get_record(request_id)
        if record is None:
            # Still this instance's to write: the store refuses writes for now (disk full, a
            # read-only standby mid-failover). Not an unknown id: retry. Another key's is unknown.
            held = gateway.records.unwritten(request_id)
            if held is not None and held.key_id == key.id:
                raise not_stored_yet
        if record is None and gateway.backends.shared:
            record = await _await_other_instance(gateway, request_id)
        # Another key's request answers exactly as an unknown one: no oracle for which ids exist.
        if record is None or record.key_id != key.id:
            raise unknown
        feedback = Feedback(request_id, key.id, time.time(), thumb, rating, comment)
        await table.upsert(feedback)
        answer = {
            "object": "feedback",
            "request_id": request_id,
            "score": thumb if thumb is not None else rating,
            "satisfaction": feedback.score,
            "model": record.model_used,
            "route": record.route,
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    app.router.add_post("/v1/feedback", post_feedback)
