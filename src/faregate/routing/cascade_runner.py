"""Running a cascade route: ask the cheap step, judge its answer, escalate until one passes.

Every judged step is a whole (non-streaming) call: the judge needs the whole answer. A step whose
answer is refused stays in the request's attempts as outcome "escalated", with the tokens and the
cost the provider billed for it; an LLM judge's own call is an attempt with outcome "judge", billed
the same way. They all stay in the answer's attempts (or the error's), which the responder bills,
so the response's cost is the cascade's whole cost. The last step is never judged: `run` calls it
as a normal plan (streamed, for a streaming request), with these attempts in front, and an error
of that step lists every attempt of the cascade.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from faregate.errors import UpstreamFailed, UpstreamRejected, listed
from faregate.providers.upstream_failures import overflows_context
from faregate.routing.attempts import AttemptRunner, Served
from faregate.routing.opened_stream import OpenedStream
from faregate.routing.plan import Plan, Planner
from faregate.types import Attempt, ChatRequest, Usage
from faregate.usage_estimate import estimate_usage
from faregate.wire.openai import answer_text, billed_text, finish_reason, without_streaming

if TYPE_CHECKING:
    from faregate.learning.llm_judge import Complete


@dataclass(slots=True)
class Judged:
    """What the judged steps came to: an accepted answer, or every call made before the last step."""

    served: Served | None
    attempts: list[Attempt]
    # One line per judged step: which model, and why its answer was taken or refused.
    verdicts: list[str] = field(default_factory=list)

    @property
    def escalations(self) -> int:
        return sum(a.outcome == "escalated" for a in self.attempts)


@dataclass(slots=True)
class Cascaded:
    """A cascade's answer (a judged step's, or the last step's, whole or streamed) and how the
    judged steps went; `answer.attempts` holds every call made."""

    answer: Served | OpenedStream
    judged: Judged


class CascadeRunner:
    def __init__(self, runner: AttemptRunner, planner: Planner) -> None:
        self.runner = runner
        self.planner = planner
        # Counters for metrics: answers judged, and refused (escalated).
        self.judged = 0
        self.escalated = 0

    async def run(self, request: ChatRequest, plan: Plan) -> Cascaded:
        """The judged steps; the first accepted answer, else the last step's (streamed for a
        streaming request)."""
        judged = await self.judged_steps(request, plan)
        if judged.served is not None:
            return Cascaded(judged.served, judged)
        last = plan.stage(len(plan.stages) - 1)
        answer: Served | OpenedStream
        try:
            if request.stream:
                answer = await self.runner.open_stream(request, last)
            else:
                answer = await self.runner.complete(request, last)
        except UpstreamFailed as failed:
            every = [*judged.attempts, *failed.attempts]
            if not every:
                raise  # nothing was called at all (errors.BreakersOpen): its own error, not "0 attempts"
            raise UpstreamFailed(
                every,
                timeout=failed.status == 504,
                message=f"The cascade's last step failed ({len(every)} attempt(s) in all): {listed(every)}",
            ) from None
        except UpstreamRejected as rejected:
            rejected.attempts[:0] = judged.attempts
            raise
        answer.attempts[:0] = judged.attempts
        return Cascaded(answer, judged)

    async def judged_steps(self, request: ChatRequest, plan: Plan) -> Judged:
        """Run every step but the last; return the first accepted answer, if any."""
        assert plan.cascade is not None and len(plan.stages) >= 2
        attempts: list[Attempt] = []
        verdicts: list[str] = []
        judge = plan.cascade.judge(self._judge_call(request, plan, attempts))
        # Judged steps are whole calls, also for a streaming request (buffered until judged).
        whole = dataclasses.replace(
            request, body=without_streaming(request.body), stream=False, include_usage=False
        )
        for index in range(len(plan.stages) - 1):
            try:
                served = await self.runner.complete(whole, plan.stage(index))
            except UpstreamFailed as failed:
                # A step that cannot answer at all is skipped, like a fallback.
                attempts.extend(failed.attempts)
                verdicts.append(f"step {index + 1}: no answer ({len(failed.attempts)} failed attempts)")
                continue
            except UpstreamRejected as rejected:
                if overflows_context(rejected):
                    # The prompt overflows this step's window after all: a later step may have room.
                    attempts.extend(rejected.attempts)
                    verdicts.append(f"step {index + 1}: no answer (the prompt is too long for it)")
                    continue
                rejected.attempts[:0] = attempts
                raise
            attempts.extend(served.attempts)
            body = served.completion.body
            text = answer_text(body)
            self.judged += 1
            calibrated = plan.cascade.quality is not None and index == 0
            if calibrated:
                accepted, reason, plan.trace.quality = await plan.cascade.calibrated(
                    request.request_id, request.body, text, finish_reason(body)
                )
            else:
                accepted, reason = await judge.accept(request.body, text, finish_reason(body))
            model = served.candidate.model.name
            if accepted:
                verdicts.append(f"step {index + 1} ({model}) accepted: {reason}")
                return Judged(Served(served.completion, served.candidate, attempts), attempts, verdicts)
            self.escalated += 1
            verdicts.append(f"step {index + 1} ({model}) escalated: {reason}")
            usage = served.completion.usage or await estimate_usage(request, billed_text(body))
            _bill(served.attempts[-1], "escalated", reason, usage, served)
        return Judged(None, attempts, verdicts)

    def _judge_call(self, request: ChatRequest, plan: Plan, attempts: list[Attempt]) -> Complete | None:
        """The LLM judge's way to its model: a request through the same planner and attempt loop,
        within the client request's deadline, billed to the client request."""
        assert plan.cascade is not None
        llm = plan.cascade.settings.judge.llm
        if llm is None:
            return None
        planner, runner = self.planner, self.runner

        async def complete(messages: list[dict[str, Any]]) -> str:
            call = ChatRequest(
                request_id=request.request_id,
                body={
                    "model": llm.model,
                    "messages": messages,
                    "max_tokens": llm.max_tokens,
                    "temperature": 0,
                },
                model=llm.model,
                stream=False,
                include_usage=False,
                max_tokens=llm.max_tokens,
                required_modalities=frozenset(),
                key_id=request.key_id,
                premium=request.premium,
                started=request.started,
            )
            try:
                served = await runner.complete(call, await planner.plan(call))
            except (UpstreamFailed, UpstreamRejected) as failed:
                # The judge escalates (llm_judge.py); its failed calls stay in the record.
                attempts.extend(_as_judge(failed.attempts))
                raise
            text = answer_text(served.completion.body)
            usage = served.completion.usage or await estimate_usage(call, billed_text(served.completion.body))
            attempts.extend(_as_judge(served.attempts[:-1]))
            _bill(served.attempts[-1], "judge", "LLM judge call", usage, served)
            attempts.append(served.attempts[-1])
            return text

        return complete


def _bill(attempt: Attempt, outcome: str, detail: str, usage: Usage, served: Served) -> None:
    """Mark a successful call that is not the answer as billed: its tokens at its offer's price."""
    attempt.outcome = outcome
    attempt.detail = detail
    attempt.prompt_tokens = usage.prompt_tokens
    attempt.completion_tokens = usage.completion_tokens
    attempt.cost = served.candidate.offer.price.cost(usage)


def _as_judge(failed: list[Attempt]) -> list[Attempt]:
    # The judge's failed calls keep their outcome (a provider failure is a failure); their
    # detail says whose call it was.
    for attempt in failed:
        attempt.detail = f"LLM judge call: {attempt.detail}" if attempt.detail else "LLM judge call"
    return failed
