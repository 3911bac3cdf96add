"""Shadow verification after the response: the reference answer, compared, observed, recorded.

`Verifier.submit` is called once the user's response has been written and its record finished
(server/pipeline.py): it only starts a background task, so a verification never delays or fails
a response. The task waits for one of `max_concurrency` slots, then:

- free label (a cascade escalation): the cheap answer it refused against the strong answer served;
- otherwise: the other model of the route is called through the attempt runner, as a request of
  its own with no API key: it counts in no key's credits or rate limits, its attempts are marked
  `verification`, and its real cost (the served call at its offer's price plus what failed
  attempts were billed) is charged to the route's daily cap and written in the `verifications` row;
- the route's comparator says whether the cheap answer is acceptable against the reference (an
  LLM judge's call is charged with the shadow call); the calibration observes it and recalibrates;
  the row is written and the state saved.

Before any call, the daily USD cap must admit the worst case of every call the verification may
make, the judge's included (quality/spend.py); a cap that cannot pauses the calibration for the
day (quality/live.py) and no call is made.

The semantic cache's calibrated acceptance (quality/cache_live.py) is verified the same way: a
served hit drawn by `verify_hits` gets a fresh call after the response (`CacheJob`), and an
unserved candidate is labelled for free when the fresh answer is stored (`label_candidate`).

At shutdown, tasks not started are dropped (their decisions stay unobserved, which the
calibration allows) and those running are cancelled after a short grace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import orjson

from faregate.cache.service import CachedAnswer, CacheDecision, ResponseCache
from faregate.errors import FaregateError
from faregate.learning.online.comparators import Comparator, LLMJudgeComparator, mechanical
from faregate.learning.text_features import last_user_text
from faregate.quality.live import NANO, Decision, RouteCalibration, today
from faregate.quality.service import QualityService
from faregate.quality.spend import JUDGE_MAX_TOKENS, Holds, ShadowCall, judge_worst, plan_shadow
from faregate.routing.attempts import AttemptRunner, Served, billed_cost
from faregate.routing.opened_stream import OpenedStream
from faregate.routing.plan import Plan, Planner
from faregate.store.verifications import VerificationRow
from faregate.types import JSON, ChatRequest
from faregate.usage_estimate import estimate_usage
from faregate.wire.openai import answer_text

log = logging.getLogger("faregate.quality")

DEFAULT_CONCURRENCY = 4
# The `embedding` comparator: answers this similar are equivalent (comparators.EmbeddingSimilarity).
EMBEDDING_THRESHOLD = 0.9
CLOSE_GRACE_S = 2.0


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


@dataclass(slots=True, frozen=True)
class CacheJob:
    """A served semantic hit drawn for verification: a fresh answer to compare the cached one with."""

    request: ChatRequest
    cached: str
    similarity: float
    served_model: str
    # The exact key of the served answer (a wrong verdict records a conflict on it).
    key: str = ""


class JudgeFailed(RuntimeError):
    """The LLM judge gave no answer; `cost` is what its attempts were billed all the same."""

    def __init__(self, cost: Decimal) -> None:
        super().__init__("the judge model did not answer")
        self.cost = cost


class Verifier:
    def __init__(
        self,
        service: QualityService,
        runner: AttemptRunner,
        planner: Planner,
        max_concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.service = service
        self.runner = runner
        self.planner = planner
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        # Verifications drawn for answers that are being written: counted as pending from before
        # the client can see its answer until they are submitted (or dropped), so that "nothing
        # pending" read by a client that has every answer means every verification is done.
        self._promised = 0
        self._closing = False
        self.comparators: dict[str, Comparator] = {}
        # Worst cases admitted against the daily caps and not charged yet (quality/spend.py).
        self.holds = Holds(service)
        # Unit vectors for texts, off the event loop (the `embedding` comparator); set by the setup.
        self.embed: Callable[[list[str]], Awaitable[Any]] | None = None
        # The response cache whose semantic acceptance is calibrated (None: not calibrated).
        self.cache: ResponseCache | None = None
        # Counters (metrics): verifications started, dropped at shutdown.
        self.started = 0
        self.dropped = 0

    def comparator(self, name: str) -> Comparator:
        if name not in self.comparators:
            self.comparators[name] = mechanical(name)
        return self.comparators[name]

    async def compare(
        self,
        name: str,
        request: ChatRequest | None,
        reference: str,
        candidate: str,
        judge_model: str | None = None,
    ) -> tuple[bool, Decimal]:
        """Is `candidate` acceptable against `reference`? And what did asking cost (an LLM judge's
        call through the gateway; nothing for the others)."""
        if name == "embedding":
            if self.embed is None:
                raise RuntimeError("the embedding comparator needs an embedder")
            vectors = np.asarray(await self.embed([reference, candidate]), dtype=np.float64)
            return float(vectors[0] @ vectors[1]) >= EMBEDDING_THRESHOLD, Decimal(0)
        if name == "llm_judge":
            assert judge_model is not None and request is not None
            spent: list[Decimal] = []

            async def complete(messages: list[dict[str, Any]]) -> str:
                body = {
                    "model": judge_model,
                    "messages": messages,
                    "max_tokens": JUDGE_MAX_TOKENS,
                    "temperature": 0,
                }
                asked = dataclasses.replace(
                    request,
                    body=body,
                    max_tokens=JUDGE_MAX_TOKENS,
                    choices=1,
                    required_modalities=frozenset(),
                )
                text, cost = await self._call(await plan_shadow(self.planner, asked, judge_model))
                spent.append(cost)
                if text is None:
                    raise JudgeFailed(sum(spent, Decimal(0)))
                return text

            comparison = await LLMJudgeComparator(complete).compare(
                last_user_text(request.body), reference, candidate
            )
            return comparison.acceptable, sum(spent, Decimal(0))
        return self.comparator(name).compare(reference, candidate).acceptable, Decimal(0)

    def job_for(
        self, plan: Plan, request: ChatRequest, answer: Served | OpenedStream, status: int
    ) -> Job | None:
        """The verification a finished request asks for, if any: a calibrated decision whose coin
        said "label", answered cleanly by the path it decided (a fallback's answer verifies nothing)."""
        decision = plan.trace.quality
        if decision is None or not decision.labelled or decision.paused or status != 200:
            return None
        calibration = self.service.routes.get(decision.route)
        if calibration is None:
            return None
        served = answer.candidate.model.name
        if decision.kind == "router" and plan.candidates and served != plan.candidates[0].model.name:
            return None
        if decision.kind == "cascade" and decision.cheap and not isinstance(answer, Served):
            return None
        if isinstance(answer, OpenedStream):
            text = "".join(answer.seen.text)
        else:
            text = answer_text(answer.completion.body)
        return Job(decision, request, text, served, calibration)

    def cache_job_for(self, request: ChatRequest, cached: CachedAnswer) -> CacheJob | None:
        """A served semantic hit, if the coin draws it (calibrated acceptance only)."""
        acceptance = self.service.cache
        if acceptance is None or cached.kind != "semantic-hit" or acceptance.exhausted(today()):
            return None
        if not acceptance.verify_hit(request.request_id):
            return None
        return CacheJob(request, answer_text(cached.body), cached.similarity, cached.model, cached.key)

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
        acceptable, _ = await self.compare(acceptance.comparator, None, answer_text(fresh), cached)
        wrong = not acceptable
        began = time.time()
        acceptance.observe(similarity, wrong, (key, decision.key))
        acceptance.count_label("free")
        await self._cache_row("", "free", "not served", similarity, 1.0, wrong, None, Decimal(0), began)
        await self.service.save("cache")

    async def verify_cache(self, job: CacheJob) -> None:
        acceptance = self.service.cache
        assert acceptance is not None
        day, began = today(), time.time()
        reference = job.request.model
        shadow = await plan_shadow(self.planner, job.request, reference)
        hold = await self.holds.admit(acceptance, day, shadow.worst)
        if hold is None:
            log.warning("the semantic cache's daily verification cap is reached; hits unverified for the day")
            return
        try:
            text, cost = await self._call(shadow)
            acceptance.charge(cost, day, hold)
        finally:
            await self.holds.settle(acceptance, hold)
        if text is None:
            acceptance.failed()
            await self._cache_row(job.request.request_id, "paid", "served", job.similarity,
                                  acceptance.settings.verify_hits, None, reference, cost, began)  # fmt: skip
            await self.service.save("cache")
            return
        acceptable, _ = await self.compare(acceptance.comparator, job.request, text, job.cached)
        wrong = not acceptable
        acceptance.observe(job.similarity, wrong, (job.key,))
        acceptance.count_label("paid")
        await self._cache_row(job.request.request_id, "paid", "served", job.similarity,
                              acceptance.settings.verify_hits, wrong, reference, cost, began)  # fmt: skip
        await self.service.save("cache")

    async def _cache_row(
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
            acceptance.comparator, outcome, reference, int(cost * NANO), began,
        )  # fmt: skip
        try:
            await self.service.record(row)
        except Exception:
            log.exception("could not write a cache verification")

    def submit(self, job: Job | CacheJob) -> None:
        if self._closing:
            self.dropped += 1
            return
        task = asyncio.create_task(self._run(job), name=f"faregate-verify-{job.request.request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def promise(self) -> None:
        """A verification will be submitted (or let go) once its answer is written and recorded."""
        self._promised += 1

    def let_go(self) -> None:
        """One promised verification was submitted or dropped."""
        self._promised -= 1

    @property
    def pending(self) -> int:
        return len(self._tasks) + self._promised

    async def drain(self) -> None:
        """Wait for every verification submitted so far (tests, and a clean stop)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        self._closing = True
        tasks = list(self._tasks)
        if not tasks:
            return
        _, running = await asyncio.wait(tasks, timeout=CLOSE_GRACE_S)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self.dropped += len(running)

    async def _run(self, job: Job | CacheJob) -> None:
        async with self._slots:
            if self._closing:
                self.dropped += 1
                return
            self.started += 1
            try:
                if isinstance(job, CacheJob):
                    await self.verify_cache(job)
                else:
                    await self.verify(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("verification of request %s failed", job.request.request_id)

    async def verify(self, job: Job) -> None:
        decision = job.decision
        calibration = job.calibration
        verification = calibration.settings.verification
        judge = verification.judge_model if verification.comparator == "llm_judge" else None
        day = today()
        began = time.time()
        shadow: ShadowCall | None = None
        if decision.label_kind == "free":
            assert decision.cheap_text is not None
            known = await estimate_usage(job.request, decision.cheap_text + job.answer)
        else:
            shadow = await plan_shadow(self.planner, job.request, job.strong if decision.cheap else job.cheap)
            known = await estimate_usage(job.request, job.answer)
        worst = Decimal(0) if shadow is None else shadow.worst
        if judge is not None:
            # A free label's judge is shown the prompt and both answers; otherwise the question and
            # the reference (at most the shadow call's tokens) and the answer the user got.
            question = known.prompt_tokens if shadow is None else shadow.tokens
            worst += judge_worst(self.planner, judge, question + known.completion_tokens)
        if not worst:
            await self._verify(job, shadow, day, began, None)
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
        try:
            await self._verify(job, shadow, day, began, hold)
        finally:
            await self.holds.settle(calibration, hold)

    async def _verify(
        self, job: Job, shadow: ShadowCall | None, day: str, began: float, hold: str | None
    ) -> None:
        """The admitted verification: the shadow call (none for a free label), the comparison, the
        real cost charged (the hold taken away with it), the outcome observed and recorded."""
        decision = job.decision
        calibration = job.calibration
        comparator_name = calibration.settings.verification.comparator
        if shadow is None:
            assert decision.cheap_text is not None
            cheap_text, strong_text, cost, reference = decision.cheap_text, job.answer, Decimal(0), None
        else:
            reference = shadow.request.model
            text, cost = await self._call(shadow)
            if text is None:
                calibration.charge(decision, cost, day, hold)
                calibration.failed(decision)
                await self._record(job, calibration, "failed", reference, cost, began, comparator_name)
                await self.service.save(decision.route)
                return
            cheap_text, strong_text = (job.answer, text) if decision.cheap else (text, job.answer)
        judge = calibration.settings.verification.judge_model
        try:
            acceptable, asked = await self.compare(
                comparator_name, job.request, strong_text, cheap_text, judge
            )
        except Exception as error:
            log.exception("comparing the answers of request %s failed", job.request.request_id)
            # A judge that did not answer may still have been billed.
            cost += error.cost if isinstance(error, JudgeFailed) else Decimal(0)
            calibration.charge(decision, cost, day, hold)
            calibration.failed(decision)
            await self._record(job, calibration, "failed", reference, cost, began, comparator_name)
            await self.service.save(decision.route)
            return
        cost += asked
        if cost:
            calibration.charge(decision, cost, day, hold)
        elif hold is not None:
            calibration.release(hold)
        loss = not acceptable
        calibration.observe(decision, loss)
        await self._record(
            job, calibration, "loss" if loss else "acceptable", reference, cost, began, comparator_name
        )
        await self.service.save(decision.route)

    async def _call(self, shadow: ShadowCall) -> tuple[str | None, Decimal]:
        """Make a planned call: (its answer text or None if it failed, what it cost)."""
        call, plan = shadow.request, shadow.plan
        if plan is None:
            return None, Decimal(0)
        try:
            served = await self.runner.complete(call, plan)
        except FaregateError as error:
            attempts = getattr(error, "attempts", None) or []
            for attempt in attempts:
                attempt.detail = f"verification: {attempt.detail}" if attempt.detail else "verification"
            log.warning("verification call for request %s failed: %s", call.request_id, error)
            return None, billed_cost(attempts)
        text = answer_text(served.completion.body)
        usage = served.completion.usage or await estimate_usage(call, text)
        last = served.attempts[-1]
        last.outcome, last.detail = "verification", "shadow call for a quality verification"
        cost = served.candidate.offer.price.cost(usage) + billed_cost(served.attempts[:-1])
        return text, cost

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
            cost_nano=int(cost * NANO),
            created_at=began,
        )
        try:
            await self.service.record(row)
        except Exception:
            log.exception("could not write the verification of request %s", decision.request_id)
