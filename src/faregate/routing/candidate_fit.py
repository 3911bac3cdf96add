"""Whether a model can serve a request - its modalities, its context window with the request's
max_tokens, the request's cost cap - with the reasons each model that cannot was left out,
and the client's error, model by model, when no candidate is left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal

from faregate.catalog.models import Model, Offer
from faregate.errors import FaregateError, InvalidRequest
from faregate.routing.estimate import PromptSize
from faregate.types import MILLION, ChatRequest, Price


class ModelUnavailable(FaregateError):
    status = 503
    type = "service_unavailable"
    code = "model_unavailable"


@dataclass(slots=True)
class Rejections:
    """Why each model left out of a plan was left out, by reason."""

    context: list[str] = field(default_factory=list)
    modality: list[str] = field(default_factory=list)
    cost: list[str] = field(default_factory=list)
    # Whole phrases, each saying what would make the model servable (tier_offers.py).
    unavailable: list[str] = field(default_factory=list)
    breaker: list[str] = field(default_factory=list)
    # The soonest any of those models' breakers lets a call through again (seconds; None: none
    # was left out for its breakers): the 503's Retry-After.
    breaker_wait: float | None = None
    # Where in the plan (the count of candidates planned before) each model every offer of which
    # had its breaker open would have been: Plan.passed_over.
    passed_over: list[int] = field(default_factory=list)


def _room(model: Model, request: ChatRequest, rejected: Rejections) -> tuple[int, int | None] | None:
    """The room `model` leaves for the prompt and the output allowance asked; None when the model
    cannot serve the request whatever its prompt (the reason goes into `rejected`)."""
    missing = model.missing_modalities(request.required_modalities)
    if missing:
        rejected.modality.append(f"model '{model.name}' does not accept {' or '.join(missing)} input")
        return None
    out = request.max_tokens
    if out is not None and model.max_output_tokens:
        out = min(out, model.max_output_tokens)
    room = model.context_window - (out or 1)
    if room <= 0:
        rejected.context.append(f"{model.name} ({model.context_window:,} tokens)")
        return None
    return room, out


def fits_now(model: Model, request: ChatRequest, prompt: PromptSize, rejected: Rejections) -> bool | None:
    """`fits` when the prompt's upper bound settles it, without an exact count to wait for (the
    usual request); None: ask `fits` (nothing was added to `rejected`)."""
    fit = _room(model, request, rejected)
    if fit is None:
        return False
    if prompt.upper_bound > fit[0]:
        return None  # may take the exact count
    return True


async def fits(model: Model, request: ChatRequest, prompt: PromptSize, rejected: Rejections) -> bool:
    """Can `model` serve the request (its modalities, its context window)? If not, the reason goes
    into `rejected`. The cost cap is an offer's matter: `within_cap`."""
    fit = _room(model, request, rejected)
    if fit is None:
        return False
    if not await prompt.at_most(fit[0]):
        rejected.context.append(f"{model.name} ({model.context_window:,} tokens)")
        return False
    return True


def _output_sent(model: Model, offer: Offer) -> int:
    """The output allowance `offer`'s upstream is sent for a request without max_tokens
    (`default_output`), or 1 when its wire sends none (the upstream may then write what the context
    window has room for)."""
    return default_output(model, offer) or 1


def default_output(model: Model, offer: Offer) -> int | None:
    """The max_tokens `offer`'s upstream is sent for a request without one: its wire's default at
    most the model's max output (wire/anthropic_upstream.py: Messages requires one); None when its
    wire sends none."""
    default = offer.output_default
    if default is None:
        return None
    return min(default, model.max_output_tokens) if model.max_output_tokens else default


def offers_fit_now(model: Model, offers: list[Offer], request: ChatRequest, prompt: PromptSize) -> bool:
    """Whether every offer has room for the prompt's upper bound with the output allowance its
    upstream is sent (the usual request: `fits_now` settled it); False: ask `offers_that_fit`."""
    if request.max_tokens is not None:
        return True  # every offer is sent the client's limit, which `fits_now` counted
    window = model.context_window
    return all(
        o.output_default is None or prompt.upper_bound <= window - _output_sent(model, o) for o in offers
    )


async def offers_that_fit(
    model: Model, offers: list[Offer], request: ChatRequest, prompt: PromptSize, rejected: Rejections
) -> list[Offer]:
    """The offers (in their order) whose upstream has room for the prompt with the output allowance
    it is sent. `fits` counted the client's max_tokens, or 1 token without one; but a Messages
    upstream is sent a max_tokens all the same and refuses, with a 400 for the client, a prompt
    that overflows the context window with it: a model with more room may serve instead."""
    if request.max_tokens is not None:
        return offers
    kept: list[Offer] = []
    least = 0  # the smallest allowance of the offers left out, for the client's error
    for offer in offers:
        sent = _output_sent(model, offer)
        if sent == 1 or await prompt.at_most(model.context_window - sent):
            kept.append(offer)
        else:
            least = min(least, sent) if least else sent
    if not kept:
        rejected.context.append(
            f"{model.name} ({model.context_window:,} tokens, with the {least:,} output tokens "
            "its provider is sent as max_tokens)"
        )
    return kept


