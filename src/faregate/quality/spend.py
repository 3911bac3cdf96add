"""What a verification may cost, admitted against its daily cap before any call is made.

A verification makes at most two calls: the shadow call (the reference answer) and, with the
`llm_judge` comparator, the judge's. Both are admitted together, before the first is made, at their
worst case as the gateway's budget reservation computes it (routing/worst_case.py): the shadow
call's own plan at its offers' prices for the prompt and the whole output allowance; the judge at
the dearest price its model can be called at, for what it is shown (the question, the reference -
at most the shadow call's prompt and allowance - and the answer judged) plus its rubric, and its
whole output allowance. A cap that cannot admit both makes neither call, and the calibration
pauses for the day as for a refused shadow call (quality/route_outcomes.py): a shadow answer no judge may
read would be money spent for no label.

The admitted amount is held until the verification has charged its real cost. The holds and the
day's spend are kept in the store's verification-cap ledger (store/verifications.py: tables of
their own, not the scope's `calibration_state` row, which with domain learning weighs megabytes),
so every instance sharing the scope counts them. Admission is one transaction (SQLite's BEGIN
IMMEDIATE, PostgreSQL's advisory lock per scope): the worst case must fit under the cap beside the
day's spend and every live instance's holds; then the hold (its id, its instance, its amount,
exact in Decimal) is added. Settlement deletes the hold and adds the real cost in one transaction,
so the ledger never counts a verification twice or not at all. Together, every instance's
verifications spend within the cap as long as upstreams bill within the worst case. The calibration
keeps its own copy of the day's spend (its charge, saved with the outcome) for its figures and its
pause; an admission takes the smaller of what the ledger and that copy leave (the copy carries a
day paused by the calibration, and the spend of a day begun before the ledger existed).

One that would fit alone but not beside the others' holds waits for them to settle (their real cost
is usually far below their worst case) rather than pausing the day. One that cannot fit even alone
pauses the ledger's day at its cap, apart from the day's spend (so a cap raised since leaves the
raised cap less the real spend), and the calibration for the day (the one admission that writes the
calibration row). A settlement adds its cost only if its hold was still there, so one made twice
counts once (and an admission whose answer was lost, which the store may have taken, is let go as a
settlement of nothing); one the store refused (unavailable) is made again before this process's next
admission, on every look of the admissions waiting (the hold refused may be the one they wait on),
on every refresh of the calibration state (every 2 s: an instance that admits nothing more, its
traffic gone elsewhere, would otherwise hold back the other instances' admissions with it for as
long as it runs), and at a clean stop. A hold belongs to its instance's lease (quality/leases.py;
the lease budget holds already have, `accounts.instance_lease_s`): holds of an instance whose lease
lapsed (it crashed mid-verification) no longer count and are dropped by the next admission (once
older than a lease: quality/leases.py), so a dead instance blocks the cap for about a lease at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal

from faregate.errors import FaregateError
from faregate.quality.cache_live import CacheCalibration
from faregate.quality.live import RouteCalibration
from faregate.quality.service import QualityService
from faregate.routing.plan import Plan, Planner
from faregate.routing.worst_case import judge_call, worst_case
from faregate.store.verifications import HoldAsk
from faregate.types import ChatRequest
from faregate.wire.openai import without_streaming

log = logging.getLogger("faregate.quality")

# An LLM judge's output allowance: "Score: N" and a line of why.
JUDGE_MAX_TOKENS = 200
# An admission waiting for others' holds to settle looks at the store again this often (a
# settlement in this process wakes it at once).
WAIT_S = 1.0


# A route's calibration (quality/live.py) or the semantic cache's (quality/cache_live.py).
Capped = RouteCalibration | CacheCalibration


@dataclass(slots=True)
class Billed:
    """What a verification's calls were billed so far (USD): its hold is settled with it, also when
    the verification fails or is cancelled after a call (the money was spent). `ended`: its
    outcome (a failure's too) is being charged and recorded, so a cancellation has nothing to add."""

    usd: Decimal = Decimal(0)
    ended: bool = False


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
    """The user's request asked of `reference` instead, whole and not streamed, as a verification's
    call (routing/queue.py gives it a slot of the verifications' own, never one a user could need)."""
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
        verification=True,  # its own upstream slots: it must never delay a user's request
    )


