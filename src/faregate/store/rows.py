"""RequestRecord <-> a flat SQL row, shared by every SQL store so they store money the same way."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import orjson

from faregate.types import ANSWERED_OUTCOMES, Attempt, RequestRecord

# The record's own columns: what `row_to_record` reads back.
RECORD_COLUMNS: tuple[str, ...] = (
    "request_id",
    "created_at",
    "key_id",
    "model_requested",
    "model_used",
    "provider",
    "status",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "cost_nanousd",
    "usage_estimated",
    "latency_ms",
    "ttft_ms",
    "empty_response",
    "error",
    "attempts",
    "route",
    "baseline_cost_usd",
    "baseline_cost_nanousd",
    "cache_status",
    "wire",
)
# What the rollup and the reliability queries need from a record's attempts, worked out when the
# record is made (`attempt_summary`), so they read three integers instead of parsing the attempts
# JSON of every record (SQLite migration 16, PostgreSQL 9: old rows filled from their JSON).
ATTEMPT_SUMMARY_COLUMNS: tuple[str, ...] = ("attempt_count", "fell_back", "retried")
# Column order of `record_to_row`: the INSERT column list.
INSERT_COLUMNS: tuple[str, ...] = (*RECORD_COLUMNS, *ATTEMPT_SUMMARY_COLUMNS)


def usd_text(cost: Decimal) -> str:
    """Exact positional text ("0.00000082", never "8.2E-7"): readable in SQL and round-trips exactly."""
    return format(cost, "f")


def to_nanousd(cost: Decimal) -> int:
    """Cost in billionths of a dollar, so SQL can SUM money as integers without float error.

    Exact for every price with at most 3 decimals per 1M tokens (the usual case). A finer price
    leaves a sub-nano remainder that is rounded half-even here; `cost_usd` keeps the exact value.
    """
    return int(cost.scaleb(9).to_integral_value(rounding=ROUND_HALF_EVEN))


def from_nanousd(nanousd: int) -> Decimal:
    return Decimal(nanousd).scaleb(-9)


# PostgreSQL's text cannot hold U+0000, nor its jsonb a \u0000 escape: a record carrying one (a
# client-chosen model name on a 404, say) was refused there and dropped, while SQLite kept it.
# Every store writes U+FFFD in its place instead, so no request goes unrecorded and both stores hold
# (and their dashboards show) the same text; the replacement character marks what was lost.
# str.replace, not str.translate: it finds no NUL at memchr speed, where translate with a
# non-ASCII replacement looks up every character (it doubled the writer thread's CPU per record).
def nul_free(text: str | None) -> str | None:
    return None if text is None else text.replace("\x00", "\ufffd")


def attempts_json(attempts: Sequence[Attempt]) -> str:
    return orjson.dumps([_attempt_item(a) for a in attempts]).decode()


def _attempt_item(a: Attempt) -> dict[str, Any]:
    item: dict[str, Any] = {
        "model": a.model.replace("\x00", "\ufffd"),
        "provider": a.provider.replace("\x00", "\ufffd"),
        "outcome": a.outcome.replace("\x00", "\ufffd"),
        "latency_ms": a.latency_ms,
        "detail": a.detail.replace("\x00", "\ufffd"),
        "status": a.status,
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens,
        "cost_usd": usd_text(a.cost),
    }
    # Only where the call was sent without or instead of some of the client's settings.
    if a.dropped_params:
        item["dropped_params"] = a.dropped_params
    if a.adjusted_params:
        item["adjusted_params"] = a.adjusted_params
    # Only where the call was billed at its offer's peak price (its provider's dearer hours).
    if a.at_peak:
        item["price"] = "peak"
    return item


def attempts_from_json(text: str) -> list[Attempt]:
    items: list[dict[str, Any]] = orjson.loads(text)
    return [
        Attempt(
            model=item["model"],
            provider=item["provider"],
            outcome=item["outcome"],
            latency_ms=float(item.get("latency_ms") or 0.0),
            detail=item.get("detail") or "",
            status=item.get("status"),
            prompt_tokens=int(item.get("prompt_tokens") or 0),
            completion_tokens=int(item.get("completion_tokens") or 0),
            cost=Decimal(item.get("cost_usd") or "0"),
            dropped_params=item.get("dropped_params") or "",
            adjusted_params=item.get("adjusted_params") or "",
            at_peak=item.get("price") == "peak",
        )
        for item in items
    ]


def attempt_summary(attempts: Sequence[Attempt]) -> tuple[int, int, int]:
    """(attempt count, fell back, retried), each flag 0 or 1.

    A fallback: an offer failed and the last attempt was on another one (a cascade's escalation
    or an LLM judge's call answered: not a failure). A retry: a failed attempt followed by one on
    the same offer (the attempt loop retries an offer before it moves on). The same definitions
    as the SQL that computed them from the JSON before (the migrations' backfill).
    """
    count = len(attempts)
    if count < 2:
        return count, 0, 0
    last = attempts[-1]
    last_offer = f"{last.provider}/{last.model}"
    fell_back = retried = 0
    for a, after in zip(attempts, (*attempts[1:], None), strict=True):
        if a.outcome in ANSWERED_OUTCOMES:
            continue
        if f"{a.provider}/{a.model}" != last_offer:
            fell_back = 1
        if after is not None and a.provider == after.provider and a.model == after.model:
            retried = 1
    return count, fell_back, retried


def record_to_row(r: RequestRecord) -> tuple[Any, ...]:
    """The INSERT_COLUMNS of a record, with any NUL in its text as U+FFFD (see `nul_free`)."""
    return (
        r.request_id.replace("\x00", "\ufffd"),
        r.created_at,
        nul_free(r.key_id),
        r.model_requested.replace("\x00", "\ufffd"),
        nul_free(r.model_used),
        nul_free(r.provider),
        r.status,
        int(r.stream),
        r.prompt_tokens,
        r.completion_tokens,
        usd_text(r.cost_usd),
        to_nanousd(r.cost_usd),
        int(r.usage_estimated),
        r.latency_ms,
        r.ttft_ms,
        int(r.empty_response),
        nul_free(r.error),
        attempts_json(r.attempts),
        nul_free(r.route),
        usd_text(r.baseline_cost_usd),
        to_nanousd(r.baseline_cost_usd),
        r.cache_status.replace("\x00", "\ufffd"),
        r.wire.replace("\x00", "\ufffd"),
        *attempt_summary(r.attempts),
    )


def row_to_record(row: Sequence[Any]) -> RequestRecord:
    """Inverse of `record_to_row`, for a row selected in RECORD_COLUMNS order."""
    values = dict(zip(RECORD_COLUMNS, row, strict=True))
    return RequestRecord(
        request_id=values["request_id"],
        created_at=float(values["created_at"]),
        key_id=values["key_id"],
        model_requested=values["model_requested"],
        model_used=values["model_used"],
        provider=values["provider"],
        status=int(values["status"]),
        stream=bool(values["stream"]),
        prompt_tokens=int(values["prompt_tokens"]),
        completion_tokens=int(values["completion_tokens"]),
        cost_usd=Decimal(values["cost_usd"]),
        usage_estimated=bool(values["usage_estimated"]),
        latency_ms=float(values["latency_ms"]),
        ttft_ms=None if values["ttft_ms"] is None else float(values["ttft_ms"]),
        empty_response=bool(values["empty_response"]),
        error=values["error"],
        attempts=attempts_from_json(values["attempts"]),
        route=values["route"],
        baseline_cost_usd=Decimal(values["baseline_cost_usd"]),
        cache_status=values["cache_status"],
        wire=values["wire"],
    )