def output_allowance(
    model: Model, request: ChatRequest, prompt: PromptSize, offer: Offer | None = None
) -> int:
    """The most output one call to `model` through `offer` may bill, as the cost cap reckons it:
    the client's max_tokens at most the model's max output; without one, the limit the offer's wire
    sends (`default_output`), else the model's max output, else what the context window leaves."""
    out = request.max_tokens
    if out is not None and model.max_output_tokens:
        out = min(out, model.max_output_tokens)
    if out is None and offer is not None:
        out = default_output(model, offer)
    return out or model.max_output_tokens or max(model.context_window - prompt.upper_bound, 0)


def call_worst(price: Price, request: ChatRequest, tokens_in: int, out: int) -> Decimal:
    """One call's worst case as the cost cap reckons it, as the reservation does
    (routing.worst_case): the prompt at the dearest input price (a cache write, audio) plus the
    output allowance at the dearest output price, for every one of the `n` choices."""
    one = Decimal(tokens_in) * price.dearest_input + Decimal(out) * price.dearest_output
    return request.choices * one / MILLION


async def within_cap(
    model: Model,
    offers: list[Offer],
    request: ChatRequest,
    prompt: PromptSize,
    cap: Decimal,
    rejected: Rejections,
) -> list[Offer]:
    """The offers (in their order) whose worst case, the prompt plus the output allowance at the
    offer's own prices (`call_worst`, as the reservation holds it), is within the cap. Each offer
    is checked, not the model's cheapest: a fallback to a dearer seller, or the only seller a
    non-premium key may use beside a cheaper dedicated one, could otherwise cost more than the
    client allowed."""

    def worst(offer: Offer, tokens_in: int) -> Decimal:
        return call_worst(offer.price, request, tokens_in, output_allowance(model, request, prompt, offer))

    # The prompt as the reservation holds it (large inline media by size): its bound first, the
    # count only when the bound cannot settle it.
    kept = [o for o in offers if worst(o, prompt.billable_bound) <= cap]
    if len(kept) == len(offers):
        return kept
    exact = await prompt.billable()
    kept = [o for o in offers if worst(o, exact) <= cap]
    if not kept:
        reason = f"{model.name} (worst case ${min(worst(o, exact) for o in offers):f})"
        if reason not in rejected.cost:  # once, if several routes' caps left it out
            rejected.cost.append(reason)
    return kept


async def refuse(rejected: Rejections, prompt: PromptSize) -> None:
    """Raise the client's error for a request no candidate can serve: a 400 when only the request
    stood in the way (the prompt too long, content no model reads, the cost cap), saying every
    one of those reasons (one model too small and another over the cap: either change serves it),
    its code the first of them; else 503 listing every reason."""
    if not (rejected.unavailable or rejected.breaker):
        reasons: list[tuple[str, str, str]] = []  # (code, param, sentence)
        if rejected.context:
            tokens = await prompt.exact()
            reasons.append(
                (
                    "context_length_exceeded",
                    "messages",
                    f"The prompt has {tokens:,} tokens, which with max_tokens does not fit the context "
                    f"window of: {'; '.join(rejected.context)}.",
                )
            )
        if rejected.modality:
            reasons.append(
                (
                    "unsupported_modality",
                    "messages",
                    "The request contains content the model cannot read: "
                    + "; ".join(rejected.modality)
                    + ".",
                )
            )
        if rejected.cost:
            reasons.append(
                (
                    "max_cost_exceeded",
                    "faregate.max_cost_usd",
                    "No candidate fits 'max_cost_usd': " + "; ".join(rejected.cost) + ".",
                )
            )
        if reasons:
            code, param, _ = reasons[0]
            raise InvalidRequest(" ".join(sentence for _, _, sentence in reasons), param=param, code=code)
    parts = []
    if rejected.unavailable:
        parts.append("; ".join(rejected.unavailable))
    if rejected.breaker:
        parts.append(f"circuit breaker open for {'; '.join(rejected.breaker)}")
    for label, items in (
        ("too small a context", rejected.context),
        ("unsupported input", rejected.modality),
        ("over the cost cap", rejected.cost),
    ):
        if items:
            parts.append(f"{label}: {'; '.join(items)}")
    raise ModelUnavailable(
        "No candidate can serve this request: " + "; ".join(parts) + ".",
        headers=unavailable_headers(rejected),
    )


def unavailable_headers(rejected: Rejections) -> dict[str, str]:
    """The headers of a 503 for a request no candidate can serve. With models left out for their
    open breakers: a Retry-After for when the soonest lets a call through again, in whole seconds
    (at least 1), which the SDKs wait out instead of retrying into the same 503 a second later.
    Else nothing changes until the operator does (a provider's key set, a premium key): the SDKs
    retry any 5xx unless told not to, so they are."""
    if rejected.breaker_wait is None:
        return {"x-should-retry": "false"}
    return {"Retry-After": str(max(1, math.ceil(rejected.breaker_wait)))}
