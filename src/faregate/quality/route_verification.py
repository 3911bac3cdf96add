"""Verifying a calibrated route's labelled decision: the reference had, compared, observed, recorded.

- free label (a cascade escalation): the cheap answer it refused against the strong answer served;
- otherwise: the other model of the route is called (quality/verification_calls.py), and its real
  cost is charged to the route's daily cap and written in the `verifications` row;
- the route's comparator says whether the cheap answer is acceptable against the reference (an
  LLM judge's call is charged with the shadow call); the calibration observes it and recalibrates;
  the row is written and the state saved.

Before any call, the daily USD cap must admit the worst case of every call the verification may
make, the judge's included (quality/spend.py); a cap that cannot pauses the calibration for the
day (quality/route_outcomes.py) and no call is made.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal

from faregate.embedding.model import ModelUnavailable
from faregate.quality.live import RouteCalibration
from faregate.quality.service import QualityService
from faregate.quality.spend import Billed, Holds, ShadowCall, judge_worst, plan_shadow
from faregate.quality.state import Decision, today
from faregate.quality.verification_calls import JudgeFailed, VerificationCalls
from faregate.store.rows import to_nanousd
from faregate.store.verifications import VerificationRow
from faregate.types import ChatRequest
from faregate.usage_estimate import estimate_usage

log = logging.getLogger("faregate.quality")


@dataclass(slots=True, frozen=True)
class Job:
    decision: Decision
    request: ChatRequest
    # The answer the user got, and the model that gave it.
    answer: str
    served_model: str

    @property
    def cheap(self) -> str:
        return self.calibration.cheap

    @property
    def strong(self) -> str:
        return self.calibration.strong

    calibration: RouteCalibration


class RouteVerification:
    """Verifies the calibrated routes' labelled decisions (module docstring)."""

    def __init__(self, service: QualityService, calls: VerificationCalls, holds: Holds) -> None:
        self.service = service
        self.calls = calls
        self.holds = holds

    async def verify(self, job: Job) -> None:
        decision = job.decision
        calibration = job.calibration
        verification = calibration.settings.verification
        judge = verification.judge_model if verification.comparator == "llm_judge" else None
        day = today()
        began = time.time()
        if await self.calls.unready(verification.comparator) is not None:
            # The comparator cannot run (its embedding model failed to load, logged once per try
            # of the load): failed before any call is admitted or paid for, not after.
            calibration.failed(decision)
            await self._record(job, calibration, "failed", None, Decimal(0), began, verification.comparator)
            await self.service.save(calibration.scope)
            return
        shadow: ShadowCall | None = None
        if decision.label_kind == "free":
            assert decision.cheap_text is not None
            known = await estimate_usage(job.request, decision.cheap_text + job.answer)
        else:
            shadow = await plan_shadow(
                self.calls.planner, job.request, job.strong if decision.cheap else job.cheap
            )
            known = await estimate_usage(job.request, job.answer)
        worst = Decimal(0) if shadow is None else shadow.worst
        if judge is not None:
            # A free label's judge is shown the prompt and both answers; otherwise the question and
            # the reference (at most the shadow call's tokens) and the answer the user got.
            question = known.prompt_tokens if shadow is None else shadow.tokens
            worst += judge_worst(self.calls.planner, judge, question + known.completion_tokens)
        if not worst:
            await self._made(job, shadow, day, began, Billed())
            return
        hold = await self.holds.admit(calibration, day, worst)
        if hold is None:
            log.warning(
                "route %s: the daily verification cap of $%s cannot admit this verification's worst "
                "case ($%s); calibration paused for the day",
                decision.route,
                verification.daily_usd_cap,
                worst,
            )
            return
        billed = Billed()
        try:
            await self._made(job, shadow, day, began, billed)
        finally:
            # With what was billed so far, also when the verification failed or was cancelled
            # after a call was made (the state's save refused, a shutdown): the money was spent.
            await self.holds.settle(calibration, hold, day, billed.usd)

    async def _made(
        self, job: Job, shadow: ShadowCall | None, day: str, began: float, billed: Billed
    ) -> None:
        """`_verify`; one cancelled (a shutdown) or broken before its outcome was charged and
        recorded is a failed verification, with what its calls were billed so far: the money is in
        the cap's ledger (its hold is settled with it), so it is in its row and the calibration's
        day too, or the verification cost shown (the rows' sum) left it out."""
        decision = job.decision
        try:
            await self._verify(job, shadow, day, began, billed)
        except BaseException:
            if not billed.ended:
                reference = None if shadow is None else shadow.request.model
                try:
                    await self._failed(job, reference, billed.usd, day, began)
                except Exception:
                    log.exception("could not record the unfinished verification of %s", decision.request_id)
            raise

    async def _failed(self, job: Job, reference: str | None, cost: Decimal, day: str, began: float) -> None:
        """A verification that gave no outcome: what it cost charged, counted failed, recorded."""
        decision, calibration = job.decision, job.calibration
        comparator = calibration.settings.verification.comparator
        calibration.charge(decision, cost, day)
        calibration.failed(decision)
        await self._record(job, calibration, "failed", reference, cost, began, comparator)
        await self.service.save(calibration.scope)

    async def _verify(
        self, job: Job, shadow: ShadowCall | None, day: str, began: float, billed: Billed
    ) -> Decimal:
        """The admitted verification: the shadow call (none for a free label), the comparison, the
        real cost charged, the outcome observed and recorded. Returns the real cost; `billed` has
        it as soon as each call's is known (its hold is settled with it)."""
        decision = job.decision
        calibration = job.calibration
        comparator_name = calibration.settings.verification.comparator
        if shadow is None:
            assert decision.cheap_text is not None
            cheap_text, strong_text, cost, reference = decision.cheap_text, job.answer, Decimal(0), None
        else:
            reference = shadow.request.model
            text, cost = await self.calls.call(shadow)
            billed.usd = cost
            if text is None:
                billed.ended = True
                await self._failed(job, reference, cost, day, began)
                return cost
            cheap_text, strong_text = (job.answer, text) if decision.cheap else (text, job.answer)
        judge = calibration.settings.verification.judge_model
        try:
            acceptable, asked = await self.calls.compare(
                comparator_name, job.request, strong_text, cheap_text, judge
            )
        except Exception as error:
            if isinstance(error, ModelUnavailable):  # its load logged it (embedding/load_backoff.py)
                log.warning("comparing the answers of request %s failed: %s", job.request.request_id, error)
            else:
                log.exception("comparing the answers of request %s failed", job.request.request_id)
            # A judge that did not answer may still have been billed.
            cost += error.cost if isinstance(error, JudgeFailed) else Decimal(0)
            billed.usd, billed.ended = cost, True
            await self._failed(job, reference, cost, day, began)
            return cost
        cost += asked
        billed.usd, billed.ended = cost, True
        if cost:
            calibration.charge(decision, cost, day)
        loss = not acceptable
        calibration.observe(decision, loss)
        await self._record(
            job, calibration, "loss" if loss else "acceptable", reference, cost, began, comparator_name
        )
        await self.service.save(calibration.scope)
        return cost

    async def _record(
        self,
        job: Job,
        calibration: RouteCalibration,
        outcome: str,
        reference: str | None,
        cost: Decimal,
        began: float,
        comparator: str,
    ) -> None:
        decision = job.decision
        row = VerificationRow(
            request_id=decision.request_id,
            scope=decision.route,
            kind=decision.kind,
            label_kind=decision.label_kind,
            decision="cheap" if decision.cheap else "strong",
            rank=decision.rank,
            probability=decision.probability,
            comparator=comparator,
            outcome=outcome,
            reference_model=reference if reference is not None else job.served_model,
            cost_nano=to_nanousd(cost),
            created_at=began,
        )
        try:
            await self.service.record(row)
        except Exception:
            log.exception("could not write the verification of request %s", decision.request_id)