async def plan_shadow(planner: Planner, request: ChatRequest, reference: str) -> ShadowCall:
    """Plan the call to `reference` and price its worst case (nothing is called)."""
    call = shadow_request(request, reference)
    try:
        plan = await planner.plan(call)
    except FaregateError as error:
        log.warning("verification call for request %s cannot be planned: %s", request.request_id, error)
        return ShadowCall(call, None)
    # A router route is planned on its strong path, the router not asked (routing/routes.py).
    if plan.stages:
        # A cascade route (a served semantic hit's fresh call to the route asked): one call is
        # made, so the strongest step's - the standard labels take - not the cheap step's
        # unjudged answer, which the route may never serve; its worst case is that step's.
        plan = plan.stage(len(plan.stages) - 1)
    worst, tokens = await worst_case(plan, call)
    return ShadowCall(call, plan, worst, tokens)


def judge_worst(planner: Planner, judge_model: str, shown: int) -> Decimal:
    """The most the judge's call can cost when it is shown `shown` tokens of question and answers."""
    usd, _ = judge_call(planner.dearest_price(judge_model), shown, JUDGE_MAX_TOKENS)
    return usd


class Holds:
    """Verification holds in the store's cap ledger (the module docstring); `settled` wakes the
    admissions waiting in this process."""

    def __init__(self, service: QualityService) -> None:
        self.service = service
        self._settled = asyncio.Condition()
        # Settlements the store refused (unavailable): tried again before every admission, so a
        # hold of this live instance does not block the cap until the process ends.
        self._unsettled: list[tuple[Capped, str, str, Decimal]] = []
        service.retries.append(self.settle_again)

    async def admit(self, capped: Capped, day: str, amount: Decimal) -> str | None:
        """Hold `amount` against the day's cap beside every live instance's holds: the hold's id,
        held until `settle`; None: the cap cannot (the scope is paused for the day). While it would
        fit alone but not beside the others' holds, wait for them to settle (another instance's
        settlement is seen in the store: looked for every WAIT_S; this process's settlements the
        store refused are made again on every look)."""
        hold_id = new_hold_id()
        store, scope = self.service.store, capped.scope
        while True:
            # Each pass: a settlement refused while this one waited may be the hold it waits on.
            await self.settle_again()
            leases = self.service.leases
            alive = frozenset(await leases.alive())
            # Read after the leases: a hold made since (by an instance started since) is younger.
            ask = HoldAsk(
                scope, day, hold_id, leases.instance_id, amount, daily_cap(capped),
                capped.left_today(day), alive, leases.lease_s, time.time(),
            )  # fmt: skip
            try:
                verdict, capped.held = await store.admit_hold(ask)
            except Exception:
                # The store may have taken the hold all the same (its answer lost): let go of it as
                # a settlement of nothing, made again until the store takes it. Else it would count
                # against the cap for as long as this instance lives (its lease keeps it alive).
                self._unsettled.append((capped, hold_id, day, Decimal(0)))
                raise
            if verdict == "admitted":
                return hold_id
            if verdict == "refused":
                await self.service.write_now(capped.scope, lambda: refuse(capped, day))
                return None
            async with self._settled:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled.wait(), WAIT_S)

    async def settle(self, capped: Capped, hold_id: str, day: str, cost: Decimal) -> None:
        """After the verification (its calibration charged `cost`, the real cost, on `day`): the
        hold deleted and the cost added to the day's spend in one transaction. A store that
        cannot take it now gets it again before the next admission."""
        try:
            await self._settle(capped, hold_id, day, cost)
        except Exception:
            log.exception("could not settle verification hold %s; tried again later", hold_id)
            self._unsettled.append((capped, hold_id, day, cost))
        finally:
            async with self._settled:
                self._settled.notify_all()

    async def _settle(self, capped: Capped, hold_id: str, day: str, cost: Decimal) -> None:
        capped.held = await self.service.store.settle_hold(capped.scope, hold_id, day, cost)

    async def settle_again(self) -> None:
        """The settlements the store refused, made again (those it refuses again are kept)."""
        waiting, self._unsettled = self._unsettled, []
        for index, (capped, hold_id, day, cost) in enumerate(waiting):
            try:
                await self._settle(capped, hold_id, day, cost)
            except Exception:
                self._unsettled.extend(waiting[index:])
                return


def daily_cap(capped: Capped) -> Decimal:
    if isinstance(capped, RouteCalibration):
        return capped.settings.verification.daily_usd_cap
    return capped.settings.daily_usd_cap


def refuse(capped: Capped, day: str) -> bool:
    """The calibration paused for the day (written at once, QualityService.write_now)."""
    capped.refuse(day)
    return True


def new_hold_id() -> str:
    return f"vh_{secrets.token_hex(8)}"
