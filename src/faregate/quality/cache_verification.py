"""Verifying the semantic cache's calibrated acceptance (quality/cache_live.py) like a route's.

A served hit drawn by `verify_hits` gets a fresh call after the response (`CacheJob`, admitted
against the cache's daily cap first, quality/spend.py), and an unserved candidate is labelled for
free when the fresh answer is stored (`label_candidate`). Each is compared with the acceptance's
comparator, observed, recorded in a `verifications` row and the state saved.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal

import orjson

from faregate.cache.service import CacheDecision, ResponseCache
from faregate.quality.service import QualityService
from faregate.quality.spend import Holds, plan_shadow
from faregate.quality.state import today
from faregate.quality.verification_calls import VerificationCalls
from faregate.store.rows import to_nanousd
from faregate.store.verifications import VerificationRow
from faregate.types import JSON, ChatRequest
from faregate.wire.openai import answer_text

log = logging.getLogger("faregate.quality")


@dataclass(slots=True, frozen=True)
class CacheJob:
    """A served semantic hit drawn for verification: a fresh answer to compare the cached one with."""

    request: ChatRequest
    cached: str
    similarity: float
    served_model: str
    # The exact key of the served answer (a wrong verdict records a conflict on it).
    key: str = ""


class CacheVerification:
    """Verifies the semantic cache's served hits and labels its unserved candidates (module docstring)."""

    def __init__(self, service: QualityService, calls: VerificationCalls, holds: Holds) -> None:
        self.service = service
        self.calls = calls
        self.holds = holds
        # The response cache whose semantic acceptance is calibrated (None: not calibrated).
        self.cache: ResponseCache | None = None

    async def label_candidate(self, decision: CacheDecision, fresh: JSON) -> None:
        """An unserved lookup's candidate against the fresh answer it got instead (a free label)."""
        acceptance = self.service.cache
        cache = self.cache
        if acceptance is None or cache is None or decision.candidate is None:
            return
        similarity, key = decision.candidate
        raw = await cache.store.get(key)
        if raw is None:
            return  # the candidate's answer expired: no label
        cached = answer_text(orjson.loads(raw)["body"])
        acceptable, _ = await self.calls.compare(acceptance.comparator, None, answer_text(fresh), cached)
        wrong = not acceptable
        began = time.time()
        acceptance.observe(similarity, wrong, (key, decision.key))
        acceptance.count_label("free")
        await self._record("", "free", "not served", similarity, 1.0, wrong, None, Decimal(0), began)
        await self.service.save("cache")

    async def verify(self, job: CacheJob) -> None:
        acceptance = self.service.cache
        assert acceptance is not None
        day, began = today(), time.time()
        reference = job.request.model
        shadow = await plan_shadow(self.calls.planner, job.request, reference)
        hold = await self.holds.admit(acceptance, day, shadow.worst)
        if hold is None:
            log.warning("the semantic cache's daily verification cap is reached; hits unverified for the day")
            return
        cost = Decimal(0)
        try:
            text, cost = await self.calls.call(shadow)
            acceptance.charge(cost, day)
        finally:
            await self.holds.settle(acceptance, hold, day, cost)
        if text is None:
            acceptance.failed()
            await self._record(job.request.request_id, "paid", "served", job.similarity,
                                  acceptance.settings.verify_hits, None, reference, cost, began)  # fmt: skip
            await self.service.save("cache")
            return
        acceptable, _ = await self.calls.compare(acceptance.comparator, job.request, text, job.cached)
        wrong = not acceptable
        acceptance.observe(job.similarity, wrong, (job.key,))
        acceptance.count_label("paid")
        await self._record(job.request.request_id, "paid", "served", job.similarity,
                              acceptance.settings.verify_hits, wrong, reference, cost, began)  # fmt: skip
        await self.service.save("cache")

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
