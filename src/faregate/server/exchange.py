"""One chat request on its way through the pipeline: what every stage reads and writes.

The role mitmproxy's flow plays. The pipeline makes one Exchange per HTTP request and hands it from
stage to stage (server/pipeline.py lists them); each stage takes what it needs from it and leaves
what it learned on it: the key, the parsed request, the cache decision, the plan, the budget hold.

Invariants:
- the request's record is written only by the methods here, each named for the event that fills
  its fields, so what a record says is read in one place;
- `headers` are the response headers gathered so far; every response, errors included, carries
  them (the request id first of all);
- `request` is read only after the parse stage has set it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from faregate.accounts.admission import Hold
from faregate.accounts.keys import ApiKey
from faregate.cache.service import CachedAnswer, CacheDecision
from faregate.errors import FaregateError, UpstreamError
from faregate.routing.attempts import billed_cost, billed_tokens
from faregate.routing.cascade_runner import Judged
from faregate.routing.plan import Candidate, Plan
from faregate.server.client_wires import CHAT, ClientWire
from faregate.server.http_seam import HttpRequest
from faregate.server.random_ids import random_hex
from faregate.types import JSON, REFUSED_HIT, Attempt, ChatRequest, Price, RequestRecord, Usage
from faregate.wire.model_params import adjusted_effort, chat_wire_effort, dropped_params

if TYPE_CHECKING:
    from faregate.catalog.models import Model, Offer
    from faregate.quality.verifier import CacheJob, Job

# "req_" + 12 hex digits of the time in ms + 20 random hex digits. The random 80 bits: a request
# id names a record that feedback may be sent for, so it must not be guessable from another one (a
# counter was), and two requests of one millisecond on any instance must never share one (a
# duplicate id would be a lost record). The time first: the records' unique index on request_id
# then grows at its end, as the table does, instead of at a random leaf per record (random ids
# made the writer read and write a page of that index per record once it outgrew SQLite's page
# cache: bench/README.md, "Request ids in time order").
REQUEST_ID_RANDOM_BYTES = 10


def new_request_id() -> str:
    return f"req_{time.time_ns() // 1_000_000:012x}{random_hex(REQUEST_ID_RANDOM_BYTES)}"


def money(value: Decimal) -> str:
    """Exact decimal text for headers (no exponent, no float rounding)."""
    # str() is a third of format(value, "f")'s time and the same text unless it writes an
    # exponent (below 1e-6, a zero with many places, or large round numbers); it runs twice per
    # answer (the cost and the baseline cost).
    text = str(value)
    if "E" in text:
        text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def header_text(text: str, limit: int = 300) -> str:
    """A header value: one line of printable ASCII (a judge's reason may hold anything)."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return cleaned[:limit]


@dataclass(slots=True)
class Exchange:
    """One request's state between stages (see the module docstring); made by `begin`."""

    http: HttpRequest
    record: RequestRecord
    headers: dict[str, str]
    # The prices the baseline cost is measured at: the baseline model's for chat, an embedding
    # model's own list price for embeddings (set once the request names it).
    baseline: Price
    # The wire the client speaks (it parses the body and writes every answer and error), and
    # the client's body as sent (a Response echoes its settings).
    wire: ClientWire = CHAT
    asked: JSON = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    key: ApiKey | None = None
    parsed: ChatRequest | None = None
    # None until the cache stage has decided (and when there is no cache).
    cache: CacheDecision | None = None
    plan: Plan | None = None
    hold: Hold | None = None
    # A shadow verification to start once the response is out and recorded (quality/verifier.py).
    verification: Job | CacheJob | None = None

    @classmethod
    def begin(cls, http_request: HttpRequest, baseline: Price, wire: ClientWire = CHAT) -> Exchange:
        request_id = new_request_id()
        # Nothing known yet but its id and time: the events below fill the rest in. (Positional:
        # a class called with keywords costs a dict of them per call, ~0.4 µs on every request.)
        record = RequestRecord(request_id, time.time())
        record.wire = wire.name
        traceparent = http_request.headers.get("traceparent")
        if traceparent is not None:
            record.traceparent = traceparent
            record.tracestate = http_request.headers.get("tracestate")
        # Where the client's SDK reads it too (x-request-id for openai's, request-id for
        # anthropic's): an answer's `_request_id`, an error's `request_id`, what a client logs to
        # report a request, so it is this one.
        headers = {"x-faregate-request-id": request_id}
        headers.update(dict.fromkeys(wire.request_id_headers, request_id))
        return cls(http_request, record, headers, baseline, wire)

    @property
    def request(self) -> ChatRequest:
        assert self.parsed is not None, "a stage read the request before it was parsed"
        return self.parsed

    # -- what the stages learn ------------------------------------------------------------------

    def authenticated(self, key: ApiKey) -> None:
        self.key = key
        self.record.key_id = key.id

    def asked_for(self, body: JSON) -> None:
        """The client's body, and the model it names, recorded before the body is checked
        (errors say it too)."""
        self.asked = body
        self.record.model_requested = str(body.get("model") or "")[:200]

    def read(self, request: ChatRequest) -> None:
        assert self.key is not None
        request.key_id = self.key.id
        request.premium = self.key.premium
        request.started = self.started
        request.wire_extras = self.wire.extras
        self.parsed = request
        self.record.stream = request.stream

    def decided(self, decision: CacheDecision | None) -> None:
        """The cache's decision (None: no cache at all, a bypass)."""
        self.cache = decision
        self.record.cache_status = (
            "miss" if decision is not None and decision.status != "bypass" else "bypass"
        )
        self.headers["x-faregate-cache"] = self.record.cache_status

    def routed(self, route: str) -> None:
        """The route as records and the x-faregate-route header name it (a hit's too)."""
        self.record.route = route
        self.headers["x-faregate-route"] = route

    def planned(self, plan: Plan) -> None:
        self.plan = plan
        self.routed(plan.route)
        if plan.trace.router_choice is not None:
            score = plan.trace.router_score
            self.headers["x-faregate-router-score"] = "failed" if score is None else f"{score:.4f}"

    def admitted(self, headers: dict[str, str], hold: Hold | None = None) -> None:
        """Past the rate limits (and, with a hold, the budget): their x-ratelimit-* headers."""
        self.hold = hold
        self.headers.update(headers)

    def cascaded(self, judged: Judged) -> None:
        verdict = "accepted" if judged.served is not None else "escalated"
        self.headers["x-faregate-cascade"] = f"{verdict}; escalations={judged.escalations}"
        if judged.verdicts:
            self.headers["x-faregate-judge"] = header_text(judged.verdicts[-1])

    # -- how it was answered --------------------------------------------------------------------

    def answered_by(self, candidate: Candidate, attempts: list[Attempt]) -> None:
        """The offer that answers, and every call made (headers sent before the cost is known)."""
        self.record.attempts = attempts
        self.headers.update(
            {
                "x-faregate-model": candidate.model.name,
                "x-faregate-provider": candidate.offer.provider,
                "x-faregate-attempts": str(len(attempts)),
            }
        )
        model, request = candidate.model, self.parsed
        if model.refuses or model.efforts is not None or (request is not None and request.wire_extras):
            # Most models, asked on the chat wire, have nothing to say here: no call.
            self._say_params(model, candidate.offer, attempts)

    def cached_from(self, model: Model, offer: Offer) -> None:
        """The model and offer that made a cached answer: what its call was sent without or
        instead is said as for a fresh answer (the cache's key held the same settings)."""
        self._say_params(model, offer)

    def _say_params(self, model: Model, offer: Offer, attempts: list[Attempt] | None = None) -> None:
        """The x-faregate-dropped-params and -adjusted-params headers for the client's request
        sent to `model` through `offer` (nothing to check for most models), also kept on the
        served one of `attempts` (the record's)."""
        if self.parsed is None:
            return
        body = self.parsed.body
        refused = model.refuses
        if refused:
            dropped = dropped_params(body, refused)
            if dropped:
                # In the client's own names (a Messages client's effort is output_config.effort).
                names = self.wire.param_names
                said = ", ".join(dict.fromkeys(names.get(name, name) for name in dropped))
                self.headers["x-faregate-dropped-params"] = said
                served = _served(attempts)
                if served is not None:
                    served.dropped_params = said
        efforts = model.efforts
        if efforts is not None and offer.fits_efforts:
            sent = adjusted_effort(body, efforts)
        elif self.parsed.wire_extras and offer.protocol != "anthropic":
            # A Messages client's effort the chat wire lacks ("max"), sent as its nearest there.
            sent = chat_wire_effort(body, refused)
        else:
            return
        if sent is not None:
            # The effort the model was sent for the client's, which it does not take.
            said = f"{self.wire.effort_param}={sent}"
            self.headers["x-faregate-adjusted-params"] = said
            served = _served(attempts)
            if served is not None:
                served.adjusted_params = said

    def settled(self, candidate: Candidate, usage: Usage, cost: Decimal) -> None:
        """What the answer cost: the served attempt's usage at its offer's price, plus what
        failed attempts were billed."""
        record = self.record
        record.model_used = candidate.model.name
        record.provider = candidate.offer.provider
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
        record.usage_estimated = usage.estimated
        record.cost_usd = cost
        record.empty_response = usage.completion_tokens == 0
        self.headers["x-faregate-cost-usd"] = money(cost)
        self._priced_on_baseline(usage)

    def embedded(self, candidate: Candidate, usage: Usage, cost: Decimal) -> None:
        """An embeddings answer's cost, as `settled`; it has no output by nature, so it is never
        an empty response."""
        self.settled(candidate, usage, cost)
        self.record.empty_response = False

    def found_in_cache(self) -> None:
        """The cache holds the answer; until it is served (`from_cache`), a request refused now
        (the key's rate limit, a key revoked elsewhere, the accounts store out of reach) is a
        refused hit: not a hit served (nothing was), nor a miss (the cache had it)."""
        self.record.cache_status = REFUSED_HIT
        self.headers["x-faregate-cache"] = REFUSED_HIT

    def from_cache(self, cached: CachedAnswer) -> None:
        """A hit costs nothing; the record keeps the usage so the whole baseline counts as saved."""
        record = self.record
        record.cache_status = cached.kind
        record.model_used = cached.model
        record.provider = cached.provider
        record.prompt_tokens = cached.usage.prompt_tokens
        record.completion_tokens = cached.usage.completion_tokens
        record.cost_usd = Decimal(0)
        self.headers.update(
            {
                "x-faregate-cache": cached.kind,
                "x-faregate-cost-usd": "0",
                "x-faregate-model": cached.model,
                "x-faregate-provider": cached.provider,
                "x-faregate-attempts": "0",
            }
        )
        self._priced_on_baseline(cached.usage)

    def _priced_on_baseline(self, usage: Usage) -> None:
        """The answer's usage (prompt-cache counts included, which the record keeps only as totals)
        at the baseline prices, as the served offer priced it: the record's baseline cost and its
        header, set before the answer is written, so the client is told the recorded figure. Cache
        reads at the baseline's cache price, not as plain input (else a request the baseline model
        served with cached tokens shows as savings)."""
        baseline = self.baseline.cost(usage)
        self.record.baseline_cost_usd = baseline
        self.headers["x-faregate-baseline-cost-usd"] = money(baseline)

    def first_content(self, at: float) -> None:
        if self.record.ttft_ms is None:
            self.record.ttft_ms = (at - self.started) * 1000

    def client_gone(self, when: str) -> None:
        self.record.status = 499
        self.record.error = f"client disconnected {when}"

    def client_stalled(self) -> None:
        """Its stream was cut because the client stopped reading it (server/responses.py)."""
        self.record.status = 499
        self.record.error = "client did not read its stream by the request deadline; connection dropped"

    def interrupted(self, detail: str) -> None:
        self.record.status = 502
        self.record.error = f"stream interrupted after content was sent: {detail}"

    def failed(self, error: FaregateError, note: str | None = None) -> None:
        """An error answer; `note` replaces the client's message in the record (a bug's class)."""
        self.record.status = self.wire.status(error)  # what the client gets (529 for Messages)
        self.record.error = (note or error.message)[:2000]
        if isinstance(error, UpstreamError) and error.attempts:
            self.record.attempts = error.attempts
            self.headers["x-faregate-attempts"] = str(len(error.attempts))
            # A failed attempt the provider billed (a blank 200) is still money spent: charged,
            # and said, as every answer says its cost.
            self.record.cost_usd = billed_cost(error.attempts)
            self.headers["x-faregate-cost-usd"] = money(self.record.cost_usd)

    def finished(self) -> None:
        """The request is over. (Its baseline cost came with its usage; without an answer, 0.)"""
        self.record.latency_ms = (time.perf_counter() - self.started) * 1000

    @property
    def spent(self) -> tuple[Decimal, int]:
        """The cost and tokens to settle the hold with: the answer's, and those of every other
        attempt the provider billed (a blank 200's prompt, a cascade's judge), which the cost
        counts too, so that the key's tokens per minute count them as well."""
        record = self.record
        billed = billed_tokens(record.attempts)
        if record.model_used is None:
            # No answer: the record's tokens are none, or (a client gone before its stream's
            # first content) these same attempts' sum.
            return record.cost_usd, billed
        return record.cost_usd, record.prompt_tokens + record.completion_tokens + billed


def _served(attempts: list[Attempt] | None) -> Attempt | None:
    """The attempt that served (the last "ok": a cascade's refused answers and judge calls have
    outcomes of their own), if any."""
    return next((a for a in reversed(attempts) if a.outcome == "ok"), None) if attempts else None
