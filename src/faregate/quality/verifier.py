"""Shadow verification after the response: which requests, in the background, bounded, stopped cleanly.

`Verifier.submit` is called once the user's response has been written and its record finished
(server/pipeline.py): it only starts a background task, so a verification never delays or fails
a response. The task waits for one of `max_concurrency` slots, then verifies a calibrated route's
decision (quality/route_verification.py) or a semantic cache hit, or has a judge label an unserved
candidate (quality/cache_verification.py),
with the shadow and judge calls of quality/verification_calls.py.

Which finished requests are verified: a route's decision whose coin said "label", answered
cleanly by the path it decided (`job_for`); a served semantic hit the cache's coin draws
(`cache_job_for`).

At most `max_waiting` tasks wait for a slot: a route busier than the slots get through (shadow
calls take seconds) would otherwise pile them up without bound, each holding its request and
answer, and verify decisions hours late. While that many wait, the calibrations are *saturated*:
decisions are neither labelled nor counted, as while the daily cap pauses the day (chosen by load,
not by outcome), served semantic hits are not drawn and unserved candidates are not sent to a
judge; both resume once the verifications catch up.

At shutdown, tasks not started are dropped (their decisions stay unobserved, which the
calibration allows; counted in /metrics and logged) and those running are cancelled after a short
grace: one that had its hold is
recorded as failed with what its calls were billed so far (route_verification.py,
cache_verification.py), as one whose shadow call failed.
"""

from __future__ import annotations

import asyncio
import logging

from faregate.cache.service import CachedAnswer, CacheDecision
from faregate.quality.cache_verification import CacheJob, CacheVerification, CandidateJob
from faregate.quality.route_verification import Job, RouteVerification
from faregate.quality.service import QualityService
from faregate.quality.spend import Holds
from faregate.quality.state import today
from faregate.quality.verification_calls import VerificationCalls
from faregate.routing.attempts import AttemptRunner, Served
from faregate.routing.opened_stream import OpenedStream
from faregate.routing.plan import Plan, Planner
from faregate.types import JSON, ChatRequest
from faregate.wire.openai import answer_text

__all__ = ["CacheJob", "CandidateJob", "Job", "Verifier"]

log = logging.getLogger("faregate.quality")

DEFAULT_CONCURRENCY = 4
# Verifications waiting for a slot before decisions stop being labelled (module docstring): about
# half an hour of backlog at 4 slots and shadow calls of seconds, some MB of requests and answers.
DEFAULT_WAITING = 1000
CLOSE_GRACE_S = 2.0


class Verifier:
    def __init__(
        self,
        service: QualityService,
        runner: AttemptRunner,
        planner: Planner,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        max_waiting: int = DEFAULT_WAITING,
    ) -> None:
        self.service = service
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        # Submitted and not finished, beyond which the calibrations are saturated (`_saturate`).
        self._most = max_concurrency + max_waiting
        self.saturated = False
        # Verifications drawn for answers that are being written: counted as pending from before
        # the client can see its answer until they are submitted (or dropped), so that "nothing
        # pending" read by a client that has every answer means every verification is done.
        self._promised = 0
        self._closing = False
        # The shadow and judge calls, and the comparators (the setup gives them an embedder).
        self.calls = VerificationCalls(runner, planner)
        # Worst cases admitted against the daily caps and not charged yet (quality/spend.py).
        self.holds = Holds(service)
        self.route_verification = RouteVerification(service, self.calls, self.holds)
        # The semantic cache's (the setup gives it the response cache when it is calibrated).
        self.cache_verification = CacheVerification(service, self.calls, self.holds)
        # Counters (/metrics, quality/metrics.py): verifications that had a slot and began; those
        # dropped at shutdown before they began (their decisions stay unobserved); those cancelled
        # at shutdown while they ran (recorded as failed, route_verification.py).
        self.started = 0
        self.dropped = 0
        self.cancelled = 0

    def job_for(
        self, plan: Plan, request: ChatRequest, answer: Served | OpenedStream, status: int
    ) -> Job | None:
        """The verification a finished request asks for, if any: a calibrated decision whose coin
        said "label", answered cleanly by the path it decided (a fallback's answer verifies nothing:
        a router's other model, a cascade escalation's route chain)."""
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
        strongest = plan.stages[-1][0].model.name if plan.stages else served
        if decision.kind == "cascade" and not decision.cheap and served != strongest:
            return None  # an escalation the route's own chain answered (it backs up the last step)
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
        if not cached.counted:
            return None  # not counted in the calibration (too many changes wait for the store)
        if self.saturated:
            return None
        if not acceptance.verify_hit(request.request_id):
            return None
        return CacheJob(request, answer_text(cached.body), cached.similarity, cached.model, cached.key)

    async def label_candidate(self, decision: CacheDecision, request: ChatRequest, fresh: JSON) -> None:
        """The response cache's hook once a fresh answer is in: its unserved candidate is labelled
        at once, or in the background when a judge model is asked (a call, so it waits for a slot)."""
        job = await self.cache_verification.candidate_job(decision, request, fresh)
        if job is None:
            return
        if self.cache_verification.judged:
            if not self.saturated:  # else unlabelled, as when the cap refuses its judge
                self.submit(job)
        else:
            await self.cache_verification.label_candidate(job)

    def submit(self, job: Job | CacheJob | CandidateJob) -> None:
        if self._closing:
            self.dropped += 1
            return
        task = asyncio.create_task(self._run(job), name=f"faregate-verify-{job.request.request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        self._saturate()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._saturate()

    def _saturate(self) -> None:
        """Tell the calibrations whether the backlog is full (module docstring)."""
        full = len(self._tasks) >= self._most
        if full == self.saturated:
            return
        self.saturated = full
        if full:
            log.warning(
                "%d verifications not finished: decisions are not labelled until they catch up",
                len(self._tasks),
            )
        for calibration in self.service.routes.values():
            calibration.saturated = full

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
        if tasks:
            _, running = await asyncio.wait(tasks, timeout=CLOSE_GRACE_S)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        if self.dropped or self.cancelled:
            log.warning(
                "shutdown: %d verifications dropped before they began (their decisions stay "
                "unobserved), %d cancelled while they ran (recorded as failed)",
                self.dropped,
                self.cancelled,
            )
        # No admission comes after these to make the settlements the store refused: made now,
        # or their real cost would never reach the cap's ledger (a lapsed hold is dropped uncharged).
        await self.holds.settle_again()

    async def _run(self, job: Job | CacheJob | CandidateJob) -> None:
        began = False
        try:
            async with self._slots:
                if self._closing:
                    self.dropped += 1
                    return
                self.started += 1
                began = True
                await self._verify(job)
        except asyncio.CancelledError:
            # At shutdown (`close`): one still waiting for a slot is dropped, one running cancelled.
            if began:
                self.cancelled += 1
            else:
                self.dropped += 1
            raise

    async def _verify(self, job: Job | CacheJob | CandidateJob) -> None:
        try:
            if isinstance(job, CacheJob):
                await self.cache_verification.verify(job)
            elif isinstance(job, CandidateJob):
                await self.cache_verification.label_candidate(job)
            else:
                await self.route_verification.verify(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("verification of request %s failed", job.request.request_id)
