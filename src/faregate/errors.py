"""One exception tree. Every error a client can see is a FaregateError: a status, a type, a code,
a param and a message, which the wire format writes at the edge (wire.openai.error_body).
"""

from __future__ import annotations

import math
from typing import Any

from faregate.types import ANSWERED_OUTCOMES, Attempt, Usage


class FaregateError(Exception):
    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class StartupError(Exception):
    """A command cannot start (bad configuration, a busy port, missing data): the CLI prints the
    message as one line, without a traceback. Never seen by an API client."""


class ConfigError(StartupError):
    """Bad configuration: raised at start-up, never seen by an API client."""


class InternalError(FaregateError):
    status = 500
    type = "api_error"
    code = "internal_error"


class ServiceUnavailable(FaregateError):
    """A store the gateway needs (PostgreSQL, Redis, SQLite) cannot be reached now: retry later."""

    status = 503
    type = "service_unavailable"
    code = "store_unavailable"


class InvalidRequest(FaregateError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(FaregateError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


# The 401 for a key the gateway does not know. A newcomer's usual mistake is which key was sent
# (another service's, the master key, one from a store since deleted): say which one to send.
UNKNOWN_API_KEY = (
    "Incorrect API key provided: this gateway has no such key, or it was revoked. Send one that "
    "`faregate keys create` (or `faregate serve --new-key`) printed; the master key is for the "
    "admin API, the dashboard and /metrics, not for requests."
)


class PermissionDenied(FaregateError):
    status = 403
    type = "permission_error"


class NotFound(FaregateError):
    status = 404
    type = "invalid_request_error"


class Conflict(FaregateError):
    """The request is well formed but the resource's state refuses it (a revoked key's credits)."""

    status = 409
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(FaregateError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(FaregateError):
    """The request did not arrive in full in time (server/lean_http.py REQUEST_S)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class ClientClosedRequest(FaregateError):
    """The client closed the connection before its request's body was read (nginx's 499): nobody
    reads the answer, but the record says what happened."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"


class InsufficientCredits(FaregateError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_quota"


class RateLimited(FaregateError):
    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class UpstreamError(FaregateError):
    """An error that came out of the upstream calls; `attempts` lists every call made for the
    request (a cascade's judged steps and judge calls included), for the record and the bill."""

    def __init__(
        self,
        message: str,
        attempts: list[Attempt] | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param)
        self.attempts: list[Attempt] = [] if attempts is None else attempts


# Upstream statuses that mean "no capacity now": rate limited, unavailable, Anthropic's overloaded.
OVERLOADED_STATUSES = frozenset({429, 503, 529})
# 4xx statuses that say nothing about the request, so another try may serve it: 409 a lock timeout
# (OpenAI's and Anthropic's SDKs retry it), 425 Too Early (retry later), 499 an upstream proxy's
# "client closed request" (the client it means is the gateway).
TRY_AGAIN_4XX = frozenset({409, 425, 499})


class UpstreamFailed(UpstreamError):
    """Every attempt failed. The message lists each attempt."""

    status = 502
    type = "upstream_error"
    code = "upstream_failed"

    def __init__(self, attempts: list[Attempt], *, timeout: bool = False, message: str | None = None) -> None:
        if timeout:
            self.status = 504
            self.code = "upstream_timeout"
        if message is None:
            message = f"All {len(attempts)} upstream attempt(s) failed: {listed(attempts)}"
        super().__init__(message, attempts)
        wait = self.capacity_wait
        if wait is not None:
            # The SDKs wait out a Retry-After (on any status they retry, a 502 or a 529 too)
            # rather than their own back-off of half a second and up: then an upstream has room.
            self.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        if not timeout and self.settled:
            # The SDKs retry any 5xx unless told not to: each try would call the upstreams again
            # (billed) for the same answer.
            self.headers["x-should-retry"] = "false"

    @property
    def overloaded(self) -> bool:
        """Did every attempt fail for want of capacity (429 rate limited, 503 or 529 overloaded)?
        Not a timeout, a cut stream or a 500: those say nothing about load; nor a 429 that is no
        rate limit (OpenAI's insufficient_quota, a server_error: our account needs payment)."""
        return bool(self.attempts) and all(
            a.status in OVERLOADED_STATUSES and (a.status != 429 or a.outcome == "rate_limited")
            for a in self.attempts
        )

    @property
    def settled(self) -> bool:
        """Did every failed attempt fail for a reason another try gets again, until someone changes
        the gateway's configuration or the provider account: the provider refused the gateway's key
        (401, 403, a 400 that says so), wants payment (402, a 400 or 429 that says so) or a higher
        rate-limit tier (a 413 or 429 "Request too large for"), does not serve the model or path
        (404) or sent it elsewhere (a 3xx: a wrong base_url); or refused the request itself
        ("rejected": a prompt too long for its model)? A timeout, a 5xx, a rate limit, a cut
        stream may pass. Calls that answered (a cascade's escalated steps, its judge) are no
        failures."""
        failed = [a for a in self.attempts if a.outcome not in ANSWERED_OUTCOMES]
        return bool(failed) and all(_settled(a) for a in failed)

    @property
    def capacity_wait(self) -> float | None:
        """When every attempt failed for want of capacity: the shortest wait an offer asked for in
        its last answer (its Retry-After), after which that one should have room. None if any
        offer did not say (it may have room at once) or any attempt failed otherwise."""
        if not self.overloaded:
            return None
        last: dict[tuple[str, str], float | None] = {}
        for attempt in self.attempts:
            last[(attempt.provider, attempt.model)] = attempt.retry_after
        waits = list(last.values())
        return None if None in waits else min(w for w in waits if w is not None)


class BreakersOpen(UpstreamFailed):
    """No upstream was called: when its turn came, every candidate's circuit breaker refused the
    call (half-open, its one probe taken by a request that planned at the same moment; or opened
    since the plan was made). The plan's own "every breaker open" 503 (candidate_fit.refuse),
    reached a moment later; an UpstreamFailed all the same, so a cascade skips such a step as it
    skips one whose every call failed."""

    status = 503
    type = "service_unavailable"
    code = "model_unavailable"

    def __init__(self, offers: list[str], wait: float = 0.0) -> None:
        super().__init__(
            [], message=f"No candidate can serve this request: circuit breaker open for {'; '.join(offers)}."
        )
        # When the soonest of those breakers lets a call through again (the plan's 503 says so too).
        self.headers["Retry-After"] = str(max(1, math.ceil(wait)))


class UpstreamRejected(UpstreamError):
    """The upstream refused the request itself (a 4xx other than 429): the client's to fix,
    so it is passed through with the upstream's status instead of falling back. The provider
    raises it without attempts; the attempt loop fills them in."""

    type = "invalid_request_error"

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        untranslatable: bool = False,
    ) -> None:
        super().__init__(message, code=code, param=param)
        self.status = status
        # Refused by the gateway before sending: the provider's wire cannot say the request (the
        # Messages wire n > 1, logprobs...). Another provider's wire may: the attempt loop moves on.
        self.untranslatable = untranslatable


def _settled(attempt: Attempt) -> bool:
    """Did this failed call fail for a reason another try gets again (UpstreamFailed.settled)?"""
    if attempt.outcome == "rejected":
        return True
    status = attempt.status
    return (
        attempt.outcome == "server_error"
        and status is not None
        and 300 <= status < 500
        and status not in TRY_AGAIN_4XX
    )


def listed(attempts: list[Attempt]) -> str:
    """Attempts numbered in one line, for an error message."""
    return "; ".join(f"{i}. {a.describe()}" for i, a in enumerate(attempts, 1))


class UpstreamFailure(Exception):
    """Raised by a provider for one failed upstream call; the attempt loop decides what follows.

    kind: rate_limited | server_error | timeout | connection | empty | truncated | rejected | bad_response
    """

    retryable_kinds = frozenset(
        {"rate_limited", "server_error", "timeout", "connection", "empty", "truncated", "bad_response"}
    )

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
        content_flagged: bool = False,
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.body = body
        # A provider's moderation flagged the content (OpenRouter's 403 with metadata.reasons):
        # another provider may serve it, but it says nothing about this one's health or key, and
        # any client can send such content at will, so it counts against no breaker.
        self.content_flagged = content_flagged
        # Usage the provider reported for this failed call (it bills it): set by the attempt loop.
        self.usage: Usage | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in self.retryable_kinds
