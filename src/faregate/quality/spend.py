"""What a verification may cost, admitted against its daily cap before any call is made.

A verification makes at most two calls: the shadow call (the reference answer) and, with the
`llm_judge` comparator, the judge's. Both are admitted together, before the first is made, at their
worst case as the gateway's budget reservation computes it (routing/worst_case.py): the shadow
call's own plan at its offers' prices for the prompt and the whole output allowance; the judge at
the dearest price its model can be called at, for what it is shown (the question, the reference -
at most the shadow call's prompt and allowance - and the answer judged) plus its rubric, and its
whole output allowance. A cap that cannot admit both makes neither call, and the calibration
pauses for the day as for a refused shadow call (quality/live.py): a shadow answer no judge may
read would be money spent for no label.

The admitted amount is held until the verification has charged its real cost. Verifications
running at once in this process count each other's holds, so together they spend within the cap
as long as upstreams bill within the worst case. One that would fit alone but not beside the
others' holds waits for them to settle (their real cost is usually far below their worst case)
rather than pausing the day. Instances sharing a route hold apart: each admits against the spend
the store last gave it, so together they may overrun the cap by what is in flight on the others.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from decimal import Decimal

from faregate.errors import FaregateError
from faregate.quality.cache_live import CacheCalibration
from faregate.quality.live import RouteCalibration
from faregate.routing.plan import Plan, Planner
from faregate.routing.worst_case import judge_call, worst_case
from faregate.types import ChatRequest
from faregate.wire.openai import without_streaming

log = logging.getLogger("faregate.quality")

# An LLM judge's output allowance: "Score: N" and a line of why.
JUDGE_MAX_TOKENS = 200


# A route's calibration (quality/live.py) or the semantic cache's (quality/cache_live.py).
Capped = RouteCalibration | CacheCalibration


def left_today(capped: Capped, day: str) -> Decimal:
    """What the daily cap leaves to spend today (holds aside)."""
    if isinstance(capped, RouteCalibration):
        budget, cap = capped.state.budget, capped.settings.verification.daily_usd_cap
    else:
        budget, cap = capped.budget, capped.settings.daily_usd_cap
    return cap - (budget.spent if budget.day == day else Decimal(0))


@dataclass(slots=True, frozen=True)
class ShadowCall:
    """A shadow call as it will be made: its request, its plan (None: nothing can serve it, so no
    call), and its worst case in USD and tokens (the tokens also bound how much of the question and
    the reference a judge is shown)."""

    request: ChatRequest
    plan: Plan | None
    worst: Decimal = Decimal(0)
    tokens: int = 0


def shadow_request(request: ChatRequest, reference: str) -> ChatRequest:
    """The user's request asked of `reference` instead, whole and not streamed."""
    body = {k: v for k, v in without_streaming(request.body).items() if k != "models"}
    body["model"] = reference
    return ChatRequest(
        request_id=request.request_id,
        body=body,
        model=reference,
        stream=False,
        include_usage=False,
        max_tokens=request.max_tokens,
        required_modalities=request.required_modalities,
        choices=request.choices,
    )


async def plan_shadow(planner: Planner, request: ChatRequest, reference: str) -> ShadowCall:
    """Plan the call to `reference` and price its worst case (nothing is called)."""
    call = shadow_request(request, reference)
    try:
        plan = await planner.plan(call)
    except FaregateError as error:
        log.warning("verification call for request %s cannot be planned: %s", request.request_id, error)
        return ShadowCall(call, None)
    worst, tokens = await worst_case(plan, call)
    return ShadowCall(call, plan, worst, tokens)


def judge_worst(planner: Planner, judge_model: str, shown: int) -> Decimal:
    """The most the judge's call can cost when it is shown `shown` tokens of question and answers."""
    usd, _ = judge_call(planner.dearest_price(judge_model), shown, JUDGE_MAX_TOKENS)
    return usd


class Holds:
    """Amounts admitted and not settled yet, per capped scope (this process only)."""

    def __init__(self) -> None:
        self._held: dict[str, Decimal] = {}
        self._settled = asyncio.Condition()

    def held(self, scope: str) -> Decimal:
        return self._held.get(scope, Decimal(0))

    async def admit(self, capped: Capped, day: str, amount: Decimal) -> bool:
        """Admit `amount` on top of what is held, held until `release`; False: the cap cannot
        (the scope is paused for the day). While it would fit alone but not beside the others'
        holds, wait for them to settle."""
        scope = capped.route
        async with self._settled:
            while amount <= left_today(capped, day) < self.held(scope) + amount:
                await self._settled.wait()
            held = self.held(scope)
            if not capped.admit(day, held + amount):
                return False
            self._held[scope] = held + amount
            return True

    async def release(self, capped: Capped, amount: Decimal) -> None:
        """After the real cost is charged (never before: the cap would briefly count neither)."""
        async with self._settled:
            left = self.held(capped.route) - amount
            if left > 0:
                self._held[capped.route] = left
            else:
                self._held.pop(capped.route, None)
            self._settled.notify_all()
