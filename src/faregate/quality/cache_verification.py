"""Verifying the semantic cache's calibrated acceptance (quality/cache_live.py) like a route's.

A served hit drawn by `verify_hits` gets a fresh call after the response (`CacheJob`, admitted
against the cache's daily cap first, quality/spend.py), and an unserved candidate is labelled for
free when the fresh answer is stored (`candidate_job`: the reference costs nothing). Each is
compared with the acceptance's comparator, observed, recorded in a `verifications` row and the
state saved.

With the `llm_judge` comparator the comparison is a call too: the judge is shown the question and
both answers, and its worst case is admitted against the daily cap with the fresh call's (a served
hit) or alone (an unserved candidate, whose label then costs the judge's call; the verifier runs
it in the background like a served hit's). A cap that cannot admit it makes no call: the lookup
stays unlabelled, which the acceptance's bounds allow (a label missing for a reason that does not
depend on its outcome).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal

import orjson

from faregate.cache.service import CacheDecision, ResponseCache
from faregate.embedding.model import ModelUnavailable
from faregate.quality.service import QualityService
from faregate.quality.spend import Billed, Holds, ShadowCall, judge_worst, plan_shadow
from faregate.quality.state import today
from faregate.quality.verification_calls import JudgeFailed, VerificationCalls
from faregate.store.rows import to_nanousd
from faregate.store.verifications import VerificationRow
from faregate.types import JSON, ChatRequest
from faregate.usage_estimate import estimate_usage
from faregate.wire.openai import answer_text

log = logging.getLogger("faregate.quality")


@dataclass(slots=True, frozen=True)
class Verdict:
    """A comparison's outcome (None: the judge gave none) and what asking cost."""

    acceptable: bool | None
    cost: Decimal


@dataclass(slots=True, frozen=True)
class CacheJob:
    """A served semantic hit drawn for verification: a fresh answer to compare the cached one with."""

    request: ChatRequest
    cached: str
    similarity: float
    served_model: str
    # The exact key of the served answer (a wrong verdict records a conflict on it).
    key: str = ""


@dataclass(slots=True, frozen=True)
class CandidateJob:
    """An unserved lookup's candidate and the fresh answer the request got instead."""

    request: ChatRequest
    cached: str
    fresh: str
    similarity: float
    # The exact keys of the candidate's answer and of the fresh one (a wrong verdict records a
    # conflict on both).
    keys: tuple[str, str]


