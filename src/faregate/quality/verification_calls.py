"""The calls a verification makes: the shadow call for a reference answer, and the comparison.

The shadow call goes through the attempt runner as a request of its own with no API key: it counts
in no key's credits or rate limits, its attempts are marked `verification`, and its real cost is
the served call at its offer's price plus what failed attempts were billed (`call`).

A comparator says whether a candidate answer is acceptable against the reference (`compare`): the
mechanical ones and answer embeddings cost nothing; an LLM judge is asked through the same planner
and attempt runner as a shadow call, and its cost is returned to be charged with the shadow call's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from faregate.errors import FaregateError
from faregate.learning.online.comparators import Comparator, LLMJudgeComparator, mechanical
from faregate.learning.text_features import last_user_text
from faregate.quality.spend import JUDGE_MAX_TOKENS, ShadowCall, plan_shadow
from faregate.routing.attempts import AttemptRunner, billed_cost
from faregate.routing.plan import Planner
from faregate.types import ChatRequest
from faregate.usage_estimate import estimate_usage
from faregate.wire.openai import answer_text

log = logging.getLogger("faregate.quality")

# The `embedding` comparator: answers this similar are equivalent (comparators.EmbeddingSimilarity).
EMBEDDING_THRESHOLD = 0.9


class JudgeFailed(RuntimeError):
    """The LLM judge gave no answer; `cost` is what its attempts were billed all the same."""

    def __init__(self, cost: Decimal) -> None:
        super().__init__("the judge model did not answer")
        self.cost = cost


@dataclass(slots=True, frozen=True)
class AnswerEmbedder:
    """What the `embedding` comparator embeds answers with (quality/setup.py): `embed` gives the
    texts' unit vectors off the event loop; `unready` loads the model if it may be tried (on its
    worker) and says why it cannot be had (a failed load whose back-off runs), else None."""

    embed: Callable[[list[str]], Awaitable[Any]]
    unready: Callable[[], Awaitable[str | None]]


class VerificationCalls:
    """The shadow and judge calls of every verification, and the comparators (module docstring)."""

    def __init__(self, runner: AttemptRunner, planner: Planner) -> None:
        self.runner = runner
        self.planner = planner
        self.comparators: dict[str, Comparator] = {}
        # The `embedding` comparator's model; set by the setup.
        self.embedder: AnswerEmbedder | None = None

    def comparator(self, name: str) -> Comparator:
        if name not in self.comparators:
            self.comparators[name] = mechanical(name)
        return self.comparators[name]

    async def unready(self, comparator: str) -> str | None:
        """Why `comparator` cannot compare now, else None: asked before a verification admits or
        makes a paid call, which would otherwise be spent for a comparison bound to fail."""
        if comparator != "embedding":
            return None
        if self.embedder is None:
            return "the embedding comparator has no embedding model"
        return await self.embedder.unready()

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
            if self.embedder is None:
                raise RuntimeError("the embedding comparator needs an embedder")
            vectors = np.asarray(await self.embedder.embed([reference, candidate]), dtype=np.float64)
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
                text, cost = await self.call(await plan_shadow(self.planner, asked, judge_model))
                spent.append(cost)
                if text is None:
                    raise JudgeFailed(sum(spent, Decimal(0)))
                return text

            comparison = await LLMJudgeComparator(complete).compare(
                last_user_text(request.body), reference, candidate
            )
            return comparison.acceptable, sum(spent, Decimal(0))
        return self.comparator(name).compare(reference, candidate).acceptable, Decimal(0)

    async def call(self, shadow: ShadowCall) -> tuple[str | None, Decimal]:
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