class CacheVerification:
    """Verifies the semantic cache's served hits and labels its unserved candidates (module docstring)."""

    def __init__(self, service: QualityService, calls: VerificationCalls, holds: Holds) -> None:
        self.service = service
        self.calls = calls
        self.holds = holds
        # The response cache whose semantic acceptance is calibrated (None: not calibrated).
        self.cache: ResponseCache | None = None

    @property
    def judged(self) -> bool:
        """Does a comparison call a judge model (and so cost money and take time)?"""
        acceptance = self.service.cache
        return acceptance is not None and acceptance.judge_model is not None

    async def candidate_job(
        self, decision: CacheDecision, request: ChatRequest, fresh: JSON
    ) -> CandidateJob | None:
        """The label an unserved lookup's candidate asks for, now that its fresh answer is in (None:
        no calibrated acceptance, or the candidate's answer has expired)."""
        cache = self.cache
        if self.service.cache is None or cache is None or decision.candidate is None:
            return None
        similarity, key = decision.candidate
        raw = await cache.store.get(key)
        if raw is None:
            return None
        cached = answer_text(orjson.loads(raw)["body"])
        return CandidateJob(request, cached, answer_text(fresh), similarity, (key, decision.key))

    async def label_candidate(self, job: CandidateJob) -> None:
        """An unserved candidate against the fresh answer (a free label; a judge's call admitted
        against the cap first)."""
        acceptance = self.service.cache
        assert acceptance is not None
        day, began = today(), time.time()
        judge = acceptance.judge_model
        if judge is None:
            await self._label(job, day, began, Billed())
            return
        if acceptance.exhausted(day):
            return  # the day's cap is spent: unlabelled until 00:00 UTC
        shown = await estimate_usage(job.request, job.cached + job.fresh)
        worst = judge_worst(self.calls.planner, judge, shown.prompt_tokens + shown.completion_tokens)
        hold = await self.holds.admit(acceptance, day, worst)
        if hold is None:
            log.warning("the semantic cache's daily verification cap is reached; candidates unlabelled today")
            return
        billed = Billed()
        try:
            try:
                await self._label(job, day, began, billed)
            except BaseException:
                if not billed.ended:  # cancelled (a shutdown) in the judge's call: failed, recorded
                    await self._unfinished(job.request.request_id, "free", "not served", job.similarity,
                                           1.0, None, billed.usd, day, began)  # fmt: skip
                raise
        finally:
            await self.holds.settle(acceptance, hold, day, billed.usd)

    async def _label(self, job: CandidateJob, day: str, began: float, billed: Billed) -> None:
        """Compare, observe, record; `billed` has what the comparison cost (a judge's call)."""
        acceptance = self.service.cache
        assert acceptance is not None
        verdict = await self._compare(job.request, job.fresh, job.cached)
        cost = billed.usd = verdict.cost
        billed.ended = True
        if cost:
            acceptance.charge(cost, day)
        if verdict.acceptable is not None:
            acceptance.observe(job.similarity, not verdict.acceptable, job.keys)
            acceptance.count_label("free")
        wrong = None if verdict.acceptable is None else not verdict.acceptable
        await self._record(job.request.request_id, "free", "not served", job.similarity, 1.0,
                              wrong, None, cost, began)  # fmt: skip
        await self.service.save(acceptance.scope)

    async def verify(self, job: CacheJob) -> None:
        acceptance = self.service.cache
        assert acceptance is not None
        day, began = today(), time.time()
        reference = job.request.model
        if await self.calls.unready(acceptance.comparator) is not None:
            # The comparator cannot run (its embedding model failed to load, logged once per try
            # of the load): failed before the fresh call is admitted or paid for, not after.
            acceptance.failed()
            probability = acceptance.settings.verify_hits
            await self._record(job.request.request_id, "paid", "served", job.similarity,
                                  probability, None, reference, Decimal(0), began)  # fmt: skip
            await self.service.save(acceptance.scope)
            return
        shadow = await plan_shadow(self.calls.planner, job.request, reference)
        worst = shadow.worst
        if acceptance.judge_model is not None:
            # The judge is shown the question and the fresh answer (at most the fresh call's
            # tokens) and the cached answer.
            cached = await estimate_usage(job.request, job.cached)
            shown = shadow.tokens + cached.completion_tokens
            worst += judge_worst(self.calls.planner, acceptance.judge_model, shown)
        hold = await self.holds.admit(acceptance, day, worst)
        if hold is None:
            log.warning("the semantic cache's daily verification cap is reached; hits unverified for the day")
            return
        billed = Billed()
        try:
            try:
                await self._verify(job, shadow, day, began, billed)
            except BaseException:
                if not billed.ended:  # cancelled (a shutdown) in a call: failed, recorded
                    await self._unfinished(job.request.request_id, "paid", "served", job.similarity,
                                           acceptance.settings.verify_hits, job.request.model,
                                           billed.usd, day, began)  # fmt: skip
                raise
        finally:
            await self.holds.settle(acceptance, hold, day, billed.usd)

    async def _verify(
        self, job: CacheJob, shadow: ShadowCall, day: str, began: float, billed: Billed
    ) -> None:
        """The admitted verification of a served hit: the fresh call, the comparison, the real cost
        charged, the outcome observed and recorded; `billed` has the cost as soon as each call's is
        known (its hold is settled with it)."""
        acceptance = self.service.cache
        assert acceptance is not None
        reference = job.request.model
        text, cost = await self.calls.call(shadow)
        billed.usd = cost
        if text is None:
            billed.ended = True
            acceptance.charge(cost, day)
            acceptance.failed()
            await self._record(job.request.request_id, "paid", "served", job.similarity,
                                  acceptance.settings.verify_hits, None, reference, cost, began)  # fmt: skip
            await self.service.save(acceptance.scope)
            return
        verdict = await self._compare(job.request, text, job.cached)
        cost = billed.usd = cost + verdict.cost
        billed.ended = True
        acceptance.charge(cost, day)
        wrong = None if verdict.acceptable is None else not verdict.acceptable
        if verdict.acceptable is not None:
            acceptance.observe(job.similarity, not verdict.acceptable, (job.key,))
            acceptance.count_label("paid")
        await self._record(job.request.request_id, "paid", "served", job.similarity,
                              acceptance.settings.verify_hits, wrong, reference, cost, began)  # fmt: skip
        await self.service.save(acceptance.scope)

    async def _unfinished(
        self,
        request_id: str,
        label: str,
        decision: str,
        similarity: float,
        probability: float,
        reference: str | None,
        cost: Decimal,
        day: str,
        began: float,
    ) -> None:
        """A verification cancelled (a shutdown) or broken before its outcome was charged and
        recorded: failed, with what its calls were billed so far. The money is in the cap's ledger
        (its hold is settled with it), so it is in its row and the calibration's day too, or the
        verification cost shown (the rows' sum) left it out."""
        acceptance = self.service.cache
        assert acceptance is not None
        try:
            acceptance.charge(cost, day)
            acceptance.failed()
            await self._record(request_id, label, decision, similarity, probability, None,
                               reference, cost, began)  # fmt: skip
            await self.service.save(acceptance.scope)
        except Exception:
            log.exception("could not record the unfinished verification of %s", request_id)

    async def _compare(self, request: ChatRequest, reference: str, candidate: str) -> Verdict:
        """The acceptance's comparator on a pair. A judge that fails gives no verdict
        (`acceptable` None), only what it was billed."""
        acceptance = self.service.cache
        assert acceptance is not None
        try:
            acceptable, cost = await self.calls.compare(
                acceptance.comparator, request, reference, candidate, acceptance.judge_model
            )
        except Exception as error:
            if isinstance(error, ModelUnavailable):  # its load logged it (embedding/load_backoff.py)
                log.warning("comparing a cached answer for request %s failed: %s", request.request_id, error)
            else:
                log.exception("comparing a cached answer for request %s failed", request.request_id)
            acceptance.failed()
            # A judge that did not answer may still have been billed.
            return Verdict(None, error.cost if isinstance(error, JudgeFailed) else Decimal(0))
        return Verdict(acceptable, cost)

    async def _record(
        self,
        request_id: str,
        label: str,
        decision: str,
        similarity: float,
        probability: float,
        wrong: bool | None,
        reference: str | None,
        cost: Decimal,
        began: float,
    ) -> None:
        acceptance = self.service.cache
        assert acceptance is not None
        outcome = "failed" if wrong is None else ("wrong" if wrong else "acceptable")
        row = VerificationRow(
            request_id, "cache", "cache", label, decision, similarity, probability,
            acceptance.comparator, outcome, reference, to_nanousd(cost), began,
        )  # fmt: skip
        try:
            await self.service.record(row)
        except Exception:
            log.exception("could not write a cache verification")
